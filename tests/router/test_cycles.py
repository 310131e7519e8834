"""The router end to end: completion messages -> cycle -> diff -> events -> feed/outbox."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import psycopg
import pytest
from neo4j import AsyncDriver

from notifier import config, cycles, db
from notifier.api.feed import UNREAD_COUNT
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.graph import Graph
from notifier.releases import Stopping
from notifier.router import REGISTRY, Router, queue_names
from notifier.units import UnitRunner
from tests.router.conftest import (
    Publish,
    completion,
    cycle_done,
    events,
    feed,
    q,
    signal_all,
    wait_until,
    watch,
    write,
)


async def test_artist_baseline_then_new_releases_aliases_members(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    watch(pg_url, alice, "artist", "1")
    watch(pg_url, bob, "artist", "2")

    def first(g: GraphBuilder) -> None:
        g.artist("1", "John Coltrane").artist("2", "Miles Davis").artist("5", "Trane")
        g.alias("5", "1")
        g.release("100", artists=["1"]).release("200", artists=["2"])

    await write(graph_driver, graph_db, first)
    await signal_all(publish, "v1")
    stats = await cycle_done(pg_url, "v1")
    assert events(pg_url, "v1") == []  # baseline: what existed is not news
    assert stats["baseline"] == 2

    def second(g: GraphBuilder) -> None:
        g.release("101", artists=["1"]).release("102", artists=["1"])
        g.artist("6", "Coltrane alias").alias("1", "6")  # ALIAS_OF either way round
        g.artist("7", "Member").member("7", "1")

    await write(graph_driver, graph_db, second)
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    assert events(pg_url, "v2") == [
        (
            "new_aliases",
            "artist",
            "1",
            {"aliases": [{"id": "6", "name": "Coltrane alias"}], "alias_count": 1},
        ),
        (
            "new_members",
            "artist",
            "1",
            {"members": [{"id": "7", "name": "Member"}], "member_count": 1},
        ),
        ("new_releases", "artist", "1", {"new_release_count": 2, "release_ids": ["101", "102"]}),
    ]
    assert feed(pg_url, alice) == [
        ("new_aliases", "1", "v2"),
        ("new_members", "1", "v2"),
        ("new_releases", "1", "v2"),
    ]
    assert feed(pg_url, bob) == []  # artist 2 did not change

    # Third cycle, nothing changed: nothing new.
    await signal_all(publish, "v3")
    await cycle_done(pg_url, "v3")
    assert events(pg_url, "v3") == []
    assert q(pg_url, UNREAD_COUNT, alice)[0][0] == 3


async def test_label_new_releases_include_sublabels(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "label", "10")
    watch(pg_url, user, "label", "20")

    def first(g: GraphBuilder) -> None:
        g.label("10", "Impulse!").label("11", "Impulse Sub", parent="10")
        g.label("12", "Sub of sub", parent="11").label("20", "Blue Note")
        g.release("100", labels=["10"]).release("200", labels=["20"])

    await write(graph_driver, graph_db, first)
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    assert events(pg_url, "v1") == []

    def second(g: GraphBuilder) -> None:
        g.release("101", labels=["10"]).release("102", labels=["11"])
        g.release("103", labels=["12"]).release("300", labels=["99"])  # label 99: unwatched

    await write(graph_driver, graph_db, second)
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    assert events(pg_url, "v2") == [
        (
            "new_releases",
            "label",
            "10",
            {"new_release_count": 3, "release_ids": ["101", "102", "103"]},
        ),
    ]
    assert feed(pg_url, user) == [("new_releases", "10", "v2")]


async def test_genre_style_thresholds_and_notable_releases(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    explicit, default, high, style_user = (uuid.uuid4() for _ in range(4))
    watch(pg_url, explicit, "genre", "Jazz", {"threshold": 3})
    watch(pg_url, default, "genre", "Jazz")
    watch(pg_url, high, "genre", "Jazz", {"threshold": 1000})
    watch(pg_url, style_user, "style", "Bop", {"threshold": 2})
    watch(pg_url, style_user, "genre", "Rock")

    def first(g: GraphBuilder) -> None:
        g.style("Bop", genre="Jazz").genre("Rock")
        for i in range(2):
            g.release(str(100 + i), genres=["Jazz"], artists=["1"])
        g.release("900", genres=["Rock"], artists=["9"])

    await write(graph_driver, graph_db, first)
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    assert events(pg_url, "v1") == []

    def second(g: GraphBuilder) -> None:
        # Artist 2 is bigger than artist 1 in the graph: its release ranks first.
        for i in range(5):
            g.release(str(500 + i), artists=["2"])
        g.release("110", genres=["Jazz"], styles=["Bop"], artists=["1"])
        g.release("111", genres=["Jazz"], styles=["Bop"], artists=["2"])
        g.release("112", genres=["Jazz"], artists=["1"])

    await write(graph_driver, graph_db, second)
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    assert events(pg_url, "v2") == [
        (
            "notable_releases",
            "genre",
            "Jazz",
            {"release_ids": ["111", "110", "112"], "new_release_count": 3},
        ),
        (
            "release_count_threshold",
            "genre",
            "Jazz",
            {"threshold": 3, "previous_count": 2, "release_count": 5},
        ),
        (
            "notable_releases",
            "style",
            "Bop",
            {"release_ids": ["111", "110"], "new_release_count": 2},
        ),
        (
            "release_count_threshold",
            "style",
            "Bop",
            {"threshold": 2, "previous_count": 0, "release_count": 2},
        ),
    ]
    assert feed(pg_url, explicit) == [
        ("notable_releases", "Jazz", "v2"),
        ("release_count_threshold", "Jazz", "v2"),
    ]
    # No default milestone (100, ...) was crossed; 1000 was not reached.
    assert feed(pg_url, default) == [("notable_releases", "Jazz", "v2")]
    assert feed(pg_url, high) == [("notable_releases", "Jazz", "v2")]
    # Rock did not change: nothing for it.
    assert feed(pg_url, style_user) == [
        ("notable_releases", "Bop", "v2"),
        ("release_count_threshold", "Bop", "v2"),
    ]


async def test_search_match_percolates_only_new_releases(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    u1, u2, u3, u4 = (uuid.uuid4() for _ in range(4))
    watch(pg_url, u1, "search", "s-love", {"q": "love SUPREME"})
    watch(
        pg_url,
        u2,
        "search",
        "s-jazz-lp",
        {"genre": "jazz", "format": "lp", "year_from": 1960, "year_to": 1969},
    )
    watch(pg_url, u3, "search", "s-label", {"label": "impulse!", "artist": "1"})
    watch(pg_url, u4, "search", "s-none", {"q": "nothing matches this"})

    def first(g: GraphBuilder) -> None:
        g.artist("1", "John Coltrane").label("10", "Impulse!")
        g.release(
            "100",
            "A Love Supreme",
            year=1965,
            formats=["LP"],
            artists=["1"],
            labels=["10"],
            genres=["Jazz"],
        )

    await write(graph_driver, graph_db, first)
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    assert events(pg_url, "v1") == []

    def second(g: GraphBuilder) -> None:
        g.artist("1", "John Coltrane").label("10", "Impulse!")  # keep their names
        g.release(
            "101",
            "Love Supreme Live",
            year=1966,
            formats=["CD"],
            artists=["1"],
            labels=["10"],
            genres=["Jazz"],
        )
        g.release("102", "Ascension", year=1965, formats=["LP", "Vinyl"], genres=["Jazz"])
        g.release("103", "Later", year=1970, formats=["LP"], genres=["Jazz"])

    await write(graph_driver, graph_db, second)
    await signal_all(publish, "v2")
    await cycle_done(pg_url, "v2")
    got = {(e[2]): e[3] for e in events(pg_url, "v2")}
    # Release 100 matches "love supreme" too, but it is not new in v2.
    assert got == {
        "s-love": {
            "match_count": 1,
            "matches": [{"entity_type": "release", "id": "101", "name": "Love Supreme Live"}],
        },
        "s-jazz-lp": {
            "match_count": 1,
            "matches": [{"entity_type": "release", "id": "102", "name": "Ascension"}],
        },
        "s-label": {
            "match_count": 1,
            "matches": [{"entity_type": "release", "id": "101", "name": "Love Supreme Live"}],
        },
    }
    assert feed(pg_url, u1) == [("search_match", "s-love", "v2")]
    assert feed(pg_url, u4) == []


async def test_feed_preference_off_and_webhook_outbox(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    quiet, hooked, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    watch(pg_url, quiet, "artist", "1")
    watch(pg_url, hooked, "artist", "1")
    # A watch created after the cycle started does not receive it.
    q(
        pg_url,
        "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, created_at)"
        " VALUES (%s, 'artist', '1', now() + interval '1 hour')",
        late,
    )
    q(
        pg_url,
        "INSERT INTO notifier.preferences (user_id, event, feed, webhook)"
        " VALUES (%s, 'new_releases', false, false)",
        quiet,
    )
    q(
        pg_url,
        "INSERT INTO notifier.webhook_configs (user_id, url, secret)"
        " VALUES (%s, 'https://example.com/hook', 'whsec_c2VjcmV0')",
        hooked,
    )
    await write(graph_driver, graph_db, lambda g: g.release("100", artists=["1"]))
    await signal_all(publish, "v1")
    await cycle_done(pg_url, "v1")
    await write(graph_driver, graph_db, lambda g: g.release("101", artists=["1"]))
    await signal_all(publish, "v2")
    stats = await cycle_done(pg_url, "v2")
    assert [e[0] for e in events(pg_url, "v2")] == ["new_releases"]
    assert feed(pg_url, quiet) == []
    assert feed(pg_url, hooked) == [("new_releases", "1", "v2")]
    assert feed(pg_url, late) == []
    outbox = q(pg_url, "SELECT user_id, channel, status FROM notifier.outbox")
    assert outbox == [(hooked, "webhook", "pending")]
    assert stats["feed_rows"] == 1 and stats["outbox_rows"] == 1 and stats["events"] == 1


async def test_bad_graph_data_is_counted_not_fatal(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    user = uuid.uuid4()
    for artist in ("1", "2", "gone", "x-9"):
        watch(pg_url, user, "artist", artist)
    watch(pg_url, user, "label", "nolabel")
    watch(pg_url, user, "genre", "Nope")
    watch(pg_url, user, "search", "bad-search", {"year_from": "nineteen"})

    def first(g: GraphBuilder) -> None:
        g.artist("1", None).artist("x-9", "Odd id").artist("gone", "Will vanish")
        g.release("100", artists=["1"])
        g.node("Release", {"id": "abc", "title": None, "year": "1999", "formats": "LP"})
        g.rel("Release", "abc", "BY", "Artist", "1")

    await write(graph_driver, graph_db, first)
    await signal_all(publish, "v1")
    stats1 = await cycle_done(pg_url, "v1")
    assert stats1["missing_name"] == 1
    assert stats1["non_numeric_release_ids"] >= 2  # in artist 1's set and in the scan
    assert stats1["vanished"] == 3  # artist 2, the label and the genre never existed
    assert stats1["invalid_search"] == 1

    async with graph_driver.session(database=graph_db) as s:
        await s.run("MATCH (a:Artist {id: 'gone'}) DETACH DELETE a")

    def second(g: GraphBuilder) -> None:
        g.node("Release", {"id": "007", "title": "Bond", "year": 1962})  # non-canonical id
        g.rel("Release", "007", "BY", "Artist", "1")
        g.release("101", artists=["1", "x-9"], year=None)
        # Formats that are not names: Neo4j stores no null and no mixed types in a
        # list property (null elements: tests/unit/test_release_row.py).
        g.node("Release", {"id": "102", "title": 42, "year": "x", "formats": [1, 2]})
        g.rel("Release", "102", "BY", "Artist", "1")

    await write(graph_driver, graph_db, second)
    await signal_all(publish, "v2")
    stats2 = await cycle_done(pg_url, "v2")
    assert stats2["vanished"] == 4  # and now artist "gone"
    assert stats2["bad_release_year"] == 1
    assert [(e[0], e[2], e[3]) for e in events(pg_url, "v2")] == [
        ("new_releases", "1", {"new_release_count": 2, "release_ids": ["101", "102"]}),
        ("new_releases", "x-9", {"new_release_count": 1, "release_ids": ["101"]}),
    ]
    # The vanished artist keeps its last known snapshot (not rewritten).
    assert q(
        pg_url,
        "SELECT version, entity_name FROM notifier.entity_snapshots WHERE entity_id = 'gone'",
    ) == [("v1", "Will vanish")]


def _recorded() -> float:
    return REGISTRY.get_sample_value("notifier_router_messages_total", {"outcome": "recorded"}) or 0


async def test_duplicate_and_out_of_order_signals_fire_once(
    router: Router, publish: Publish, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "artist", "1")
    await write(graph_driver, graph_db, lambda g: g.release("100", artists=["1"]))
    recorded0 = _recorded()
    await publish(completion("tableinator", "v1"))
    await publish(completion("tableinator", "v1"))
    await publish(completion("other-service", "v1"))
    await publish(completion("tableinator", "v0"))  # another version, never complete
    await wait_until(
        lambda: len(q(pg_url, "SELECT 1 FROM notifier.cycle_signals")) == 3, what="signals recorded"
    )
    assert q(pg_url, "SELECT status FROM notifier.cycles WHERE version = 'v1'") == [("collecting",)]
    await publish(completion("graphinator", "v1"))
    await publish(completion("graphinator", "v1"))
    await publish(completion("tableinator", "v1"))
    await cycle_done(pg_url, "v1")
    await wait_until(lambda: _recorded() - recorded0 == 7, what="late duplicates consumed")
    assert len(q(pg_url, "SELECT 1 FROM notifier.cycle_signals")) == 4
    assert q(pg_url, "SELECT version, status FROM notifier.cycles ORDER BY version") == [
        ("v0", "collecting"),
        ("v1", "done"),
    ]
    assert q(
        pg_url,
        "SELECT entity_type, count(*) FROM notifier.diff_units GROUP BY entity_type ORDER BY 1",
    ) == [("artist", 1), ("releases", 1)]


async def test_malformed_messages_are_dead_lettered_and_router_lives(
    router: Router,
    publish: Publish,
    pg_url: str,
    rabbit_server: services.RabbitService,
    exchange_name: str,
) -> None:
    bad = [
        b"{not json",
        b"[1, 2, 3]",
        b'"just a string"',
        json.dumps({"type": "import_completed", "service": "graphinator"}).encode(),
        json.dumps({"type": "import_completed", "service": 7, "version": "v1"}).encode(),
        json.dumps({"type": "something_else", "service": "graphinator", "version": "v1"}).encode(),
        json.dumps(
            {"type": "import_completed", "service": "g", "version": "bad version/../"}
        ).encode(),
        json.dumps(
            {
                "type": "import_completed",
                "service": "g",
                "version": "v1",
                "completed_at": "yesterday",
            }
        ).encode(),
        b"\xff\xfe\x00\x01binary",
        json.dumps(
            {"type": "import_completed", "service": "g", "version": "v1", "padding": "x" * 70_000}
        ).encode(),
    ]
    for body in bad:
        await publish(body)
    _, _, dlq_name = queue_names(exchange_name)
    conn = await aio_pika.connect(rabbit_server.url)
    try:
        channel = await conn.channel()

        async def dead() -> list[bytes]:
            queue = await channel.declare_queue(dlq_name, passive=True)
            got = []
            while (m := await queue.get(no_ack=True, fail=False)) is not None:
                got.append(m.body)
            return got

        dead_bodies: list[bytes] = []
        for _ in range(600):
            dead_bodies += await dead()
            if len(dead_bodies) >= len(bad):
                break
            await asyncio.sleep(0.05)
        assert sorted(dead_bodies) == sorted(bad)
    finally:
        await conn.close()
    assert q(pg_url, "SELECT count(*) FROM notifier.cycle_signals") == [(0,)]
    # Unknown fields are ignored (even ones PostgreSQL's jsonb could not store).
    await publish({**completion("graphinator", "v1"), "extra": {"nested": "\u0000"}})
    await publish(completion("tableinator", "v1"))
    await cycle_done(pg_url, "v1")
    messages = q(pg_url, "SELECT message FROM notifier.cycle_signals ORDER BY service")
    assert messages[0][0] == {
        "type": "import_completed",
        "service": "graphinator",
        "version": "v1",
        "completed_at": "2026-02-03T04:05:06Z",
    }


async def test_failing_units_are_given_back_or_abandoned_after_max_attempts(
    router_env: dict[str, str], pg_url: str
) -> None:
    user = uuid.uuid4()
    watch(pg_url, user, "artist", "1")
    settings = config.load(dict(router_env, NEO4J_DATABASE="no_such_graph_db"), "router")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        for service in ("graphinator", "tableinator"):
            await cycles.record_signal(
                conn,
                version="v1",
                service=service,
                completed_at=None,
                message={},
                required=settings.required_services,
                unit_size=10,
            )
    # One unit is on its last attempt, the other has attempts left.
    q(
        pg_url,
        "UPDATE notifier.diff_units SET attempts = %s WHERE entity_type = 'releases'",
        cycles.MAX_ATTEMPTS - 1,
    )
    r = Router(settings)
    task = asyncio.create_task(r.run(serve_http=False))
    try:
        await wait_until(
            lambda: (
                q(
                    pg_url,
                    "SELECT status, stats ? 'failed_units' FROM notifier.diff_units"
                    " WHERE entity_type = 'releases'",
                )
                == [("done", True)]
                and q(
                    pg_url,
                    "SELECT stats ? 'last_error', lease_until > now() FROM"
                    " notifier.diff_units WHERE entity_type = 'artist'",
                )
                == [(True, True)]
            ),
            what="one unit abandoned, the other given back",
        )
    finally:
        r.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
    assert q(pg_url, "SELECT status FROM notifier.cycles") == [("running",)]


async def test_release_scan_gives_itself_back_when_stopping(
    router_settings: config.Settings, pg_url: str, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await write(graph_driver, graph_db, lambda g: g.release("100").release("101"))
    pool = db.pool(router_settings.postgres_conninfo)
    await pool.open()
    try:
        async with pool.connection() as conn:
            for service in ("graphinator", "tableinator"):
                await cycles.record_signal(
                    conn,
                    version="v1",
                    service=service,
                    completed_at=None,
                    message={},
                    required=router_settings.required_services,
                    unit_size=10,
                )
            unit = await cycles.claim(conn, "me", 60)
        assert unit is not None and unit.entity_type == "releases"
        stop = asyncio.Event()
        stop.set()
        runner = UnitRunner(
            pool, Graph(graph_driver, graph_db), "me", email=False, batch=1, stop=stop
        )
        with pytest.raises(Stopping):
            await runner.run(unit)
        async with pool.connection() as conn:
            await cycles.release(conn, unit.id, "me", 0, {})
            again = await cycles.claim(conn, "other", 60)
        assert again is not None and again.id == unit.id and again.attempts == 2
    finally:
        await pool.close()
