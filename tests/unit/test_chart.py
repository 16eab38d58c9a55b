"""The chart's pure parts: values.schema.json covers every value in values.yaml, the CRDs carry
`helm.sh/resource-policy: keep`, and `timesheet-backup crds apply` (with a fake API).

Rendering with the helm binary (lint, template, schema refusals) is in tests/e2e/test_chart.py:
helm is one of the pinned tools the e2e tier builds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from timesheet_backup import cli, crds_cli
from timesheet_backup.api import crds

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "timesheet-backup-operator"


def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def value_paths(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, Mapping):
            yield from value_paths(value, path)


def schema_at(root: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The subschema for a dotted values path; None when the schema does not describe it.

    A path below an object that accepts anything (e.g. `resources`, `affinity`: Kubernetes
    objects passed through) counts as described."""
    node: dict[str, Any] = root
    for key in path.split("."):
        properties = node.get("properties") or {}
        if key in properties:
            node = properties[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("additionalProperties", True) is True and node.get("type") == "object":
            return {}
        else:
            return None
    return node


def test_schema_describes_every_value() -> None:
    missing = [p for p in value_paths(values()) if schema_at(schema(), p) is None]
    assert not missing, f"values.schema.json does not describe: {missing}"


def test_schema_top_level_is_closed() -> None:
    """A typo at the top (`schedule:` for `schedules:`) must fail `helm install`, not be
    silently ignored."""
    root = schema()
    assert root["additionalProperties"] is False
    assert set(values()) <= set(root["properties"])


def test_every_schema_property_has_a_description_or_is_a_pass_through() -> None:
    undocumented = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            here = f"{path}.{key}" if path else key
            if not sub.get("description"):
                undocumented.append(here)
            walk(sub, here)

    walk(schema(), "")
    assert not undocumented, f"schema properties without a description: {undocumented}"


def test_lead_blocks_have_the_agreed_shape() -> None:
    """metrics/logging: the shape the metrics and alerting templates read."""
    props = schema()["properties"]
    metrics = props["metrics"]["properties"]
    assert metrics["enabled"]["type"] == "boolean"
    assert metrics["port"]["default"] == 8080
    for key in ("serviceMonitor", "prometheusRule"):
        enabled = metrics[key]["properties"]["enabled"]
        assert enabled["default"] == "auto"
        assert {"type": "boolean"} in enabled["oneOf"]
        assert {"enum": ["auto"]} in enabled["oneOf"]
    assert metrics["prometheusRule"]["properties"]["missingFactor"]["default"] == 1.5
    logging = props["logging"]["properties"]
    assert logging["format"]["enum"] == ["text", "json"]
    assert logging["level"]["enum"] == ["DEBUG", "INFO", "WARNING", "ERROR"]


def test_default_schedules_are_the_guides() -> None:
    schedules = values()["schedules"]
    assert schedules["database-daily"]["schedule"] == "0 2 * * *"
    assert schedules["database-daily"]["template"]["spec"]["components"] == ["database"]
    assert schedules["uploads-weekly"]["schedule"] == "0 3 * * 0"
    assert schedules["uploads-weekly"]["template"]["spec"]["components"] == ["uploads"]
    assert {s["retention"]["maxAge"] for s in schedules.values()} == {"30d"}


@pytest.mark.parametrize("directory", ["crds", "charts/timesheet-backup-operator/crds"])
def test_crds_are_kept_on_uninstall(directory: str) -> None:
    for path in sorted((ROOT / directory).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", path


def test_crds_print_is_the_committed_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds", "print"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    committed = [yaml.safe_load((ROOT / "crds" / crds.file_name(d)).read_text())
                 for d in crds.DEFINITIONS]
    assert printed == committed


class FakeApi:
    """The API server's side of server-side apply, reduced to what apply_all observes."""

    def __init__(self, established_after: int) -> None:
        self.applied: list[str] = []
        self.gets = 0
        self.established_after = established_after

    def apply(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        self.applied.append(body["metadata"]["name"])
        return body

    def get(self, name: str) -> Mapping[str, Any] | None:
        self.gets += 1
        status = "True" if self.gets > self.established_after else "False"
        return {"metadata": {"name": name},
                "status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                          {"type": "Established", "status": status}]}}


def test_apply_all_applies_each_crd_and_waits_until_established() -> None:
    api = FakeApi(established_after=4)
    slept: list[float] = []
    names = crds_cli.apply_all(crds_cli.manifests(), api.apply, api.get, timeout=60,
                               sleep=slept.append, clock=lambda: 0.0)
    expected = [f"{d.plural}.backup.northstar.io" for d in crds.DEFINITIONS]
    assert names == expected == api.applied
    assert slept  # it polled rather than trusting the first answer


def test_apply_all_names_what_is_not_established_in_time() -> None:
    api = FakeApi(established_after=10**9)
    ticks = iter(range(1000))
    with pytest.raises(TimeoutError, match=r"backups\.backup\.northstar\.io"):
        crds_cli.apply_all(crds_cli.manifests(), api.apply, api.get, timeout=5,
                           sleep=lambda _s: None, clock=lambda: float(next(ticks)))


@pytest.mark.parametrize(("crd", "expected"), [
    (None, False),
    ({}, False),
    ({"status": {"conditions": [{"type": "Established", "status": "False"}]}}, False),
    ({"status": {"conditions": [{"type": "Established", "status": "True"}]}}, True),
])
def test_established(crd: dict[str, Any] | None, expected: bool) -> None:
    assert crds_cli.established(crd) is expected


def test_schedule_entries_are_the_backupschedule_spec_plus_chart_keys() -> None:
    """A schedule entry is rendered as the BackupSchedule's spec: the schema must know every
    spec field (and no other), so a typo fails `helm install` before the API server sees it."""
    definition = next(d for d in crds.DEFINITIONS if d.kind == "BackupSchedule")
    spec = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]
    entry = schema()["properties"]["schedules"]["additionalProperties"]
    assert entry["additionalProperties"] is False
    assert set(entry["properties"]) == set(spec) | {"disabled", "namespace", "labels"}
    for key, sub in spec.items():
        assert entry["properties"][key].get("type") == sub.get("type"), key
        assert entry["properties"][key].get("enum") == sub.get("enum"), key
