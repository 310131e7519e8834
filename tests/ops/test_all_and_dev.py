"""`notifier all` and `notifier dev`, as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import psycopg

from notifier.devkit import services
from notifier.router import queue_names
from tests.api.conftest import bearer
from tests.delivery.receiver import receiver

NOTIFIER = [sys.executable, "-m", "notifier.cli"]


def _wait_http(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200")


def _until(what: str, check: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _publish_completions(url: str, exchange_name: str, version: str) -> None:
    conn = await aio_pika.connect_robust(url)
    async with conn:
        for _ in range(200):  # the router's queue must be bound, or fanout drops the message
            try:
                await (await conn.channel()).declare_queue(
                    queue_names(exchange_name)[0], passive=True
                )
                break
            except aio_pika.exceptions.ChannelClosed:
                await asyncio.sleep(0.1)
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        for service in ("graphinator", "tableinator"):
            body = {"type": "import_completed", "service": service, "version": version}
            await exchange.publish(aio_pika.Message(json.dumps(body).encode()), "")


def test_all_runs_every_role_on_one_port_and_drains(
    notifier_env: dict[str, str],
    pg_url: str,
    rabbit_server: services.RabbitService,
    exchange_name: str,
) -> None:
    port = services.free_port()
    env = {
        **notifier_env,
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_DELIVERY_POLL_SECONDS": "0.1",
        "NOTIFIER_SERVICE_TOKEN": "service-token-that-must-never-be-logged",
        "POSTGRES_PASSWORD": "pg-password-that-must-never-be-logged",
        "LOG_LEVEL": "DEBUG",
    }
    secrets = [env[k] for k in ("NOTIFIER_SERVICE_TOKEN", "POSTGRES_PASSWORD", "JWT_SECRET_KEY",
                                "NEO4J_PASSWORD")]  # fmt: skip
    proc = subprocess.Popen(
        [*NOTIFIER, "all"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_http(f"{base}/health", proc).json()["status"] == "healthy"
        metrics = httpx.get(f"{base}/metrics").text
        for family in ("notifier_http_requests", "notifier_router_", "notifier_delivery_"):
            assert family in metrics, family
        assert httpx.get(f"{base}/openapi.json").json()["openapi"].startswith("3.1")

        # The API and the delivery role: a ping reaches a real receiver.
        with receiver() as hook:
            auth = bearer(uuid.uuid4())
            made = httpx.post(f"{base}/api/webhook", json={"url": hook.url}, headers=auth)
            assert made.status_code == 201
            secrets += [made.json()["secret"], auth["Authorization"].split()[1]]
            assert httpx.post(f"{base}/api/webhook/test", headers=auth).status_code == 202
            _until("the ping webhook", lambda: len(hook.bodies()) >= 1, 30)
            assert json.loads(hook.bodies()[0])["event"] == "ping"

        # The router: signals from every required service fire a cycle, which completes.
        asyncio.run(_publish_completions(rabbit_server.url, exchange_name, "20260101"))

        def cycle_done() -> bool:
            with psycopg.connect(pg_url) as c:
                row = c.execute("SELECT status FROM notifier.cycles").fetchone()
            return row is not None and row[0] == "done"

        _until("the cycle", cycle_done, 60)
        _until(
            "the cycle's duration in /metrics",
            lambda: "notifier_router_cycle_seconds_count 1.0" in httpx.get(f"{base}/metrics").text,
            10,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    # One JSON object per line, with role and replica; the cycle's version is logged.
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and all({"role", "replica", "msg"} <= line.keys() for line in lines)
    assert any(line.get("version") == "20260101" for line in lines)
    assert "all roles stopped" in err
    # No secret or token ever reaches the logs (DEBUG level, every role).
    for secret in secrets:
        assert secret not in err and secret not in out


def _pids(pattern: str) -> set[int]:
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return {int(p) for p in done.stdout.split()}


def _lines(proc: subprocess.Popen[str]) -> Iterator[str]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (line := q.get(timeout=240)) is not None:
        yield line


def test_dev_demo_end_to_end_and_ctrl_c_leaves_nothing_running() -> None:
    # The demo's servers live in a temporary directory of its own, so servers
    # that other test runs on this machine start and stop meanwhile are not
    # taken for its leftovers. World-readable: PostgreSQL runs as `postgres`.
    top = Path(tempfile.mkdtemp(prefix="notifier-devtest-"))
    top.chmod(0o755)
    patterns = [f"{top}/notifier-{kind}-" for kind in ("pg", "rmq", "neo4j", "graph")]
    keep = ("NOTIFIER_TEST_GRAPH", "NOTIFIER_CACHE_DIR")  # which graph server, where its jars are
    drop = ("POSTGRES_", "RABBITMQ_", "NEO4J_", "NOTIFIER_")
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(drop)}
    env["NOTIFIER_PORT"] = str(services.free_port())
    env["TMPDIR"] = str(top)
    proc = subprocess.Popen([*NOTIFIER, "dev"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        for line in _lines(proc):
            seen.append(line)
            webhooks = [s for s in seen if s.startswith("  webhook") and "signature verified" in s]
            if any(s.startswith("  curl -H 'Authorization: Bearer ey") for s in seen) and (
                len(webhooks) >= 4
            ):
                break
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    text = "\n".join(seen)
    assert proc.returncode == 0, err[-3000:]
    assert "feed    → alice: new_releases artist 'John Coltrane'" in text
    assert (
        "feed    → bob: new_members artist 'John Coltrane Quartet' (members: McCoy Tyner)" in text
    )
    assert "feed    → bob: release_count_threshold style 'Modal'" in text
    assert "webhook → alice: new_aliases artist 'John Coltrane' (aliases: Trane)" in text
    assert "BAD SIGNATURE" not in text
    assert "cycle 20260201 done" in text
    # Driven by the graph latch, as graphinator writes it; the graph server is named.
    assert "latch   → (:ExtractionCompletion {version: '20260201', signals: ['artists', " in text
    assert any(s.startswith(("graph: Neo4j ", "graph: ArcadeDB ")) for s in seen), text[:2000]
    assert "starting RabbitMQ" not in text  # the latch needs no broker
    # Everything it started is gone.
    for p in patterns:
        assert not _pids(p), f"{p} processes left running"
    assert not list(top.iterdir()), f"left in {top}: {sorted(top.iterdir())}"
    top.rmdir()
