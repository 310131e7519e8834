"""Artist units compared in PostgreSQL by graph-row digest (unitstore.COMPARE_ARTISTS),
against the Python diff of every artist (the path of rows without a digest), and
snapshots left as they are while unchanged (a cycle knows from the previous
cycle's units which entities it diffed), on real PostgreSQL and Bolt graph."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import neo4j.time
import psycopg
import pytest
from neo4j import AsyncDriver
from psycopg_pool import AsyncConnectionPool

from notifier import config, cycles, db, fanout, units, unitstore
from notifier.devkit import services
from notifier.graph import Graph
from tests.conftest import _new_database
from tests.router.conftest import events, fire, q, wait_until, watch, write

ARTISTS = [str(i) for i in range(1, 13)]


async def _cycle(
    pool: AsyncConnectionPool, graph: Graph, settings: config.Settings, version: str
) -> list[dict[str, Any]]:
    """Fire `version` and run its units one by one; the artist units' stats."""
    await fire(pool, settings, version, unit_size=5)
    return await _run(pool, graph, [version])


async def _run(
    pool: AsyncConnectionPool, graph: Graph, versions: list[str]
) -> list[dict[str, Any]]:
    """Run the fired cycles `versions` to their end, in turn; the artist units' stats."""
    runner = units.UnitRunner(pool, graph, "me", email=False, batch=100)
    stats: list[dict[str, Any]] = []
    async with pool.connection() as conn:
        for version in versions:
            while (unit := await cycles.claim(conn, "me", 60)) is not None:
                assert unit.version == version
                got = await runner.run(unit)
                assert got is not None
                if unit.entity_type == "artist":
                    stats.append(got)
            assert [f.version for f in await cycles.finish_cycles(conn)] == [version]
    return stats


def _total(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0)) for s in stats)


def _snapshots(pg_url: str) -> list[tuple[Any, ...]]:
    return q(
        pg_url,
        "SELECT entity_id, version, entity_name, release_ids, alias_ids, member_ids,"
        " release_count FROM notifier.entity_snapshots ORDER BY entity_id",
    )


def _digests(pg_url: str) -> dict[str, bytes | None]:
    rows = q(pg_url, "SELECT entity_id, graph_digest FROM notifier.entity_snapshots")
    return {r[0]: r[1] for r in rows}


def _fresh(pg_url: str, version: str) -> list[list[str] | None]:
    """The fresh_ids of `version`'s artist units, in order."""
    sql = "SELECT fresh_ids FROM notifier.diff_units WHERE version = %s AND entity_type = 'artist'"
    return [r[0] for r in q(pg_url, sql + " ORDER BY seq", version)]


async def _watched(pg_url: str, graph_driver: AsyncDriver, graph_db: str) -> None:
    """One user watches ARTISTS; each has two releases, 3 an alias, 4 a member."""
    user = uuid.uuid4()
    for a in ARTISTS:
        watch(pg_url, user, "artist", a)

    def build(g: Any) -> None:
        for a in ARTISTS:
            g.artist(a, f"Artist {a}")
            g.release(f"{a}00", artists=[a]).release(f"{a}01", artists=[a])
        g.artist("30", "Alias").alias("30", "3").artist("40", "Member").member("40", "4")

    await write(graph_driver, graph_db, build)


@contextlib.asynccontextmanager
async def _watching(
    settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> AsyncIterator[tuple[Graph, AsyncConnectionPool]]:
    """`_watched`, then the graph and a pool on the test database."""
    await _watched(pg_url, graph_driver, graph_db)
    async with db.pool(settings.postgres_conninfo) as pool:
        yield Graph(graph_driver, graph_db), pool


@contextlib.asynccontextmanager
async def _v2_fired(
    settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> AsyncIterator[tuple[Graph, AsyncConnectionPool]]:
    """`_watching`, cycle v1 run, artist 1 given release 102, then v2 fired (units of 5)."""
    async with _watching(settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await _cycle(pool, graph, settings, "v1")
        await write(graph_driver, graph_db, lambda g: g.release("102", artists=["1"]))
        await fire(pool, settings, "v2", unit_size=5)
        yield graph, pool


async def test_unchanged_artists_are_recognised_in_the_database_and_left_as_they_are(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        first = await _cycle(pool, graph, router_settings, "v1")
        assert _total(first, "baseline") == 12 and _total(first, "unchanged_in_db") == 0
        stored = _digests(pg_url)
        assert all(isinstance(d, bytes) and len(d) == 32 for d in stored.values())

        await write(graph_driver, graph_db, lambda g: g.release("102", artists=["1"]))
        second = await _cycle(pool, graph, router_settings, "v2")
    assert _total(second, "unchanged_in_db") == 11
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "1")]
    versions = {s[0]: s[1] for s in _snapshots(pg_url)}
    assert versions == {a: "v2" if a == "1" else "v1" for a in ARTISTS}
    after = _digests(pg_url)
    assert after["1"] != stored["1"] and {k: v for k, v in after.items() if k != "1"} == {
        k: v for k, v in stored.items() if k != "1"
    }


async def test_odd_rows_keep_no_digest_and_are_diffed_in_python_every_cycle(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:

    def odd(g: Any) -> None:
        g.artist("5", None)  # missing name
        g.release("x6", artists=["6"])  # a release id that is not a number

    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await write(graph_driver, graph_db, odd)
        await _cycle(pool, graph, router_settings, "v1")
        assert [k for k, d in _digests(pg_url).items() if d is None] in (["5", "6"], ["6", "5"])
        second = await _cycle(pool, graph, router_settings, "v2")
    assert _total(second, "unchanged_in_db") == 10
    assert _total(second, "missing_name") == 1 and _total(second, "non_numeric_release_ids") == 1
    assert events(pg_url, "v2") == []


async def test_a_nul_in_a_name_is_compared_like_any_other(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await write(graph_driver, graph_db, lambda g: g.artist("2", "Nul\x00Name"))
        await _cycle(pool, graph, router_settings, "v1")
        await write(graph_driver, graph_db, lambda g: g.release("302", artists=["3"]))
        second = await _cycle(pool, graph, router_settings, "v2")
    # Units of 5 ids in text order: 1, 10, 11, 12 and 2 (the NUL); 3 (changed),
    # 4, 5, 6, 7; then 8, 9.
    assert [s.get("unchanged_in_db", 0) for s in second] == [5, 4, 2]
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "3")]
    assert q(pg_url, "SELECT entity_name FROM notifier.entity_snapshots WHERE entity_id = '2'") == [
        ("NulName",)
    ]


def test_row_digests_hash_each_row_as_json_in_unit_order() -> None:
    row = ["1", "A\x00", ["10"], [["2", "B"]], []]
    json_digest = hashlib.sha256(b'["1","A\\u0000",["10"],[["2","B"]],[]]').digest()
    assert unitstore.row_digests(["1"], [row]) == json_digest
    no = unitstore.NO_DIGEST
    odd = [
        ["3", neo4j.time.Date(2020, 1, 1), [], [], []],
        ["4", object(), [], [], []],
        [7, "not a string id", [], [], []],
        ["5", "old", [], [], []],
        ["5", "B", [], [], []],
    ]
    got = unitstore.row_digests(["9", "1", "3", "4", "7", "5"], [row, *odd])
    assert len(got) == 6 * unitstore.DIGEST_SIZE
    assert got == no + json_digest + no + no + no + unitstore.row_digests(["5"], [odd[-1]])


@contextlib.contextmanager
def _second_database(pg_server: services.PostgresService, template: str) -> Iterator[str]:
    gen = _new_database(pg_server, template)
    try:
        yield next(gen)
    finally:
        gen.close()


async def test_the_database_compare_finds_what_the_python_diff_finds(
    router_env: dict[str, str],
    router_settings: config.Settings,
    pg_url: str,
    pg_server: services.PostgresService,
    pg_template: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same cycles over the same graph: compared in PostgreSQL, and all in Python."""
    graph = Graph(graph_driver, graph_db)
    changes: list[Any] = [
        lambda g: g.release("103", artists=["1"]).artist("2", "Renamed"),
        lambda g: g.artist("31", "Second alias").alias("31", "3").alias("3", "3"),
        lambda g: g.artist("41", "Second member").member("41", "4").artist("5", None),
        lambda g: g.release("x7", artists=["7"]).release("0800", artists=["8"]),
        lambda g: g.artist("5", "Named again").release("905", artists=["9", "10"]),
    ]
    drop = "MATCH (r:Release {id: $id}) DETACH DELETE r"
    with _second_database(pg_server, pg_template) as python_url:
        await _watched(pg_url, graph_driver, graph_db)
        for a in ARTISTS:
            watch(python_url, uuid.uuid4(), "artist", a)
        python_env = dict(router_env, POSTGRES_DATABASE=python_url.rsplit("/", 1)[1])
        python_settings = config.load(python_env, "router")
        async with (
            db.pool(router_settings.postgres_conninfo) as ours,
            db.pool(python_settings.postgres_conninfo) as python,
        ):
            for n, change in enumerate([None, *changes]):
                if change is not None:
                    await write(graph_driver, graph_db, change)
                if n == 3:
                    async with graph_driver.session(database=graph_db) as s:
                        await (await s.run(drop, id="1100")).consume()
                version = f"v{n}"
                stats = await _cycle(ours, graph, router_settings, version)
                with monkeypatch.context() as m:  # no digests: every artist diffed in Python
                    m.setattr(
                        unitstore, "row_digests", lambda ids, rows: unitstore.NO_DIGEST * len(ids)
                    )
                    await _cycle(python, graph, python_settings, version)
                assert events(pg_url, version) == events(python_url, version), version
                # The same states (a row change the snapshot does not show, as
                # a self-alias, rewrites it with its new digest, so versions may differ).
                assert [s[:1] + s[2:] for s in _snapshots(pg_url)] == [
                    s[:1] + s[2:] for s in _snapshots(python_url)
                ], version
                if n:
                    assert _total(stats, "unchanged_in_db") > 0
        assert events(pg_url, "v1") and events(pg_url, "v5")


async def test_snapshots_without_a_digest_get_one_at_their_next_cycle(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """As after migration 007: no digest yet, so one cycle in Python, then compared in SQL."""
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await _cycle(pool, graph, router_settings, "v1")
        q(pg_url, "UPDATE notifier.entity_snapshots SET graph_digest = NULL")
        second = await _cycle(pool, graph, router_settings, "v2")
        assert _total(second, "unchanged_in_db") == 0 and events(pg_url, "v2") == []
        assert None not in _digests(pg_url).values()
        third = await _cycle(pool, graph, router_settings, "v3")
    assert _total(third, "unchanged_in_db") == 12 and events(pg_url, "v3") == []
    assert {s[1] for s in _snapshots(pg_url)} == {"v2"}  # rewritten once, for the digest


async def test_an_artist_not_diffed_in_the_previous_cycle_is_a_baseline_again(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """Unwatched for one cycle: what changed meanwhile is not news when it is watched again."""
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await _cycle(pool, graph, router_settings, "v1")
        q(pg_url, "DELETE FROM notifier.watchlists WHERE entity_id = '1'")
        await write(graph_driver, graph_db, lambda g: g.release("102", artists=["1", "2"]))
        await _cycle(pool, graph, router_settings, "v2")
        assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "2")]
        assert _fresh(pg_url, "v2") == [[], [], []]

        watch(pg_url, uuid.uuid4(), "artist", "1")
        await write(graph_driver, graph_db, lambda g: g.release("103", artists=["1"]))
        third = await _cycle(pool, graph, router_settings, "v3")
        assert events(pg_url, "v3") == [] and _total(third, "baseline") == 1
        assert _fresh(pg_url, "v3") == [["1"], [], []]

        await write(graph_driver, graph_db, lambda g: g.release("104", artists=["1"]))
        await _cycle(pool, graph, router_settings, "v4")
    assert [(e[0], e[2], e[3]["release_ids"]) for e in events(pg_url, "v4")] == [
        ("new_releases", "1", ["104"])
    ]


async def test_a_cycle_fired_while_the_previous_one_runs_continues_it(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """v2's units are made while v1's are still pending: v1's artists are not fresh in v2."""
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await fire(pool, router_settings, "v1", unit_size=5)
        await write(graph_driver, graph_db, lambda g: g.release("102", artists=["1"]))
        await fire(pool, router_settings, "v2", unit_size=5)
        await _run(pool, graph, ["v1", "v2"])
    assert _fresh(pg_url, "v1") == [None] * 3 and _fresh(pg_url, "v2") == [[], [], []]
    # v1 (the baseline) read the graph with release 102 already there.
    assert events(pg_url, "v1") == [] and events(pg_url, "v2") == []


async def test_units_made_before_migration_008_use_the_snapshot_versions(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """fresh_ids NULL (a cycle fired before the migration): the snapshot's version alone says."""
    async with _v2_fired(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        q(pg_url, "UPDATE notifier.diff_units SET fresh_ids = NULL WHERE version = 'v2'")
        # As the stamping code left it: every snapshot at v1, but artist 2's at an older cycle.
        q(pg_url, "UPDATE notifier.entity_snapshots SET version = 'v0' WHERE entity_id = '2'")
        await write(graph_driver, graph_db, lambda g: g.release("202", artists=["2"]))
        second = await _run(pool, graph, ["v2"])
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "1")]
    assert _total(second, "baseline") == 1  # artist 2: not diffed in v1 by that rule


async def test_snapshots_no_unit_of_a_finished_cycle_holds_are_deleted(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """Unwatched artists' snapshots go when a cycle finishes; until then, the range compare
    (a unit's smallest to largest id) passes over a snapshot among its ids that is not one."""
    async with _watching(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        await _cycle(pool, graph, router_settings, "v1")
        q(pg_url, "DELETE FROM notifier.watchlists WHERE entity_id = '12'")
        # As if 105 had been watched before: between 10 and 11, in the first unit's range.
        q(
            pg_url,
            "INSERT INTO notifier.entity_snapshots (entity_type, entity_id, entity_name, version,"
            " release_ids, alias_ids, member_ids, release_count, graph_digest)"
            " SELECT entity_type, '105', entity_name, version, release_ids, alias_ids,"
            " member_ids, release_count, graph_digest FROM notifier.entity_snapshots"
            " WHERE entity_id = '11'",
        )
        await write(graph_driver, graph_db, lambda g: g.release("1102", artists=["11", "105"]))
        await fire(pool, router_settings, "v2", unit_size=5)
        async with pool.connection() as conn:
            assert await cycles.finish_cycles(conn) == []  # v2 runs: nothing is deleted yet
        assert len(_snapshots(pg_url)) == 13
        second = await _run(pool, graph, ["v2"])
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "11")]
    assert [s.get("unchanged_in_db", 0) for s in second] == [4, 5, 1]  # 1, 10, 11, 2, 3 | 4-8 | 9
    assert [s[0] for s in _snapshots(pg_url)] == sorted(a for a in ARTISTS if a != "12")


async def test_a_unit_taken_over_after_its_reads_writes_nothing(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """Its lease expired and another router claimed it: the write statement refuses it."""
    async with _v2_fired(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        before = _snapshots(pg_url)
        runner = units.UnitRunner(pool, graph, "me", email=False, batch=100)
        async with pool.connection() as conn:
            releases = await cycles.claim(conn, "me", 60)
            assert releases is not None and await runner.run(releases) is not None
            unit = await cycles.claim(conn, "me", 60)
        assert unit is not None and unit.entity_ids[0] == "1"
        reading = await runner.read(unit)
        q(pg_url, "UPDATE notifier.diff_units SET claimed_by = 'other' WHERE id = %s", unit.id)
        assert await runner.write(unit, reading) is None
        assert events(pg_url, "v2") == [] and _snapshots(pg_url) == before
        assert q(pg_url, "SELECT status FROM notifier.diff_units WHERE id = %s", unit.id) == [
            ("pending",)
        ]
        q(pg_url, "UPDATE notifier.diff_units SET claimed_by = 'me' WHERE id = %s", unit.id)
        assert await runner.write(unit, reading) is not None  # ours again: written once
        assert await runner.write(unit, reading) is None  # done: not again
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "1")]


async def test_a_unit_write_waits_for_an_unread_counter_fold(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    """While a fold holds the feed lock exclusively, no unit writes feed rows (sql/005)."""
    async with _v2_fired(router_settings, pg_url, graph_driver, graph_db) as (graph, pool):
        with psycopg.connect(pg_url) as fold:  # a transaction, as api.feed.fold's
            fold.execute("SELECT pg_advisory_xact_lock(%s)", (fanout.FEED_LOCK_KEY,))
            running = asyncio.create_task(_run(pool, graph, ["v2"]))
            sql = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            await wait_until(lambda: q(pg_url, sql) == [(1,)], 30, "a unit waiting")
            assert not running.done() and events(pg_url, "v2") == []
        await running
    assert [(e[0], e[2]) for e in events(pg_url, "v2")] == [("new_releases", "1")]
