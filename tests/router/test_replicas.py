"""Router replicas as real processes: two sharing a cycle, and a kill -9 half-way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from neo4j import AsyncDriver

from notifier.api.feed import UNREAD_COUNT
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.router.conftest import (
    Publish,
    cycle_done,
    events,
    q,
    signal_all,
    start_router,
    wait_until,
    watch,
    write,
)

ARTISTS = 200


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Router subprocesses started by a test; killed (by pid) if still running at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def _healthy(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                r = await client.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if r.status_code == 200 and r.json()["status"] == "healthy":
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"router on port {port} never became healthy")


async def _two_cycles_setup(
    pg_url: str, graph_driver: AsyncDriver, graph_db: str, publish: Publish
) -> uuid.UUID:
    """ARTISTS watched artists, each with one release (baseline cycle v1 must run next)."""
    user = uuid.uuid4()
    for i in range(ARTISTS):
        watch(pg_url, user, "artist", str(1000 + i))

    def first(g: GraphBuilder) -> None:
        for i in range(ARTISTS):
            g.release(str(10_000 + i), artists=[str(1000 + i)])

    await write(graph_driver, graph_db, first)
    return user


def _second(g: GraphBuilder) -> None:
    for i in range(ARTISTS):
        g.release(str(20_000 + i), artists=[str(1000 + i)])


def _expected() -> list[tuple[str, str, str, dict[str, object]]]:
    rows = [
        (
            "new_releases",
            "artist",
            str(1000 + i),
            {"new_release_count": 1, "release_ids": [str(20_000 + i)]},
        )
        for i in range(ARTISTS)
    ]
    return sorted(rows, key=lambda r: r[2])


def _check_v2(pg_url: str, user: uuid.UUID) -> None:
    assert events(pg_url, "v2") == _expected()
    assert q(
        pg_url,
        "SELECT count(*), count(DISTINCT event_id) FROM notifier.notification_events"
        " WHERE user_id = %s",
        user,
    ) == [(ARTISTS, ARTISTS)]
    assert q(pg_url, UNREAD_COUNT, user)[0][0] == ARTISTS
    assert q(pg_url, "SELECT count(*) FROM notifier.events WHERE fanned_out_at IS NULL") == [(0,)]


async def test_two_routers_share_one_cycle(
    router_env: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    publish: Publish,
    pg_url: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    tmp_path: Path,
) -> None:
    user = await _two_cycles_setup(pg_url, graph_driver, graph_db, publish)
    ports = {}
    for name in ("a", "b"):
        ports[name] = services.free_port()
        procs.append(
            start_router(
                router_env,
                tmp_path / f"{name}.log",
                NOTIFIER_REPLICA=name,
                NOTIFIER_ROUTER_UNIT_SIZE="1",
                NOTIFIER_PORT=str(ports[name]),
            )
        )
    for port in ports.values():
        await _healthy(port)
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    assert events(pg_url, "v1") == []
    await write(graph_driver, graph_db, _second)
    await signal_all(publish, "v2")
    stats = await cycle_done(pg_url, "v2")
    _check_v2(pg_url, user)
    assert stats["events"] == ARTISTS and stats["feed_rows"] == ARTISTS
    claimers = q(
        pg_url,
        "SELECT DISTINCT split_part(claimed_by, ':', 1) FROM notifier.diff_units"
        " WHERE version = 'v2' ORDER BY 1",
    )
    assert claimers == [("a",), ("b",)]
    assert q(pg_url, "SELECT count(*) FROM notifier.cycles") == [(2,)]
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"http://127.0.0.1:{ports['a']}/metrics")
        missing = await client.get(f"http://127.0.0.1:{ports['a']}/nope")
    assert metrics.status_code == 200 and "notifier_router_units_total" in metrics.text
    assert missing.status_code == 404
    for p in procs:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0


async def test_router_killed_mid_cycle_is_finished_by_another(
    router_env: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    publish: Publish,
    pg_url: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    tmp_path: Path,
) -> None:
    user = await _two_cycles_setup(pg_url, graph_driver, graph_db, publish)
    env = dict(router_env, NOTIFIER_ROUTER_UNIT_SIZE="1", NOTIFIER_ROUTER_LEASE_SECONDS="2")
    first = start_router(env, tmp_path / "first.log", NOTIFIER_REPLICA="first")
    procs.append(first)
    await _healthy(int(env["NOTIFIER_PORT"]))
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    await write(graph_driver, graph_db, _second)
    await signal_all(publish, "v2")

    def done_units() -> int:
        rows = q(
            pg_url,
            "SELECT count(*) FROM notifier.diff_units WHERE version = 'v2' AND status = 'done'",
        )
        return int(rows[0][0])

    await wait_until(lambda: done_units() >= 10, what="the first router to be half-way")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = done_units()
    assert before < ARTISTS + 1, "the cycle finished before the kill: make it larger"
    assert q(pg_url, "SELECT status FROM notifier.cycles WHERE version = 'v2'") == [("running",)]

    second = start_router(env, tmp_path / "second.log", NOTIFIER_REPLICA="second")
    procs.append(second)
    await cycle_done(pg_url, "v2")
    _check_v2(pg_url, user)
    by = q(
        pg_url,
        "SELECT split_part(claimed_by, ':', 1), count(*) FROM notifier.diff_units"
        " WHERE version = 'v2' GROUP BY 1 ORDER BY 1",
    )
    assert [r[0] for r in by] == ["first", "second"]
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0


@pytest.mark.slow
def test_router_without_its_database_exits_with_one_line(
    router_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(router_env, POSTGRES_PORT=str(services.free_port()))
    proc = subprocess.run(
        [sys.executable, "-m", "notifier.cli", "router"], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr.decode()
    assert b"router stopped" in proc.stderr
