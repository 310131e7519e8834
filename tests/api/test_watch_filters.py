"""Watch filters through the API (validation, storage) and `watch_ids` on every notification."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import feedparser
import psycopg
import pytest
from neo4j import AsyncDriver

from notifier import fanout
from notifier.devkit.graphbuilder import GraphBuilder
from tests.api.conftest import SERVICE, Api, bearer

EVENT = """
INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id,
                             entity_name, detail, audience)
VALUES (%s, 'router', 'v2', 'new_releases', 'artist', '1', 'John Coltrane', %s::jsonb, %s::jsonb)
RETURNING id
"""


@pytest.fixture
async def graph(graph_driver: AsyncDriver, graph_db: str) -> None:
    g = GraphBuilder(platform=True)
    g.artist("1", "John Coltrane").label("5", "Impulse!").style("Hard Bop", genre="Jazz")
    await g.write(graph_driver, graph_db)


async def _watch(api: Api, user: uuid.UUID, body: dict[str, object]) -> dict[str, object]:
    r = await api.client.post("/api/watchlist", json=body, headers=bearer(user))
    assert r.status_code == 201, r.text
    watch: dict[str, object] = r.json()
    return watch


async def test_artist_and_label_watches_take_filters_others_refuse_them(
    api: Api, graph: None, user: uuid.UUID
) -> None:
    w = await _watch(api, user, {"entity_type": "artist", "entity_id": "1",
                                 "options": {"formats": ["vinyl", " CD ", "Vinyl"],
                                             "year_from": 1960, "year_to": 1969}})  # fmt: skip
    assert w["options"] == {"formats": ["CD", "vinyl"], "year_from": 1960, "year_to": 1969}
    listed = (await api.client.get("/api/watchlist", headers=bearer(user))).json()["items"]
    assert [x["options"] for x in listed] == [w["options"]]
    label = await _watch(api, user, {"entity_type": "label", "entity_id": "5",
                                     "options": {"year_to": 1999}})  # fmt: skip
    assert label["options"] == {"year_to": 1999}
    other = uuid.uuid4()
    bad = [
        {"formats": []},
        {"formats": "Vinyl"},
        {"formats": ["  "]},
        {"formats": [f"f{i}" for i in range(21)]},
        {"year_from": "1960"},
        {"year_from": 1960.5},
        {"year_to": 123_456},
        {"year_from": 1970, "year_to": 1960},
        {"formats": ["Vinyl"], "colour": "red"},
    ]
    for options in bad:
        for entity_type, entity_id in (("artist", "1"), ("label", "5")):
            r = await api.client.post(
                "/api/watchlist", headers=bearer(other),
                json={"entity_type": entity_type, "entity_id": entity_id, "options": options},
            )  # fmt: skip
            assert r.status_code == 422, (options, r.text)
            error = r.json()["error"]
            assert error["code"] and error["details"][0]["field"].startswith("options"), options
    refused = [
        {"entity_type": "style", "entity_id": "Hard Bop", "options": {"formats": ["Vinyl"]}},
        {"entity_type": "genre", "entity_id": "Jazz", "options": {"year_from": 1960}},
        {"entity_type": "search", "options": {"q": "love", "formats": ["Vinyl"]}},
    ]
    for body in refused:
        r = await api.client.post("/api/watchlist", json=body, headers=bearer(other))
        assert r.status_code == 422 and r.json()["error"]["details"], body
    r = await api.client.post("/api/watchlist", content=b'{"entity_type": "artist", "entity_id": '
                              b'"1", "options": {"formats": [}', headers=bearer(other))  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    mine = (await api.client.get("/api/watchlist", headers=bearer(other))).json()["items"]
    assert mine == []  # nothing refused was stored


async def test_watch_ids_name_the_watch_behind_each_notification(
    api: Api, graph: None, user: uuid.UUID
) -> None:
    """A router event names each receiver's own watch; an audience picks the receivers."""
    vinyl_fan, plain = uuid.uuid4(), uuid.uuid4()
    filtered = await _watch(api, vinyl_fan, {"entity_type": "artist", "entity_id": "1",
                                             "options": {"formats": ["Vinyl"]}})  # fmt: skip
    unfiltered = await _watch(api, plain, {"entity_type": "artist", "entity_id": "1"})
    detail = {"new_release_count": 1, "release_ids": ["101"]}
    after_watches = datetime.now(UTC) + timedelta(seconds=1)
    async with await psycopg.AsyncConnection.connect(api.pg_url) as conn:
        ids = []
        for key, audience in (("k:all", None), ("k:vinyl", [{"formats": ["Vinyl"]}])):
            cur = await conn.execute(
                EVENT, (key, json.dumps(detail), None if audience is None else json.dumps(audience))
            )
            row = await cur.fetchone()
            assert row is not None
            ids.append(row[0])
        result = await fanout.fan_out_events(conn, ids, watches_before=after_watches)
        await conn.commit()
    assert result.feed_rows == 3  # "k:all" to both, "k:vinyl" to its audience only
    for u, watch, count in ((vinyl_fan, filtered, 2), (plain, unfiltered, 1)):
        items = (await api.client.get("/api/notifications", headers=bearer(u))).json()["items"]
        assert [n["watch_ids"] for n in items] == [[watch["id"]]] * count
        one = await api.client.get(f"/api/notifications/{items[0]['id']}", headers=bearer(u))
        assert one.json()["watch_ids"] == [watch["id"]]

    # Events sent to users by id were caused by no watch.
    r = await api.client.post("/internal/events", headers=SERVICE, json={
        "user_ids": [str(plain)], "event": "price_drop", "entity_type": "release",
        "entity_id": "42", "detail": {}, "idempotency_key": "wid-1"})  # fmt: skip
    assert r.status_code == 202, r.text
    items = (await api.client.get("/api/notifications", headers=bearer(plain))).json()["items"]
    assert [(n["event"], n["watch_ids"]) for n in items] == [
        ("price_drop", []), ("new_releases", [unfiltered["id"]]),
    ]  # fmt: skip

    # The Atom feed carries them as categories.
    r = await api.client.post("/api/feed-token", headers=bearer(plain))
    assert r.status_code == 201, r.text
    atom = await api.client.get(r.json()["url"].removeprefix(api.url))
    parsed = feedparser.parse(atom.content)
    assert not parsed.bozo
    terms = [[t["term"] for t in e.get("tags", []) if t.get("label") == "watch"]
             for e in parsed.entries]  # fmt: skip
    assert terms == [[], [unfiltered["id"]]]
