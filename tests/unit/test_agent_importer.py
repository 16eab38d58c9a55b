"""Recognizing hand-made backups by their first bytes."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
import zstandard

from timesheet_backup.agent import importer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"age-encryption.org/v1\n-> X25519 ...", (None, True)),
        (gzip.compress(b"x"), ("gzip", False)),
        (zstandard.ZstdCompressor().compress(b"x"), ("zstd", False)),
        (b"PGDMP\x01\x0e", ("none", False)),
        (b"--\n-- PostgreSQL database dump", ("none", False)),
    ],
)
def test_detect_compression(head: bytes, expected: tuple[str | None, bool]) -> None:
    assert importer.detect_compression(head) == expected


def tar_head() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("toc.dat")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()[:512]


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"PGDMP\x01\x0e\x00", "custom"),
        (b"--\n-- PostgreSQL database dump\n--\n", "plain"),
        (b"", "plain"),
    ],
)
def test_detect_database_format(head: bytes, fmt: str) -> None:
    assert importer.detect_database_format(head) == fmt


def test_detect_directory_format_tar() -> None:
    assert importer.detect_database_format(tar_head()) == "directory"
