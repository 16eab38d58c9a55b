"""The Restore's HTTP health check: retried until the expected status or the deadline."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from timesheet_backup.agent.httpcheck import HealthCheckFailed, probe, wait_healthy

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retries_until_the_app_answers() -> None:
    answers = iter([(None, "connection refused"), (503, "Service Unavailable"), (200, "ok")])
    clock = Clock()
    result = wait_healthy(
        "http://web/health", 200, 60, lambda url: next(answers), clock.sleep, clock
    )
    assert result == {"url": "http://web/health", "status": 200, "attempts": 3}
    assert clock.now == 4.0


def test_gives_up_at_the_deadline_with_the_last_answer() -> None:
    clock = Clock()
    with pytest.raises(HealthCheckFailed, match=r"within 10s: last answer HTTP 502 \(Bad"):
        wait_healthy(
            "http://web/health", 200, 10, lambda url: (502, "Bad Gateway"), clock.sleep, clock
        )
    assert clock.now == 10.0


def test_only_http_urls() -> None:
    with pytest.raises(HealthCheckFailed, match="not an http"):
        wait_healthy("file:///etc/passwd", 200, 1)


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_probe_against_a_real_server(server: str) -> None:
    assert probe(f"{server}/health") == (204, "ok")
    assert probe(f"{server}/missing")[0] == 404
    assert probe("http://127.0.0.1:1/")[0] is None
