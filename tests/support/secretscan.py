"""Find known secret values in text: as is, and base64-encoded (standard and URL-safe
alphabets, at each of the three byte alignments a value can have inside a longer encoded
blob, e.g. a whole Secret's data or a dumped environment)."""

from __future__ import annotations

import base64
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    where: str
    secret: str  # the secret's label, never its value
    form: str
    context: str  # the text around the match, with the match itself masked

    def __str__(self) -> str:
        return f"{self.where}: {self.secret} ({self.form}) in ...{self.context}..."


def encoded_forms(value: str) -> dict[str, str]:
    """`{form: text}` for the value and its base64 encodings. An encoding at offset k (the
    value starts k bytes into an encoded blob) is reduced to the characters that depend on
    the value's bytes only, so it matches wherever the value sits."""
    raw = value.encode()
    forms = {"plain": value}
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode().rstrip("=")
        start = -(-8 * k // 6)  # first character with no pad bits
        end = (8 * (k + len(raw))) // 6  # characters wholly inside the value's bits
        core = encoded[start:end]
        if len(core) >= 8:
            forms[f"base64@{k}"] = core
            forms[f"base64url@{k}"] = core.replace("+", "-").replace("/", "_")
    return forms


def scan_text(where: str, text: str, secrets: dict[str, str]) -> list[Finding]:
    """Every occurrence of any form of any secret in `text`."""
    findings: list[Finding] = []
    for label, value in secrets.items():
        if len(value) < 8:
            raise ValueError(f"secret {label} is too short to scan for reliably")
        for form, needle in encoded_forms(value).items():
            at = text.find(needle)
            if at >= 0:
                before = text[max(0, at - 60):at]
                after = text[at + len(needle):at + len(needle) + 60]
                findings.append(Finding(where, label, form, f"{before}<{label}>{after}"))
    return findings


def pem_secrets(label: str, pem: str) -> dict[str, str]:
    """A private key PEM as secrets to scan for: its base64 body (the lines joined, as a
    Secret's data or a key file decoded would carry it) and each body line on its own (a log
    line that prints part of the file). The BEGIN/END lines are not secret and stay out."""
    body = [line.strip() for line in pem.splitlines()
            if line.strip() and not line.strip().startswith("-----")]
    found = {f"{label} body": "".join(body)} if body else {}
    found.update({f"{label} line {i}": line for i, line in enumerate(body) if len(line) >= 8})
    return found
