"""The operator's log formats: JSON lines for pipelines, refused values named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# In a child process: logging configuration is global and kopf's handlers would leak into
# other tests.
SCRIPT = """
import logging
from timesheet_backup.operator_cli import configure_logging
configure_logging(False)
logging.getLogger("timesheet_backup.test").info("backup %s done", "nightly")
logging.getLogger("timesheet_backup.test").debug("hidden at INFO")
"""


def run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_json_format_prints_one_object_per_line() -> None:
    result = run(TSB_LOG_FORMAT="json", TSB_LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    assert [(r["message"], r["severity"]) for r in lines] == [("backup nightly done", "info")]
    assert "timestamp" in lines[0]


def test_text_format_is_for_people() -> None:
    result = run(TSB_LOG_FORMAT="text", TSB_LOG_LEVEL="DEBUG")
    out = result.stdout + result.stderr
    assert "backup nightly done" in out and "hidden at INFO" in out
    assert not out.lstrip().startswith("{")


@pytest.mark.parametrize("env", [{"TSB_LOG_FORMAT": "xml"}, {"TSB_LOG_LEVEL": "LOUD"}])
def test_unknown_values_are_refused_by_name(env: dict[str, str]) -> None:
    result = run(**env)
    assert result.returncode != 0
    assert "TSB_LOG_FORMAT must be one of text, json" in result.stderr
