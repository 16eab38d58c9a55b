"""Tar streams of the uploads directory: writing, safe extraction, replace and merge."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.support.trees import (
    HOSTILE_KINDS,
    assert_same_tree,
    make_hostile_tar,
    make_uploads_tree,
    snapshot_tree,
)
from timesheet_backup.agent import streams, tarstream
from timesheet_backup.errors import ArchiveError, FilesystemError, Interrupted

pytestmark = pytest.mark.unit


def tar_bytes(root: Path, exclude: tuple[str, ...] = ()) -> tuple[bytes, tarstream.TarStats]:
    out = io.BytesIO()
    stats = tarstream.write_tar(root, out, exclude)
    return out.getvalue(), stats


def extract(
    raw: bytes, target: Path, token: str = "t1", **kwargs: object
) -> tarstream.ExtractResult:
    staging = tarstream.make_staging(target, token)
    try:
        result = tarstream.SafeExtractor(staging, **kwargs).extract(io.BytesIO(raw))  # type: ignore[arg-type]
    except BaseException:
        tarstream.discard(staging)
        raise
    tarstream.replace_with(target, staging, token)
    tarstream.apply_root_attrs(target, result)
    return result


# --- pure rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "patterns", "excluded"),
    [
        ("a/b/c.tmp", ["*.tmp"], True),
        ("c.tmp", ["*.tmp"], True),
        ("a/cache", ["cache"], True),
        ("a/cache2", ["cache"], False),
        ("tmp/x", ["tmp/*"], True),
        ("a/tmp/x", ["tmp/*"], False),
        ("a/tmp/x", ["*/tmp/*"], True),
        ("tmp", ["/tmp"], True),
        ("a/tmp", ["/tmp"], False),
        (".cache", ["./.cache"], True),
        ("x", [""], False),
        ("dir", ["dir/"], True),
    ],
)
def test_is_excluded(path: str, patterns: list[str], excluded: bool) -> None:
    assert tarstream.is_excluded(path, patterns) is excluded


@pytest.mark.parametrize(
    ("name", "strip", "parts"),
    [
        ("a/b", 0, ("a", "b")),
        ("./a//b/", 0, ("a", "b")),
        (".", 0, ()),
        ("uploads/a/b", 1, ("a", "b")),
        ("uploads/", 1, ()),
    ],
)
def test_member_parts(name: str, strip: int, parts: tuple[str, ...]) -> None:
    assert tarstream.member_parts(name, strip) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "a\x00b"])
def test_member_parts_refuses(name: str) -> None:
    with pytest.raises(ArchiveError):
        tarstream.member_parts(name)


def test_link_targets() -> None:
    assert tarstream.link_target_parts(("a", "l"), "../b") == ("b",)
    assert tarstream.link_target_parts(("a", "l"), "./x/../y") == ("a", "y")
    for bad in ("/etc", "../..", "../../x", ""):
        with pytest.raises(ArchiveError):
            tarstream.link_target_parts(("a", "l"), bad)


def test_absolute_links_only_into_allowed_roots() -> None:
    roots = ["/data/uploads"]
    assert tarstream.absolute_link_allowed("/data/uploads/x", roots)
    assert tarstream.absolute_link_allowed("/data/uploads", roots)
    assert not tarstream.absolute_link_allowed("/data/uploads2/x", roots)
    assert not tarstream.absolute_link_allowed("/data/uploads/../etc", roots)
    assert not tarstream.absolute_link_allowed("relative", roots)
    assert not tarstream.absolute_link_allowed("/etc/passwd", [""])


def test_pax_mtime_is_exact() -> None:
    info = tarfile.TarInfo("x")
    info.pax_headers = {"mtime": "1705312800.123456789"}
    assert tarstream.parse_pax_mtime_ns(info) == 1705312800_123456789
    assert tarstream.format_pax_mtime(1705312800_123456789) == "1705312800.123456789"
    assert tarstream.format_pax_mtime(1705312800_000000000) == "1705312800"
    plain = tarfile.TarInfo("y")
    plain.mtime = 12
    assert tarstream.parse_pax_mtime_ns(plain) == 12_000_000_000


# --- round trips -----------------------------------------------------------------------


def test_round_trip_is_identical(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src")
    raw, stats = tar_bytes(source)
    target = tmp_path / "dst"
    result = extract(raw, target, absolute_roots=[str(source.resolve())])
    before = snapshot_tree(source, mtime_ns=True, owners=os.geteuid() == 0)
    after = snapshot_tree(target, mtime_ns=True, owners=os.geteuid() == 0)
    assert_same_tree(before, after)
    assert result.stats.file_count == stats.file_count > 30
    assert stats.hardlinks == 1 and stats.symlinks == 4
    assert os.stat(target).st_mtime_ns == os.stat(source).st_mtime_ns


def test_gnu_tar_extracts_the_same_tree(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src")
    raw, _ = tar_bytes(source)
    target = tmp_path / "by-hand"
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=raw, check=True, capture_output=True)
    assert_same_tree(snapshot_tree(source, mtime_ns=True), snapshot_tree(target, mtime_ns=True))


def test_gnu_tar_archives_restore(tmp_path: Path) -> None:
    """`tar -czf uploads.tar.gz uploads/` as in the guide, with the top directory stripped."""
    source = make_uploads_tree(tmp_path / "uploads", symlinks=False, non_utf8=False)
    archive = subprocess.run(
        ["tar", "-cz", "-C", str(tmp_path), "uploads/"], check=True, capture_output=True
    ).stdout
    plain = streams.decompressor("gzip", io.BytesIO(archive)).read()
    target = tmp_path / "restored"
    extract(plain, target, strip_components=1)
    assert_same_tree(snapshot_tree(source), snapshot_tree(target))


def test_excludes_and_internal_directories(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src", symlinks=False)
    (source / ".tsb-restore-abc").mkdir()
    (source / ".tsb-restore-abc" / "junk").write_text("x")
    raw, _ = tar_bytes(source, ("*.tmp", ".cache", "private/*"))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = {m.name for m in tar}
    assert "tmp/upload-partial.tmp" not in names
    assert not any(n.startswith(".cache") for n in names)
    assert "private" in names and "private/salary.csv" not in names
    assert not any(n.startswith(".tsb-") for n in names)
    assert "." in names


def test_fifo_and_sockets_are_skipped(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src", special_files=True)
    _, stats = tar_bytes(source)
    assert stats.skipped == ["a-fifo"]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FilesystemError, match="does not exist"):
        tar_bytes(tmp_path / "nope")


def test_file_shrinking_while_read_keeps_the_archive_valid(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big.bin"
    big.write_bytes(b"x" * 100_000)

    class Shrinking(io.BytesIO):
        def write(self, data: Any) -> int:
            if big.exists() and big.stat().st_size > 10:
                big.write_bytes(b"y" * 10)  # truncate while tar is reading it
            return super().write(data)

    out = Shrinking()
    stats = tarstream.write_tar(source, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [".", "big.bin"]
    assert stats.changed in ([], ["big.bin"])


def test_a_large_file_that_shrinks_is_padded_and_reported(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big.bin"
    size = 3 * tarstream.CHUNK + 5  # read in chunks, after its header went out
    big.write_bytes(b"x" * size)

    class Shrinking(io.BytesIO):
        def write(self, data: Any) -> int:
            if b"big.bin" in bytes(data) and big.stat().st_size > 10:
                big.write_bytes(b"y" * 10)  # truncated once its header is written
            return super().write(data)

    out = Shrinking()
    stats = tarstream.write_tar(source, out)
    assert stats.changed == ["big.bin"] and stats.files == 1
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        member = tar.getmember("big.bin")
        content = tar.extractfile(member).read()  # type: ignore[union-attr]
    # The size first seen, the bytes read, zeros for the rest: the archive stays valid.
    assert member.size == size and content == b"y" * 10 + bytes(size - 10)


def _odd_tree(root: Path) -> Path:
    """Every kind of entry the writer handles, and values its direct headers do not fit."""
    make_uploads_tree(root)  # symlinks, a hard link, non-UTF-8 names, other owners
    (root / "empty.txt").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(tarstream.CHUNK + 777))
    (root / ("long-" * 25 + ".pdf")).write_bytes(b"a name of 130 characters")
    (root / "reçu-été.pdf").write_bytes(b"non-ASCII name")
    (root / "private.txt").write_bytes(b"mode 0640")
    (root / "private.txt").chmod(0o640)
    (root / "shared").mkdir()
    (root / "shared").chmod(0o2775)
    (root / "shared" / "first.txt").write_bytes(b"hard linked")
    os.link(root / "shared" / "first.txt", root / "shared" / "second.txt")
    (root / "link-rel").symlink_to("shared/first.txt")
    (root / "link-abs").symlink_to(str(root / "empty.txt"))
    (root / ("d" * 120)).mkdir()
    os.utime(root / "empty.txt", ns=(0, 1_700_000_000_123_456_789))
    return root


def test_direct_headers_are_what_tarfile_writes_byte_for_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer builds most headers itself (fast_header: a fifth of tarfile's cost per
    file); the archive must be exactly the one tarfile alone writes for the same tree."""
    root = _odd_tree(tmp_path / "src")
    direct, direct_stats = tar_bytes(root)
    monkeypatch.setattr(tarstream, "fast_header", lambda *args, **kwargs: None)
    by_tarfile, tarfile_stats = tar_bytes(root)
    assert direct_stats == tarfile_stats
    assert len(direct) == len(by_tarfile)
    assert direct == by_tarfile
    # ... and it round-trips.
    target = tmp_path / "dst"
    extract(direct, target, absolute_roots=[str(root.resolve())])
    owners = os.geteuid() == 0
    assert_same_tree(snapshot_tree(root, mtime_ns=True, owners=owners),
                     snapshot_tree(target, mtime_ns=True, owners=owners))


# --- hostile archives ------------------------------------------------------------------


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path: Path, kind: str) -> None:
    archive = make_hostile_tar(tmp_path / "evil.tar", kind, outside=tmp_path / "outside")
    target = tmp_path / "target"
    target.mkdir()
    (target / "existing.txt").write_text("keep me")
    before = snapshot_tree(target)
    with pytest.raises(ArchiveError):
        extract(archive.path.read_bytes(), target)
    assert archive.escapes(target) == []
    assert snapshot_tree(target) == before


def test_symlink_chain_that_escapes_is_refused(tmp_path: Path) -> None:
    """`x -> y/..` checked while y does not exist, then `y -> .`: x ends up at the parent."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, target in (("x", "y/.."), ("y", ".")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    with pytest.raises(ArchiveError, match="resolves outside"):
        extract(buf.getvalue(), tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []


def test_absolute_symlink_outside_source_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    os.symlink("/etc/passwd", source / "pw")
    raw, _ = tar_bytes(source)
    with pytest.raises(ArchiveError, match="absolute target"):
        extract(raw, tmp_path / "dst", absolute_roots=[str(source)])


def test_broken_stream_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        extract(b"this is not a tar archive" * 40, tmp_path / "t")


# --- replace and merge -----------------------------------------------------------------


def test_replace_removes_entries_not_in_the_backup(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src", symlinks=False)
    raw, _ = tar_bytes(source)
    target = tmp_path / "dst"
    (target / "stale" / "deep").mkdir(parents=True)
    (target / "stale" / "deep" / "f").write_text("old")
    (target / "readonly.txt").write_text("old version")
    (target / "ro").mkdir()
    (target / "ro").chmod(0o500)
    extract(raw, target)
    assert_same_tree(snapshot_tree(source), snapshot_tree(target))
    assert not any(p.name.startswith(".tsb-") for p in target.iterdir())


def test_merge_keeps_other_entries_and_overwrites_same_names(tmp_path: Path) -> None:
    source = make_uploads_tree(tmp_path / "src", symlinks=False)
    raw, _ = tar_bytes(source)
    target = tmp_path / "dst"
    (target / "receipts").mkdir(parents=True)
    (target / "receipts" / "new-since-backup.pdf").write_text("keep")
    (target / "readonly.txt").write_text("changed since")
    (target / "binary.bin").mkdir()  # a directory where the backup has a file
    staging = tarstream.make_staging(target, "m1")
    tarstream.SafeExtractor(staging).extract(io.BytesIO(raw))
    tarstream.merge_into(target, staging)
    assert (target / "receipts" / "new-since-backup.pdf").read_text() == "keep"
    merged = snapshot_tree(target, exclude=["receipts/new-since-backup.pdf"])
    expected = snapshot_tree(source)
    assert_same_tree(expected, merged, ignore_fields=("mtime",))
    assert (target / "readonly.txt").read_bytes() == (source / "readonly.txt").read_bytes()


def test_swap_failure_puts_the_old_tree_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "dst"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tarstream.make_staging(target, "f1")
    (staging / "a.txt").write_text("new a")
    (staging / "b.txt").write_text("new b")
    real_rename = os.rename

    def flaky(src: object, dst: object) -> None:
        if str(src).endswith("b.txt") and ".tsb-restore-" in str(src):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr("os.rename", flaky)
    with pytest.raises(FilesystemError, match="could not swap"):
        tarstream.replace_with(target, staging, "f1")
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == [".tsb-restore-f1", "old.txt"]
    assert sorted(p.name for p in staging.iterdir()) == ["a.txt", "b.txt"]


def test_make_staging_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FilesystemError):
        tarstream.make_staging(tmp_path / "f", "x")


def test_rerun_after_a_killed_swap_yields_exactly_the_archive(tmp_path: Path) -> None:
    """A retried restore Job (any id) finds what the killed attempt left: its staging
    directory, the app's files set aside, part of the new tree; the result is still exactly
    the archive, with nothing left over."""
    source = make_uploads_tree(tmp_path / "src", symlinks=False)
    raw, _ = tar_bytes(source)
    target = tmp_path / "dst"
    (target / ".tsb-restore-r0").mkdir(parents=True)
    (target / ".tsb-restore-r0" / "partial.bin").write_text("half")
    (target / ".tsb-old-r0").mkdir()
    (target / ".tsb-old-r0" / "old.txt").write_text("old")
    (target / "readonly.txt").write_text("half swapped in")
    extract(raw, target, token="r1")
    assert_same_tree(snapshot_tree(source), snapshot_tree(target))
    assert not any(p.name.startswith(".tsb-") for p in target.iterdir())


# --- an interrupted replace never loses the app's files --------------------------------------

APP = {"a.txt": "app a", "dir/": None, "dir/b.txt": "app b", "shared.txt": "app shared"}
NEW = {"n.txt": "new n", "ndir/": None, "ndir/c.txt": "new c", "shared.txt": "new shared"}


def plant(root: Path, tree: dict[str, str | None]) -> None:
    for name, text in tree.items():
        if text is None:
            (root / name).mkdir(parents=True, exist_ok=True)
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)


def read(root: Path, names: list[str] | None = None) -> dict[str, str | None]:
    """The tree below `root` (only the top-level `names`, if given) as plant() writes it."""
    out: dict[str, str | None] = {}
    for top in sorted(os.listdir(root)) if names is None else names:
        path = root / top
        if path.is_dir():
            out[f"{top}/"] = None
            out.update({f"{top}/{k}": v for k, v in read(path).items()})
        else:
            out[top] = path.read_text()
    return out


def app_files_are_recoverable(target: Path) -> bool:
    """What is found after a kill: a complete tree (the app's, or the new one if an attempt
    got that far) from the live entries and at most one `.tsb-aside-*`/`.tsb-old-*`."""
    entries = os.listdir(target)
    live = [n for n in entries if not n.startswith(".tsb-")]
    kept = [n for n in entries if n.startswith((".tsb-old-", ".tsb-aside-"))]
    if read(target, live) == NEW:
        return True  # the new tree is in (a `.tsb-discard-*` may be left half deleted)
    if not kept:
        return read(target, live) == APP
    (name,) = kept
    if name.startswith(".tsb-old-"):
        return read(target / name) in (APP, NEW)
    return {**read(target / name), **read(target, live)} in (APP, NEW)


class Killed(BaseException):
    """SIGKILL: nothing runs after it, no `except`, no clean-up."""


def attempt(target: Path, token: str) -> None:
    staging = tarstream.make_staging(target, token)
    plant(staging, NEW)
    tarstream.replace_with(target, staging, token)


def kill_at(monkeypatch: pytest.MonkeyPatch, at: int | None) -> list[int]:
    """Kill the process at its `at`-th change to the filesystem; from then on nothing
    changes any more. Returns the count of changes (to find the last kill point)."""
    count = [0]
    for name in ("rename", "mkdir", "rmdir", "unlink", "chmod"):
        real = getattr(os, name)

        def change(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            count[0] += 1
            if at is not None and count[0] >= at:
                raise Killed
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, change)
    real_rmtree = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        # one file at a time, so a kill can land inside it
        for sub in sorted(Path(path).iterdir()):
            rmtree(sub) if sub.is_dir() and not sub.is_symlink() else os.unlink(sub)
        os.rmdir(path)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert real_rmtree is not None
    return count


def changes_of_one_attempt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    target = tmp_path / "count"
    plant(target, APP)
    with monkeypatch.context() as m:
        count = kill_at(m, None)
        attempt(target, "c")
    assert read(target) == NEW
    return count[0]


def test_killed_twice_at_every_point_the_app_files_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the first attempt at each of its changes, the second (another id) at each of
    its own: after every kill the app's files are complete in the target and its one kept
    directory (or the new tree is in), and a third attempt ends with exactly the new tree
    and nothing left over."""
    total = changes_of_one_attempt(tmp_path, monkeypatch)
    assert total > len(APP) + len(NEW)
    runs = 0
    for first in range(1, total + 1):
        for second in range(1, total + 2):
            target = tmp_path / f"t-{first}-{second}"
            plant(target, APP)
            for token, at in (("r1", first), ("r2", second)):
                with monkeypatch.context() as m:
                    kill_at(m, at)
                    with contextlib.suppress(Killed):
                        attempt(target, token)
                assert app_files_are_recoverable(target), (first, second, os.listdir(target))
            attempt(target, "r3")
            assert read(target) == NEW, (first, second)
            runs += 1
    assert runs == total * (total + 1)


def failing_rename(at: int, error: BaseException) -> Any:
    """os.rename, except that its `at`-th call raises `error`."""
    real, calls = os.rename, [0]

    def rename(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == at:
            raise error
        real(src, dst)

    return rename


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   Interrupted("stopped by SIGTERM before finishing")])
def test_a_failed_swap_puts_the_app_files_back_at_every_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """A rename that fails (or SIGTERM arriving there) at any point of the swap: the target
    is as before, the new tree back in the staging directory for the caller to discard."""
    for at in range(1, changes_of_one_attempt(tmp_path, monkeypatch) + 1):
        target = tmp_path / f"t-{at}"
        plant(target, APP)
        staging = tarstream.make_staging(target, "f")
        plant(staging, NEW)
        with monkeypatch.context() as m:
            m.setattr(os, "rename", failing_rename(at, error))
            try:
                tarstream.replace_with(target, staging, "f")
            except (FilesystemError, Interrupted):
                pass
            else:
                assert read(target) == NEW  # past the last rename: done
                continue
        assert read(target, [n for n in os.listdir(target) if n != staging.name]) == APP, at
        assert read(staging) == NEW, at


def test_two_leftovers_are_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "dst"
    plant(target / ".tsb-old-r1", APP)
    plant(target / ".tsb-aside-r2", {"x": "x"})
    plant(target, {"live.txt": "live"})
    before = read(target)
    staging = tarstream.make_staging(target, "r3")
    plant(staging, NEW)
    with pytest.raises(FilesystemError, match=r"\.tsb-aside-r2, \.tsb-old-r1, left by"):
        tarstream.replace_with(target, staging, "r3")
    assert read(target, [n for n in os.listdir(target) if n != staging.name]) == before


class _Held:
    """Memory held by what tarfile and tarstream allocated, sampled as the archive's bytes
    pass (every 64 KiB), keeping the largest sample. Counting only those two files keeps
    out what varies by machine and is not ours (pytest's log and warning capture, coverage's
    tracer); the sites of the largest sample make a failure say what grew."""

    EVERY = 64 * 1024
    OURS = (tracemalloc.Filter(True, "*/tarfile.py"), tracemalloc.Filter(True, "*/tarstream.py"))

    def __init__(self) -> None:
        self.largest = 0
        self.samples = 0
        self.sites: list[str] = []
        self._seen = 0

    def passed(self, size: int) -> None:
        before, self._seen = self._seen, self._seen + size
        if before // self.EVERY == self._seen // self.EVERY:
            return
        stats = tracemalloc.take_snapshot().filter_traces(self.OURS).statistics("lineno")
        self.samples += 1
        held = sum(s.size for s in stats)
        if held > self.largest:
            self.largest, self.sites = held, [str(s) for s in stats[:5]]


def _held_while(action: Any) -> _Held:
    held = _Held()
    tracemalloc.start()
    try:
        action(held)
    finally:
        tracemalloc.stop()
    assert held.samples, "the archive was too small to sample"
    return held


class _ProbedSink(io.RawIOBase):
    def __init__(self, held: _Held) -> None:
        self.held = held

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.held.passed(len(data))
        return len(data)


class _ProbedReader(io.RawIOBase):
    def __init__(self, stream: Any, held: _Held) -> None:
        self.stream, self.held = stream, held

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.stream.read(size)
        self.held.passed(len(data))
        return data


def _small_files(root: Path, count: int) -> Path:
    for i in range(count):
        sub = root / f"d{i // 100}"  # one listing is held at a time: keep them equal
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"receipt-{i:05d}.txt").write_bytes(b"x" * 100)
    return root


def test_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    # tarfile keeps every member (and every file's inode) it wrote or read: ~1 KiB a file,
    # 190 MiB for 200,000 receipts. Ten times the files must not hold measurably more.
    trees = {n: _small_files(tmp_path / f"tree{n}", n) for n in (400, 4000)}

    def write(n: int, held: _Held) -> None:
        stats = tarstream.write_tar(trees[n], _ProbedSink(held))
        assert (stats.files, stats.changed, stats.skipped) == (n, [], [])

    writing = {n: _held_while(lambda held, n=n: write(n, held)) for n in trees}
    assert writing[4000].largest - writing[400].largest < 256 * 1024, (
        "writing", {n: (h.largest, h.sites) for n, h in writing.items()})

    def extract(n: int, held: _Held) -> None:
        archive, target = tmp_path / f"{n}.tar", tmp_path / f"out{n}"
        target.mkdir()
        with open(archive, "rb") as stream:
            extracted = tarstream.SafeExtractor(target).extract(_ProbedReader(stream, held))
        assert extracted.stats.files == n

    for n in trees:
        with open(tmp_path / f"{n}.tar", "wb") as out:
            tarstream.write_tar(trees[n], out)
    reading = {n: _held_while(lambda held, n=n: extract(n, held)) for n in trees}
    assert reading[4000].largest - reading[400].largest < 256 * 1024, (
        "reading", {n: (h.largest, h.sites) for n, h in reading.items()})
