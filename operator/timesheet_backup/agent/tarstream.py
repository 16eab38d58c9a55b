"""Tar streams of the uploads directory: write one, extract one safely, swap it in.

Writing: PAX format (any file name, nanosecond mtimes), members in sorted order, the root as
`.`; regular files, directories, symlinks and hard links; sockets, FIFOs and devices are
skipped with a warning. A file that shrinks while it is read is padded with zeros and
reported, one that grows is cut at the size first seen (as GNU tar does).

Extracting never writes through a symlink and refuses absolute names, `..` components,
device nodes and FIFOs, hard links to anything but an earlier regular file, and symlinks
that resolve outside the target. Everything is extracted into a staging directory inside the
target (same filesystem, and it works when the target is a volume mount point that cannot
itself be renamed); only a complete, verified staging directory is swapped in.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import grp
import logging
import os
import pwd
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

from timesheet_backup.agent.streams import CHUNK, Sink
from timesheet_backup.errors import ArchiveError, FilesystemError

log = logging.getLogger(__name__)

STAGING_PREFIX: Final = ".tsb-restore-"
# A `replace` moves the app's entries into `.tsb-aside-<id>` one by one, renames it
# `.tsb-old-<id>` once it holds all of them, and `.tsb-discard-<id>` once the new tree is in:
# the name says what a killed attempt left (see replace_with).
ASIDE_PREFIX: Final = ".tsb-aside-"
OLD_PREFIX: Final = ".tsb-old-"
DISCARD_PREFIX: Final = ".tsb-discard-"
INTERNAL_PREFIXES: Final = (STAGING_PREFIX, ASIDE_PREFIX, OLD_PREFIX, DISCARD_PREFIX)
# Top-level leftovers of an interrupted restore are never backed up.
INTERNAL_EXCLUDES: Final = tuple(prefix + "*" for prefix in INTERNAL_PREFIXES)
# Kept on extraction: permission bits; for directories also setgid (group inheritance, as
# on an fsGroup volume) and sticky. setuid/setgid on files are dropped.
FILE_MODE_MASK: Final = 0o777
DIR_MODE_MASK: Final = 0o3777


@dataclass
class TarStats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    # Restoring selected paths only (SafeExtractor's `include`): members taken and left out.
    selected: int = 0
    unselected: int = 0
    # Entries the agent's identity may not read (files it cannot open, directories it cannot
    # list). The walk goes on without writing, so the failure names them all, not the first.
    unreadable: list[str] = field(default_factory=list)

    @property
    def file_count(self) -> int:
        """Regular files, hard links included (what `find -type f | wc -l` counts)."""
        return self.files + self.hardlinks


# --- pure path rules -------------------------------------------------------------------


def is_excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether `relative` (posix, no leading `./`) matches an exclude pattern.

    A pattern without `/` matches the entry's name at any depth (`*.tmp`, `cache`); a
    pattern with `/` matches the whole relative path from the root (`tmp/*`, `a/b.txt`).
    A leading `/` or `./` anchors at the root too. An excluded directory is skipped whole.
    `*` and `?` also match `/` (fnmatch rules).
    """
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        anchored = pattern.startswith(("/", "./"))
        clean = pattern.removeprefix("./").lstrip("/").rstrip("/")
        if not clean:
            continue
        if "/" in clean or anchored:
            if fnmatch.fnmatchcase(relative, clean):
                return True
        elif fnmatch.fnmatchcase(name, clean):
            return True
    return False


def is_selected(relative: str, patterns: Sequence[str]) -> bool:
    """Whether `relative` or one of its parent directories matches a pattern (the rules of
    is_excluded): a selected directory brings everything below it."""
    parts = relative.split("/")
    return any(is_excluded("/".join(parts[:end]), patterns)
               for end in range(1, len(parts) + 1))


def member_parts(name: str, strip_components: int = 0) -> tuple[str, ...]:
    """The safe path components of a tar member name, `()` for the root.

    Raises ArchiveError for absolute names, `..` components and NUL bytes."""
    if "\x00" in name:
        raise ArchiveError(f"refusing tar member with a NUL byte in its name: {name!r}")
    if name.startswith("/"):
        raise ArchiveError(f"refusing tar member with an absolute path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"refusing tar member with a '..' component: {name!r}")
    return tuple(parts[strip_components:]) if strip_components else tuple(parts)


def link_target_parts(member: tuple[str, ...], target: str) -> tuple[str, ...]:
    """Where a symlink at `member` pointing to `target` lands, relative to the root.

    Raises ArchiveError for absolute targets and targets that climb above the root."""
    if not target:
        raise ArchiveError(f"refusing symlink {'/'.join(member)!r} with an empty target")
    if target.startswith("/"):
        raise ArchiveError(f"refusing symlink {'/'.join(member)!r} -> {target!r}: absolute target")
    resolved = list(member[:-1])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise ArchiveError(
                    f"refusing symlink {'/'.join(member)!r} -> {target!r}: escapes the target"
                )
            resolved.pop()
        else:
            resolved.append(part)
    return tuple(resolved)


def absolute_link_allowed(target: str, roots: Sequence[str]) -> bool:
    """An absolute symlink target is kept only if it points inside one of `roots` (the
    directory as it was mounted at backup time, or the restore target)."""
    if not target.startswith("/") or ".." in target.split("/"):
        return False
    normalized = os.path.normpath(target)
    for root in roots:
        base = os.path.normpath(root) if root else ""
        if base and (normalized == base or normalized.startswith(base.rstrip("/") + "/")):
            return True
    return False


def parse_pax_mtime_ns(info: tarfile.TarInfo) -> int:
    """Exact nanosecond mtime from the PAX record when present (tarfile rounds to float)."""
    raw = info.pax_headers.get("mtime")
    if raw:
        seconds, _, fraction = raw.partition(".")
        try:
            whole = int(seconds)
            nanos = int((fraction + "000000000")[:9]) if fraction else 0
        except ValueError:
            pass
        else:
            return whole * 1_000_000_000 + (nanos if whole >= 0 else -nanos)
    return int(info.mtime * 1_000_000_000)


def format_pax_mtime(mtime_ns: int) -> str:
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    return f"{seconds}.{nanos:09d}" if nanos else str(seconds)


# --- writing ---------------------------------------------------------------------------


BLOCK: Final = 512
_REGTYPE, _DIRTYPE, _SYMTYPE = b"0", b"5", b"2"
# What fits the ustar header's fields (else tarfile writes PAX records for them).
_NAME_MAX, _OWNER_MAX = 100, 32
_ID_LIMIT, _SIZE_LIMIT = 8 ** 7, 8 ** 11


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _field(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width, b"\0")


def _pax_record(keyword: str, value: str) -> bytes:
    """One PAX record, "<length> <keyword>=<value>\\n", whose length counts its own digits
    (POSIX; the loop is tarfile's)."""
    base = len(keyword) + len(value) + 3
    length = previous = 0
    while True:
        length = base + len(str(previous))
        if length == previous:
            break
        previous = length
    return f"{length} {keyword}={value}\n".encode("ascii")


def _ustar(name: str, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
           linkname: str, uname: str, gname: str) -> bytes:
    """One ustar header block, byte for byte as tarfile writes it (PAX_FORMAT, for values
    that fit the fields): tests/unit/test_agent_tarstream.py compares the two."""
    head = b"".join((
        _field(name, 100), _octal(mode & 0o7777, 8), _octal(uid, 8), _octal(gid, 8),
        _octal(size, 12), _octal(mtime, 12), b"        ", kind, _field(linkname, 100),
        tarfile.POSIX_MAGIC, _field(uname, 32), _field(gname, 32), bytes(16 + 155 + 12)))
    # The checksum: the sum of the block's bytes with its own field as spaces (as it is).
    return head[:148] + b"%06o\0" % sum(head) + head[155:]


@functools.cache
def _pax_block(length: int) -> bytes:
    # The same for every entry whose records have this length: made once.
    return _ustar("././@PaxHeader", 0, 0, 0, length, 0, tarfile.XHDTYPE, "", "", "")


def _pax_header(records: bytes) -> bytes:
    """The extended header block and its records, padded to whole blocks."""
    return _pax_block(len(records)) + records + bytes(-len(records) % BLOCK)


@functools.cache
def _owner_name(kind: str, number: int) -> str:
    """A user's or group's name by id, looked up once per id (tarfile looks it up per file);
    "" when the id has no name here, as tarfile writes it."""
    try:
        return pwd.getpwuid(number).pw_name if kind == "user" else grp.getgrgid(number).gr_name
    except KeyError:
        return ""


def _fits(text: str, width: int) -> bool:
    return text.isascii() and len(text) <= width


class _Direct:
    """Writes entries with fast_header straight to the stream tarfile writes to, keeping
    tarfile's offset right (its end-of-archive padding is computed from it)."""

    def __init__(self, tar: tarfile.TarFile, position: _Position) -> None:
        self.tar = tar
        self.position = position

    def write(self, data: bytes) -> None:
        self.position.write(data)
        cast(Any, self.tar).offset += len(data)

    def file(self, header: bytes, fd: int, size: int) -> bool:
        """The header and `size` bytes of `fd`, padded to a block; True when the file gave
        fewer bytes than `size` (it shrank: zeros stand in, as tarfile's path does)."""
        padding = bytes(-size % BLOCK)
        if size <= CHUNK:  # one write for a receipt: header, content and padding
            data = _read_up_to(fd, size)
            self.write(header + data + bytes(size - len(data)) + padding)
            return len(data) < size
        self.write(header)
        remaining, short = size, False
        while remaining:
            data = b"" if short else _read_up_to(fd, min(CHUNK, remaining))
            if len(data) < min(CHUNK, remaining):
                short = True
                data += bytes(min(CHUNK, remaining) - len(data))
            self.write(data)
            remaining -= len(data)
        self.write(padding)
        return short


def _read_up_to(fd: int, size: int) -> bytes:
    """Up to `size` bytes of `fd`, fewer only at its end."""
    data = os.read(fd, size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def fast_header(name: str, st: os.stat_result, kind: bytes, linkname: str = "",
                size: int = 0) -> bytes | None:
    """The PAX mtime record and ustar header tarfile would write for this entry, built
    directly (20,000 small files: 0.8 s instead of tarfile's 3.3 s, the writer alone), or
    None when a value needs more PAX records than the mtime (a long or non-ASCII name, a
    huge id or size): tarfile then."""
    uname, gname = _owner_name("user", st.st_uid), _owner_name("group", st.st_gid)
    mtime = st.st_mtime_ns // 1_000_000_000
    if not (_fits(name, _NAME_MAX) and _fits(linkname, _NAME_MAX)
            and _fits(uname, _OWNER_MAX) and _fits(gname, _OWNER_MAX)
            and 0 <= st.st_uid < _ID_LIMIT and 0 <= st.st_gid < _ID_LIMIT
            and 0 <= size < _SIZE_LIMIT and 0 <= mtime < _SIZE_LIMIT):
        return None
    return (_pax_header(_pax_record("mtime", format_pax_mtime(st.st_mtime_ns)))
            + _ustar(name, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, mtime, kind,
                     linkname, uname, gname))


class _ExactReader:
    """Reads exactly `size` bytes from `file`: zero-pads if the file shrank meanwhile."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.remaining = size
        self.short = False

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self.file.read(n)
        while len(data) < n:
            more = self.file.read(n - len(data))
            if not more:
                self.short = True
                data += b"\0" * (n - len(data))
                break
            data += more
        self.remaining -= n
        return data


def _walk(
    root: Path, patterns: Sequence[str], unreadable: list[str]
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) in pre-order (a directory, then everything inside it, then
    its next sibling; what `tar -c` writes and GNU tar expects to restore directory mtimes),
    sorted by name, excluded entries and everything below them skipped. Directories that
    cannot be listed are appended to `unreadable` (relative path + "/") and walked no further."""

    def listing(directory: Path, relative: str) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return iter(())
        except PermissionError:
            unreadable.append(relative or ".")
            return iter(())
        return iter(entries)

    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [("", listing(root, ""))]
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        relative = f"{prefix}{entry.name}"
        if not prefix and is_excluded(relative, INTERNAL_EXCLUDES):
            continue
        if is_excluded(relative, patterns):
            continue
        yield relative, entry
        if entry.is_dir(follow_symlinks=False):
            stack.append((relative + "/", listing(Path(entry.path), relative + "/")))


def _tarinfo(tar: tarfile.TarFile, path: str, arcname: str, file: IO[bytes] | None) -> Any:
    info = tar.gettarinfo(name=None if file else path, arcname=arcname, fileobj=file)
    if info is None:
        return None
    st = os.fstat(file.fileno()) if file else os.lstat(path)
    if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
        # tarfile remembered this inode in case a second name of the file comes later (to
        # write it as a hard link); a file with one name has none: forget it, so memory
        # stays flat. The key comes from the stat tarfile itself keyed it with (fstat of
        # the open file), so it cannot miss, as a second lookup by path could.
        cast(Any, tar).inodes.pop((st.st_ino, st.st_dev), None)
    info.mtime = st.st_mtime_ns // 1_000_000_000
    info.pax_headers = {**info.pax_headers, "mtime": format_pax_mtime(st.st_mtime_ns)}
    info.mode = stat.S_IMODE(st.st_mode)
    return info


def write_tar(root: Path, sink: Sink, exclude: Sequence[str] = ()) -> TarStats:
    """Write a tar stream of `root` to `sink`."""
    if not root.is_dir():
        raise FilesystemError(
            f"uploads directory {str(root)!r} does not exist or is not a directory"
        )
    stats = TarStats()
    # On an exception the with block does not write the end-of-archive marker: a failed
    # backup never looks like a complete tar.
    # Mode "w" on a position-counting sink, not the stream mode "w|": the stream mode
    # buffers through `bytes += chunk`, copying its whole buffer on every header and block
    # written, which cost a third of the time of a tree of small files. Nothing here seeks:
    # tarfile only asks the position (tell) and writes in order.
    position = _Position(sink)
    with tarfile.TarFile(
        fileobj=cast(Any, position),
        mode="w",
        format=tarfile.PAX_FORMAT,
        copybufsize=CHUNK,
        errors="surrogateescape",
    ) as tar:
        tar.addfile(_tarinfo(tar, str(root), ".", None))
        direct = _Direct(tar, position)
        for relative, entry in _walk(root, exclude, stats.unreadable):
            _add_entry(tar, direct, root, relative, entry, stats)
            _forget(tar)
        if stats.unreadable:
            raise FilesystemError(unreadable_message(root, stats.unreadable))
    return stats


# tarfile's stream mode refills its buffer with `bytes` slicing and joining, copying what
# it holds on every 512-byte header read: with 1 MiB that was about a quarter of the time
# of extracting 10,000 small files. 16 KiB costs nothing measurable on large files.
READ_BUFSIZE: Final = 16 * 1024


class _Position:
    """A sink that knows how much was written to it: what tarfile's mode "w" needs."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._offset = 0

    def write(self, data: Any) -> int:
        self._sink.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset


def _forget(tar: Any) -> None:
    """Keep memory flat whatever the number of files: tarfile remembers every member it
    wrote or read (`members`, for reading back or seeking, which a stream never does), about
    1 KiB per file, 190 MiB for 200,000 receipts. (`members` and `inodes`, see _tarinfo, are
    plain attributes of every CPython TarFile that typeshed does not declare: hence `Any`.)"""
    tar.members.clear()


UNREADABLE_SHOWN: Final = 5


def unreadable_message(root: Path, unreadable: Sequence[str]) -> str:
    """Which entries the agent could not read, as whom, and what to change."""
    first = unreadable[0]
    try:
        st = os.lstat(root / first)
        owner = f" (owner {st.st_uid}:{st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o})"
    except OSError:
        owner = ""
    shown = ", ".join(repr(p) for p in unreadable[:UNREADABLE_SHOWN])
    more = len(unreadable) - UNREADABLE_SHOWN
    rest = f" and {more} more" if more > 0 else ""
    groups = ",".join(str(g) for g in sorted(set(os.getgroups()) | {os.getegid()}))
    return (
        f"cannot read {len(unreadable)} entr{'y' if len(unreadable) == 1 else 'ies'} of the "
        f"uploads directory as uid {os.geteuid()} (groups {groups}): {shown}{rest}; first "
        f"{first!r}{owner}. Run the backup as the app's identity: set job.podSecurityContext "
        f"(runAsUser/runAsGroup/fsGroup) to the user or group that owns the files"
    )


def _open_for_reading(path: str, st: os.stat_result) -> int:
    """Open a regular file without following links. O_NOATIME spares the volume an inode
    write per file, but the kernel allows it only to the file's owner (EPERM otherwise, even
    on a world-readable file): ask for it only on our own files, and fall back to a plain
    open if it is refused anyway (e.g. the owner changed between stat and open)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime and st.st_uid == os.geteuid():
        try:
            return os.open(path, flags | noatime)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(path, flags)


def _add_entry(
    tar: tarfile.TarFile, direct: _Direct, root: Path, relative: str, entry: os.DirEntry[str],
    stats: TarStats
) -> None:
    """One entry: by fast_header when its values fit the header fields (nearly always), else
    through tarfile (long or non-ASCII names, hard links, huge ids or sizes)."""
    path = entry.path
    try:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            try:
                fd = _open_for_reading(path, st)
            except PermissionError:
                stats.unreadable.append(relative)
                return
            if stats.unreadable:
                # The backup fails anyway: only finish counting what cannot be read.
                os.close(fd)
                return
            if _add_file_directly(direct, fd, relative, stats):
                return
            with os.fdopen(fd, "rb", buffering=CHUNK) as file:
                info = _tarinfo(tar, path, relative, file)
                if info.type == tarfile.LNKTYPE:
                    tar.addfile(info)
                    stats.hardlinks += 1
                    return
                reader = _ExactReader(file, info.size)
                tar.addfile(info, cast(Any, reader))
                if reader.short or os.fstat(fd).st_size != info.size:
                    stats.changed.append(relative)
                    log.warning("file changed while it was read: %s", relative)
                stats.files += 1
                stats.bytes += info.size
        elif stat.S_ISDIR(st.st_mode):
            header = fast_header(relative + "/", st, _DIRTYPE)
            if header is not None:
                direct.write(header)
            else:
                tar.addfile(_tarinfo(tar, path, relative, None))
            stats.directories += 1
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            header = fast_header(relative, st, _SYMTYPE, linkname=target)
            if header is not None:
                direct.write(header)
            else:
                info = _tarinfo(tar, path, relative, None)
                target = info.linkname
                tar.addfile(info)
            stats.symlinks += 1
            try:
                if not absolute_link_allowed(target, (str(root),)):
                    link_target_parts(tuple(relative.split("/")), target)
            except ArchiveError:
                log.warning(
                    "symlink %s -> %s points outside the uploads directory; a restore will "
                    "refuse it",
                    relative,
                    target,
                )
        else:
            stats.skipped.append(relative)
            log.warning("skipping %s: not a regular file, directory or symlink", relative)
    except FileNotFoundError:
        stats.skipped.append(relative)
        log.warning("skipping %s: removed while the backup ran", relative)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink between scandir and open
            stats.skipped.append(relative)
            log.warning("skipping %s: replaced while the backup ran", relative)
            return
        raise


def _add_file_directly(direct: _Direct, fd: int, relative: str, stats: TarStats) -> bool:
    """A regular file by fast_header, from the stat of the open file; False (fd still open)
    when tarfile must write it: a second name of a hard-linked file, or a value that does
    not fit the header. Closes fd when it wrote the file."""
    st = os.fstat(fd)
    if st.st_nlink > 1:  # tarfile keeps the inodes it saw, to link later names to the first
        return False
    header = fast_header(relative, st, _REGTYPE, size=st.st_size)
    if header is None:
        return False
    try:
        short = direct.file(header, fd, st.st_size)
        if short or os.fstat(fd).st_size != st.st_size:
            stats.changed.append(relative)
            log.warning("file changed while it was read: %s", relative)
    finally:
        os.close(fd)
    stats.files += 1
    stats.bytes += st.st_size
    return True


# --- extracting ------------------------------------------------------------------------


@dataclass
class _DirAttrs:
    path: Path
    mode: int
    mtime_ns: int


@dataclass
class ExtractResult:
    stats: TarStats
    root_mode: int | None
    root_mtime_ns: int | None


class SafeExtractor:
    """Extracts a tar stream into `staging` (which must exist and be empty)."""

    def __init__(
        self,
        staging: Path,
        strip_components: int = 0,
        same_owner: bool | None = None,
        absolute_roots: Sequence[str] = (),
        include: Sequence[str] = (),
    ) -> None:
        self.staging = staging
        # Glob patterns (is_selected): only matching members are written. Every member is
        # still checked (names, types), so a hostile archive is refused as a whole.
        self.include = tuple(include)
        # Directories left out so far: their attributes, should a selected member need them.
        self._pending: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.strip = strip_components
        self.absolute_roots = tuple(absolute_roots)
        # As root, restore numeric owners like GNU tar does; otherwise files are the caller's.
        self.same_owner = os.geteuid() == 0 if same_owner is None else same_owner
        self._groups = frozenset({os.getegid(), *os.getgroups()})
        self.stats = TarStats()
        self._dirs: list[_DirAttrs] = []
        self._root: tuple[int, int] | None = None

    def extract(self, stream: Any) -> ExtractResult:
        try:
            tar = tarfile.open(  # noqa: SIM115 - closed by the with block below
                fileobj=stream, mode="r|", bufsize=READ_BUFSIZE, errors="surrogateescape"
            )
        except tarfile.ReadError as exc:
            raise ArchiveError(f"not a readable tar stream: {exc}") from None
        with tar:
            try:
                # next() rather than iteration, so the members read can be forgotten.
                while (member := tar.next()) is not None:
                    self._extract_member(tar, member)
                    _forget(tar)
            except tarfile.TarError as exc:
                raise ArchiveError(f"broken tar stream: {exc}") from None
        self._check_symlinks()
        for attrs in sorted(self._dirs, key=lambda d: len(d.path.parts), reverse=True):
            os.chmod(attrs.path, attrs.mode)
            os.utime(attrs.path, ns=(attrs.mtime_ns, attrs.mtime_ns))
        root_mode, root_mtime = self._root if self._root else (None, None)
        return ExtractResult(self.stats, root_mode, root_mtime)

    def _path(self, parts: tuple[str, ...]) -> Path:
        return self.staging.joinpath(*parts)

    def _ensure_parents(self, parts: tuple[str, ...], create: bool = True) -> None:
        """Create missing parents as directories; refuse to pass through anything else."""
        current = self.staging
        for depth, part in enumerate(parts[:-1], start=1):
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                if not create:
                    return
                os.mkdir(current, 0o700)
                self._adopt(parts[:depth], current)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError(
                    f"refusing tar member {'/'.join(parts)!r}: a parent is not a directory "
                    "(a symlink or file), the member would be written through it"
                )

    def _adopt(self, parts: tuple[str, ...], path: Path) -> None:
        """A parent created for a selected member gets its archived attributes (when the
        archive had it: it was left out because it was not selected itself)."""
        member = self._pending.pop(parts, None)
        if member is None:
            return
        self._dirs.append(_DirAttrs(path, member.mode & DIR_MODE_MASK,
                                    parse_pax_mtime_ns(member)))
        self._chown(path, member)
        self.stats.directories += 1

    def _clear(self, path: Path, keep_dir: bool) -> None:
        """Remove what an earlier member left at `path` (tar lets later members win)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name, self.strip)
        if not parts:
            if not member.isdir():
                if self.strip:
                    log.warning("skipping %s: nothing left after stripping", member.name)
                    return
                raise ArchiveError(f"refusing tar member {member.name!r}: replaces the root")
            if len(member_parts(member.name)) == self.strip:
                self._root = (member.mode & DIR_MODE_MASK, parse_pax_mtime_ns(member))
            return
        if member.ischr() or member.isblk():
            raise ArchiveError(f"refusing device node in the archive: {member.name!r}")
        if member.isfifo():
            raise ArchiveError(f"refusing FIFO in the archive: {member.name!r}")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(f"refusing unsupported tar member type: {member.name!r}")
        if self.include:
            if not is_selected("/".join(parts), self.include):
                if member.isdir():
                    self._pending[parts] = member
                self.stats.unselected += 1
                return
            if member.islnk():
                linked = member_parts(member.linkname, self.strip)
                if linked and not os.path.lexists(self._path(linked)):
                    # Its data is in a member that was left out: say so, restore the rest.
                    log.warning("skipping hard link %s: its file %s is not among the "
                                "selected paths", member.name, member.linkname)
                    self.stats.unselected += 1
                    return
            self.stats.selected += 1
        self._ensure_parents(parts)
        path = self._path(parts)
        mtime_ns = parse_pax_mtime_ns(member)
        if member.isdir():
            self._clear(path, keep_dir=True)
            if not path.is_dir():
                os.mkdir(path, 0o700)
            self._dirs.append(_DirAttrs(path, member.mode & DIR_MODE_MASK, mtime_ns))
            self._chown(path, member)
            self.stats.directories += 1
        elif member.issym():
            if not member.linkname.startswith("/"):
                link_target_parts(parts, member.linkname)
            elif not absolute_link_allowed(member.linkname, self.absolute_roots):
                raise ArchiveError(
                    f"refusing symlink {member.name!r} -> {member.linkname!r}: absolute target "
                    "outside the backed-up directory"
                )
            self._clear(path, keep_dir=False)
            os.symlink(member.linkname, path)
            self._chown(path, member)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            self.stats.symlinks += 1
        elif member.islnk():
            source_parts = member_parts(member.linkname, self.strip)
            if not source_parts:
                raise ArchiveError(f"refusing hard link {member.name!r} to the root")
            self._ensure_parents(source_parts, create=False)
            source = self._path(source_parts)
            st = os.lstat(source) if os.path.lexists(source) else None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ArchiveError(
                    f"refusing hard link {member.name!r} -> {member.linkname!r}: "
                    "not an earlier regular file of the archive"
                )
            self._clear(path, keep_dir=False)
            os.link(source, path, follow_symlinks=False)
            self.stats.hardlinks += 1
        else:
            self._clear(path, keep_dir=False)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                data = tar.extractfile(member)
                if data is not None:
                    shutil.copyfileobj(data, out, CHUNK)
            self._chown(path, member)
            os.chmod(path, member.mode & FILE_MODE_MASK)
            os.utime(path, ns=(mtime_ns, mtime_ns))
            self.stats.files += 1
            self.stats.bytes += member.size

    def _chown(self, path: Path, member: tarfile.TarInfo) -> None:
        if self.same_owner:
            os.lchown(path, member.uid, member.gid)
        elif member.uid == os.geteuid() and member.gid in self._groups:
            # Not root, but running as the files' owner (the app's identity): the owner may
            # give a file any group it belongs to, so the recorded group comes back too.
            os.lchown(path, -1, member.gid)

    def _check_symlinks(self) -> None:
        """Final guard: every symlink of the complete tree resolves inside it."""
        root = os.path.realpath(self.staging)
        for directory, dirnames, filenames in os.walk(self.staging):
            for name in dirnames + filenames:
                path = os.path.join(directory, name)
                if os.path.islink(path) and not os.readlink(path).startswith("/"):
                    resolved = os.path.realpath(path)
                    if resolved != root and not resolved.startswith(root + os.sep):
                        relative = os.path.relpath(path, self.staging)
                        raise ArchiveError(
                            f"refusing symlink {relative!r} -> {os.readlink(path)!r}: "
                            "it resolves outside the target through other links"
                        )


# --- swapping in -----------------------------------------------------------------------


def _entries(directory: Path, skip: Sequence[str] = ()) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in skip)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _make_writable(path)
        shutil.rmtree(path)
    else:
        path.unlink()


def _make_writable(tree: Path) -> None:
    """Read-only directories (restored modes) would stop rmtree."""
    for directory, dirnames, _ in os.walk(tree):
        for name in dirnames:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o700)
    with contextlib.suppress(OSError):
        os.chmod(tree, stat.S_IMODE(os.lstat(tree).st_mode) | 0o700)


def replace_with(target: Path, staging: Path, token: str) -> None:
    """Make `target` hold exactly the entries of `staging`; `staging` is removed.

    The app's entries (what the target held before the restore) are never lost, however
    often an attempt is killed:

    1. they are renamed one by one into `<target>/.tsb-aside-<token>`, which is then renamed
       `.tsb-old-<token>`: from that rename on it holds all of them;
    2. the new entries are renamed in from `staging`;
    3. the old directory is renamed `.tsb-discard-<token>` (the new tree is complete), then
       deleted.

    A failure (or SIGTERM) before the rename of step 3 puts the app's entries back (and the
    new ones back into `staging`, for the caller to discard). An attempt killed in between
    leaves its directory to the next attempt (whatever its id), which carries on from there:
    beside a `.tsb-aside-*` the live entries are the rest of the app's and join them; beside
    a `.tsb-old-*` they are the killed attempt's partly swapped-in restore and are
    discarded; a `.tsb-discard-*` is deleted. So the app's entries stay in that directory
    until a new tree is complete."""
    old = _set_aside(target, token)
    done = target / (DISCARD_PREFIX + old.name.removeprefix(OLD_PREFIX))
    try:
        for name in _entries(staging):
            os.rename(staging / name, target / name)
        os.rename(old, done)  # the commit: from here on the new tree stays
    except BaseException as exc:
        # Judged by what is on disk, not by what this code remembers doing: SIGTERM may
        # land between a rename and the next line.
        if os.path.lexists(old):
            _put_back(target, staging, old)
        if isinstance(exc, OSError):
            raise FilesystemError(
                f"could not swap the restored files into {str(target)!r}: {exc}"
            ) from exc
        raise
    os.rmdir(staging)
    # With it go the staging directories of killed attempts (restore data only) and the old
    # entries of one killed while deleting them (its new tree was complete).
    for name in _internal(target, (STAGING_PREFIX, DISCARD_PREFIX)):
        discard(target / name)


def _live(target: Path) -> list[str]:
    return sorted(n for n in os.listdir(target) if not n.startswith(INTERNAL_PREFIXES))


def _internal(target: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in os.listdir(target) if n.startswith(prefixes))


def _set_aside(target: Path, token: str) -> Path:
    """Step 1 of replace_with, or what is left of it after a killed attempt: returns the
    `.tsb-old-*` directory holding every entry the target had before the restore."""
    leftovers = _internal(target, (ASIDE_PREFIX, OLD_PREFIX))
    if len(leftovers) > 1:
        raise FilesystemError(
            f"{str(target)!r} holds {', '.join(leftovers)}, left by interrupted restores; "
            "they may hold the files from before them: move what is needed back, delete "
            "them, and restore again"
        )
    if leftovers and leftovers[0].startswith(OLD_PREFIX):
        old = target / leftovers[0]
        for name in _live(target):  # the killed attempt's partial restore
            _remove(target / name)
        return old
    aside = target / (leftovers[0] if leftovers else ASIDE_PREFIX + token)
    old = target / (OLD_PREFIX + aside.name.removeprefix(ASIDE_PREFIX))
    if not leftovers:
        os.mkdir(aside, 0o700)
    try:
        for name in _live(target):
            os.rename(target / name, aside / name)
        os.rename(aside, old)
    except BaseException as exc:
        _move_back(target, old if os.path.lexists(old) else aside)
        if isinstance(exc, OSError):
            raise FilesystemError(
                f"could not move the old files in {str(target)!r} aside: {exc}"
            ) from exc
        raise
    return old


def _put_back(target: Path, staging: Path, old: Path) -> None:
    """Undo step 2, then step 1. Best effort: what cannot be moved stays where the next
    attempt finds it and knows what it is."""
    for name in _live(target):  # after step 1 every live entry is a new one
        with contextlib.suppress(OSError):
            os.rename(target / name, staging / name)
    if _live(target):
        return  # new entries are live: `.tsb-old-*` must keep saying it holds all old ones
    aside = target / (ASIDE_PREFIX + old.name.removeprefix(OLD_PREFIX))
    try:
        os.rename(old, aside)
    except OSError:
        return
    _move_back(target, aside)


def _move_back(target: Path, kept: Path) -> None:
    """The entries set aside in `kept` back into the target (the names are disjoint:
    each was in one place or the other); `kept` goes when empty."""
    with contextlib.suppress(OSError):
        for name in _entries(kept):
            with contextlib.suppress(OSError):
                os.rename(kept / name, target / name)
        os.rmdir(kept)


def merge_into(target: Path, staging: Path) -> None:
    """Move the entries of `staging` into `target`, replacing same-named files and links,
    merging directories; entries only in `target` stay. `staging` is removed."""
    _merge_dir(staging, target)
    _remove(staging)


def _merge_dir(source: Path, destination: Path) -> None:
    for name in _entries(source):
        src = source / name
        dst = destination / name
        src_is_dir = src.is_dir() and not src.is_symlink()
        try:
            dst_st: os.stat_result | None = os.lstat(dst)
        except FileNotFoundError:
            dst_st = None
        if dst_st is None:
            os.rename(src, dst)
        elif src_is_dir and stat.S_ISDIR(dst_st.st_mode):
            src_st = os.lstat(src)
            os.chmod(dst, stat.S_IMODE(dst_st.st_mode) | 0o700)
            _merge_dir(src, dst)
            os.chmod(dst, stat.S_IMODE(src_st.st_mode))
            os.utime(dst, ns=(src_st.st_mtime_ns, src_st.st_mtime_ns))
        elif stat.S_ISDIR(dst_st.st_mode) or src_is_dir:
            _remove(dst)
            os.rename(src, dst)
        else:
            os.replace(src, dst)


def apply_root_attrs(target: Path, result: ExtractResult) -> None:
    """Give the target directory the archived root's mode and mtime, where allowed (a volume
    mount point may belong to another user)."""
    try:
        if result.root_mode is not None:
            os.chmod(target, result.root_mode)
        if result.root_mtime_ns is not None:
            os.utime(target, ns=(result.root_mtime_ns, result.root_mtime_ns))
    except PermissionError:
        log.warning("could not set the mode/mtime of %s itself (not its owner)", target)


def make_staging(target: Path, token: str) -> Path:
    """Create `<target>/.tsb-restore-<token>`, creating `target` if it does not exist."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or not target.is_dir():
            raise FilesystemError(f"restore target {str(target)!r} is not a directory")
        staging = target / (STAGING_PREFIX + token)
        discard(staging)  # left by an interrupted attempt with the same id
        os.mkdir(staging, 0o700)
    except FileExistsError:
        raise FilesystemError(f"{str(target)!r} exists and is not a directory") from None
    except PermissionError as exc:
        raise FilesystemError(
            f"cannot write into the restore target {str(target)!r}: {exc}"
        ) from exc
    return staging


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        _remove(path)
