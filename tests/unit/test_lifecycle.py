"""One way to run a role: signals set `stop`, the role drains, the exit code."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import httpx
import msgspec
import pytest

from notifier import lifecycle


def test_a_role_that_returns_exits_with_its_code() -> None:
    async def serve(stop: asyncio.Event) -> int | None:
        return None

    async def refuse(stop: asyncio.Event) -> int | None:
        return 3

    assert lifecycle.run("t", serve) == 0
    assert lifecycle.run("t", refuse) == 3


def test_a_role_that_cannot_start_logs_one_line_and_exits_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def serve(stop: asyncio.Event) -> int | None:
        raise ConnectionRefusedError("no database")

    with caplog.at_level(logging.INFO, logger="notifier.lifecycle"):
        assert lifecycle.run("router", serve) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "router stopped: ConnectionRefusedError: no database"


# A role that drains on `stop` (set by the signal) and prints that it did.
_ROLE = """
import asyncio, os, signal, sys
from notifier import lifecycle

async def serve(stop):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    await asyncio.wait_for(stop.wait(), 30)
    print("drained", flush=True)

sys.exit(lifecycle.run("t", serve))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_set_stop_and_exit_0(sig: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ROLE, sig], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "drained\n"


@pytest.mark.parametrize("healthy", [True, False])
async def test_ops_app_answers_health_and_metrics(healthy: bool) -> None:
    async def probe() -> tuple[bool, dict[str, object]]:
        return healthy, {"role": "t", "checks": {"postgres": "ok" if healthy else "down"}}

    transport = httpx.ASGITransport(app=lifecycle.ops_app(probe))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/health")
        assert r.status_code == (200 if healthy else 503)
        assert r.headers["content-type"] == "application/json"
        assert list(msgspec.json.decode(r.content)) == ["status", "role", "checks"]
        assert r.json()["status"] == ("healthy" if healthy else "unhealthy")
        m = await client.get("/metrics")
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
        assert "python_info" in m.text
