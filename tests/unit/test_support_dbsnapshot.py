"""The snapshot comparison helpers (no database needed)."""

from __future__ import annotations

import pytest

from tests.support import dbsnapshot as ds

pytestmark = pytest.mark.unit


def _snap(**overrides: object) -> dict[str, object]:
    snap: dict[str, object] = {
        "data": {"public.accounts": {"rows": 3, "md5": "aa"}},
        "sequences": {"public.accounts_id_seq": {"last_value": 103, "is_called": True}},
        "catalog": {"indexes": {"public.accounts_pkey": "CREATE UNIQUE INDEX ..."}},
        "owners": {"relation public.accounts": "timesheet"},
        "acl": {},
    }
    snap.update(overrides)
    return snap


def test_flatten_keeps_lists_and_empty_dicts_as_leaves() -> None:
    flat = ds.flatten({"a": {"b": [1, 2], "c": {}}, "d": 1})
    assert flat == {("a", "b"): [1, 2], ("a", "c"): {}, ("d",): 1}


def test_equal_snapshots_have_no_diff() -> None:
    assert ds.diff(_snap(), _snap()) == []
    ds.assert_same(_snap(), _snap())


def test_diff_names_changed_missing_and_extra_keys() -> None:
    b = _snap(
        data={"public.accounts": {"rows": 4, "md5": "bb"}, "public.new": {"rows": 0, "md5": "x"}},
        sequences={},
    )
    lines = ds.diff(_snap(), b)
    assert "~ data/public.accounts/rows: 3 != 4" in lines
    assert "~ data/public.accounts/md5: 'aa' != 'bb'" in lines
    assert any(line.startswith("+ data/public.new/rows") for line in lines)
    assert any(line.startswith("- sequences/public.accounts_id_seq") for line in lines)


def test_exclude_parts_and_prefixes() -> None:
    b = _snap(
        owners={"relation public.accounts": "postgres"},
        data={"public.accounts": {"rows": 9, "md5": "zz"}},
    )
    assert ds.diff(_snap(), b, exclude=("owners", "data/public.accounts")) == []
    # a prefix matches whole path segments only
    assert ds.diff(_snap(), b, exclude=("owners", "data/public.acc")) != []


def test_assert_same_lists_differences_and_truncates() -> None:
    a = _snap(data={f"t{i}": {"rows": i, "md5": "a"} for i in range(100)})
    b = _snap(data={f"t{i}": {"rows": i + 1, "md5": "a"} for i in range(100)})
    with pytest.raises(AssertionError) as info:
        ds.assert_same(a, b, max_lines=5)
    message = str(info.value)
    assert "differ in 100 place(s)" in message
    assert "... and 95 more" in message


def test_long_values_are_shortened_in_messages() -> None:
    a = _snap(catalog={"views": {"v": "x" * 1000}})
    b = _snap(catalog={"views": {"v": "y" * 1000}})
    (line,) = ds.diff(a, b)
    assert len(line) < 400
    assert "(1002 chars)" in line


@pytest.mark.parametrize(
    ("qualified", "parts"),
    [
        ("public.accounts", ("public", "accounts")),
        ('"My Schema"."odd.name"', ("My Schema", "odd.name")),
        ('public."has ""quotes"""', ("public", 'has "quotes"')),
    ],
)
def test_split_name_undoes_format_I(qualified: str, parts: tuple[str, str]) -> None:
    assert ds._split_name(qualified) == parts


def test_split_name_rejects_unqualified() -> None:
    with pytest.raises(ValueError, match="schema-qualified"):
        ds._split_name("accounts")


def test_schema_file_is_shipped_and_names_the_roles() -> None:
    text = ds.SCHEMA_SQL.read_text()
    for role in ds.SAMPLE_ROLES:
        assert role in text
    for table in ds.SAMPLE_TABLES:
        assert f"CREATE TABLE {table}" in text


def test_generator_is_deterministic() -> None:
    a, b = ds._Gen(7), ds._Gen(7)
    assert [a.text() for _ in range(50)] == [b.text() for _ in range(50)]
    assert [a.blob() for _ in range(20)] == [b.blob() for _ in range(20)]
