"""Checksums S3 reports for multipart objects, computed from our own part digests (pure).

- Composite SHA-256 (ChecksumAlgorithm=SHA256 on a multipart upload): base64 of the SHA-256
  of the concatenated raw part digests, followed by `-<part count>`.
- Multipart ETag (stores that use MD5 ETags, i.e. no SSE-KMS/SSE-C): hex MD5 of the
  concatenated raw part MD5s, followed by `-<part count>`, in double quotes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_sha256(part_digests: Sequence[bytes]) -> str:
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{b64(combined)}-{len(part_digests)}"


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    combined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_md5s)}"


def same_composite_sha256(reported: str, expected: str) -> bool:
    """Compare a store's ChecksumSHA256 with ours; some stores omit the `-N` suffix."""
    reported_value, _, reported_count = reported.partition("-")
    expected_value, _, expected_count = expected.partition("-")
    if reported_value != expected_value:
        return False
    return not reported_count or reported_count == expected_count


def is_md5_etag(etag: str) -> bool:
    """True when an ETag looks like an MD5 (single or multipart) rather than an opaque id."""
    value = etag.strip('"')
    digest, _, count = value.partition("-")
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest.lower()):
        return False
    return not count or count.isdigit()


def same_etag(reported: str, expected: str) -> bool:
    return reported.strip('"').lower() == expected.strip('"').lower()


def md5_digest(data: bytes | bytearray) -> bytes:
    """Raw MD5, as Content-MD5 and S3 ETags use it (integrity, not security)."""
    return hashlib.md5(data, usedforsecurity=False).digest()
