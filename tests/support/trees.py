"""File trees for uploads backup tests: an awkward uploads volume, its fingerprint, and
hostile archives.

:func:`make_uploads_tree` builds what a long-lived uploads volume ends up holding, plus the
corner cases that break naive tar pipelines: nested and empty directories, empty, binary,
compressible and large files, names with spaces, unicode (NFC and NFD twins), newlines,
tabs, glob characters, leading dashes, a 255-byte name and a path longer than ustar's
limits, symlinks (relative, absolute, dangling, to a directory), hard links, modes (0600,
0755, 0444, a setgid directory, a read-only directory with content), files owned by another
uid (when running as root), and fixed past modification times set bottom-up so directory
times stick.

:func:`snapshot_tree` fingerprints a tree as ``{relative path: attributes}``. What it records
is what a tar round trip preserves:

- type, permission bits (including setuid/setgid/sticky), size and sha256 of regular files,
  the literal target of symlinks, and which paths are hard links of one another;
- ``mtime`` in whole seconds (ustar/GNU tar headers hold integer seconds; PAX can carry
  fractions, but not every writer or extractor keeps them), not for symlinks (Python's
  tarfile never sets a symlink's times) and not for the root directory itself;
- uid/gid only when asked (``owners=True``): ownership is restored only by a root extractor.

:func:`make_hostile_tar` writes archives a safe extractor must refuse (absolute and ``..``
member names, a symlink that escapes followed by a file written through it, a hard link to
a file outside, device nodes, ...), plain or gzip/zstd-compressed, and tells the test how
to detect an escape.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import tarfile
import tempfile
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# 2024-01-15 10:00:00 UTC, the date of the guide's example backup; every entry gets its own
# offset plus a sub-second part (which tar may drop; snapshots compare whole seconds).
BASE_MTIME = 1_705_312_800
LARGE_FILE_SIZE = 3 * 1024 * 1024
FOREIGN_UID = FOREIGN_GID = 1000  # the web container's user in the Northstar image

NON_UTF8_NAME = b"latin1-caf\xe9.txt"  # a name that is not valid UTF-8 (legal on Linux)


def make_uploads_tree(
    root: str | os.PathLike[str],
    seed: int = 0,
    *,
    large_size: int = LARGE_FILE_SIZE,
    symlinks: bool = True,
    hardlinks: bool = True,
    non_utf8: bool = True,
    special_files: bool = False,
    foreign_owner: bool = True,
) -> Path:
    """Create the edge-case uploads tree under ``root`` (created if missing); return ``root``.

    Contents depend only on ``seed`` and the options. ``special_files`` adds a FIFO (a naive
    backup that ``open()``s it blocks forever). ``foreign_owner`` chowns a few entries to
    uid/gid 1000, only when running as root.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: dict[str, bytes] = {}

    def text(n: int) -> bytes:
        words = ("receipt", "hotel", "taxi", "invoice", "total", "EUR", "USD", "VAT", "2025")
        return " ".join(rng.choice(words) for _ in range(n)).encode()

    # Ordinary content, as the application stores it: <account>/<timesheet>/<name>
    for account in (3, 17, 29):
        for ts in range(rng.randint(1, 3)):
            for n in range(rng.randint(1, 4)):
                kind = rng.choice(("pdf", "png", "jpg"))
                body = (
                    rng.randbytes(rng.randint(200, 40_000))
                    if kind != "pdf"
                    else (b"%PDF-1.7\n" + text(rng.randint(50, 3000)) + b"\n%%EOF\n")
                )
                files[f"{account}/{1000 + ts}/{n:05d}.{kind}"] = body

    files.update(
        {
            "empty-file.txt": b"",
            "binary.bin": rng.randbytes(64 * 1024),
            "large.bin": rng.randbytes(large_size),
            "compressible.log": b"GET /health 200 OK\n" * 20_000,
            "receipts/2025/01/receipt 001.pdf": b"%PDF-1.4 receipt one\n",
            "receipts/2025/02/Hotel Rechnung März.pdf": b"%PDF-1.4 hotel\n" + rng.randbytes(500),
            " leading space.txt": b"leading space\n",
            "trailing space .txt": b"trailing space\n",
            "trailing dot.": b"trailing dot\n",
            "ünïcödé/日本語のファイル.txt": "こんにちは\n".encode(),
            "ünïcödé/emoji 🎉.png": rng.randbytes(300),
            unicodedata.normalize("NFC", "ünïcödé/café.txt"): b"NFC spelling\n",
            unicodedata.normalize("NFD", "ünïcödé/café.txt"): b"NFD spelling\n",
            "name\nwith newline.txt": b"newline in name\n",
            "tab\there.txt": b"tab in name\n",
            "back\\slash.txt": b"backslash in name\n",
            "quote'\"s.txt": b"quotes in name\n",
            "glob*?[x].txt": b"glob characters in name\n",
            "-leading-dash.txt": b"leading dash\n",
            "--help": b"looks like an option\n",
            "-rf": b"looks like options\n",
            "a" * 251 + ".txt": b"255-byte file name\n",
            # > 100 bytes of name and > 155 bytes of prefix: needs GNU or PAX long names
            "/".join(f"deep-directory-level-{i:02d}" for i in range(12)) + "/leaf.txt": b"deep\n",
            "tmp/upload-partial.tmp": b"half an upload\n",
            ".cache/thumbs.db": rng.randbytes(128),
            ".hidden": b"dot file\n",
            "private/salary.csv": b"name,amount\nAda,1\n",
            "scripts/convert.sh": b"#!/bin/sh\necho convert\n",
            "readonly.txt": b"read only\n",
            "readonly-dir/inside.txt": b"a file inside a read-only directory\n",
            "shared-setgid/team.txt": b"group shared\n",
        }
    )
    empty_dirs = ["empty-dir", "nested/empty/deeper", "receipts/2025/03"]

    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    for rel in empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    if non_utf8:
        (root / os.fsdecode(NON_UTF8_NAME)).write_bytes(b"latin-1 name\n")

    if symlinks:
        links = root / "links"
        links.mkdir(exist_ok=True)
        os.symlink("../receipts/2025/01/receipt 001.pdf", links / "relative")
        os.symlink(str(root.resolve() / "binary.bin"), links / "absolute-inside")
        os.symlink("does-not-exist", links / "dangling")
        os.symlink("../receipts", links / "dir-link")
    if hardlinks:
        (root / "hardlinks").mkdir(exist_ok=True)
        (root / "hardlinks/original.txt").write_bytes(b"one inode, two names\n")
        os.link(root / "hardlinks/original.txt", root / "hardlinks/second name.txt")
    if special_files:
        os.mkfifo(root / "a-fifo")

    # Modes (files first; directory modes below, after the last write into them).
    (root / "private/salary.csv").chmod(0o600)
    (root / "private").chmod(0o700)
    (root / "scripts/convert.sh").chmod(0o755)
    (root / "readonly.txt").chmod(0o444)
    (root / "shared-setgid").chmod(0o2775)
    if foreign_owner and os.geteuid() == 0:
        for rel in ("3", "receipts/2025/01/receipt 001.pdf", "shared-setgid"):
            os.lchown(root / rel, FOREIGN_UID, FOREIGN_GID)
        # chown clears setgid on some systems; set it again
        (root / "shared-setgid").chmod(0o2775)

    # Times last, deepest first, so creating children does not touch a parent's mtime.
    entries = sorted(_walk(root), key=lambda p: (-len(p.parts), str(p)))
    for i, rel in enumerate(entries):
        t = BASE_MTIME + i * 3607 + rng.randint(0, 3000)
        ns = t * 1_000_000_000 + rng.randint(0, 999_999_999)
        os.utime(root / rel, ns=(ns, ns), follow_symlinks=False)
    (root / "readonly-dir").chmod(0o555)  # does not change its mtime
    return root


def _walk(root: Path) -> list[Path]:
    """Relative paths of everything below ``root`` (not following symlinks), sorted."""
    out: list[Path] = []
    stack = [Path()]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel) as it:
            for entry in it:
                child = rel / entry.name
                out.append(child)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(child)
    return sorted(out)


_TYPES = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
    (stat.S_ISSOCK, "socket"),
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot_tree(
    root: str | os.PathLike[str],
    *,
    mtime_ns: bool = False,
    owners: bool = False,
    exclude: Iterable[str] = (),
) -> dict[str, dict[str, Any]]:
    """Fingerprint of a tree: ``{relative path: {type, mode, mtime, size, sha256, target,
    hardlink}}``; see the module docstring for what is and is not recorded.

    Paths are ``str`` (undecodable bytes as surrogate escapes, like ``os.fsdecode``).
    ``hardlink`` names the first path (sorted) of the entry's hard-link group inside the tree.
    ``exclude`` drops exact relative paths and everything below them.
    """
    root = Path(root)
    skip = tuple(exclude)
    snap: dict[str, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for rel in _walk(root):
        key = str(rel)
        if any(key == e or key.startswith(e.rstrip("/") + "/") for e in skip):
            continue
        st = os.lstat(root / rel)
        kind = next(name for test, name in _TYPES if test(st.st_mode))
        info: dict[str, Any] = {"type": kind}
        if kind != "symlink":
            info["mode"] = f"{stat.S_IMODE(st.st_mode):04o}"
            info["mtime"] = st.st_mtime_ns if mtime_ns else st.st_mtime_ns // 1_000_000_000
        if kind == "file":
            info["size"] = st.st_size
            info["sha256"] = _sha256(root / rel)
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(key)
        elif kind == "symlink":
            info["target"] = os.readlink(root / rel)
        elif kind in ("chardev", "blockdev"):
            info["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        if owners:
            info["uid"], info["gid"] = st.st_uid, st.st_gid
        snap[key] = info
    for group in inodes.values():
        if len(group) > 1:
            for key in group:
                snap[key]["hardlink"] = min(group)
    return snap


def diff_trees(
    a: Mapping[str, Mapping[str, Any]],
    b: Mapping[str, Mapping[str, Any]],
    ignore_fields: Iterable[str] = (),
) -> list[str]:
    """Readable differences between two tree snapshots (empty when equal)."""
    ignored = set(ignore_fields)
    lines = []
    for path in sorted(set(a) | set(b)):
        shown = repr(path)
        if path not in b:
            lines.append(f"- {shown}: only in first ({a[path]['type']})")
        elif path not in a:
            lines.append(f"+ {shown}: only in second ({b[path]['type']})")
        else:
            for fld in sorted((set(a[path]) | set(b[path])) - ignored):
                va, vb = a[path].get(fld), b[path].get(fld)
                if va != vb:
                    lines.append(f"~ {shown} {fld}: {va!r} != {vb!r}")
    return lines


def assert_same_tree(
    a: Mapping[str, Mapping[str, Any]],
    b: Mapping[str, Mapping[str, Any]],
    ignore_fields: Iterable[str] = (),
    max_lines: int = 60,
) -> None:
    """Raise AssertionError listing every difference (``ignore_fields`` e.g. ``("mtime",)``)."""
    lines = diff_trees(a, b, ignore_fields)
    if lines:
        more = f"\n... and {len(lines) - max_lines} more" if len(lines) > max_lines else ""
        raise AssertionError(
            f"trees differ in {len(lines)} place(s):\n" + "\n".join(lines[:max_lines]) + more
        )


# ============================================================================ hostile tars

HOSTILE_KINDS = (
    "absolute",  # member named /<outside>/<token>-absolute.txt (refuse, or strip the "/")
    "dotdot",  # member named ../<token>-dotdot.txt (lands beside the target directory)
    "dotdot_nested",  # member named ok/../../<token>-nested.txt
    "symlink_escape",  # symlink "escape" -> <outside> (absolute), then file escape/<token>...
    "symlink_escape_relative",  # symlink "up" -> "..", then file up/<token>...
    "hardlink_outside",  # hard link "victim" -> <outside>/victim.txt, then file "victim"
    "chardev",  # character device node 1:3 (what /dev/null is)
    "blockdev",  # block device node 7:0 (a loop device)
    "fifo",  # named pipe
)
COMPRESSIONS = (None, "gzip", "zstd")


@dataclass
class HostileArchive:
    """A written hostile archive and how to tell whether extracting it escaped.

    ``outside`` is a directory the archive aims at (absolute paths, symlinks, hard links);
    it holds ``victim.txt`` with :attr:`victim_content`. Relative escapes (``..``) land in
    the parent of the extraction directory. Every file an escape writes has :attr:`token`
    in its name.
    """

    path: Path
    kind: str
    compression: str | None
    outside: Path
    token: str
    victim_content: bytes = field(default=b"do not overwrite me\n")

    @property
    def victim(self) -> Path:
        return self.outside / "victim.txt"

    def escapes(self, dest: str | os.PathLike[str]) -> list[str]:
        """Evidence that extracting into ``dest`` wrote outside it (empty: it did not)."""
        dest = Path(dest).resolve()
        found = []
        for where in {self.outside, dest.parent}:
            if not where.is_dir():
                continue
            for entry in where.rglob(f"*{self.token}*"):
                if dest not in entry.parents:
                    found.append(f"escaped file {entry}")
        if self.victim.exists() and self.victim.read_bytes() != self.victim_content:
            found.append(f"{self.victim} was overwritten")
        return sorted(found)


def make_hostile_tar(
    path: str | os.PathLike[str],
    kind: str,
    *,
    compression: str | None = None,
    outside: str | os.PathLike[str] | None = None,
) -> HostileArchive:
    """Write a tar archive of the given hostile ``kind`` (see ``HOSTILE_KINDS``) to ``path``.

    Each archive starts and ends with harmless members (a real backup would look like
    that), so an extractor that stops at the bad member has visibly partial output.
    ``compression`` is None (plain tar), ``"gzip"`` or ``"zstd"``. ``outside`` (created if
    missing; default: a new temporary directory) is where absolute members and links point.
    """
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile kind {kind!r}; one of {HOSTILE_KINDS}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}")
    outside_dir = Path(outside) if outside else Path(tempfile.mkdtemp(prefix="tsb-outside-"))
    outside_dir.mkdir(parents=True, exist_ok=True)
    token = f"pwned{uuid.uuid4().hex[:10]}"
    archive = HostileArchive(Path(path), kind, compression, outside_dir.resolve(), token)
    archive.victim.write_bytes(archive.victim_content)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_file(tar, "harmless/first.txt", b"first\n")
        payload = f"{token}\n".encode()
        out = archive.outside
        if kind == "absolute":
            _add_file(tar, str(out / f"{token}-absolute.txt"), payload)
        elif kind == "dotdot":
            _add_file(tar, f"../{token}-dotdot.txt", payload)
        elif kind == "dotdot_nested":
            _add_file(tar, "ok/placeholder.txt", b"fine\n")
            _add_file(tar, f"ok/../../{token}-nested.txt", payload)
        elif kind == "symlink_escape":
            _add_link(tar, "escape", str(out), tarfile.SYMTYPE)
            _add_file(tar, f"escape/{token}-via-symlink.txt", payload)
        elif kind == "symlink_escape_relative":
            _add_link(tar, "up", "..", tarfile.SYMTYPE)
            _add_file(tar, f"up/{token}-via-relative-symlink.txt", payload)
        elif kind == "hardlink_outside":
            _add_link(tar, "victim", str(archive.victim), tarfile.LNKTYPE)
            _add_file(tar, "victim", payload)  # writes through the link if extracted naively
        elif kind in ("chardev", "blockdev", "fifo"):
            info = tarfile.TarInfo(f"dev/{token}-{kind}")
            info.type = {"chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
            info.devmajor, info.devminor = {"chardev": (1, 3), "blockdev": (7, 0)}.get(kind, (0, 0))
            info.mode = 0o666
            info.mtime = BASE_MTIME
            tar.addfile(info)
        _add_file(tar, "harmless/last.txt", b"last\n")
    raw = buf.getvalue()

    if compression == "gzip":
        import gzip

        raw = gzip.compress(raw, mtime=0)
    elif compression == "zstd":
        import zstandard

        raw = zstandard.ZstdCompressor().compress(raw)
    archive.path.parent.mkdir(parents=True, exist_ok=True)
    archive.path.write_bytes(raw)
    return archive


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = BASE_MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, type_: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = target
    info.mode = 0o777 if type_ == tarfile.SYMTYPE else 0o644
    info.mtime = BASE_MTIME
    tar.addfile(info)


def read_members(path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """``[(name, type, linkname)]`` of a plain, gzip or zstd tar archive (for tests)."""
    raw = Path(path).read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    elif raw[:2] == b"\x1f\x8b":
        import gzip

        raw = gzip.decompress(raw)
    names = {tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
             tarfile.CHRTYPE: "chardev", tarfile.BLKTYPE: "blockdev", tarfile.FIFOTYPE: "fifo",
             tarfile.DIRTYPE: "dir"}  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m.name, names.get(m.type, repr(m.type)), m.linkname) for m in tar.getmembers()]


def make_app_owned(root: str | os.PathLike[str], uid: int, gid: int, *,
                   file_modes: tuple[int, ...] = (0o600, 0o640),
                   dir_modes: tuple[int, ...] = (0o700, 0o750)) -> Path:
    """Give a tree the shape a web app leaves it in: every entry owned by the app's uid/gid,
    files 0600/0640 and directories 0700/0750 (alternating, so both kinds occur), mtimes
    untouched. Needs root."""
    root = Path(root)
    for i, rel in enumerate(_walk(root)):
        path = root / rel
        os.lchown(path, uid, gid)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            path.chmod(dir_modes[i % len(dir_modes)])
        elif stat.S_ISREG(st.st_mode):
            path.chmod(file_modes[i % len(file_modes)])
    os.chown(root, uid, gid)
    root.chmod(dir_modes[-1])
    return root

