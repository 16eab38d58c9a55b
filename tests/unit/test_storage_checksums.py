"""The checksums S3 reports for multipart objects, computed from our part digests."""

from __future__ import annotations

import base64
import hashlib

import pytest

from timesheet_backup.storage import checksums

pytestmark = pytest.mark.unit

PARTS = [b"a" * 10, b"b" * 7, b"c"]


def test_composite_sha256_matches_the_s3_definition() -> None:
    digests = [hashlib.sha256(p).digest() for p in PARTS]
    expected = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert checksums.composite_sha256(digests) == f"{expected}-3"


def test_multipart_etag_is_md5_of_md5s() -> None:
    md5s = [hashlib.md5(p).digest() for p in PARTS]
    expected = hashlib.md5(b"".join(md5s)).hexdigest()
    assert checksums.multipart_etag(md5s) == f"{expected}-3"


def test_same_composite_tolerates_a_missing_part_count() -> None:
    assert checksums.same_composite_sha256("abc=-2", "abc=-2")
    assert checksums.same_composite_sha256("abc=", "abc=-2")
    assert not checksums.same_composite_sha256("abc=-3", "abc=-2")
    assert not checksums.same_composite_sha256("abd=-2", "abc=-2")


@pytest.mark.parametrize(
    ("etag", "md5_like"),
    [
        ('"0123456789abcdef0123456789abcdef"', True),
        ('"0123456789abcdef0123456789abcdef-12"', True),
        ("0123456789ABCDEF0123456789ABCDEF", True),
        ('"opaque-kms-etag"', False),
        ('"0123456789abcdef0123456789abcdef-x"', False),
        ("", False),
    ],
)
def test_is_md5_etag(etag: str, md5_like: bool) -> None:
    assert checksums.is_md5_etag(etag) is md5_like


def test_same_etag_ignores_quotes_and_case() -> None:
    assert checksums.same_etag('"ABC-2"', "abc-2")
    assert not checksums.same_etag('"abc-2"', "abd-2")


def test_md5_digest() -> None:
    assert checksums.md5_digest(b"x") == hashlib.md5(b"x").digest()
