"""NetworkPolicy under enforcement: the node runs kube-router's policy controller
(tests/cluster/node.sh), so the chart's optional policy is tested by what it lets through and
what it stops, not only by rendering (test_chart.py::test_optional_network_policy).

The first test proves the node enforces policies at all; without it, the chart's test below
could pass on a node that enforces nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.test_operator import backup_spec
from tests.support.cluster import (
    Cluster,
    create_namespace,
    delete_namespace,
    pod_manifest,
    wait_for,
)
from tests.support.operator import (
    OPERATOR_NAMESPACE,
    App,
    Operator,
    install_operator,
    run_tool,
)

pytestmark = pytest.mark.e2e

# Peers allowed to scrape the operator's metrics in the chart test below (its ingressFrom).
SCRAPER_LABEL = "tsb-e2e/scraper"


def start_client(cluster: Cluster, namespace: str, name: str = "client") -> None:
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        name, cluster.image, ["sleep", "3600"], terminationGracePeriodSeconds=0))


def start_server(cluster: Cluster, namespace: str) -> str:
    """An HTTP server pod labelled app=server; its IP."""
    manifest = pod_manifest("server", cluster.image, ["python3", "-m", "http.server", "8080"],
                            ports=[{"containerPort": 8080}],
                            readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    manifest["metadata"]["labels"] = {"app": "server"}
    cluster.core.create_namespaced_pod(namespace, manifest)
    pod = wait_for(lambda: _ready(cluster, namespace, "server"), 90,
                   message="server pod not ready")
    return str(pod.status.pod_ip)


def _ready(cluster: Cluster, namespace: str, name: str) -> object:
    pod = cluster.core.read_namespaced_pod(name, namespace)
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return pod if ready else None


def reach(cluster: Cluster, namespace: str, url: str, client: str = "client") -> str:
    """'reached' or the error the client pod got, fetching url with a 3 s timeout."""
    wait_for(lambda: _ready(cluster, namespace, client), 90, message=f"{client} not ready")
    code = ("import urllib.request, sys\n"
            "try:\n"
            f"    urllib.request.urlopen({url!r}, timeout=3).read(); print('reached')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    result = run_tool(cluster, "kubectl", "-n", namespace, "exec", client, "--",
                      "python3", "-c", code, timeout=60)
    return result.stdout.strip().splitlines()[-1]


def blocked(result: str) -> bool:
    """What a client sees when a policy stops it: kube-router rejects (connection refused);
    enforcers that drop make it time out."""
    return "Connection refused" in result or "timed out" in result


def apply(cluster: Cluster, namespace: str, policy: dict[str, object]) -> None:
    run_tool(cluster, "kubectl", "-n", namespace, "apply", "-f", "-",
             stdin=json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                               **policy}))


def test_the_node_enforces_network_policies(cluster: Cluster, namespace: str) -> None:
    start_client(cluster, namespace)
    url = f"http://{start_server(cluster, namespace)}:8080/"
    assert reach(cluster, namespace, url) == "reached"

    apply(cluster, namespace, {"metadata": {"name": "deny-ingress"}, "spec": {
        "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}})
    wait_for(lambda: blocked(reach(cluster, namespace, url)), 30,
             message="a deny-all ingress policy did not stop the client")

    cluster.networking.delete_namespaced_network_policy("deny-ingress", namespace)
    wait_for(lambda: reach(cluster, namespace, url) == "reached", 30,
             message="deleting the policy did not let the client through again")


@pytest.fixture
def scraper_namespace(cluster: Cluster) -> Iterator[str]:
    name = create_namespace(cluster, "scraper")
    cluster.core.patch_namespace(name, {"metadata": {"labels": {SCRAPER_LABEL: "true"}}})
    yield name
    delete_namespace(cluster, name, force_pods=True)


@pytest.fixture
def policed_operator(cluster: Cluster, operator: Operator) -> Iterator[Operator]:
    """The standard release with the chart's NetworkPolicy on: egress to the API server, DNS
    and this host's S3 port; health and metrics only from namespaces labelled SCRAPER_LABEL.
    The standard release is put back afterwards, whatever happens."""
    s3_port = int(cluster.env["S3_ENDPOINT"].rsplit(":", 1)[1].rstrip("/"))
    # The API server's port as pods reach it after kube-proxy's DNAT (not the Service's 443):
    # a random port on this machine, which the chart's default [443, 6443] would miss.
    slices = cluster.discovery.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes").items
    api_ports = sorted({p.port for s in slices for p in s.ports or []})
    values = {"networkPolicy": {
        "enabled": True,
        "apiServer": {"ports": api_ports},
        "egress": [{"to": [{"ipBlock": {"cidr": f"{cluster.host_address}/32"}}],
                    "ports": [{"port": s3_port, "protocol": "TCP"}]}],
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {SCRAPER_LABEL: "true"}}}],
    }}
    try:
        yield install_operator(cluster, "--set-json",
                               f"networkPolicy={json.dumps(values['networkPolicy'])}")
    finally:
        install_operator(cluster)


def test_the_charts_policy_lets_the_operator_work_and_stops_other_peers(
        cluster: Cluster, app: App, scraper_namespace: str, policed_operator: Operator) -> None:
    policies = cluster.networking.list_namespaced_network_policy(OPERATOR_NAMESPACE).items
    assert [p.metadata.name for p in policies] == ["tsb-timesheet-backup-operator"]

    # The agent's Job under docs/security.md's policy for it, with this host as the
    # database's and the bucket's address: no ingress, egress to PostgreSQL, S3 and DNS only.
    host = f"{cluster.host_address}/32"
    ports = (int(app.pg_env["PGPORT"]), int(app.s3_env["S3_ENDPOINT"].rsplit(":", 1)[1]))
    apply(cluster, app.namespace, {"metadata": {"name": "timesheet-backup-agent"}, "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/managed-by":
                                        "timesheet-backup-operator"}},
        "policyTypes": ["Ingress", "Egress"], "ingress": [],
        "egress": [{"to": [{"ipBlock": {"cidr": host}}],
                    "ports": [{"port": p, "protocol": "TCP"} for p in ports]},
                   {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}],
    }})
    # The operator works under its own policy: it watches, creates the Job, reads the
    # manifest from S3 (the egress rule) and reports; the kubelet's probes still reach it
    # (the pod is Ready, or install_operator would have failed).
    app.create("backups", "policed", backup_spec(app))
    backup = app.wait_phase("backups", "policed", ("Succeeded", "Failed"), timeout=300)
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)

    metrics = policed_operator.metrics_url()
    start_client(cluster, scraper_namespace, "scraper")
    assert reach(cluster, scraper_namespace, metrics, "scraper") == "reached"
    # A pod in a namespace the policy does not name is stopped at the operator's door.
    start_client(cluster, app.namespace, "outsider")
    result = reach(cluster, app.namespace, metrics, "outsider")
    assert blocked(result), result
