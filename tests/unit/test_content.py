"""The row counts a backup recorded, read back and compared with a restored database's."""

from __future__ import annotations

import json

import pytest

from timesheet_backup.decisions import content
from timesheet_backup.decisions.restores import ending, job_step, row_counts_note

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("schema", "table", "key"),
    [
        ("public", "timesheets", "public.timesheets"),
        ("app", "Mixed", 'app."Mixed"'),
        ("we.ird", 'a"b', '"we.ird"."a""b"'),
        ("s", "t$1", "s.t$1"),
        ("s", "1t", 's."1t"'),
        ("s", "", 's.""'),
    ],
)
def test_names_round_trip(schema: str, table: str, key: str) -> None:
    assert content.qualified_name(schema, table) == key
    assert content.split_qualified_name(key) == (schema, table)


@pytest.mark.parametrize("bad", ["timesheets", "a.b.c", '"open.t', "a..b", "", 'a."b"c'])
def test_split_refuses_what_is_not_schema_dot_table(bad: str) -> None:
    with pytest.raises(ValueError, match="not a schema-qualified"):
        content.split_qualified_name(bad)


COUNTS = {"public.users": 3, "public.timesheets": 40, "audit.timesheets": 7, "audit.log": 0}


def test_a_whole_restore_reproduces_every_count() -> None:
    assert content.restored_counts(COUNTS) == COUNTS


def test_a_table_selection_is_by_name_in_any_schema() -> None:
    assert content.restored_counts(COUNTS, tables=["timesheets"]) == {
        "public.timesheets": 40, "audit.timesheets": 7}


def test_a_schema_selection() -> None:
    assert content.restored_counts(COUNTS, schemas=["audit"]) == {
        "audit.timesheets": 7, "audit.log": 0}


def test_table_and_schema_must_both_match() -> None:
    assert content.restored_counts(COUNTS, tables=["timesheets"], schemas=["audit"]) == {
        "audit.timesheets": 7}


def test_schema_only_restores_no_rows() -> None:
    assert content.restored_counts(COUNTS, schema_only=True) == {}


def test_equal_counts_pass_and_say_what_was_compared() -> None:
    result = content.compare_counts({"public.users": 3, "audit.log": 0},
                                    {"public.users": 3, "audit.log": 0, "other.t": 9})
    assert result.ok
    assert result.summary() == "compared 2 tables' row counts with the backup's: all equal"
    one = content.compare_counts({"public.users": 3}, {"public.users": 3})
    assert one.summary() == "compared 1 table's row counts with the backup's: all equal"


def test_a_difference_names_table_expected_and_found() -> None:
    result = content.compare_counts({"public.users": 3, "audit.log": 5},
                                    {"public.users": 2, "audit.log": 5})
    assert not result.ok
    assert result.differences == (("public.users", 3, 2),)
    assert result.message() == ("row counts differ from the backup's (1 of 2 tables): "
                                "table public.users has 2 rows, the backup had 3")
    assert result.summary() == result.message()


def test_a_missing_table_is_a_difference() -> None:
    result = content.compare_counts({"public.users": 3}, {"public.users": None})
    assert result.message().endswith("table public.users is missing (the backup had 3 rows)")
    assert not content.compare_counts({"public.users": 0}, {}).ok


def test_many_differences_are_summarized() -> None:
    expected = {f"public.t{i}": i + 1 for i in range(8)}
    result = content.compare_counts(expected, {})
    assert "(8 of 8 tables)" in result.message() and result.message().endswith("and 3 more")


def test_an_empty_comparison_passes() -> None:
    assert content.compare_counts({}, {}).summary() == (
        "compared 0 tables' row counts with the backup's: all equal")


# --- what the Restore says ---------------------------------------------------------------


def test_the_agent_summary_note_is_read() -> None:
    note = "compared 4 tables' row counts with the backup's: all equal"
    assert row_counts_note({"database": {"rowCounts": note}}) == note
    assert row_counts_note({"database": {"rowCounts": None}}) is None
    assert row_counts_note({}) is None


def _succeeded_pod(summary: str) -> dict[str, object]:
    return {"metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{"state": {"terminated": {
                "exitCode": 0, "message": summary}}}]}}


def test_the_restore_step_and_the_ending_carry_the_comparison() -> None:
    from datetime import UTC, datetime

    note = "compared 4 tables' row counts with the backup's: all equal"
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pod = _succeeded_pod(json.dumps({"ok": True, "database": {"rowCounts": note}}))
    step = job_step("restore", "r-restore", "r-restore", job, [pod], datetime.now(UTC))
    assert step.action == "done" and step.message == note
    status = {"resolved": {"manifestKey": "k/manifest.json"},
              "steps": [{"name": "restore", "phase": "Succeeded", "message": note}]}
    assert ending(status).message == f"restored from k/manifest.json; {note}"


def test_without_a_comparison_the_ending_is_as_before() -> None:
    status = {"resolved": {"manifestKey": "k/manifest.json"},
              "steps": [{"name": "restore", "phase": "Succeeded", "message": "the agent finished"}]}
    assert ending(status).message == "restored from k/manifest.json"
