"""The few Kubernetes API calls the handlers make, as plain dicts in and out.

kopf watches and patches our own resources; everything else (Jobs, pods, Secrets,
Deployments, other custom resources) goes through here, so RBAC needs are visible in one
file and match the chart's Role: see docs/security.md."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, ApiException

from timesheet_backup import constants as c

_api: ApiClient | None = None


def configure() -> ApiClient:
    """In a pod: the ServiceAccount token (the chart's RBAC); elsewhere: the kubeconfig."""
    global _api
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    _api = ApiClient()
    return _api


def api() -> ApiClient:
    return _api if _api is not None else configure()


def _plain(obj: Any) -> Any:
    return api().sanitize_for_serialization(obj)


def batch() -> Any:
    return kubernetes.client.BatchV1Api(api())


def core() -> Any:
    return kubernetes.client.CoreV1Api(api())


def apps() -> Any:
    return kubernetes.client.AppsV1Api(api())


def custom() -> Any:
    return kubernetes.client.CustomObjectsApi(api())


def not_found(exc: ApiException) -> bool:
    return exc.status == 404


def _unless_conflict(call: Callable[[], Any]) -> bool:
    """Run a create or a replace; False when the API server answers 409 Conflict: the object
    exists already, or someone changed it since its resourceVersion was read (optimistic
    concurrency). The caller decides what that means (a retry, read again, lost the race)."""
    try:
        call()
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def _create_or_replace(create: Callable[..., Any], replace: Callable[..., Any],
                       body: Mapping[str, Any], timeout: float) -> bool:
    """Create `body` (no metadata.resourceVersion) or replace the version it names;
    False on a conflict (see _unless_conflict)."""
    meta = body["metadata"]
    if meta.get("resourceVersion"):
        return _unless_conflict(lambda: replace(meta["name"], meta["namespace"], dict(body),
                                                _request_timeout=timeout))
    return _unless_conflict(lambda: create(meta["namespace"], dict(body),
                                           _request_timeout=timeout))


def create_job(manifest: Mapping[str, Any]) -> bool:
    """Create the Job; False when it already exists (a retry after an operator restart)."""
    return _unless_conflict(
        lambda: batch().create_namespaced_job(manifest["metadata"]["namespace"], dict(manifest)))


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(_plain(batch().read_namespaced_job(name, namespace)))
    except ApiException as exc:
        if not_found(exc):
            return None
        raise


def delete_job(namespace: str, name: str) -> None:
    try:
        batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if not not_found(exc):
            raise


def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    pods = core().list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
    return [dict(p) for p in _plain(pods)["items"]]


def jobs_matching(namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
    text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    jobs = batch().list_namespaced_job(namespace, label_selector=text)
    return [dict(j) for j in _plain(jobs)["items"]]


def pods_using_claim(namespace: str, claim: str) -> list[dict[str, Any]]:
    pods = _plain(core().list_namespaced_pod(namespace))["items"]
    result = []
    for pod in pods:
        volumes = (pod.get("spec") or {}).get("volumes") or []
        if any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim
               for v in volumes):
            result.append(dict(pod))
    return result


def deployments_using_claim(namespace: str, claim: str) -> list[dict[str, Any]]:
    """Deployments whose pod template mounts the claim (the app, even when scaled to 0)."""
    items = _plain(apps().list_namespaced_deployment(namespace))["items"]
    return [
        dict(d) for d in items
        if any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim
               for v in ((d.get("spec") or {}).get("template") or {}).get("spec", {}).get(
                   "volumes") or [])
    ]


def read_secret_key(namespace: str, name: str, key: str) -> str:
    """A Secret's value; raises LookupError with a message fit for status (never the value)."""
    try:
        secret = core().read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if not_found(exc):
            raise LookupError(f"Secret {namespace}/{name} not found") from exc
        raise
    data = secret.data or {}
    if key not in data:
        raise LookupError(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(data[key]).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise LookupError(f"Secret {namespace}/{name} key {key!r} is not UTF-8 text") from exc


def list_custom(namespace: str, plural: str, label_selector: str | None = None
                ) -> list[dict[str, Any]]:
    result = custom().list_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, plural, label_selector=label_selector or "")
    return list(result.get("items", []))


def get_custom(namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(custom().get_namespaced_custom_object(c.GROUP, c.VERSION, namespace,
                                                          plural, name))
    except ApiException as exc:
        if not_found(exc):
            return None
        raise


def create_custom(namespace: str, plural: str, body: Mapping[str, Any]) -> bool:
    """Create the object; False when it already exists."""
    return _unless_conflict(lambda: custom().create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, plural, dict(body)))


def patch_custom_status(namespace: str, plural: str, name: str,
                        status: Mapping[str, Any]) -> bool:
    """Merge `status` into the object's status subresource; False when the object is gone."""
    try:
        custom().patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, plural, name, {"status": dict(status)},
            _content_type="application/merge-patch+json")
    except ApiException as exc:
        if not_found(exc):
            return False
        raise
    return True


def patch_custom_metadata(namespace: str, plural: str, name: str,
                          metadata: Mapping[str, Any]) -> bool:
    """Merge `metadata` into the object's metadata (with a resourceVersion in it: only if
    the object has not changed since); False when the object is gone or has changed."""
    try:
        custom().patch_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, plural, name, {"metadata": dict(metadata)},
            _content_type="application/merge-patch+json")
    except ApiException as exc:
        if not_found(exc) or exc.status == 409:
            return False
        raise
    return True


def delete_custom(namespace: str, plural: str, name: str) -> None:
    try:
        custom().delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, plural, name)
    except ApiException as exc:
        if not not_found(exc):
            raise


def get_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(_plain(apps().read_namespaced_deployment(name, namespace)))
    except ApiException as exc:
        if not_found(exc):
            return None
        raise


def patch_deployment(namespace: str, name: str, patch: Mapping[str, Any]) -> None:
    apps().patch_namespaced_deployment(name, namespace, dict(patch))


def pods_matching(namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
    text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return [dict(p) for p in _plain(core().list_namespaced_pod(namespace,
                                                               label_selector=text))["items"]]


def namespace_terminating(name: str) -> bool:
    """True when the namespace is being deleted (its Secrets may already be gone)."""
    try:
        namespace = core().read_namespace(name)
    except ApiException as exc:
        if not_found(exc):
            return True
        raise
    return namespace.metadata.deletion_timestamp is not None


def apply_crd(body: Mapping[str, Any], field_manager: str) -> dict[str, Any]:
    """Server-side apply of a CustomResourceDefinition (creates it when missing).

    `force`: this command is the CRDs' owner; fields another manager set (helm's install
    from crds/, a manual `kubectl apply`) are taken over instead of failing with a conflict."""
    result = kubernetes.client.ApiextensionsV1Api(api()).patch_custom_resource_definition(
        body["metadata"]["name"], dict(body), field_manager=field_manager, force=True,
        _content_type="application/apply-patch+yaml")
    return dict(_plain(result))


def get_crd(name: str) -> dict[str, Any] | None:
    try:
        result = kubernetes.client.ApiextensionsV1Api(api()).read_custom_resource_definition(name)
    except ApiException as exc:
        if not_found(exc):
            return None
        raise
    return dict(_plain(result))


# Lease calls must return within the renew deadline, or a hung connection would keep a
# leader acting after it could no longer prove it holds the Lease.
LEASE_REQUEST_TIMEOUT = 5.0


def coordination() -> Any:
    return kubernetes.client.CoordinationV1Api(api())


def get_lease(namespace: str, name: str) -> dict[str, Any] | None:
    """The leader-election Lease, or None when nobody created it yet."""
    try:
        return dict(_plain(coordination().read_namespaced_lease(
            name, namespace, _request_timeout=LEASE_REQUEST_TIMEOUT)))
    except ApiException as exc:
        if not_found(exc):
            return None
        raise


def _lease(namespace: str, name: str, spec: Mapping[str, Any],
           resource_version: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
                         **({"resourceVersion": resource_version} if resource_version else {})},
            "spec": dict(spec)}


def create_lease(namespace: str, name: str, spec: Mapping[str, Any]) -> bool:
    """False when another replica created it first."""
    return _create_or_replace(coordination().create_namespaced_lease,
                              coordination().replace_namespaced_lease,
                              _lease(namespace, name, spec), LEASE_REQUEST_TIMEOUT)


def replace_lease(namespace: str, name: str, resource_version: str,
                  spec: Mapping[str, Any]) -> bool:
    """Write the Lease only if nobody changed it since `resource_version` was read
    (optimistic concurrency: two candidates cannot both win); False on a conflict."""
    return _create_or_replace(coordination().create_namespaced_lease,
                              coordination().replace_namespaced_lease,
                              _lease(namespace, name, spec, resource_version),
                              LEASE_REQUEST_TIMEOUT)


# --- the admission webhook's certificate (webhook.py) ---------------------------------------

WEBHOOK_REQUEST_TIMEOUT = 10.0


def get_secret_data(namespace: str, name: str) -> tuple[dict[str, str], str] | None:
    """A Secret's data (base64 values) and resourceVersion, or None when it does not exist."""
    try:
        secret = core().read_namespaced_secret(name, namespace,
                                               _request_timeout=WEBHOOK_REQUEST_TIMEOUT)
    except ApiException as exc:
        if not_found(exc):
            return None
        raise
    return dict(secret.data or {}), secret.metadata.resource_version


def write_tls_secret(namespace: str, name: str, data: Mapping[str, str],
                     resource_version: str | None) -> bool:
    """Create the Secret (resource_version None) or replace the version that was read; False
    when another replica created or changed it first (the caller reads it again)."""
    body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
                         **({"resourceVersion": resource_version} if resource_version else {})},
            "data": dict(data)}
    return _create_or_replace(core().create_namespaced_secret, core().replace_namespaced_secret,
                              body, WEBHOOK_REQUEST_TIMEOUT)


def set_webhook_ca_bundle(name: str, ca_bundle: str) -> bool:
    """Put the CA into every webhook of the ValidatingWebhookConfiguration the chart made;
    True when it changed. Read first: an unchanged bundle costs no write."""
    admission = kubernetes.client.AdmissionregistrationV1Api(api())
    current = _plain(admission.read_validating_webhook_configuration(
        name, _request_timeout=WEBHOOK_REQUEST_TIMEOUT))
    webhooks = current.get("webhooks") or []
    if all((w.get("clientConfig") or {}).get("caBundle") == ca_bundle for w in webhooks):
        return False
    patch = [{"op": "replace" if "caBundle" in (w.get("clientConfig") or {}) else "add",
              "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle}
             for i, w in enumerate(webhooks)]
    # The test pins the list (no webhook added or removed since the read).
    patch.insert(0, {"op": "test", "path": "/metadata/resourceVersion",
                     "value": current["metadata"]["resourceVersion"]})
    admission.patch_validating_webhook_configuration(
        name, patch, _request_timeout=WEBHOOK_REQUEST_TIMEOUT)
    return True
