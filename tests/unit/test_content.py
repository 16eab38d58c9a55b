"""The row counts a backup recorded, read back and compared with a restored database's."""

from __future__ import annotations

import json

import pytest

from timesheet_backup.decisions import content
from timesheet_backup.decisions.restores import content_notes, ending, job_step

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


UPLOADS_NOTE = "uploads: 7 files, 4.0 KiB as the manifest records, archive sha256 checked"


def test_the_agent_summary_note_is_read() -> None:
    note = "compared 4 tables' row counts with the backup's: all equal"
    assert content_notes({"database": {"rowCounts": note}}) == note
    assert content_notes({"database": {"rowCounts": None}}) is None
    assert content_notes({}) is None


def test_the_uploads_comparison_joins_the_row_counts() -> None:
    note = "compared 4 tables' row counts with the backup's: all equal"
    assert content_notes({"uploads": {"compared": UPLOADS_NOTE}}) == UPLOADS_NOTE
    assert content_notes({"database": {"rowCounts": note},
                          "uploads": {"compared": UPLOADS_NOTE}}) == f"{note}; {UPLOADS_NOTE}"
    # A selective uploads restore compares nothing (the agent writes no "compared").
    assert content_notes({"uploads": {"fileCount": 3}}) is None


def test_the_roles_come_first() -> None:
    roles = "roles: 2 role(s) created (timesheet, reporting); 0 existing altered"
    note = "compared 4 tables' row counts with the backup's: all equal"
    assert content_notes({"database": {"roles": roles, "rowCounts": note}}) == \
        f"{roles}; {note}"


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


def test_an_uploads_only_comparison_reaches_the_ending() -> None:
    from datetime import UTC, datetime

    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    pod = _succeeded_pod(json.dumps({"ok": True, "uploads": {"compared": UPLOADS_NOTE}}))
    step = job_step("restore", "r-restore", "r-restore", job, [pod], datetime.now(UTC))
    assert step.message == UPLOADS_NOTE
    status = {"resolved": {"manifestKey": "k/manifest.json"},
              "steps": [{"name": "restore", "phase": "Succeeded", "message": step.message}]}
    assert ending(status).message == f"restored from k/manifest.json; {UPLOADS_NOTE}"


def test_without_a_comparison_the_ending_is_as_before() -> None:
    status = {"resolved": {"manifestKey": "k/manifest.json"},
              "steps": [{"name": "restore", "phase": "Succeeded", "message": "the agent finished"}]}
    assert ending(status).message == "restored from k/manifest.json"


# --- content alarms ----------------------------------------------------------------------


def facts(name: str = "new", size: int = 1000, tables: int | None = 2,
          rows: dict[str, int] | None = None) -> content.ContentFacts:
    return content.ContentFacts(name, size, tables,
                                rows if rows is not None else {"public.a": 100, "public.b": 10})


def test_nothing_to_say_when_nothing_shrank() -> None:
    assert content.suspicion(facts(), facts("old")) is None
    assert content.suspicion(facts(), None) is None


def test_a_dump_without_tables_is_suspicious_even_without_a_reference() -> None:
    assert content.suspicion(facts(tables=0, rows={}), None) == "the database dump has no tables"


def test_an_uncounted_dump_is_not_a_dump_without_tables() -> None:
    assert content.suspicion(facts(tables=None, rows=None), facts("old")) is None


def test_size_fell_by_more_than_the_threshold() -> None:
    assert content.suspicion(facts(size=499), facts("old"), 50) == (
        "its size fell by 50% (1000 to 499 bytes, against old)")


def test_size_at_the_threshold_is_not_suspicious() -> None:
    assert content.suspicion(facts(size=500), facts("old"), 50) is None
    assert content.suspicion(facts(size=899), facts("old"), 10) is not None


def test_a_table_whose_rows_fell() -> None:
    new = facts(rows={"public.a": 0, "public.b": 10})
    assert content.suspicion(new, facts("old")) == (
        "rows fell by more than 50% against old: public.a 100 to 0 rows")


def test_a_table_no_longer_in_the_dump() -> None:
    new = facts(tables=1, rows={"public.b": 10})
    assert content.suspicion(new, facts("old")) == (
        "rows fell by more than 50% against old: public.a 100 to 0 rows, not in the dump")


def test_growth_and_new_tables_and_empty_old_tables_are_fine() -> None:
    old = facts("old", rows={"public.a": 100, "public.e": 0})
    new = facts(size=5000, rows={"public.a": 1000, "public.e": 0, "public.n": 1})
    assert content.suspicion(new, old) is None


def test_threshold_100_leaves_only_the_no_tables_rule() -> None:
    assert content.suspicion(facts(size=0, rows={"public.a": 0}), facts("old"), 100) is None


def test_several_reasons_are_all_named_and_long_lists_cut() -> None:
    old = facts("old", size=1000, rows={f"public.t{i}": 10 for i in range(8)})
    new = facts(size=1, rows={})
    message = content.suspicion(new, old)
    assert message is not None
    assert message.startswith("its size fell by 99%")
    assert message.endswith("and 3 more")


def backup_obj(name: str, completion: str, phase: str = "Succeeded", size: int = 1000,
               rows: dict[str, int] | None = None, suspicious: bool = False) -> dict[str, object]:
    status: dict[str, object] = {"phase": phase, "completionTime": completion,
                                 "sizeBytes": size}
    if rows is not None:
        status |= {"rowCounts": rows, "tableCount": len(rows)}
    if suspicious:
        status["conditions"] = [{"type": "Suspicious", "status": "True"}]
    return {"metadata": {"name": name}, "status": status}


def test_the_reference_is_the_newest_earlier_good_backup() -> None:
    this = backup_obj("d-4", "2024-01-04T00:00:00Z")
    backups = [backup_obj("d-1", "2024-01-01T00:00:00Z"),
               backup_obj("d-2", "2024-01-02T00:00:00Z"),
               backup_obj("d-3", "2024-01-03T00:00:00Z", suspicious=True),
               backup_obj("d-3f", "2024-01-03T01:00:00Z", phase="Failed"),
               backup_obj("d-5", "2024-01-05T00:00:00Z"), this]
    previous = content.previous_good(backups, this)
    assert previous is not None and previous["metadata"]["name"] == "d-2"
    assert content.previous_good([this], this) is None


def test_content_alarm_against_the_schedules_previous_backup() -> None:
    old = backup_obj("d-1", "2024-01-01T00:00:00Z", rows={"public.t": 10})
    this = backup_obj("d-2", "2024-01-02T00:00:00Z", rows={"public.t": 0})
    alarm = content.content_alarm(this, [old, this], 50)
    assert alarm == content.Alarm("True", "ContentShrank",
                                  "rows fell by more than 50% against d-1: public.t 10 to 0 rows")
    fine = content.content_alarm(old, [old], 50)
    assert fine == content.Alarm("False", "ContentAsExpected",
                                 "no shrink beyond 50% (no previous good Backup to compare)")
    assert content.content_alarm({"metadata": {"name": "x"}, "status": {}}, [], 50) is None


def test_a_suspicious_backup_keeps_alarming_until_one_is_normal() -> None:
    """The emptied table's Backup is Suspicious; the next one is compared with the last good
    one before it, so it alarms too while the table stays empty."""
    good = backup_obj("d-1", "2024-01-01T00:00:00Z", rows={"public.t": 10})
    bad = backup_obj("d-2", "2024-01-02T00:00:00Z", rows={"public.t": 0}, suspicious=True)
    this = backup_obj("d-3", "2024-01-03T00:00:00Z", rows={"public.t": 0})
    alarm = content.content_alarm(this, [good, bad, this], 50)
    assert alarm is not None and alarm.status == "True" and "against d-1" in alarm.message
