"""Watchlist: graph-checked creation, idempotency, search options, pagination, delete."""

from __future__ import annotations

import uuid

import pytest
from neo4j import AsyncDriver

from notifier.api.errors import ApiError
from notifier.api.watchlist import normalise_search
from notifier.devkit.graphbuilder import GraphBuilder
from tests.api.conftest import Api, bearer


@pytest.fixture
async def graph(graph_driver: AsyncDriver, graph_db: str) -> None:
    g = GraphBuilder()
    g.artist("1", "John Coltrane").label("5", "Impulse!").style("Hard Bop", genre="Jazz")
    await g.write(graph_driver, graph_db)


async def test_create_is_idempotent_and_checked_against_the_graph(
    api: Api, graph: None, user: uuid.UUID
) -> None:
    h = bearer(user)
    r = await api.client.post(
        "/api/watchlist", json={"entity_type": "artist", "entity_id": "1"}, headers=h
    )
    assert r.status_code == 201, r.text
    watch = r.json()
    assert set(watch) == {"id", "entity_type", "entity_id", "entity_name", "options", "created_at"}
    assert watch["entity_name"] == "John Coltrane" and watch["options"] == {}
    again = await api.client.post(
        "/api/watchlist", json={"entity_type": "artist", "entity_id": "1"}, headers=h
    )
    assert again.status_code == 200 and again.json() == watch
    for body, name in [
        ({"entity_type": "label", "entity_id": "5"}, "Impulse!"),
        ({"entity_type": "genre", "entity_id": "Jazz", "options": {"threshold": 1000}}, "Jazz"),
        ({"entity_type": "style", "entity_id": "Hard Bop"}, "Hard Bop"),
    ]:
        r = await api.client.post("/api/watchlist", json=body, headers=h)
        assert r.status_code == 201 and r.json()["entity_name"] == name
    absent = [
        {"entity_type": "artist", "entity_id": "999"},
        {"entity_type": "label", "entity_id": "1"},  # an artist id, not a label
        {"entity_type": "genre", "entity_id": "Polka"},
        {"entity_type": "style", "entity_id": "Jazz"},
    ]
    for body in absent:
        r = await api.client.post("/api/watchlist", json=body, headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", body
    bad = [
        {"entity_type": "artist"},
        {"entity_type": "artist", "entity_id": "1", "options": {"threshold": 3}},
        {"entity_type": "genre", "entity_id": "Jazz", "options": {"threshold": 0}},
        {"entity_type": "genre", "entity_id": "Jazz", "options": {"colour": "red"}},
        {"entity_type": "search", "options": {}},
        {"entity_type": "search", "options": {"year_from": 2000, "year_to": 1990}},
        {"entity_type": "search", "options": {"q": "   "}},
        {"entity_type": "search", "options": {"entity_type": "planet"}},
    ]
    for body in bad:
        r = await api.client.post("/api/watchlist", json=body, headers=h)
        assert r.status_code == 422, body
        assert r.json()["error"]["details"], body


async def test_search_watch_id_is_a_stable_hash(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    body = {
        "entity_type": "search",
        "entity_id": "ignored",
        "options": {"q": "Blue  Train", "genre": "Jazz", "year_from": 1950},
    }
    r = await api.client.post("/api/watchlist", json=body, headers=h)
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["entity_id"].startswith("search:") and w["entity_id"] != "ignored"
    assert w["options"] == {"q": "Blue Train", "genre": "Jazz", "year_from": 1950}
    same = {
        "entity_type": "search",
        "options": {"year_from": 1950, "genre": "jazz", "q": " blue train "},
    }
    r2 = await api.client.post("/api/watchlist", json=same, headers=h)
    assert r2.status_code == 200 and r2.json()["id"] == w["id"]


def test_normalise_search_rules() -> None:
    opts, eid, name = normalise_search({"q": " a  b ", "format": "LP"})
    assert opts == {"q": "a b", "format": "LP"} and name == "q=a b, format=LP"
    assert normalise_search({"format": "lp", "q": "A B"})[1] == eid
    assert normalise_search({"q": "a b c"})[1] != eid
    with pytest.raises(ApiError) as exc:
        normalise_search({"unknown": 1})
    assert exc.value.status == 422 and exc.value.details
    assert exc.value.details[0].field == "options.unknown"


async def test_list_pages_and_delete(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    ids = []
    for i in range(7):
        body = {"entity_type": "search", "options": {"q": f"query {i}"}}
        ids.append((await api.client.post("/api/watchlist", json=body, headers=h)).json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/api/watchlist", params=params, headers=h)).json()
        seen += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    other = bearer(uuid.uuid4())
    assert (await api.client.get("/api/watchlist", headers=other)).json()["items"] == []
    assert (await api.client.delete(f"/api/watchlist/{ids[0]}", headers=other)).status_code == 404
    assert (await api.client.delete(f"/api/watchlist/{ids[0]}", headers=h)).status_code == 204
    assert (await api.client.delete(f"/api/watchlist/{ids[0]}", headers=h)).status_code == 404
    assert (await api.client.delete("/api/watchlist/not-a-uuid", headers=h)).status_code == 404
    left = (await api.client.get("/api/watchlist", headers=h)).json()["items"]
    assert len(left) == 6


async def test_a_search_ignores_any_entity_id_on_input(api: Api, user: uuid.UUID) -> None:
    made = []
    for entity_id in ("", "whatever", None):
        body: dict[str, object] = {"entity_type": "search", "options": {"q": "blue train"}}
        if entity_id is not None:
            body["entity_id"] = entity_id
        r = await api.client.post("/api/watchlist", json=body, headers=bearer(user))
        assert r.status_code in (200, 201), r.text
        made.append(r.json()["entity_id"])
    assert made[0].startswith("search:") and len(set(made)) == 1
