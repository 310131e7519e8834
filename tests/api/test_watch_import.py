"""POST /api/watchlist/import: watches from the user's collection or wantlist in the graph."""

from __future__ import annotations

import time
import uuid

import psycopg
from neo4j import AsyncDriver

from notifier.api.watchlist import IMPORT_QUERIES, MAX_WATCHES_PER_USER
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from tests.api.conftest import Api, bearer
from tests.router.test_profile import operators

IMPORT = "/api/watchlist/import"


def _watches(pg_url: str, user: uuid.UUID) -> dict[tuple[str, str], str | None]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT entity_type, entity_id, entity_name, options FROM notifier.watchlists "
            "WHERE user_id = %s",
            (user,),
        ).fetchall()
    assert all(r[3] == {} for r in rows)
    return {(t, i): n for t, i, n, _ in rows}


def _small_collection(user: uuid.UUID, other: uuid.UUID) -> GraphBuilder:
    g = GraphBuilder(platform=True)
    g.artist("1", "John Coltrane").artist("2", "Alice Coltrane").label("10", "Impulse!")
    g.label("11", "Blue Note")
    # A master's own BY edge is not a release of the collection.
    g.master("1000", "A Love Supreme", artists=["1"])
    g.release("100", "A Love Supreme", artists=["1"], labels=["10"], master="1000")
    g.release("101", "Ballads", artists=["1"], labels=["10"])
    g.release("102", "Blue Train", artists=["1"], labels=["11"])
    g.release("200", "Journey", artists=["2"], labels=["10"])
    g.release("300", None, artists=["3"], labels=["12"])  # stubs: no names
    g.release("400", "Wanted", artists=["2", "4"], labels=["11"])
    # Two copies of release 100 (two COLLECTED edges) count as one release.
    g.user(str(user), "alice", collected=["100", "100", "101", "102", "200", "300"],
           wants=["400"])  # fmt: skip
    g.user(str(other), "bob", collected=["400"])
    return g


async def test_import_collection_and_wantlist(
    api: Api, user: uuid.UUID, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    other = uuid.uuid4()
    await _small_collection(user, other).write(graph_driver, platform_graph)
    h = bearer(user)
    body = {"source": "collection", "entity_types": ["artist", "label"], "min_releases": 2}
    r = await api.client.post(IMPORT, json=body, headers=h)
    assert r.status_code == 200, r.text
    # Artist 1: releases 100, 101, 102; label 10: 100, 101, 200; label 11: only 102.
    assert r.json() == {"created": 2, "existing": 0, "skipped": 0}
    assert _watches(api.pg_url, user) == {
        ("artist", "1"): "John Coltrane", ("label", "10"): "Impulse!",
    }  # fmt: skip
    again = await api.client.post(IMPORT, json=body, headers=h)
    assert again.json() == {"created": 0, "existing": 2, "skipped": 0}
    # min_releases defaults to 1: every artist and label of the collection, stubs included.
    everything = {"source": "collection", "entity_types": ["label", "artist"]}
    r = await api.client.post(IMPORT, json=everything, headers=h)
    assert r.json() == {"created": 4, "existing": 2, "skipped": 0}
    assert set(_watches(api.pg_url, user)) == {
        ("artist", "1"), ("artist", "2"), ("artist", "3"),
        ("label", "10"), ("label", "11"), ("label", "12"),
    }  # fmt: skip
    assert _watches(api.pg_url, user)[("artist", "3")] is None
    # The wantlist (WANTS): release 400's artists 2 and 4 and label 11; artists only.
    r = await api.client.post(IMPORT, json={"source": "wantlist", "entity_types": ["artist"]},
                              headers=h)  # fmt: skip
    assert r.json() == {"created": 1, "existing": 1, "skipped": 0}
    assert ("artist", "4") in _watches(api.pg_url, user)
    # Imported watches are ordinary watches: listed by GET /api/watchlist.
    listed = (await api.client.get("/api/watchlist", params={"limit": 100}, headers=h)).json()
    assert len(listed["items"]) == 7
    # Bob's collection is his: a user absent from the graph gets zeros.
    stranger = uuid.uuid4()
    r = await api.client.post(IMPORT, json=body | {"min_releases": 1}, headers=bearer(stranger))
    assert r.status_code == 200 and r.json() == {"created": 0, "existing": 0, "skipped": 0}
    assert _watches(api.pg_url, stranger) == {}
    r = await api.client.post(IMPORT, json=body | {"min_releases": 1}, headers=bearer(other))
    assert r.json() == {"created": 3, "existing": 0, "skipped": 0}
    assert set(_watches(api.pg_url, other)) == {("artist", "2"), ("artist", "4"), ("label", "11")}


async def test_import_validates_its_body(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    bad = [
        {},
        {"source": "collection"},
        {"source": "records", "entity_types": ["artist"]},
        {"source": "collection", "entity_types": []},
        {"source": "collection", "entity_types": ["genre"]},
        {"source": "collection", "entity_types": ["artist"], "min_releases": 0},
        {"source": "collection", "entity_types": ["artist"], "min_releases": None},
        {"source": "collection", "entity_types": ["artist"], "min_releases": "2"},
        {"source": "collection", "entity_types": ["artist"], "extra": 1},
    ]
    for body in bad:
        r = await api.client.post(IMPORT, json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error", body
    # /api/watchlist/import is a resource of its own, not a watch id: POST only.
    r = await api.client.options(IMPORT, headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await api.client.delete(IMPORT, headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = await api.client.post(IMPORT, content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    anonymous = await api.client.post(IMPORT, json={"source": "collection",
                                                    "entity_types": ["artist"]})  # fmt: skip
    assert anonymous.status_code == 401


async def test_import_stops_at_the_watch_cap_keeping_the_biggest(
    api: Api, user: uuid.UUID, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    g = GraphBuilder(platform=True)
    releases = []
    # Artist k (1..10) has k releases in the collection.
    for k in range(1, 11):
        for j in range(k):
            rid = str(k * 100 + j)
            g.release(rid, f"R{rid}", artists=[str(k)])
            releases.append(rid)
    g.user(str(user), "carol", collected=releases)
    await g.write(graph_driver, platform_graph)
    with psycopg.connect(api.pg_url) as conn:  # 995 watches already
        conn.execute(
            "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id) "
            "SELECT %s, 'search', 'search:' || g FROM generate_series(1, %s) g",
            (user, MAX_WATCHES_PER_USER - 5),
        )
    body = {"source": "collection", "entity_types": ["artist"]}
    r = await api.client.post(IMPORT, json=body, headers=bearer(user))
    assert r.json() == {"created": 5, "existing": 0, "skipped": 5}
    artists = {i for t, i in _watches(api.pg_url, user) if t == "artist"}
    assert artists == {"10", "9", "8", "7", "6"}  # the most releases first
    r = await api.client.post(IMPORT, json=body, headers=bearer(user))
    assert r.json() == {"created": 0, "existing": 5, "skipped": 5}
    # The single-watch route agrees that the list is full.
    r = await api.client.post("/api/watchlist", json={"entity_type": "artist", "entity_id": "1"},
                              headers=bearer(user))  # fmt: skip
    assert r.status_code == 409 and r.json()["error"]["code"] == "watchlist_full"


async def test_import_of_10000_collected_releases(
    api: Api, user: uuid.UUID, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    g = GraphBuilder(platform=True)
    ids = [str(100_000 + n) for n in range(10_000)]
    for n, rid in enumerate(ids):
        # 400 artists (25 releases each) and 150 labels (66 or 67 each); artist
        # 1000 also appears on every 1,000th release.
        artists = [str(1 + n % 400)] + (["1000"] if n % 1000 == 0 else [])
        g.release(rid, f"Release {rid}", artists=artists, labels=[str(5000 + n % 150)])
    g.user(str(user), "dan", collected=ids)
    started = time.perf_counter()
    await g.write(graph_driver, platform_graph)
    wrote = time.perf_counter() - started
    body = {"source": "collection", "entity_types": ["artist", "label"], "min_releases": 20}
    started = time.perf_counter()
    r = await api.client.post(IMPORT, json=body, headers=bearer(user))
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text
    assert r.json() == {"created": 550, "existing": 0, "skipped": 0}  # artist 1000 has only 10
    watched = _watches(api.pg_url, user)
    assert len(watched) == 550 and ("artist", "1000") not in watched
    assert ("artist", "400") in watched and ("label", "5149") in watched
    started = time.perf_counter()
    again = await api.client.post(IMPORT, json=body, headers=bearer(user))
    took_again = time.perf_counter() - started
    assert again.json() == {"created": 0, "existing": 550, "skipped": 0}
    print(f"import of a 10,000-release collection: {took * 1000:.0f} ms "
          f"(re-run {took_again * 1000:.0f} ms; graph written in {wrote:.1f} s)")  # fmt: skip


async def test_import_query_seeks_the_user_and_scans_nothing(
    graph_server: services.GraphService, graph_driver: AsyncDriver, platform_graph: str
) -> None:
    user = uuid.uuid4()
    await _small_collection(user, uuid.uuid4()).write(graph_driver, platform_graph)
    params = {"user": str(user), "artists": True, "labels": True, "min": 1}
    async with graph_driver.session(database=platform_graph) as session:
        result = await session.run("PROFILE " + IMPORT_QUERIES["collection"], params)
        rows = [record.data() async for record in result]
        summary = await result.consume()
    assert [(r["entity_type"], r["id"], r["releases"]) for r in rows] == [
        ("artist", "1", 3), ("label", "10", 3), ("artist", "2", 1), ("artist", "3", 1),
        ("label", "11", 1), ("label", "12", 1),
    ]  # fmt: skip
    assert summary.profile is not None
    if graph_server.admin_url is not None:  # ArcadeDB: one text plan
        text = str(summary.profile.get("args", {}).get("string-representation", ""))
        assert "MATCH NODE (u:User)" in text and "[index:" in text and "Scan" not in text, text
        return
    ops = operators(summary.profile)
    assert [(n, d) for n, d in ops if "Scan" in n] == [], ops
    seeks = [d for n, d in ops if n == "NodeUniqueIndexSeek"]
    assert any(":User(" in d for d in seeks), ops
