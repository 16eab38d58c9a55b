"""Rules for the whole suite, every tier (tests/unit/test_suite_rules.py shows them at work).

- A test's tier marker comes from its directory: everything under ``tests/<tier>/`` is marked
  ``<tier>`` (unit, integration, e2e, docs) before ``-m`` selects. ``make test-<tier>`` runs
  ``pytest -m <tier> tests/<tier>``, so a file that forgot its ``pytestmark`` would otherwise
  be deselected without a word. A test outside the four directories, or one that carries
  another tier's marker, stops the run at collection.
- Under ``CI=true`` a skipped test fails the run. CI is the machine where every tier's
  environment exists (root, Docker, the built tools), so a skip there is a test that did not
  run, not one that does not apply; locally a skip stays a skip.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e", "docs")
HERE = Path(__file__).resolve().parent


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the directory under tests/ it lives in, if that is a tier."""
    try:
        parts = path.resolve().relative_to(HERE).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: `-m` deselects in the mark plugin's implementation of this same hook, which
    # must see the markers added here.
    problems = []
    for item in items:
        tier = tier_of(item.path)
        if tier is None:
            problems.append(f"{item.nodeid}: not under tests/{{{','.join(TIERS)}}}/")
            continue
        others = sorted({m.name for m in item.iter_markers() if m.name in TIERS} - {tier})
        if others:
            problems.append(f"{item.nodeid}: marked {', '.join(others)} but in tests/{tier}/")
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
    if problems:
        raise pytest.UsageError(
            "a test's tier is the directory it lives in:\n  " + "\n  ".join(problems))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: <reason>").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {_skip_reason(report.longrepr)}\n"
        "CI has every tier's environment, so a skip here hides a test that did not run: "
        "give CI what the test needs, or make the test run without it.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # An xfail is reported as skipped too (with `wasxfail`); the suite has none.
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A module that skips itself while being imported (`pytest.skip(allow_module_level=True)`,
    # `pytest.importorskip`) is a skipped collection, not a skipped test.
    report = yield
    if report.skipped and in_ci():
        _fail_skip(report)
    return report
