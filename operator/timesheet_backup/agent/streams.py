"""Streaming building blocks: compression, age encryption, hashing, withholding.

Backup is a push pipeline of writers (producer -> compressor -> encryptor -> uploader);
restore is a pull pipeline of readers (download -> hash -> decryptor -> decompressor ->
consumer). Every stage holds a bounded amount of data. age (pyrage) exposes only a blocking
`encrypt_io(reader, writer)` / `decrypt_io(reader, writer)`, so it runs in a thread joined to
the pipeline by an OS pipe.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import threading
from collections.abc import Sequence
from typing import IO, Any, Final, Protocol, cast

import pyrage
import zstandard

from timesheet_backup.api.enums import COMPRESSIONS
from timesheet_backup.errors import ConfigError, IntegrityError

CHUNK: Final = 1024 * 1024
LEVELS: Final = {"zstd": (1, 19, 3), "gzip": (1, 9, 6)}  # (min, max, default)


class Sink(Protocol):
    def write(self, data: Any, /) -> int: ...


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class RawSource(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


# --- compression ---------------------------------------------------------------------


def check_level(algorithm: str, level: int | None) -> int | None:
    """The effective level for `algorithm`, or raise ConfigError if out of range."""
    if algorithm not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    if algorithm == "none":
        return None
    low, high, default = LEVELS[algorithm]
    if level is None:
        return default
    if not low <= level <= high:
        raise ConfigError(f"{algorithm} level must be between {low} and {high}, not {level}")
    return level


# zstd compresses in worker threads, each with its own window and job buffers: measured on
# one stream (docs/agent.md), about 15 MiB per worker at level 3, 30 at level 9, 120 at
# level 19. zstandard's `threads=-1` starts one worker per CPU of the *machine*: in a
# container on a 64-core node, 64 workers whatever the pod's CPU limit, so the agent's
# memory (and whether its Job's limit holds) would depend on the node it lands on. Two
# workers keep it the same on every node and still compress off the copying thread;
# compression at level 3 runs faster than pg_dump and the upload feed it.
ZSTD_WORKERS: Final = 2
# Each worker compresses a "job" of input; zstd sizes them from the window (8 MiB and more
# at level 3 on large streams) and holds several in flight with their output. 2 MiB jobs
# took an uploads archive of incompressible files from 129 to 49 MiB at the same speed, and
# change the size of a compressed dump by under 0.1 % (docs/agent.md).
ZSTD_JOB_SIZE: Final = 2 * 1024 * 1024


def zstd_workers(cpus: int) -> int:
    """zstd worker threads for a process that may run on `cpus` CPUs (its affinity)."""
    return max(1, min(ZSTD_WORKERS, cpus))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class _NoClose:
    """Passes writes through; closing it does not close the wrapped sink."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def write(self, data: Any) -> int:
        return self.sink.write(data)

    def close(self) -> None:
        pass


class Compressor:
    """A writer that compresses into `sink`; `close()` ends the stream, not the sink."""

    def __init__(self, algorithm: str, level: int | None, sink: Sink) -> None:
        level = check_level(algorithm, level)
        self._writer: Any
        if algorithm == "zstd":
            params = zstandard.ZstdCompressionParameters.from_level(
                level or 3, threads=zstd_workers(_usable_cpus()), job_size=ZSTD_JOB_SIZE,
                write_checksum=True)
            cctx = zstandard.ZstdCompressor(compression_params=params)
            self._writer = cctx.stream_writer(cast(Any, sink), closefd=False)
        elif algorithm == "gzip":
            # mtime=0 and no file name: the same input gives the same bytes.
            self._writer = gzip.GzipFile(
                filename="", mode="wb", compresslevel=level or 6, fileobj=cast(Any, sink), mtime=0
            )
        else:
            self._writer = _NoClose(sink)

    def write(self, data: Any) -> int:
        self._writer.write(data)
        return len(data)

    def close(self) -> None:
        self._writer.close()


def decompressor(algorithm: str, source: Any) -> IO[bytes]:
    if algorithm == "zstd":
        reader: Any = zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True, closefd=False
        )
        return io.BufferedReader(reader, CHUNK)
    if algorithm == "gzip":
        return cast(IO[bytes], gzip.GzipFile(mode="rb", fileobj=source))
    if algorithm == "none":
        return cast(IO[bytes], source)
    raise IntegrityError(f"unknown compression {algorithm!r}")


# --- age -----------------------------------------------------------------------------


def parse_recipients(values: Sequence[str]) -> list[Any]:
    recipients = []
    for value in values:
        text = value.strip()
        try:
            if text.startswith("age1"):
                recipients.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith("ssh-"):
                recipients.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise ValueError("unknown recipient type")
        except (ValueError, pyrage.RecipientError) as exc:
            shown = text if len(text) < 80 else text[:77] + "..."
            raise ConfigError(f"invalid age recipient {shown!r}: {exc}") from None
    return recipients


def parse_identities(text: str) -> list[Any]:
    """X25519 identities, one `AGE-SECRET-KEY-1...` per line; `#` comments allowed.

    Never echoes the key material in errors."""
    identities = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except (ValueError, pyrage.IdentityError):
            raise ConfigError(f"age identity: line {number} is not an AGE-SECRET-KEY") from None
    if not identities:
        raise ConfigError("age identity: no AGE-SECRET-KEY found")
    return identities


class _SinkAdapter(io.RawIOBase):
    """What pyrage writes to: forwards to a sink and keeps the sink's own exception, since
    pyrage wraps it into an opaque EncryptError."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.sink = sink
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            self.sink.write(bytes(data))
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)


class AgeEncryptor:
    """A writer that age-encrypts into `sink` (through a pipe to a pyrage thread)."""

    def __init__(self, recipients: Sequence[Any], sink: Sink) -> None:
        read_fd, write_fd = os.pipe()
        self._pipe_in = os.fdopen(read_fd, "rb", buffering=CHUNK)
        self._pipe_out = os.fdopen(write_fd, "wb", buffering=0)
        self._adapter = _SinkAdapter(sink)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(list(recipients),), name="age-encrypt", daemon=True
        )
        self._thread.start()

    def _run(self, recipients: list[Any]) -> None:
        try:
            pyrage.encrypt_io(self._pipe_in, self._adapter, recipients)
        except BaseException as exc:
            self._error = self._adapter.error or exc
        finally:
            self._pipe_in.close()  # unblocks a writer waiting on a full pipe

    def _failure(self) -> BaseException:
        self._thread.join()
        if self._error is not None:
            return self._error
        return IntegrityError("age encryption stopped early")

    def write(self, data: Any) -> int:
        view = memoryview(data)
        try:
            while view:
                written = self._pipe_out.write(view)
                view = view[written or 0 :]
        except BrokenPipeError:
            raise self._failure() from None
        return len(data)

    def close(self) -> None:
        self._pipe_out.close()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe_out.close()
        self._thread.join()


class AgeDecryptor(io.RawIOBase):
    """A reader of the plaintext of an age stream read from `source` (pyrage in a thread)."""

    def __init__(self, identities: Sequence[Any], source: IO[bytes]) -> None:
        super().__init__()
        read_fd, write_fd = os.pipe()
        self._pipe_in = os.fdopen(read_fd, "rb", buffering=0)
        self._pipe_out = os.fdopen(write_fd, "wb", buffering=CHUNK)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(list(identities), source), name="age-decrypt", daemon=True
        )
        self._thread.start()

    def _run(self, identities: list[Any], source: IO[bytes]) -> None:
        try:
            pyrage.decrypt_io(source, self._pipe_out, identities)
            self._pipe_out.flush()
        except BaseException as exc:
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self._pipe_out.close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._pipe_in.readinto(buffer) or 0
        if n == 0:
            self._thread.join()
            if self._error is not None:
                error = self._error
                if isinstance(error, pyrage.DecryptError) and "No matching keys" in str(error):
                    raise ConfigError(
                        "the age identity does not match any recipient of the artifact"
                    ) from None
                raise IntegrityError(
                    f"the artifact failed age decryption (corrupted or tampered): {error}"
                ) from None
        return n

    def close(self) -> None:
        if not self.closed:
            self._pipe_in.close()  # a writer blocked on the pipe gets EPIPE and stops
            self._thread.join()
        super().close()


# --- hashing and flow ----------------------------------------------------------------


class HashingReader(io.RawIOBase):
    """Counts and SHA-256-hashes everything read through it."""

    def __init__(self, source: RawSource) -> None:
        super().__init__()
        self.source = source
        self.size = 0
        self._sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self.source.readinto(view)
        if n:
            self._sha256.update(view[:n])
            self.size += n
        return n or 0

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole object."""
        buffer = bytearray(CHUNK)
        while self.readinto(buffer):
            pass

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def copy(source: Source, sink: Sink, chunk: int = CHUNK) -> int:
    total = 0
    while True:
        data = source.read(chunk)
        if not data:
            return total
        sink.write(data)
        total += len(data)


class WithholdingWriter:
    """Passes data on but keeps the last `tail` bytes back until `release()`.

    Restores feed psql/pg_restore through this: the consumer cannot reach the end of its
    input, hence cannot COMMIT, before the whole artifact's SHA-256 was checked.
    """

    def __init__(self, sink: Sink, tail: int = 64 * 1024) -> None:
        self.sink = sink
        self.tail = tail
        self._held = bytearray()

    def write(self, data: Any) -> int:
        self._held += data
        excess = len(self._held) - self.tail
        if excess > 0:
            self.sink.write(bytes(self._held[:excess]))
            del self._held[:excess]
        return len(data)

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self) -> None:
        if self._held:
            self.sink.write(bytes(self._held))
            self._held.clear()
