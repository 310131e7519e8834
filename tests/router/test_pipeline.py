"""The unit pipeline (next unit's graph read during the current write), the one-query
graph read, and which snapshots are rewritten, on real PostgreSQL and Bolt graph."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from neo4j import AsyncDriver
from psycopg_pool import AsyncConnectionPool

from notifier import config, cycles, db, diff
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.graph import Graph, artist_states
from notifier.units import Claim, Pipeline, UnitRunner
from notifier.unitstore import unchanged
from tests.router.conftest import events, fire, q, watch, write

ARTISTS = [str(i) for i in range(1, 7)]


async def _six_watched_artists(pg_url: str, graph_driver: AsyncDriver, graph_db: str) -> None:
    """One user watches ARTISTS; each artist has one release ("<id>00")."""
    user = uuid.uuid4()
    for a in ARTISTS:
        watch(pg_url, user, "artist", a)
    await write(
        graph_driver, graph_db, lambda g: [g.release(f"{a}00", artists=[a]) for a in ARTISTS]
    )


def _claimer(pool: AsyncConnectionPool) -> Claim:
    """Claims for "me" with a 60 s lease, each on a pooled connection."""

    async def claim() -> cycles.Unit | None:
        async with pool.connection() as conn:
            return await cycles.claim(conn, "me", 60)

    return claim


async def _run_cycle(
    pool: AsyncConnectionPool, graph: Graph, pg_url: str, version: str
) -> list[tuple[str, bool]]:
    """Run every unit through a Pipeline; (entity type, read-ahead present) per unit."""
    runner = UnitRunner(pool, graph, "me", email=False, batch=100)
    pipeline = Pipeline(runner, _claimer(pool), stop=asyncio.Event())
    seen: list[tuple[str, bool]] = []
    while (current := await pipeline.next()) is not None:
        ahead = pipeline.ahead
        seen.append((current.unit.entity_type, ahead is not None))
        if ahead is not None:  # claimed (leased to us) and still pending while we write
            assert q(
                pg_url, "SELECT status, claimed_by FROM notifier.diff_units WHERE id = %s",
                ahead.unit.id,
            ) == [("pending", "me")]  # fmt: skip
        assert await current.write(runner) is not None
        current.close()
    async with pool.connection() as conn:
        assert [f.version for f in await cycles.finish_cycles(conn)] == [version]
    return seen


async def test_pipeline_reads_ahead_and_gives_the_same_events(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await _six_watched_artists(pg_url, graph_driver, graph_db)
    graph = Graph(graph_driver, graph_db)
    async with db.pool(router_settings.postgres_conninfo) as pool:
        await fire(pool, router_settings, "v1", unit_size=2)
        seen = await _run_cycle(pool, graph, pg_url, "v1")
        # Never read ahead of the release scan; then one unit ahead until the last.
        assert seen == [("releases", False), ("artist", True), ("artist", True), ("artist", False)]

        def second(g: GraphBuilder) -> None:
            for a in ("1", "3", "5"):
                g.release(f"{a}01", artists=[a])
            g.artist("20", "Alias Twenty").alias("20", "2")
            g.artist("40", None).member("40", "4")

        await write(graph_driver, graph_db, second)
        await fire(pool, router_settings, "v2", unit_size=2)
        await _run_cycle(pool, graph, pg_url, "v2")
    got = [(e[0], e[2], e[3]) for e in events(pg_url, "v2")]
    assert got == [
        ("new_releases", "1", {"new_release_count": 1, "release_ids": ["101"]}),
        ("new_aliases", "2", {"aliases": [{"id": "20", "name": "Alias Twenty"}], "alias_count": 1}),
        ("new_releases", "3", {"new_release_count": 1, "release_ids": ["301"]}),
        ("new_members", "4", {"members": [{"id": "40", "name": None}], "member_count": 1}),
        ("new_releases", "5", {"new_release_count": 1, "release_ids": ["501"]}),
    ]
    # Changed snapshots were rewritten; the unchanged one was left as it was.
    snaps = q(
        pg_url,
        "SELECT entity_id, version, release_ids, alias_ids, member_ids FROM"
        " notifier.entity_snapshots WHERE entity_type = 'artist' ORDER BY entity_id",
    )
    assert snaps == [
        ("1", "v2", [100, 101], [], []),
        ("2", "v2", [200], [20], []),
        ("3", "v2", [300, 301], [], []),
        ("4", "v2", [400], [], [40]),
        ("5", "v2", [500, 501], [], []),
        ("6", "v1", [600], [], []),
    ]


async def test_unit_read_ahead_is_left_over_at_shutdown_and_claimable_again(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await _six_watched_artists(pg_url, graph_driver, graph_db)
    async with db.pool(router_settings.postgres_conninfo) as pool:
        await fire(pool, router_settings, "v1", unit_size=2)
        runner = UnitRunner(pool, Graph(graph_driver, graph_db), "me", email=False, batch=100)
        stop = asyncio.Event()
        pipeline = Pipeline(runner, _claimer(pool), stop=stop)
        releases = await pipeline.next()
        assert releases is not None and await releases.write(runner) is not None
        first = await pipeline.next()
        assert first is not None and pipeline.ahead is not None
        stop.set()
        left = await pipeline.leftover()
        assert left and first.unit.id not in {a.unit.id for a in left} and pipeline.ahead is None
        first.close()
        async with pool.connection() as conn:
            for unit in [first.unit] + [a.unit for a in left]:
                await cycles.release(conn, unit.id, "me", 0, {})
            again = [await cycles.claim(conn, "other", 60) for _ in range(1 + len(left))]
        assert {(u.id, u.attempts) for u in again if u is not None} == {
            (u.id, 2) for u in [first.unit] + [a.unit for a in left]
        }


async def test_the_next_unit_is_claimed_while_the_current_one_is_read(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await _six_watched_artists(pg_url, graph_driver, graph_db)
    claimed: list[cycles.Unit | None] = []
    next_claimed = asyncio.Event()

    class HeldGraph(Graph):
        """A graph whose artist reads end only once a further unit was claimed."""

        async def artist_marks(self, ids: Sequence[str]) -> list[Any]:
            await next_claimed.wait()
            return await super().artist_marks(ids)

    async with db.pool(router_settings.postgres_conninfo) as pool:
        await fire(pool, router_settings, "v1", unit_size=2)
        claim = _claimer(pool)

        async def counted() -> cycles.Unit | None:
            unit = await claim()
            claimed.append(unit)
            if len(claimed) >= 3:  # the releases unit, the first artist unit, the next
                next_claimed.set()
            return unit

        runner = UnitRunner(pool, HeldGraph(graph_driver, graph_db), "me", email=False, batch=100)
        pipeline = Pipeline(runner, counted, stop=asyncio.Event())
        releases = await pipeline.next()
        assert releases is not None and await releases.write(runner) is not None
        # A claim made only after the first read ended would wait forever here.
        first = await asyncio.wait_for(pipeline.next(), 60)
        assert first is not None and first.unit.entity_type == "artist"
        types = [u.entity_type for u in claimed if u is not None]
        assert types[:3] == ["releases", "artist", "artist"]
        written = [first]
        while (current := await pipeline.next()) is not None:
            written.append(current)
        for ahead in written:
            assert await ahead.write(runner) is not None
            ahead.close()
        async with pool.connection() as conn:
            assert [f.version for f in await cycles.finish_cycles(conn)] == ["v1"]
    assert sorted(a for w in written for a in w.unit.entity_ids) == ARTISTS


async def test_artist_read_tolerates_odd_graph_data(
    graph_driver: AsyncDriver, graph_db: str
) -> None:
    def build(g: GraphBuilder) -> None:
        g.artist("1", None).alias("1", "1")  # no name; an alias of itself is ignored
        g.node("Artist", {"id": "2", "name": 42})
        g.member("2", "1").alias("2", "1")
        g.node("Release", {"id": 7, "title": None}).rel("Release", 7, "BY", "Artist", "1")
        g.node("Artist", {"id": 3, "name": "numeric id"})  # never matched by a string id

    await write(graph_driver, graph_db, build)
    graph = Graph(graph_driver, graph_db)
    got = artist_states(await graph.artist_rows(["1", "2", "3", "nope"]))
    assert set(got) == {"1", "2"}
    one = got["1"]
    assert one.name is None and list(one.release_ids) == [7]
    assert list(one.aliases) == [("2", 42)] and list(one.members) == [("2", 42)]
    assert list(got["2"].aliases) == [("1", None)] and list(got["2"].release_ids) == []
    assert artist_states(await graph.artist_rows([])) == {}


def test_unchanged_compares_everything_but_the_version() -> None:
    a = diff.Snapshot("v1", "A", [1, 2], [], None, 2)
    assert unchanged(a, diff.Snapshot("v2", "A", [1, 2], [], None, 2))
    assert unchanged(a, diff.Snapshot("v2", "A", (1, 2), [], None, 2))
    assert not unchanged(a, diff.Snapshot("v2", "B", [1, 2], [], None, 2))
    assert not unchanged(a, diff.Snapshot("v2", "A", [1, 3], [], None, 2))
    assert not unchanged(a, diff.Snapshot("v2", "A", [1, 2], None, None, 2))
    assert not unchanged(a, diff.Snapshot("v2", "A", [1, 2], [], [], 2))
    assert not unchanged(a, diff.Snapshot("v2", "A", [1, 2], [], None, 3))
