"""Compression, age encryption, hashing and withholding, in memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
from typing import Any

import pyrage
import pytest
import zstandard

from timesheet_backup.agent import streams
from timesheet_backup.errors import ConfigError, IntegrityError

pytestmark = pytest.mark.unit

DATA = b"".join(b"row %d: some timesheet entry text\n" % i for i in range(50_000)) + os.urandom(
    300_000
)


class Collect(io.RawIOBase):
    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        self.buffer += view
        return len(view)


def pack(compression: str, recipients: list[str] | None = None, level: int | None = None) -> bytes:
    out = Collect()
    encryptor = (
        streams.AgeEncryptor(streams.parse_recipients(recipients), out) if recipients else None
    )
    compressor = streams.Compressor(compression, level, encryptor or out)
    for i in range(0, len(DATA), 65_536):
        compressor.write(DATA[i : i + 65_536])
    compressor.close()
    if encryptor:
        encryptor.close()
    return bytes(out.buffer)


def unpack(raw: bytes, compression: str, identities: list[object] | None = None) -> bytes:
    source: Any = io.BytesIO(raw)
    if identities:
        source = io.BufferedReader(streams.AgeDecryptor(identities, source))
    return streams.decompressor(compression, source).read()


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_compression_round_trip(compression: str) -> None:
    packed = pack(compression)
    assert unpack(packed, compression) == DATA
    if compression != "none":
        assert len(packed) < len(DATA)


def test_compressed_output_is_standard() -> None:
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(pack("zstd"))).read() == DATA
    assert gzip.decompress(pack("gzip", level=1)) == DATA


def test_gzip_output_is_deterministic() -> None:
    assert pack("gzip") == pack("gzip")


@pytest.mark.parametrize(
    ("compression", "level"), [("zstd", 0), ("zstd", 23), ("gzip", 10), ("lz4", None)]
)
def test_levels_are_checked(compression: str, level: int | None) -> None:
    with pytest.raises(ConfigError):
        streams.check_level(compression, level)


def test_default_levels() -> None:
    assert streams.check_level("zstd", None) == 3
    assert streams.check_level("gzip", None) == 6
    assert streams.check_level("none", 5) is None


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_age_round_trip(compression: str) -> None:
    identity = pyrage.x25519.Identity.generate()
    packed = pack(compression, [str(identity.to_public())])
    assert packed.startswith(b"age-encryption.org/v1")
    assert unpack(packed, compression, [identity]) == DATA


def test_age_output_decrypts_with_the_age_cli(tmp_path: object) -> None:
    identity = pyrage.x25519.Identity.generate()
    packed = pack("none", [str(identity.to_public())])
    key = os.path.join(str(tmp_path), "key.txt")
    with open(key, "w") as f:
        f.write(str(identity) + "\n")
    try:
        out = subprocess.run(
            ["age", "-d", "-i", key], input=packed, capture_output=True, check=True
        )
    except FileNotFoundError:
        pytest.skip("age CLI not installed")
    assert out.stdout == DATA


def test_tampered_ciphertext_is_detected() -> None:
    identity = pyrage.x25519.Identity.generate()
    packed = bytearray(pack("none", [str(identity.to_public())]))
    packed[len(packed) // 2] ^= 0x01
    with pytest.raises(IntegrityError, match="age decryption"):
        unpack(bytes(packed), "none", [identity])


def test_truncated_ciphertext_is_detected() -> None:
    identity = pyrage.x25519.Identity.generate()
    packed = pack("none", [str(identity.to_public())])
    with pytest.raises(IntegrityError):
        unpack(packed[:-100], "none", [identity])


def test_wrong_identity_is_a_config_error() -> None:
    packed = pack("none", [str(pyrage.x25519.Identity.generate().to_public())])
    with pytest.raises(ConfigError, match="does not match"):
        unpack(packed, "none", [pyrage.x25519.Identity.generate()])


def test_encryptor_reports_the_sink_failure() -> None:
    class Broken:
        def write(self, data: object) -> int:
            raise OSError("disk on fire")

    recipient = streams.parse_recipients([str(pyrage.x25519.Identity.generate().to_public())])
    encryptor = streams.AgeEncryptor(recipient, Broken())
    with pytest.raises(OSError, match="disk on fire"):
        for _ in range(100):
            encryptor.write(b"x" * 1_000_000)
        encryptor.close()


def test_parse_recipients_and_identities() -> None:
    identity = pyrage.x25519.Identity.generate()
    assert len(streams.parse_recipients([str(identity.to_public())])) == 1
    with pytest.raises(ConfigError, match="invalid age recipient"):
        streams.parse_recipients(["age1notakey"])
    with pytest.raises(ConfigError):
        streams.parse_recipients(["pgp:12345"])
    text = f"# created: today\n# public key: {identity.to_public()}\n{identity}\n"
    assert len(streams.parse_identities(text)) == 1
    with pytest.raises(ConfigError, match="line 1") as info:
        streams.parse_identities("AGE-SECRET-KEY-1NOPE\n")
    assert "NOPE" not in str(info.value)
    with pytest.raises(ConfigError, match="no AGE-SECRET-KEY"):
        streams.parse_identities("# nothing\n")


def test_hashing_reader_and_drain() -> None:
    reader = streams.HashingReader(io.BytesIO(DATA))
    assert reader.read(10) == DATA[:10]
    reader.drain()
    assert reader.size == len(DATA)
    assert reader.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_withholding_writer_keeps_the_tail_until_released() -> None:
    out = io.BytesIO()
    holder = streams.WithholdingWriter(out, tail=100)
    for i in range(0, 1000, 37):
        holder.write(bytes(range(256))[: min(37, 1000 - i)] * 1)
    total = sum(min(37, 1000 - i) for i in range(0, 1000, 37))
    assert len(out.getvalue()) == total - 100
    assert holder.held == 100
    holder.release()
    assert len(out.getvalue()) == total and holder.held == 0


def test_copy_counts_bytes() -> None:
    out = io.BytesIO()
    assert streams.copy(io.BytesIO(DATA), out, chunk=1000) == len(DATA)
    assert out.getvalue() == DATA


def test_unknown_decompressor() -> None:
    with pytest.raises(IntegrityError):
        streams.decompressor("brotli", io.BytesIO())


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 2), (4, 2), (64, 2), (0, 1)])
def test_zstd_workers_do_not_grow_with_the_node(cpus: int, workers: int) -> None:
    # One worker per CPU of a 64-core node would be ~1 GiB at level 19, over any Job limit.
    assert streams.zstd_workers(cpus) == workers


def test_zstd_frames_carry_their_checksum() -> None:
    # `zstd -d` and the restore detect a damaged artifact by it, independently of sha256.
    out = Collect()
    compressor = streams.Compressor("zstd", None, out)
    compressor.write(DATA)
    compressor.close()
    assert zstandard.get_frame_parameters(bytes(out.buffer)).has_checksum
