"""The Helm chart: lint, what it renders, what its schema refuses (helm only), then on the real
control plane: every rendered manifest accepted by the API server, and the release's life
cycle — schedules from values, `helm upgrade` changing them, the CRD upgrade hook, `helm test`,
`helm uninstall` keeping CRDs and Backups.

A Backup succeeding through the helm-installed operator is covered by test_operator.py (its
`operator` fixture is tests/support/operator.py's install_operator: the same chart)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.support.cluster import REPO_ROOT, Cluster, wait_for
from tests.support.operator import (
    OPERATOR_NAMESPACE,
    RELEASE,
    Operator,
    install_operator,
    run_tool,
)
from timesheet_backup import constants as c
from timesheet_backup.api import crds, models
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.api.resolve import missing_fields
from timesheet_backup.settings import OperatorConfig, check_job_defaults

pytestmark = pytest.mark.e2e

CHART = "charts/timesheet-backup-operator"
CRD_NAMES = ("backups.backup.northstar.io", "backupschedules.backup.northstar.io",
             "restores.backup.northstar.io")
GROUP, VERSION = c.GROUP, c.VERSION


# ---- helm alone ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm binary (the e2e tier builds the tools; cached, this is instant)."""
    result = subprocess.run(["bash", "tests/cluster/build-tools.sh"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=3600, check=True)
    binary = Path(result.stdout.strip().splitlines()[-1]) / "helm"
    assert binary.is_file(), result.stderr
    return str(binary)


def template(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, "template", "tsb", CHART, "--namespace", "tsb-system", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=check)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template(helm, *args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_helm_lint(helm: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", CHART], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_has_the_guides_schedules(helm: str) -> None:
    schedules = by_kind(render(helm), "BackupSchedule")
    assert set(schedules) == {"database-daily", "uploads-weekly"}
    daily, weekly = schedules["database-daily"]["spec"], schedules["uploads-weekly"]["spec"]
    assert daily["schedule"] == "0 2 * * *"
    assert daily["template"]["spec"]["components"] == ["database"]
    assert weekly["schedule"] == "0 3 * * 0"
    assert weekly["template"]["spec"]["components"] == ["uploads"]
    assert daily["retention"] == weekly["retention"] == {"maxAge": "30d"}
    for s in schedules.values():
        assert s["metadata"]["namespace"] == "tsb-system"
        assert "disabled" not in s["spec"]


def test_default_render_is_locked_down(helm: str) -> None:
    docs = render(helm)
    deployment = by_kind(docs, "Deployment")["tsb-timesheet-backup-operator"]
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    job = by_kind(docs, "Job")["tsb-timesheet-backup-operator-crd-apply"]["spec"]["template"][
        "spec"]
    test_pod = by_kind(docs, "Pod")["tsb-timesheet-backup-operator-test-health"]["spec"]
    for spec in (pod, job, test_pod):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
    # A bare Pod matching the Deployment's selector would be adopted by its ReplicaSet (and
    # both would be selected by the operator's Services): hooks and tests carry other labels.
    selector = deployment["spec"]["selector"]["matchLabels"]
    hook_job = by_kind(docs, "Job")["tsb-timesheet-backup-operator-crd-apply"]
    test_object = by_kind(docs, "Pod")["tsb-timesheet-backup-operator-test-health"]
    for labels in (hook_job["spec"]["template"]["metadata"]["labels"],
                   test_object["metadata"]["labels"]):
        assert not selector.items() <= labels.items(), labels
    for service in by_kind(docs, "Service").values():
        assert service["spec"]["selector"] == selector
    assert test_pod["automountServiceAccountToken"] is False
    assert test_pod["containers"][0]["args"][:2] == ["agent", "http-check"]
    assert ("http://tsb-timesheet-backup-operator.tsb-system.svc:8081/healthz"
            in test_pod["containers"][0]["args"])


def test_job_defaults_reach_the_operators_configuration(helm: str) -> None:
    """defaults.job (pull secrets, priority, proxies, labels, workload identity) is rendered
    into the operator's config and read by it as the Jobs' defaults (merge rules:
    tests/unit/test_job_settings.py)."""
    job = {"imagePullSecrets": ["registry-credentials"], "priorityClassName": "backup-critical",
           "serviceAccountName": "timesheet-backup",
           "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                   {"name": "NO_PROXY", "value": ".svc"}],
           "podLabels": {"team": "timesheet"}, "podAnnotations": {"a": "b"}}
    docs = render(helm, "--set-json", f"defaults.job={json.dumps(job)}")
    config_yaml = by_kind(docs, "ConfigMap")["tsb-timesheet-backup-operator"]["data"][
        "config.yaml"]
    config = parse(OperatorConfig, yaml.safe_load(config_yaml), "config")
    check_job_defaults(config.defaults.job)
    # Helm merges the values into the chart's: the measured resources stay.
    assert config.defaults.job == parse(models.JobSpec, {**job, "resources": {
        "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}}, "job")
    # The default values: only the measured resources, none of the new settings.
    default = parse(OperatorConfig, yaml.safe_load(by_kind(render(helm), "ConfigMap")[
        "tsb-timesheet-backup-operator"]["data"]["config.yaml"]), "config")
    assert default.defaults.job is not None
    assert set(dump(default.defaults.job)) == {"resources"}
    # The operator's own pull secrets stay the operator's.
    pod = by_kind(render(helm, "--set-json", 'imagePullSecrets=[{"name":"op-registry"}]'),
                  "Deployment")["tsb-timesheet-backup-operator"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "op-registry"}]


def test_crd_hook_is_limited_to_our_crds(helm: str) -> None:
    docs = render(helm)
    name = "tsb-timesheet-backup-operator-crd-apply"
    hooked = [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook")
              == "pre-install,pre-upgrade"]
    assert {(d["kind"], d["metadata"]["name"]) for d in hooked} == {
        ("ServiceAccount", name), ("ClusterRole", name), ("ClusterRoleBinding", name),
        ("Job", name)}
    for d in hooked:
        assert "hook-succeeded" in d["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (rule,) = by_kind(docs, "ClusterRole")[name]["rules"]
    assert rule == {"apiGroups": ["apiextensions.k8s.io"],
                    "resources": ["customresourcedefinitions"],
                    "resourceNames": list(CRD_NAMES), "verbs": ["get", "create", "patch"]}
    job = by_kind(docs, "Job")[name]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["crds", "apply"]
    assert job["serviceAccountName"] == name

    assert not by_kind(render(helm, "--set", "crds.upgrade=false"), "Job")


def test_monitoring_objects_only_with_the_api(helm: str) -> None:
    kinds = {d["kind"] for d in render(helm)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    kinds = {d["kind"] for d in render(helm, "--api-versions", "monitoring.coreos.com/v1")}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_optional_network_policy(helm: str) -> None:
    assert not by_kind(render(helm), "NetworkPolicy")
    docs = render(helm, "--set", "networkPolicy.enabled=true",
                  "--set", "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
                  "--set-json", 'networkPolicy.egress=[{"ports":[{"port":9000}]}]')
    policy = by_kind(docs, "NetworkPolicy")["tsb-timesheet-backup-operator"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for p in policy["ingress"][0]["ports"]} == {"health", "metrics"}
    api, dns, extra = policy["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert extra == {"ports": [{"port": 9000}]}


def test_aggregated_roles(helm: str) -> None:
    roles = by_kind(render(helm), "ClusterRole")
    view = roles["tsb-timesheet-backup-operator-view"]
    edit = roles["tsb-timesheet-backup-operator-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    assert not any("status" in r for rule in edit["rules"] for r in rule["resources"])
    roles = by_kind(render(helm, "--set", "rbac.aggregateClusterRoles=false"), "ClusterRole")
    assert "tsb-timesheet-backup-operator-view" not in roles


def test_namespaced_rbac(helm: str) -> None:
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role"
             and d["metadata"]["name"] == "tsb-timesheet-backup-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert "tsb-timesheet-backup-operator" not in by_kind(docs, "ClusterRole")


BAD_VALUES = [
    ("image.pullPolicy=Sometimes",),
    ("metrics.port=http",),
    ("crds.upgrade=maybe",),
    ("logging.format=xml",),
    ("logging.level=TRACE",),
    ("metrics.serviceMonitor.enabled=sometimes",),
    ("schedules.database-daily.schedul=0 1 * * *",),  # a typo of `schedule`
    ("schedules.database-daily.concurrencyPolicy=Sometimes",),
    ("schedules.database-daily.suspend=perhaps",),
    ("schedul.database-daily.schedule=0 1 * * *",),  # a typo at the top
    ("watchNamespaces={Not_A_Namespace}",),
    ("networkPolicy.apiServer.cidrs={10.0.0.1}",),
    ("replicaCount=0",),
    ("leaderElection.leaseDuration=15",),
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda b: b[0].split("=")[0])
def test_schema_refuses_bad_values(helm: str, bad: tuple[str, ...]) -> None:
    result = template(helm, *[a for v in bad for a in ("--set", v)], check=False)
    assert result.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    lint = subprocess.run([helm, "lint", CHART, *[a for v in bad for a in ("--set", v)]],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert lint.returncode != 0, lint.stdout


# ---- on the control plane -----------------------------------------------------------------

def test_rendered_manifests_are_accepted_by_the_api_server(cluster: Cluster, namespace: str,
                                                           operator: Operator) -> None:
    """Everything the chart can render (hooks, the test pod, NetworkPolicy, CRDs), with the
    schedules in a fresh namespace, through the API server's validation and admission."""
    rendered = run_tool(
        cluster, "helm", "template", "tsb-dry", CHART, "--namespace", namespace,
        "--include-crds", "--set", "networkPolicy.enabled=true",
        "--set", "watchNamespaces={" + namespace + "}")
    # Server-side: the CRDs' fields belong to other managers (kubectl, the CRD hook).
    result = run_tool(cluster, "kubectl", "apply", "--server-side", "--force-conflicts",
                      "--dry-run=server", "-f", "-", stdin=rendered.stdout, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {re.split(r"[./]", line, maxsplit=1)[0] for line in result.stdout.splitlines()}
    assert kinds >= {"backupschedule", "job", "pod", "networkpolicy", "deployment",
                     "customresourcedefinition", "clusterrole", "clusterrolebinding", "role",
                     "rolebinding", "service", "serviceaccount", "configmap"}, result.stdout


def schedules(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                         "backupschedules")["items"]
    return {s["metadata"]["name"]: s["spec"] for s in items}


def schedule_object(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                            "backupschedules", name))


def helm_install(cluster: Cluster, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The standard release with these values on top of the e2e image (as install_operator)."""
    repository, _, tag = cluster.image.rpartition(":")
    return run_tool(cluster, "helm", "upgrade", "--install", RELEASE, CHART,
                    "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
                    "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                    "--values", "-", "--wait", "--timeout", "180s",
                    stdin=json.dumps(values))


@pytest.fixture
def standard_install_afterwards(cluster: Cluster) -> Iterator[None]:
    """Whatever happens, later tests find the standard release."""
    yield
    install_operator(cluster)


def test_release_life_cycle(cluster: Cluster, namespace: str,
                            standard_install_afterwards: None) -> None:
    crd_api = k8s.ApiextensionsV1Api(cluster.api)
    guide = yaml.safe_load((REPO_ROOT / CHART / "values.yaml").read_text())["schedules"]

    # install: the guide's schedules from values, in this test's namespace.
    values = {"schedules": {name: {**s, "namespace": namespace} for name, s in guide.items()}}
    installed = helm_install(cluster, values)
    assert "kubectl apply -f - <<EOF" in installed.stdout  # NOTES.txt
    got = wait_for(lambda: schedules(cluster, namespace), 30, message="no BackupSchedules")
    assert set(got) == {"database-daily", "uploads-weekly"}
    assert got["database-daily"]["schedule"] == "0 2 * * *"
    assert got["uploads-weekly"]["schedule"] == "0 3 * * 0"
    assert {s["retention"]["maxAge"] for s in got.values()} == {"30d"}

    # A first install with the chart's empty defaults: the schedules wait suspended, naming
    # the values they need, by the operator's own rule (resolve.missing_fields), in NOTES too.
    for name, spec in got.items():
        assert spec["suspend"] is True, name
        template = parse(models.BackupSpec, guide[name]["template"]["spec"])
        needed = ", ".join(missing_fields(template))
        annotations = schedule_object(cluster, namespace, name)["metadata"]["annotations"]
        assert annotations[c.ANNOTATION_SUSPENDED_UNTIL_SET] == needed, name
        assert f"`helm upgrade`: {needed}" in installed.stdout, installed.stdout

    # The hook applied the CRDs server-side, and they survive `helm uninstall`.
    for name in CRD_NAMES:
        crd = crd_api.read_custom_resource_definition(name)
        managers = {(m.manager, m.operation) for m in crd.metadata.managed_fields}
        assert ("timesheet-backup-operator", "Apply") in managers, managers
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"

    # An outdated CRD (as left by an older release) is brought up to date by the upgrade hook.
    def description() -> str:
        return run_tool(cluster, "kubectl", "get", "crd", CRD_NAMES[0], "-o", "jsonpath="
                        "{.spec.versions[0].schema.openAPIV3Schema.description}").stdout

    assert description() == crds.DEFINITIONS[0].description
    run_tool(cluster, "kubectl", "patch", "crd", CRD_NAMES[0], "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/description",
          "value": "outdated"}]))

    # upgrade: one schedule changed, the other disabled (helm deletes it); the defaults it
    # needs are set now, so it is no longer suspended.
    values["schedules"]["database-daily"]["schedule"] = "30 1 * * *"
    values["schedules"]["uploads-weekly"]["disabled"] = True
    values["defaults"] = {
        "database": {"host": "db.invalid", "name": "timesheet", "user": "timesheet",
                     "passwordSecretRef": {"name": "timesheet-db", "key": "password"}},
        "storage": {"bucket": "backups", "credentialsSecretRef": {"name": "backup-s3"}}}
    upgraded = helm_install(cluster, values)
    got = schedules(cluster, namespace)
    assert got["database-daily"]["schedule"] == "30 1 * * *"
    assert "suspend" not in got["database-daily"], got["database-daily"]
    assert c.ANNOTATION_SUSPENDED_UNTIL_SET not in (
        schedule_object(cluster, namespace, "database-daily")["metadata"].get("annotations")
        or {})
    assert "SUSPENDED" not in upgraded.stdout, upgraded.stdout
    wait_for(lambda: "uploads-weekly" not in schedules(cluster, namespace), 60,
             message="the disabled schedule was not removed")
    assert description() == crds.DEFINITIONS[0].description
    wait_for(lambda: not cluster.batch.list_namespaced_job(
        OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/component=crd-apply").items, 30,
        message="the succeeded hook Job was not deleted")

    # helm test: a pod in the operator's image gets 200 from the operator's health endpoint.
    tested = run_tool(cluster, "helm", "test", RELEASE, "--namespace", OPERATOR_NAMESPACE,
                      "--timeout", "120s", check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout

    # uninstall keeps the CRDs and the users' Backups.
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "backups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Backup",
        "metadata": {"name": "kept"}, "spec": {"deletionPolicy": "Retain"}})
    # No --wait: the BackupSchedules' finalizers need the operator that is being removed;
    # the standard install afterwards finishes their deletion.
    run_tool(cluster, "helm", "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE)
    for name in CRD_NAMES:
        assert crd_api.read_custom_resource_definition(name).metadata.deletion_timestamp is None
    backup = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "backups",
                                                         "kept")
    assert backup["metadata"].get("deletionTimestamp") is None
