"""The allowed values of the API's enumerations that also reach the agent, each written once.

The Literal types are the one definition: the models use them, so the CRD schemas and
docs/api.md (both generated from the models) list their values. The tuples are derived from
them, never written again, for what checks a value at run time: the agent's argparse
`choices` and its own checks (a request built without the command line), the S3 settings
and the manifest parser. `tests/unit/test_enums.py` holds the agent's parser to them."""

from __future__ import annotations

from typing import Final, Literal, get_args

# Literal, not a tuple alone: mypy checks the models' values and defaults against it.
DumpFormat = Literal["custom", "plain", "directory"]
CompressionAlgorithm = Literal["zstd", "gzip", "none"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
UploadsMode = Literal["replace", "merge"]
SseType = Literal["AES256", "aws:kms"]
ObjectLockMode = Literal["GOVERNANCE", "COMPLIANCE"]

DUMP_FORMATS: Final[tuple[str, ...]] = get_args(DumpFormat)
COMPRESSIONS: Final[tuple[str, ...]] = get_args(CompressionAlgorithm)
SSL_MODES: Final[tuple[str, ...]] = get_args(SslMode)
UPLOADS_MODES: Final[tuple[str, ...]] = get_args(UploadsMode)
SSE_TYPES: Final[tuple[str, ...]] = get_args(SseType)
OBJECT_LOCK_MODES: Final[tuple[str, ...]] = get_args(ObjectLockMode)
