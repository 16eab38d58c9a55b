"""The one status writer (actions.common.write/enter): typed status models in, kopf's status
patch out. Only the fields set are written, `clear` removes a field with a null, and a phase
change brings its conditions. The Restore's step table names every step of the decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from timesheet_backup.actions import common
from timesheet_backup.actions import restore_steps as restores
from timesheet_backup.api import models
from timesheet_backup.decisions import restores as decide

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STAMP = "2026-11-26T12:00:00Z"


def test_write_stages_the_fields_set_in_camel_case() -> None:
    patch: dict[str, Any] = {"status": {"phase": "Running"}}
    common.write(patch, models.RestoreStatus(
        job_name="r-restore", quiesced=[models.QuiescedDeployment(name="web", replicas=2)],
        resolved={"database": None}))
    assert patch == {"status": {"phase": "Running", "jobName": "r-restore",
                                "quiesced": [{"name": "web", "replicas": 2}],
                                "resolved": {"database": None}}}


@pytest.mark.parametrize(("status", "clear", "expected"), [
    (models.BackupScheduleStatus(message=None, active=None), ("message", "active"),
     {"message": None, "active": None}),
    # a field that is set is written as it is, whatever `clear` says
    (models.BackupScheduleStatus(message="skipped a run"), ("message",),
     {"message": "skipped a run"}),
    (models.RestoreStatus(), (), {}),
])
def test_clear_removes_a_field_left_none(status: models.ObservedStatus, clear: tuple[str, ...],
                                         expected: dict[str, Any]) -> None:
    patch: dict[str, Any] = {}
    common.write(patch, status, clear=clear)
    assert patch == {"status": expected}


def test_clear_refuses_a_field_the_model_lacks() -> None:
    with pytest.raises(ValueError, match="currentStep, nope"):
        common.write({}, models.RestoreStatus(),
                     clear=("nope", "currentStep"))


def test_enter_writes_the_transition_and_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "clock", lambda: NOW)
    body = {"metadata": {"generation": 2}, "status": {"phase": "Running", "currentStep": "verify"}}
    patch: dict[str, Any] = {}
    common.enter(body, patch, "Succeeded", "Completed", "restored from k",
                 models.RestoreStatus(steps=[models.RestoreStep(name="verify", phase="Succeeded")]),
                 clear=("current_step",))
    status = patch["status"]
    assert (status["phase"], status["message"], status["observedGeneration"]) == (
        "Succeeded", "restored from k", 2)
    assert status["completionTime"] == STAMP
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("Ready", "True"), ("Progressing", "False"), ("Failed", "False")]
    assert status["steps"] == [{"name": "verify", "phase": "Succeeded"}]
    assert status["currentStep"] is None


def test_every_step_has_its_handler() -> None:
    assert tuple(restores.STEPS) == decide.STEPS
