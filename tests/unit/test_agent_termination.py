"""The termination message the operator reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from timesheet_backup.agent import termination

pytestmark = pytest.mark.unit


def test_success_and_failure_shapes() -> None:
    assert json.loads(termination.success({"backupId": "x"})) == {"ok": True, "backupId": "x"}
    failure = json.loads(termination.failure("bucket missing", "StorageError"))
    assert failure == {"ok": False, "reason": "StorageError", "error": "bucket missing"}


def test_messages_fit_in_4096_bytes() -> None:
    long_error = termination.failure("é" * 10_000, "X")
    assert len(long_error.encode()) <= termination.MAX_BYTES
    assert json.loads(long_error)["ok"] is False
    big = termination.success({"backupId": "x", "artifacts": [{"k": "v" * 100}] * 100})
    assert len(big.encode()) <= termination.MAX_BYTES
    assert json.loads(big)["truncated"] is True


def test_write_only_where_a_pod_would_have_it(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    termination.write(str(path), "{}")
    assert path.read_text() == "{}"
    termination.write(str(tmp_path / "missing" / "log"), "{}")
    assert not (tmp_path / "missing").exists()
    termination.write("", "{}")  # disabled


def test_default_path_is_left_alone_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    monkeypatch.setattr("os.path.isfile", lambda p: False)
    monkeypatch.setattr("builtins.open", lambda *a, **k: written.append(a[0]))
    termination.write(termination.DEFAULT_PATH, "{}")
    assert written == []
