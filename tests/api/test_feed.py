"""The feed: pagination, one notification, unread count, read, read-all, isolation."""

from __future__ import annotations

import uuid

import psycopg

from tests.api.conftest import Api, bearer, seed_feed


async def _all_pages(api: Api, user: uuid.UUID, **params: object) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = None
    while True:
        q = dict(params) | ({"cursor": cursor} if cursor else {})
        r = await api.client.get("/api/notifications", params=q, headers=bearer(user))
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_pages_newest_first(api: Api, user: uuid.UUID) -> None:
    seed_feed(api.pg_url, user, 45)
    r = await api.client.get("/api/notifications", headers=bearer(user))
    page = r.json()
    assert len(page["items"]) == 20 and page["next_cursor"]
    first = page["items"][0]
    assert set(first) == {
        "id",
        "event",
        "entity_type",
        "entity_id",
        "entity_name",
        "detail",
        "version",
        "created_at",
        "read_at",
    }
    assert first["entity_id"] == "45" and first["detail"] == {
        "new_release_count": 45,
        "release_ids": ["45"],
    }
    assert first["read_at"] is None and first["event"] == "new_releases"
    items = await _all_pages(api, user, limit=7)
    assert [i["entity_id"] for i in items] == [str(n) for n in range(45, 0, -1)]
    ids = [i["id"] for i in items]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 45


async def test_limits_and_cursors_are_validated(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    for bad in ("0", "101", "abc", "-1"):
        r = await api.client.get("/api/notifications", params={"limit": bad}, headers=h)
        assert r.status_code == 422, bad
        detail = r.json()["error"]["details"][0]
        assert detail["field"] == "limit" and detail["location"] == "query"
    r = await api.client.get("/api/notifications", params={"cursor": "%%%"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    r = await api.client.get("/api/notifications", params={"unread": "maybe"}, headers=h)
    assert r.status_code == 422
    # A watchlist cursor is not a feed cursor.
    from notifier.api import cursor

    r = await api.client.get(
        "/api/notifications", params={"cursor": cursor.encode("w", 1)}, headers=h
    )
    assert r.status_code == 400


async def test_read_unread_count_and_read_all(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    seed_feed(api.pg_url, user, 5)
    assert (await api.client.get("/api/notifications/unread-count", headers=h)).json() == {
        "count": 5
    }
    items = (await api.client.get("/api/notifications", headers=h)).json()["items"]
    target = items[1]["id"]
    r = await api.client.post(f"/api/notifications/{target}/read", headers=h)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # Reading again is fine and does not count twice.
    r = await api.client.post(f"/api/notifications/{target}/read", headers=h)
    assert r.status_code == 200
    assert (await api.client.get("/api/notifications/unread-count", headers=h)).json() == {
        "count": 4
    }
    one = (await api.client.get(f"/api/notifications/{target}", headers=h)).json()
    assert one["id"] == target and one["read_at"] is not None
    unread = (await api.client.get("/api/notifications?unread=true", headers=h)).json()["items"]
    assert target not in [i["id"] for i in unread] and len(unread) == 4
    r = await api.client.post("/api/notifications/read-all", headers=h)
    assert r.json() == {"status": "ok", "marked": 4}
    r = await api.client.post("/api/notifications/read-all", headers=h)
    assert r.json() == {"status": "ok", "marked": 0}
    assert (await api.client.get("/api/notifications/unread-count", headers=h)).json() == {
        "count": 0
    }
    with psycopg.connect(api.pg_url) as conn:
        row = conn.execute(
            "SELECT unread FROM notifier.unread_counters WHERE user_id = %s", (user,)
        ).fetchone()
    assert row == (0,)


async def test_unread_count_of_a_new_user_is_zero(api: Api, user: uuid.UUID) -> None:
    r = await api.client.get("/api/notifications/unread-count", headers=bearer(user))
    assert r.status_code == 200 and r.json() == {"count": 0}


async def test_another_users_notifications_are_404(api: Api, user: uuid.UUID) -> None:
    other = uuid.uuid4()
    seed_feed(api.pg_url, other, 3)
    theirs = (await api.client.get("/api/notifications", headers=bearer(other))).json()["items"]
    h = bearer(user)
    assert (await api.client.get("/api/notifications", headers=h)).json()["items"] == []
    for n in theirs:
        r = await api.client.get(f"/api/notifications/{n['id']}", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert "entity" not in r.text
        r = await api.client.post(f"/api/notifications/{n['id']}/read", headers=h)
        assert r.status_code == 404
    assert (await api.client.post("/api/notifications/read-all", headers=h)).json()["marked"] == 0
    still = (await api.client.get("/api/notifications?unread=true", headers=bearer(other))).json()
    assert len(still["items"]) == 3
    for bad in ("abc", "99999999999999999999999", "-1", "1.5"):
        r = await api.client.get(f"/api/notifications/{bad}", headers=h)
        assert r.status_code == 404, bad


async def test_concurrent_reads_count_once(api: Api, user: uuid.UUID) -> None:
    import asyncio

    h = bearer(user)
    seed_feed(api.pg_url, user, 6)
    items = (await api.client.get("/api/notifications", headers=h)).json()["items"]
    target = items[0]["id"]
    calls = [api.client.post(f"/api/notifications/{target}/read", headers=h) for _ in range(10)]
    calls += [api.client.post(f"/api/notifications/{items[1]['id']}/read", headers=h)]
    answers = await asyncio.gather(*calls)
    assert {r.status_code for r in answers} == {200}
    count = (await api.client.get("/api/notifications/unread-count", headers=h)).json()
    assert count == {"count": 4}
    r = await asyncio.gather(*[api.client.post("/api/notifications/read-all", headers=h)
                               for _ in range(5)])  # fmt: skip
    assert sum(x.json()["marked"] for x in r) == 4
    assert (await api.client.get("/api/notifications/unread-count", headers=h)).json() == {
        "count": 0
    }
