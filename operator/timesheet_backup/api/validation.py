"""Patterns shared by the CRD schemas (checked by the API server) and by the operator.

The API server checks them at `kubectl apply` time; the operator checks the same patterns when
it reads objects that never went through a CRD (Helm values, manifests in a bucket)."""

from __future__ import annotations

import re
from typing import Final

from timesheet_backup import constants as c

_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"


def _cron_field(value: str) -> str:
    """One cron field: `*`, values and ranges, each with an optional step, comma-separated."""
    item = rf"(\*|({value})(-({value}))?)(/([1-9][0-9]?))?"
    return rf"{item}(,{item})*"


CRON_MACROS: Final = (
    "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
)

# Five fields with their real ranges, so `61 * * * *` is refused by the API server and not
# only later by the operator. Names are accepted in upper or lower case; the flag stands
# first because Python's `re` insists on that (RE2, used by the API server, accepts it too).
CRON_PATTERN: Final = (
    r"(?i)^("
    + "|".join(m for m in CRON_MACROS)
    + r"|"
    + r"\s+".join(
        _cron_field(v)
        for v in (
            r"[0-5]?[0-9]",
            r"[01]?[0-9]|2[0-3]",
            r"0?[1-9]|[12][0-9]|3[01]",
            rf"0?[1-9]|1[0-2]|{_MONTHS}",
            rf"[0-7]|{_DAYS}",
        )
    )
    + r")$"
)

# An IANA zone name's shape; whether the zone exists is checked by the operator (the API
# server has no time zone database for custom resources).
TIME_ZONE_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$"

DURATION_PATTERN: Final = r"^[1-9][0-9]{0,4}[hdw]$"
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
SECRET_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 (a pattern, not a secret)
HOST_PATTERN: Final = r"^[A-Za-z0-9_\[]([A-Za-z0-9._:\-\]]*[A-Za-z0-9\]])?$"
# Printable text without control characters: identifiers and patterns reach pg_dump as
# single argv entries (`--table=...`), so no quoting issue exists, but a newline in a name is
# always a mistake or an attack.
PRINTABLE_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
BUCKET_PATTERN: Final = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
PREFIX_PATTERN: Final = r"^([A-Za-z0-9!_.*'()\-]+)(/[A-Za-z0-9!_.*'()\-]+)*$"
URL_PATTERN: Final = r"^https?://[^\s]+$"
AGE_RECIPIENT_PATTERN: Final = r"^age1[02-9ac-hj-np-z]{58}$"
# A Kubernetes quantity as emptyDir.sizeLimit takes it (binary or decimal suffix).
SIZE_QUANTITY_PATTERN: Final = r"^[1-9][0-9]{0,9}(Ki|Mi|Gi|Ti|k|M|G|T)?$"
RELATIVE_PATH_PATTERN: Final = r"^[^/\x00-\x1f][^\x00-\x1f]*$"
MANIFEST_KEY_PATTERN: Final = r"^([^\x00-\x1f]+/)?manifest\.json$"
# No `..` path component anywhere.
NO_DOTDOT_RULE: Final = "!self.matches('(^|/)[.][.](/|$)')"

# PostgreSQL's template databases: template0 accepts no connections, and objects restored into
# template1 would be copied into every database created afterwards. Never a restore target.
SYSTEM_DATABASES: Final = ("template0", "template1")
NOT_SYSTEM_DATABASE_RULE: Final = "!(self in " + str(list(SYSTEM_DATABASES)) + ")"

# A container environment variable's name, as the API server has long required it.
ENV_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A label value (empty, or up to 63 alphanumerics, '-', '_', '.' between alphanumerics).
LABEL_VALUE_PATTERN: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _cel_strings(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


# The CEL rules below are built from the same constants as `reserved_env`/`reserved_label`,
# which the operator applies to what never went through a CRD (its Helm defaults).
RESERVED_ENV_RULE: Final = (
    f"!(self in {_cel_strings(c.AGENT_ENV_NAMES)})"
    f" && !self.startsWith('{c.RESERVED_ENV_PREFIX}')"
)
RESERVED_ENV_MESSAGE: Final = (
    f"the agent sets or reads {', '.join(c.AGENT_ENV_NAMES)} itself, and "
    f"{c.RESERVED_ENV_PREFIX}* names are its own: choose another name"
)
RESERVED_LABEL_RULE: Final = (
    f"self.all(k, !(k in {_cel_strings(c.RESERVED_LABEL_KEYS)})"
    + "".join(f" && !k.startsWith('{p}')" for p in c.RESERVED_LABEL_PREFIXES)
    + ")"
)
RESERVED_LABEL_MESSAGE: Final = (
    f"the operator and the Job controller set {', '.join(c.RESERVED_LABEL_KEYS)} and "
    f"{', '.join(p + '*' for p in c.RESERVED_LABEL_PREFIXES)} labels themselves"
)


def reserved_env(name: str) -> bool:
    """What RESERVED_ENV_RULE refuses."""
    return name in c.AGENT_ENV_NAMES or name.startswith(c.RESERVED_ENV_PREFIX)


def reserved_label(key: str) -> bool:
    """What RESERVED_LABEL_RULE refuses."""
    return key in c.RESERVED_LABEL_KEYS or key.startswith(c.RESERVED_LABEL_PREFIXES)


DURATION_UNITS_SECONDS: Final = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in a retention duration such as `30d`, `12h` or `4w`."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 4w")
    return int(text[:-1]) * DURATION_UNITS_SECONDS[text[-1]]
