"""The secret scanner of the e2e secrets test finds a value as is and inside any base64 blob."""

from __future__ import annotations

import base64

import pytest

from tests.support.secretscan import scan_text

pytestmark = pytest.mark.unit

SECRET = "pgPw-AbCdEfGh12345678"


@pytest.mark.parametrize("before", range(5))
@pytest.mark.parametrize("after", range(4))
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_finds_the_value_inside_any_base64_blob(before: int, after: int, encode: object) -> None:
    blob = encode(b"\xfb" * before + SECRET.encode() + b"\xff" * after)  # type: ignore[operator]
    findings = scan_text("blob", blob.decode(), {"db": SECRET})
    assert findings and findings[0].secret == "db"
    assert SECRET not in str(findings[0])


def test_finds_the_plain_value_and_nothing_in_clean_text() -> None:
    assert [f.form for f in scan_text("log", f"password={SECRET}\n", {"db": SECRET})] == \
        ["plain"]
    assert scan_text("log", "password=***\n" + base64.b64encode(b"other").decode(),
                     {"db": SECRET}) == []


def test_refuses_too_short_values() -> None:
    with pytest.raises(ValueError, match="too short"):
        scan_text("log", "x", {"pin": "1234"})
