"""Expected failures, each with a one-line message a person can act on.

Raised by the agent and by storage (S3, manifests, key layout), and caught by the operator's
handlers: a top-level module, so storage and the handlers need not import the agent (the
layering test, tests/unit/test_layering.py, holds that). The agent's CLI prints `str(error)`
and exits with `exit_code`; it prints a traceback only for exceptions outside this
hierarchy (bugs).
"""

from __future__ import annotations


class AgentError(Exception):
    """An expected failure: bad input, an unreachable service, a refused credential."""

    exit_code = 1
    reason = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(AgentError):
    """Arguments or environment are inconsistent or missing."""

    exit_code = 2
    reason = "InvalidConfiguration"


class DatabaseError(AgentError):
    """The database could not be reached, refused the credentials, or a tool failed."""

    reason = "DatabaseError"


class StorageError(AgentError):
    """The object store refused or failed a request."""

    reason = "StorageError"


class MissingBucket(StorageError):
    """The bucket does not exist (so nothing can be in it)."""

    reason = "BucketMissing"


class IntegrityError(AgentError):
    """An artifact or manifest does not match what was recorded: corrupted or tampered."""

    reason = "IntegrityError"


class ManifestError(IntegrityError):
    """A manifest is missing, malformed, of an unknown version, or points outside its backup."""

    reason = "InvalidManifest"


class ArchiveError(AgentError):
    """A tar archive is unsafe (path traversal, escaping link, device node) or unreadable."""

    reason = "UnsafeArchive"


class FilesystemError(AgentError):
    """A directory to back up or restore is missing or not writable."""

    reason = "FilesystemError"


class Interrupted(AgentError):
    """SIGTERM (a Job past its deadline, a deleted pod) or SIGINT: cleaned up, then stopped."""

    exit_code = 143
    reason = "Interrupted"


class CheckFailed(AgentError):
    """A post-restore SQL check returned a falsy value."""

    reason = "CheckFailed"
