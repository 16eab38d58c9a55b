"""The suite's own rules (tests/conftest.py): tiers come from directories, and under CI=true
a skip fails the run. Each is shown by running pytest in a subprocess: on the real suite
(collection only) and on small suites next to a copy of the conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TIERS, tier_of

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CONFTEST = REPO / "tests" / "conftest.py"

# A plugin for the collecting subprocess: what was selected (with its tier markers) and what
# `-m` deselected.
DUMP_PLUGIN = """
import json, os
TIERS = {tiers!r}
deselected = []

def pytest_deselected(items):
    deselected.extend(item.nodeid for item in items)

def pytest_collection_finish(session):
    selected = {{item.nodeid: [m.name for m in item.iter_markers() if m.name in TIERS]
                for item in session.items}}
    with open(os.environ["TSB_TIER_DUMP"], "w") as f:
        json.dump({{"selected": selected, "deselected": deselected}}, f)
"""


def pytest_run(args: list[str], cwd: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=300,
        check=False)


def test_every_test_carries_exactly_the_tier_of_its_directory(tmp_path: Path) -> None:
    (tmp_path / "tier_dump.py").write_text(DUMP_PLUGIN.format(tiers=TIERS))
    dump = tmp_path / "dump.json"
    run = pytest_run(
        ["--collect-only", "-q", "-p", "tier_dump", "-m", " or ".join(TIERS), "tests"],
        cwd=REPO, env={"PYTHONPATH": os.pathsep.join(filter(None, [
            str(tmp_path), os.environ.get("PYTHONPATH")])), "TSB_TIER_DUMP": str(dump)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    collected = json.loads(dump.read_text())
    assert collected["deselected"] == []
    per_tier: dict[str, int] = dict.fromkeys(TIERS, 0)
    wrong = {}
    for nodeid, markers in collected["selected"].items():
        tier = tier_of(REPO / nodeid.split("::")[0])
        assert tier is not None, nodeid
        per_tier[tier] += 1
        if markers != [tier]:
            wrong[nodeid] = markers
    assert wrong == {}
    assert all(per_tier.values()), per_tier


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """A small suite beside a copy of tests/conftest.py."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers -ra\nmarkers =\n"
        + "".join(f"    {tier}: the {tier} tier\n" for tier in TIERS))
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "conftest.py").write_text(CONFTEST.read_text())
    return tmp_path


def write(path: Path, source: str) -> None:
    path.write_text("import pytest\n\n" + textwrap.dedent(source))


def run_suite(suite: Path, *paths: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    # Only pytest itself: the installed plugins (hypothesis, coverage, ...) take seconds to load.
    env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **({"CI": "true"} if ci else {})}
    return pytest_run(["--rootdir", str(suite), "-c", str(suite / "pytest.ini"), "-m", "unit",
                       *paths], cwd=suite, env=env)


def test_a_skip_is_a_skip_locally_and_a_failure_under_ci(suite: Path) -> None:
    unit = suite / "tests" / "unit"
    write(unit / "test_plain.py", """
        def test_without_a_marker_of_its_own():
            pass
    """)
    write(unit / "test_skips.py", """
        def test_skips_while_running():
            pytest.skip("no widget here")

        @pytest.mark.skipif(True, reason="not on this machine")
        def test_skipped_by_a_mark():
            pass
    """)
    local = run_suite(suite, "tests/unit")
    assert local.returncode == 0, local.stdout
    assert "1 passed, 2 skipped" in local.stdout

    ci = run_suite(suite, "tests/unit", ci=True)
    assert ci.returncode == 1, ci.stdout
    assert "1 passed" in ci.stdout and "skipped" not in ci.stdout.splitlines()[-1]
    assert "skipped under CI=true: no widget here" in ci.stdout
    assert "skipped under CI=true: not on this machine" in ci.stdout


def test_a_module_that_skips_itself_fails_collection_under_ci(suite: Path) -> None:
    write(suite / "tests" / "unit" / "test_module.py", """
        pytest.skip("no widget module", allow_module_level=True)

        def test_never_collected():
            pass
    """)
    assert run_suite(suite, "tests/unit").returncode == 5  # nothing ran, nothing failed
    ci = run_suite(suite, "tests/unit", ci=True)
    assert ci.returncode == 2, ci.stdout  # a collection error
    assert "skipped under CI=true: no widget module" in ci.stdout


def test_a_test_outside_a_tier_or_marked_with_another_tier_stops_the_run(suite: Path) -> None:
    write(suite / "tests" / "unit" / "test_wrong.py", """
        pytestmark = pytest.mark.e2e

        def test_claims_to_be_e2e():
            pass
    """)
    write(suite / "tests" / "test_loose.py", """
        def test_in_no_tier():
            pass
    """)
    run = run_suite(suite, "tests")
    assert run.returncode == 4, run.stdout + run.stderr  # a usage error
    assert "tests/unit/test_wrong.py::test_claims_to_be_e2e: marked e2e but in tests/unit/" \
        in run.stderr
    assert "tests/test_loose.py::test_in_no_tier: not under tests/{unit,integration,e2e,docs}/" \
        in run.stderr
