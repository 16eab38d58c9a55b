"""The agent fixes glibc's mmap threshold so freed large buffers go back to the system."""

from __future__ import annotations

import platform

import pytest

from timesheet_backup.agent import memory

pytestmark = pytest.mark.unit


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_the_threshold_is_fixed_on_glibc() -> None:
    # The image and the test machines are Debian (glibc): the call must take effect there.
    assert memory.return_large_buffers() is True
