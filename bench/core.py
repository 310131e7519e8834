"""The benchmark harness: figures, the result table, and the services they run on."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from notifier import db
from notifier.devkit import services

SCALES: dict[str, dict[str, int]] = {
    # tiny: the smoke test; small: under 2 minutes; full: the figures.
    # outbox_rows: deliveries; claim_rows: null-transport claims; feed_rows: the one
    # user's notifications; diff_artists: watched artists diffed in one cycle.
    "tiny": {
        "fanout_rows": 2_000,
        "feed_rows": 5_000,
        "feed_requests": 200,
        "outbox_rows": 1_000,
        "claim_rows": 2_000,
        "diff_artists": 100,
        # cycle_*: the end-to-end cycle (bench/cycle.py).
        "cycle_users": 300,
        "cycle_watches": 3_000,
        "cycle_entities": 600,
    },
    "small": {
        "fanout_rows": 100_000,
        "feed_rows": 200_000,
        "feed_requests": 1_000,
        "outbox_rows": 10_000,
        "claim_rows": 20_000,
        "diff_artists": 5_000,
        "cycle_users": 10_000,
        "cycle_watches": 100_000,
        "cycle_entities": 20_000,
    },
    "full": {
        "fanout_rows": 1_000_000,
        "feed_rows": 1_000_000,
        "feed_requests": 2_000,
        "outbox_rows": 200_000,
        "claim_rows": 200_000,
        "diff_artists": 20_000,
        "cycle_users": 100_000,
        "cycle_watches": 1_000_000,
        "cycle_entities": 200_000,
        # The feed figure also seeds other users' rows up to this many in all.
        "feed_total_rows": 10_000_000,
    },
}


@dataclass
class Figure:
    """One row of the result table."""

    name: str
    ours: float
    unit: str
    peer: float | None = None
    peer_name: str = ""
    target: str = ""
    passed: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """ours / peer (higher is better for rates; the figure says which)."""
        if self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the ratio."""
        return {**asdict(self), "ratio": self.ratio}


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table (also readable in a terminal)."""
    head = "| figure | ours | ceiling or peer | ratio | target | result |"
    lines = [head, "|---|---|---|---|---|---|"]
    for f in figures:
        peer = f"{f.peer:,.1f} {f.unit} ({f.peer_name})" if f.peer is not None else "—"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "—"
        result = {True: "pass", False: "FAIL", None: "—"}[f.passed]
        ours = f"{f.ours:,.1f} {f.unit}"
        lines.append(f"| {f.name} | {ours} | {peer} | {ratio} | {f.target} | {result} |")
    return "\n".join(lines)


@dataclass
class Context:
    """What every figure gets: the scale and the running services."""

    scale: str
    sizes: dict[str, int]
    pg: services.PostgresService
    stack: contextlib.ExitStack
    _graph: services.GraphService | None = None
    _rabbit: services.RabbitService | None = None
    databases: list[str] = field(default_factory=list)

    def graph(self) -> services.GraphService:
        """The Bolt graph server, started (or found) on first use."""
        if self._graph is None:
            self._graph = self.stack.enter_context(services.graph())
        return self._graph

    def rabbit(self) -> services.RabbitService:
        """The RabbitMQ broker, started (or found) on first use."""
        if self._rabbit is None:
            self._rabbit = self.stack.enter_context(services.rabbitmq())
        return self._rabbit

    def fresh_database(self) -> str:
        """A new migrated database; returns its URL."""
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        url = self.pg.url(name)
        db.migrate(url)
        return url

    def drop_databases(self) -> None:
        """Drop the databases made so far and write out what they left dirty.

        Run between figures: the feed's 10M rows, left in place, were still
        being vacuumed and written out while the figures after it ran, and
        that work slowed the side using PostgreSQL, not its peer.
        """
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute("CHECKPOINT")
        self.databases.clear()


# A figure function returns one row, or several measured in the same run.
FigureFn = Callable[[Context], Awaitable[Figure | list[Figure]]]


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """Elapsed seconds since entering, readable inside and after the block."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set size (VmHWM) in MB, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
