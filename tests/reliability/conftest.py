"""Reliability fixtures: the API fixtures of tests/api, reused as they are."""

from __future__ import annotations

from tests.api.conftest import api, api_env, user
from tests.router.conftest import router_env

__all__ = ["api", "api_env", "router_env", "user"]


# --------------------------------------------------------------------------- infrastructure faults
# Private PostgreSQL and RabbitMQ servers that a test may stop and start again
# (the shared servers of the session must never be restarted), and a watcher
# recording every /health transition of the roles under test.

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from neo4j import AsyncDriver

from notifier import db
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.delivery.conftest import add_event, add_outbox, add_webhook
from tests.router.conftest import write


@pytest.fixture
def private_pg() -> Iterator[services.PostgresService]:
    """A PostgreSQL server of this test alone (local binaries), which it may stop and start."""
    try:
        with services._local_postgres() as svc:
            yield svc
    except services.ServiceUnavailable as exc:
        pytest.exit(f"cannot start a private PostgreSQL: {exc}", returncode=3)


@pytest.fixture
def private_pg_url(private_pg: services.PostgresService) -> str:
    """A migrated database on the private PostgreSQL server."""
    with psycopg.connect(private_pg.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "notifier"')
    url = private_pg.url("notifier")
    db.migrate(url)
    return url


class PrivateRabbit:
    """A local RabbitMQ broker that can be stopped and started again on the same port and data.

    Same start-up as `services._local_rabbitmq` (a private node name, epmd and
    data directory), but the process is ours to stop: `stop()` sends SIGTERM,
    which RabbitMQ treats as a clean shutdown, so durable queues and persistent
    messages survive into the next `start()`.
    """

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="notifier-rmq-restart-"))
        self.port, dist_port, self.epmd_port = (services.free_port() for _ in range(3))
        (self.top / "enabled_plugins").write_text("[].\n")
        (self.top / "rabbitmq.conf").write_text("loopback_users = none\n")
        self.env = {
            **os.environ,
            "HOME": str(self.top),
            "RABBITMQ_NODENAME": f"notifier{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.top / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.top / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.top / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.top / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.top / "advanced.config"),
            # A broker that fails to start dumps its state here, not in the working directory.
            "ERL_CRASH_DUMP": str(self.top / "erl_crash.dump"),
        }
        self.log = self.top / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.service = services.RabbitService(
            "127.0.0.1", self.port, "guest", "guest", "/", origin="local"
        )

    def start(self) -> None:
        """Start the broker and wait until it answers AMQP."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [services._rabbit_bin()], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        services._wait(
            "rabbitmq-server", lambda: services._amqp_ready("127.0.0.1", self.port), 120,
            self.log, self.proc,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the broker cleanly (SIGTERM to its process group, SIGKILL after 15 s)."""
        if self.proc is not None:
            services._kill_group(self.proc)
            self.proc = None

    def close(self) -> None:
        """Stop the broker and its epmd, and remove its files."""
        self.stop()
        services._kill_epmd(self.epmd_port)
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A running RabbitMQ broker of this test alone, which it may stop and start."""
    for start in range(1, services.RABBITMQ_STARTS + 1):
        rabbit = PrivateRabbit()  # fresh ports each start, as services._local_rabbitmq
        try:
            rabbit.start()
            break
        except services.ServiceUnavailable as exc:
            rabbit.close()
            if start < services.RABBITMQ_STARTS and services.rabbitmq_port_taken(exc):
                continue
            pytest.exit(f"cannot start a private RabbitMQ: {exc}", returncode=3)
    yield rabbit
    rabbit.close()


class HealthWatch:
    """Polls `GET /health` of named roles and records each change of status.

    A status is the HTTP code, or 0 while the port does not answer.
    `transitions[name]` is the sequence of distinct consecutive statuses seen.
    """

    def __init__(self, ports: dict[str, int], every: float = 0.2) -> None:
        self.ports = ports
        self.every = every
        self.transitions: dict[str, list[int]] = {name: [] for name in ports}
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling (in this event loop)."""
        self._task = asyncio.create_task(self._run(), name="health-watch")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def latest(self, name: str) -> int | None:
        """The last status seen for `name`."""
        seen = self.transitions[name]
        return seen[-1] if seen else None

    async def _poll(self, client: httpx.AsyncClient, name: str) -> None:
        try:
            r = await client.get(f"http://127.0.0.1:{self.ports[name]}/health", timeout=10)
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        if self.latest(name) != status:
            self.transitions[name].append(status)

    async def _run(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                await asyncio.gather(*(self._poll(client, n) for n in self.ports))
                self.polls += 1
                await asyncio.sleep(self.every)

    async def until(self, status: int, limit: float = 120.0) -> None:
        """Wait until every role's latest status is `status`."""
        deadline = asyncio.get_running_loop().time() + limit
        while any(self.latest(n) != status for n in self.ports):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/health never all {status}: {self.transitions}")
            await asyncio.sleep(0.05)

    def went_down_and_up(self, name: str) -> bool:
        """True when `name` answered 200, then 503, then 200 again (and ends on 200)."""
        seen = [s for s in self.transitions[name] if s != 0]
        return (
            200 in seen
            and 503 in seen[seen.index(200) :]
            and seen[-1] == 200
            and 200 in seen[seen.index(503, seen.index(200)) :]
        )


async def healthy(port: int) -> bool:
    """True when `GET /health` of the role on `port` answers 200 (False while it cannot)."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    except httpx.TransportError:
        return False


def wait_healthy(base: str, proc: subprocess.Popen[bytes], limit: float = 120.0) -> None:
    """Block until `GET {base}/health` answers 200; fail if `proc` exits or `limit` s pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the process behind {base} exited early"
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base}/health never answered 200")


async def add_releases(driver: AsyncDriver, db: str, base: int, artists: int) -> None:
    """One new release `base + i` for each artist `1000 + i` (i < `artists`) in the graph."""

    def build(g: GraphBuilder) -> None:
        for i in range(artists):
            g.release(str(base + i), artists=[str(1000 + i)])

    await write(driver, db, build)


def new_release_events(base: int, artists: int) -> list[tuple[Any, ...]]:
    """The events `add_releases(..., base, artists)` should route, as `events()` sorts them."""
    return sorted(
        ("new_releases", "artist", str(1000 + i),
         {"new_release_count": 1, "release_ids": [str(base + i)]})
        for i in range(artists)
    )  # fmt: skip


async def add_one_row(conn: psycopg.AsyncConnection[Any], url: str) -> int:
    """A webhook to `url` (for a new user), one event and its outbox row; the row's id."""
    hook, user, _ = await add_webhook(conn, url)
    return await add_outbox(conn, user, await add_event(conn), hook)


def start_role(role: str, env: dict[str, str], log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`python -m notifier.cli <role>` as a subprocess, its log lines going to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier.cli", role], env=dict(env, **extra),
            stdout=out, stderr=out,
        )  # fmt: skip


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait for each (SIGKILL after 30 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def role_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Role subprocesses a test started; SIGTERM (then SIGKILL) by pid at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_procs(started)
