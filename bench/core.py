"""The benchmark harness: figures, the result table, and the services they run on."""

from __future__ import annotations

import contextlib
import os
import statistics
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


def spread_ms(times: dict[str, list[float]]) -> dict[str, float]:
    """Each series of milliseconds as its median and mean (`<key>_median_ms`, `<key>_mean_ms`)."""
    out: dict[str, float] = {}
    for key, values in times.items():
        out[f"{key}_median_ms"] = statistics.median(values)
        out[f"{key}_mean_ms"] = statistics.fmean(values)
    return out


def print_named(figures: dict[str, Any]) -> None:
    """A standalone script's figures, one `name: value` line each (floats to 2 places)."""
    for key, value in figures.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")


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


# What each process on the machine is, for machine_cpu's breakdown: the first
# (group, words) whose words all appear in the command line wins.
CPU_GROUPS = (
    ("router", ("notifier.cli", "router")),
    ("delivery", ("notifier.cli", "delivery")),
    ("receiver", ("bench.delivery_rate", "--serve")),
    ("neo4j", ("java", "neo4j")),
    ("arcadedb", ("java", "arcadedb")),
    ("postgres", ("postgres",)),
)


def machine_cpu() -> dict[str, float]:
    """CPU seconds so far of every process on the machine, summed by CPU_GROUPS
    (anything else is "other"), with this process as "bench" and the machine's
    idle seconds (all cores) as "idle". A process's reaped children count in it
    (cutime), so PostgreSQL backends that came and went are in "postgres"; the
    difference of two calls is what each group used in between."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        used = sum(int(x) for x in fields[11:15]) / tick
        group = "bench" if int(entry) == me else "other"
        for name, words in CPU_GROUPS:
            if group == "other" and all(w in cmdline for w in words):
                group = name
                break
        out[group] = out.get(group, 0.0) + used
    with open("/proc/stat") as f:
        cpu = f.readline().split()  # cpu user nice system idle iowait ...
    out["idle"] = (int(cpu[4]) + int(cpu[5])) / tick
    return out


def niced(nice: int) -> list[str]:
    """The command prefix that starts a process at CPU niceness `nice` (none at 0)."""
    return ["nice", "-n", str(nice)] if nice else []


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each machine_cpu group used between two calls, in seconds (one decimal)."""
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 1) for k in sorted(after)}


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (utime is [11])."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
