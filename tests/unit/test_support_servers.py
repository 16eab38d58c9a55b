"""Server wrappers' pure parts: where binaries come from, and refusing to guess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pgserver, s3server

pytestmark = pytest.mark.unit


def test_pg_test_bin_is_honoured_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PG_TEST_BIN", str(tmp_path))
    with pytest.raises(pgserver.PostgresError, match="PG_TEST_BIN"):
        pgserver.find_bin_dir()
    for tool in ("postgres", "initdb"):
        (tmp_path / tool).touch()
    assert pgserver.find_bin_dir() == tmp_path


def test_free_port_is_bindable() -> None:
    import socket

    port = pgserver.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.fixture
def fresh_tools_cache() -> Iterator[None]:
    s3server.tools_bin_dir.cache_clear()
    yield
    s3server.tools_bin_dir.cache_clear()


def test_tools_bin_from_env_and_missing_tool_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_tools_cache: None
) -> None:
    monkeypatch.setenv("TSB_TOOLS_BIN", str(tmp_path))
    assert s3server.tools_bin_dir() == tmp_path
    with pytest.raises(s3server.ToolError, match="versitygw not found"):
        s3server.find_tool("versitygw")
    tool = tmp_path / "versitygw"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert s3server.find_tool("versitygw") == tool


def test_failing_build_script_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_tools_cache: None
) -> None:
    monkeypatch.delenv("TSB_TOOLS_BIN", raising=False)
    script = tmp_path / "build-tools.sh"
    script.write_text("echo building >&2; exit 3\n")
    monkeypatch.setattr(s3server, "BUILD_TOOLS", script)
    with pytest.raises(s3server.ToolError, match="exit 3"):
        s3server.tools_bin_dir()


def test_build_script_last_line_is_the_bin_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_tools_cache: None
) -> None:
    monkeypatch.delenv("TSB_TOOLS_BIN", raising=False)
    script = tmp_path / "build-tools.sh"
    script.write_text(f"echo noise\necho {tmp_path}/bin\n")
    monkeypatch.setattr(s3server, "BUILD_TOOLS", script)
    assert s3server.tools_bin_dir() == tmp_path / "bin"


def test_xattr_probe_answers_and_cleans_up(tmp_path: Path) -> None:
    assert isinstance(s3server.xattrs_supported(tmp_path), bool)
    assert list(tmp_path.iterdir()) == []


def test_proxy_rejects_unknown_stream() -> None:
    proxy = s3server.Proxy(
        server=None,
        name="p",
        host="127.0.0.1",
        port=1,  # type: ignore[arg-type]
        upstream="127.0.0.1:2",
    )
    assert proxy.url == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="upstream or downstream"):
        proxy.add_toxic("latency", stream="sideways", latency=1)
