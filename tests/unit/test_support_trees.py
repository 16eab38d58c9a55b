"""The uploads tree builder, its snapshot, and the hostile archives (local files only)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import trees

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return trees.make_uploads_tree(tmp_path / "uploads", seed=1, large_size=256 * 1024)


def test_tree_has_the_advertised_edge_cases(tree: Path) -> None:
    snap = trees.snapshot_tree(tree)
    kinds = {entry["type"] for entry in snap.values()}
    assert kinds == {"file", "dir", "symlink"}
    assert snap["empty-file.txt"]["size"] == 0
    assert snap["large.bin"]["size"] == 256 * 1024
    assert snap["empty-dir"]["type"] == "dir"
    assert "name\nwith newline.txt" in snap
    assert "-rf" in snap
    assert any(len(Path(p).name.encode()) == 255 for p in snap)
    assert any(len(p.encode()) > 256 for p in snap)  # beyond ustar's name+prefix
    assert os.fsdecode(trees.NON_UTF8_NAME) in snap
    assert snap["links/dangling"]["target"] == "does-not-exist"
    assert snap["links/absolute-inside"]["target"].startswith("/")
    assert snap["hardlinks/second name.txt"]["hardlink"] == "hardlinks/original.txt"
    assert snap["shared-setgid"]["mode"] == "2775"
    assert snap["private/salary.csv"]["mode"] == "0600"
    assert snap["readonly-dir"]["mode"] == "0555"
    # fixed times in the past, directories included (set after their contents)
    assert all(e["mtime"] < 1_800_000_000 for e in snap.values() if "mtime" in e)
    assert snap["receipts"]["mtime"] < 1_800_000_000


def test_tree_is_deterministic(tmp_path: Path) -> None:
    a = trees.snapshot_tree(trees.make_uploads_tree(tmp_path / "a", seed=5, large_size=1000))
    b = trees.snapshot_tree(trees.make_uploads_tree(tmp_path / "b", seed=5, large_size=1000))
    c = trees.snapshot_tree(trees.make_uploads_tree(tmp_path / "c", seed=6, large_size=1000))
    # the absolute symlink names its own tree, so it differs by construction
    assert trees.diff_trees(a, b) == [
        f"~ 'links/absolute-inside' target: '{tmp_path}/a/binary.bin' != '{tmp_path}/b/binary.bin'"
    ]
    assert len(trees.diff_trees(a, c)) > 5


def test_options_leave_out_awkward_entries(tmp_path: Path) -> None:
    snap = trees.snapshot_tree(
        trees.make_uploads_tree(
            tmp_path / "t",
            symlinks=False,
            hardlinks=False,
            non_utf8=False,
            special_files=True,
            large_size=10,
        )
    )
    assert "links" not in snap and "hardlinks" not in snap
    assert os.fsdecode(trees.NON_UTF8_NAME) not in snap
    assert snap["a-fifo"]["type"] == "fifo"


def test_snapshot_exclude_and_mtime_ns(tree: Path) -> None:
    snap = trees.snapshot_tree(tree, exclude=("receipts", "tmp/"), mtime_ns=True)
    assert not any(p == "receipts" or p.startswith(("receipts/", "tmp/")) for p in snap)
    assert snap["binary.bin"]["mtime"] > 10**18  # nanoseconds


def test_tar_round_trip_with_gnu_tar(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(f"tar -C '{tree}' -cf - . | tar -C '{out}' -xpf -", shell=True, check=True)
    trees.assert_same_tree(trees.snapshot_tree(tree), trees.snapshot_tree(out))


def test_assert_same_tree_reports_differences(tree: Path, tmp_path: Path) -> None:
    before = trees.snapshot_tree(tree)
    (tree / "binary.bin").chmod(0o600)
    os.utime(tree / "empty-file.txt", (0, 0))
    with pytest.raises(AssertionError) as info:
        trees.assert_same_tree(before, trees.snapshot_tree(tree))
    assert "'binary.bin' mode: '0644' != '0600'" in str(info.value)
    assert "'empty-file.txt' mtime" in str(info.value)
    trees.assert_same_tree(before, trees.snapshot_tree(tree), ignore_fields=("mode", "mtime"))


# ------------------------------------------------------------------------- hostile tars


@pytest.mark.parametrize("compression", trees.COMPRESSIONS)
@pytest.mark.parametrize("kind", trees.HOSTILE_KINDS)
def test_hostile_archives_hold_what_they_claim(
    tmp_path: Path, kind: str, compression: str | None
) -> None:
    archive = trees.make_hostile_tar(
        tmp_path / "evil.tar", kind, compression=compression, outside=tmp_path / "outside"
    )
    members = trees.read_members(archive.path)
    assert members[0][0] == "harmless/first.txt" and members[-1][0] == "harmless/last.txt"
    bad = members[1:-1]
    assert any(archive.token in name or name in ("escape", "up", "victim") for name, *_ in bad)
    magic = archive.path.read_bytes()[:4]
    assert (magic[:2] == b"\x1f\x8b") == (compression == "gzip")
    assert (magic == b"\x28\xb5\x2f\xfd") == (compression == "zstd")


ESCAPING = (
    "absolute",
    "dotdot",
    "dotdot_nested",
    "symlink_escape",
    "symlink_escape_relative",
    "hardlink_outside",
)


@pytest.mark.parametrize("kind", ESCAPING)
def test_naive_extraction_escapes_and_is_detected(tmp_path: Path, kind: str) -> None:
    """Proof the archives are really hostile: trusting extraction writes outside."""
    archive = trees.make_hostile_tar(tmp_path / "evil.tar", kind, outside=tmp_path / "outside")
    dest = tmp_path / "restore" / "target"
    dest.mkdir(parents=True)
    assert archive.escapes(dest) == []
    with tarfile.open(archive.path) as tar:
        for member in tar:  # one by one, as a streaming extractor would
            with contextlib.suppress(OSError):  # e.g. a link target that does not resolve
                tar.extract(member, dest, filter="fully_trusted")
    assert archive.escapes(dest), "extraction with no checks should have escaped"


@pytest.mark.parametrize("kind", trees.HOSTILE_KINDS)
def test_safe_extraction_is_refused_and_nothing_escapes(tmp_path: Path, kind: str) -> None:
    """Python's "data" filter: refuses all kinds but "absolute", which it re-roots in dest
    (stripping the leading slash, as GNU tar does); either way nothing lands outside."""
    archive = trees.make_hostile_tar(tmp_path / "evil.tar", kind, outside=tmp_path / "outside")
    dest = tmp_path / "restore" / "target"
    dest.mkdir(parents=True)
    with tarfile.open(archive.path) as tar:
        if kind == "absolute":
            tar.extractall(dest, filter="data")
            assert list(dest.rglob(f"*{archive.token}*"))
        else:
            with pytest.raises(tarfile.FilterError):
                tar.extractall(dest, filter="data")
    assert archive.escapes(dest) == []
    assert not any(
        stat.S_ISCHR(p.lstat().st_mode) or stat.S_ISBLK(p.lstat().st_mode) for p in dest.rglob("*")
    )


def test_unknown_kind_and_compression_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown hostile kind"):
        trees.make_hostile_tar(tmp_path / "x.tar", "nope")
    with pytest.raises(ValueError, match="compression"):
        trees.make_hostile_tar(tmp_path / "x.tar", "dotdot", compression="bz2")
