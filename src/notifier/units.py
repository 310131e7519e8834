"""Running claimed diff units: graph read, diff, then one write statement.

The graph is read first (one query, `UnitRunner.read`). Then, on one
PostgreSQL connection (`UnitRunner.write`): the unit's snapshots are read
(artists: only those whose graph row changed) with whatever else its type
needs, the diff runs in Python, and one statement (unitstore.FINISH_UNIT)
checks the unit is still pending and ours, upserts the changed snapshots
(unchanged ones are left as they are), inserts the events (unique dedup
keys), fans them out and marks the unit done: all or nothing, so a crash
anywhere leaves the unit to be redone from scratch with the same result, and
a router whose lease was taken over writes nothing. What differs by entity
type is in strategies.py, the releases unit in releases.py. `Pipeline` reads
the next unit's graph while the current unit is written.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from notifier import cycles, diff, fanout, strategies, unitstore
from notifier.graph import Graph
from notifier.releases import ReleasesUnit


@dataclass(frozen=True)
class Reading:
    """What a unit read from the graph before its transaction, and how long it took."""

    data: Any  # its strategy's Data
    seconds: float


class UnitRunner:
    """Runs claimed units against one graph and one PostgreSQL pool.

    A unit runs in two steps: `read` (the graph, no PostgreSQL) and `write`
    (one transaction). `Pipeline` overlaps the read of the next unit with the
    write of the current one; `run` does both steps in turn.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        graph: Graph,
        me: str,
        *,
        email: bool,
        batch: int,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.pool, self.graph, self.me, self.email, self.batch = pool, graph, me, email, batch
        self.stop = stop or asyncio.Event()
        self.strategies = strategies.by_type(graph, batch)
        self.unknown = strategies.UnknownStrategy()
        self.releases = ReleasesUnit(pool, graph, me, batch=batch, stop=self.stop)

    def _strategy(self, unit: cycles.Unit) -> strategies.Strategy[Any, Any]:
        return self.strategies.get(unit.entity_type, self.unknown)

    async def run(self, unit: cycles.Unit) -> dict[str, Any] | None:
        """Process `unit`; return its stats, or None if it was no longer ours."""
        return await self.write(unit, await self.read(unit))

    async def read(self, unit: cycles.Unit) -> Reading:
        """The unit's graph read: one query for artists, labels, genres or styles."""
        started = time.monotonic()
        data = None
        if unit.entity_type != cycles.RELEASES_UNIT:
            data = await self._strategy(unit).read(unit)
        return Reading(data, time.monotonic() - started)

    async def write(self, unit: cycles.Unit, reading: Reading) -> dict[str, Any] | None:
        """The unit's transaction (after `read`); its stats, or None if it was no longer ours.

        The unit's snapshots are read, then what else its type needs, the
        diff runs, and one statement (FINISH_UNIT) writes it all.
        """
        if unit.entity_type == cycles.RELEASES_UNIT:
            return await self.releases.run(unit)
        strategy = self._strategy(unit)
        counters = diff.Counters()
        started = time.monotonic()
        async with self.pool.connection() as conn:  # autocommit: a statement, a transaction
            w = strategies.Writing(unit, conn, self.me, counters)
            loaded = await strategy.load(w, reading.data)
            loaded_at = time.monotonic()
            extra = await strategy.lookup(w)
            results = strategy.diff(unit, reading.data, loaded, extra)
            events: list[diff.EventDraft] = []
            for entity_id, result in zip(loaded.ids, results, strict=True):
                if result is diff.UNCHANGED:
                    continue
                counters.merge(result.counters)
                old = loaded.snapshots.get(entity_id)
                if old is not None and old.version == unit.version:
                    counters.add("already_diffed")  # not expected: a unit is written once
                    continue
                events.extend(result.events)
            events = await strategy.audience(w, events, loaded)
            digests = strategy.digests(reading.data, loaded, results)
            changed = unitstore.changed_snapshots(
                loaded.ids, results, loaded.snapshots, unit.version, digests
            )
            stats: dict[str, Any] = dict(counters.values)
            stats.update(
                entities=len(unit.entity_ids),
                # Milliseconds spent reading the graph, loading (and, for
                # artists, comparing) the snapshots, diffing, and in the whole
                # unit up to its write (graph read included; a pipelined read
                # overlaps the previous unit's write).
                graph_ms=round(reading.seconds * 1000),
                load_ms=round((loaded_at - started) * 1000),
                diff_ms=round((time.monotonic() - loaded_at) * 1000),
                unit_ms=round((reading.seconds + time.monotonic() - started) * 1000),
            )
            written = fanout.draft_params(
                events, version=unit.version, watches_before=unit.started_at, email=self.email
            )
            written.update(
                unitstore.snapshot_params(unit.entity_type, changed),
                unit=unit.id,
                me=self.me,
                feed_lock=fanout.FEED_LOCK_KEY,
                stats=unitstore.JSON.encode(stats).decode(),
            )
            finished = await unitstore.finish_unit(conn, written)
        if finished is None:
            return None
        stats.update(
            events=finished.events,
            feed_rows=finished.feed_rows,
            outbox_rows=finished.outbox_rows,
        )
        return stats


# Renews a claimed unit's lease until cancelled (router.Router._keep_lease).
Keeper = Callable[[cycles.Unit], Coroutine[Any, Any, None]]


class Ahead:
    """A claimed unit whose graph read runs in the background."""

    def __init__(self, runner: UnitRunner, unit: cycles.Unit, keeper: Keeper | None = None) -> None:
        self.unit = unit
        self.reading: asyncio.Task[Reading] = asyncio.create_task(
            runner.read(unit), name=f"unit-{unit.id}-read"
        )
        # The lease keeper runs from the claim to the end of the unit.
        self.keeper: asyncio.Task[None] | None = (
            asyncio.create_task(keeper(unit), name=f"unit-{unit.id}-lease") if keeper else None
        )

    async def write(self, runner: UnitRunner) -> dict[str, Any] | None:
        """Wait for the graph read, then run the unit's transaction (see `UnitRunner.write`)."""
        return await runner.write(self.unit, await self.reading)

    def close(self) -> None:
        """Stop the lease keeper (and a read still running)."""
        for task in (self.reading, self.keeper):
            if task is not None and not task.done():
                task.cancel()
        if self.reading.done() and not self.reading.cancelled():
            self.reading.exception()  # retrieved: an unused failed read is not "never retrieved"


Claim = Callable[[], Awaitable[cycles.Unit | None]]


class Pipeline:
    """Claims units and reads their graph ahead of the writes, up to `depth` units ahead.

    While unit n's transaction runs, unit n+1 is already claimed and read, and
    unit n+2's read is under way: the graph server, the graph decoding and
    PostgreSQL then work at the same time. One graph read runs at a time, at
    most `depth` units wait (bounded memory), and nothing is read ahead of the
    long 'releases' unit, whose work is all in its write. A unit read ahead
    is leased like any claimed one: if this process dies, its lease expires
    and any router redoes it; at shutdown `leftover` hands them back.
    """

    def __init__(
        self,
        runner: UnitRunner,
        claim: Claim,
        *,
        keeper: Keeper | None = None,
        stop: asyncio.Event,
        depth: int = 2,
    ) -> None:
        self.runner, self.claim, self.keeper, self.stop = runner, claim, keeper, stop
        self.depth = depth
        self.waiting: deque[Ahead] = deque()
        self.filling: asyncio.Task[None] | None = None
        self.arrived = asyncio.Event()  # set when the fill adds a unit
        self.dry = False  # the last claim found nothing
        self.closed = False

    @property
    def ahead(self) -> Ahead | None:
        """The next unit claimed ahead (None when there is none yet)."""
        return self.waiting[0] if self.waiting else None

    async def _fill(self) -> None:
        """Claim and start reading units until `depth` wait, one graph read at a time.

        While a unit is read, the next one is claimed (when there is room for
        it): its read then starts as soon as the graph is free.
        """
        claiming: asyncio.Future[cycles.Unit | None] | None = None
        try:
            while not (self.stop.is_set() or self.closed) and len(self.waiting) < self.depth:
                claimed, claiming = claiming, None
                unit = await (claimed if claimed is not None else self.claim())
                if unit is None:
                    self.dry = True
                    return
                ahead = self._add(unit)
                if unit.entity_type == cycles.RELEASES_UNIT:
                    return
                if len(self.waiting) < self.depth and not self.stop.is_set():
                    claiming = asyncio.ensure_future(self.claim())
                await asyncio.wait([ahead.reading])
        finally:
            # A unit claimed ahead is never dropped: it waits with the others
            # (written next, or handed back by `leftover`).
            if claiming is not None and (unit := await claiming) is not None:
                self._add(unit)

    def _add(self, unit: cycles.Unit) -> Ahead:
        ahead = Ahead(self.runner, unit, self.keeper)
        self.waiting.append(ahead)
        self.arrived.set()
        return ahead

    async def _claimed(self) -> None:
        """Until a unit waits or the fill stops (run one if none is running)."""
        if self.filling is not None and self.filling.done():
            self.filling.result()  # a failed claim is raised here, as a direct claim was
        if self.filling is None or self.filling.done():
            self.filling = asyncio.create_task(self._fill(), name="units-fill")
        while not self.waiting and not self.filling.done():
            self.arrived.clear()
            arrival = asyncio.create_task(self.arrived.wait())
            try:
                await asyncio.wait([self.filling, arrival], return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
        if self.filling.done():
            self.filling.result()

    async def next(self) -> Ahead | None:
        """The next unit to write (its read done), or None when none is claimable now."""
        if not self.waiting:
            self.dry = False
            await self._claimed()
            if not self.waiting:
                return None
        current = self.waiting.popleft()
        if current.unit.entity_type != cycles.RELEASES_UNIT:
            await asyncio.wait([current.reading])
            if not self.stop.is_set() and not self.dry:
                await self._claimed()  # the next unit is claimed before this one is written
        return current

    async def leftover(self) -> list[Ahead]:
        """At shutdown: the units claimed ahead and not written (closed; give them back)."""
        self.closed = True
        for ahead in self.waiting:
            ahead.close()  # ends the read the fill may be waiting on
        if self.filling is not None:
            await asyncio.wait([self.filling])  # a claim in flight may still add a unit
        left = list(self.waiting)
        self.waiting.clear()
        for ahead in left:
            ahead.close()
        return left
