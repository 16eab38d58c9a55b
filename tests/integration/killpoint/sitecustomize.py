"""Loaded by Python at start-up when this directory is on PYTHONPATH (tests only): SIGKILLs
the process just before its `TSB_TEST_KILL_AT_RENAME`-th `os.rename` under the directory
`TSB_TEST_KILL_UNDER`, as the OOM killer or a lost node would: no `except`, no `finally`,
no clean-up. Lets a test stop the real agent at an exact point of a multi-step change."""

from __future__ import annotations

import os
import signal
from typing import Any

_AT = int(os.environ.get("TSB_TEST_KILL_AT_RENAME") or 0)
_UNDER = os.environ.get("TSB_TEST_KILL_UNDER") or ""

if _AT and _UNDER:
    _rename = os.rename
    _seen = 0

    def _killing_rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        global _seen
        if os.fsdecode(src).startswith(_UNDER) or os.fsdecode(dst).startswith(_UNDER):
            _seen += 1
            if _seen == _AT:
                os.kill(os.getpid(), signal.SIGKILL)
        _rename(src, dst, *args, **kwargs)

    os.rename = _killing_rename
