"""Keep secrets out of every line the agent prints (pure, plus a logging filter).

The password and keys only ever arrive through the environment; they are collected once at
start-up and masked in log records, error messages and the termination message, including
text passed through from pg_dump or the object store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from timesheet_backup.constants import AGE_IDENTITY_ENV

SECRET_VARIABLES: Final = (
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    AGE_IDENTITY_ENV,
)
MASK: Final = "***"
_MIN_LENGTH: Final = 4  # masking "a" everywhere would garble the output and reveal little


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    found: list[str] = []
    for name in SECRET_VARIABLES:
        value = env.get(name, "")
        if not value:
            continue
        found.append(value)
        # a multi-line identity file: each key on its own line is a secret too
        found.extend(line.strip() for line in value.splitlines() if line.strip())
    return found


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a secret containing another is masked whole
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self.redactor(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        return True
