"""Secrets never reach the output."""

from __future__ import annotations

import io
import logging

import pytest

from timesheet_backup.agent.redact import MASK, RedactingFilter, Redactor, secrets_from_env

pytestmark = pytest.mark.unit


def test_secrets_from_env() -> None:
    env = {
        "PGPASSWORD": "hunter22",
        "AWS_SECRET_ACCESS_KEY": "s3cr3tkey",
        "TSB_AGE_IDENTITY": "# comment\nAGE-SECRET-KEY-1AAAA\n",
        "HOME": "/root",
    }
    found = secrets_from_env(env)
    assert "hunter22" in found and "s3cr3tkey" in found and "AGE-SECRET-KEY-1AAAA" in found
    assert "/root" not in found


def test_redactor_masks_longest_first_and_skips_tiny_values() -> None:
    redact = Redactor(["abcd", "abcdefgh", "x"])
    assert redact("pw=abcdefgh and abcd, x") == f"pw={MASK} and {MASK}, x"


def test_logging_filter_masks_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(["hunter22"])))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting with %s", "hunter22")
        try:
            raise ValueError("bad password hunter22")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "hunter22" not in output
    assert output.count(MASK) >= 2
