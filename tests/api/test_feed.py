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
        "watch_ids",
    }
    assert first["watch_ids"] == []  # seeded rows name no watch
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


def _validators(r: object) -> tuple[str, str, str]:
    import httpx

    assert isinstance(r, httpx.Response)
    return r.headers["etag"], r.headers["x-poll-interval"], r.headers["cache-control"]


async def test_feed_answers_304_to_its_etag_until_it_changes(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    seed_feed(api.pg_url, user, 5)
    r = await api.client.get("/api/notifications", headers=h)
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    tag, poll, cache = _validators(r)
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34
    assert poll == "60" and cache == "private, no-cache"
    for inm in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": inm})
        assert r.status_code == 304, inm
        assert r.content == b"" and _validators(r) == (tag, "60", "private, no-cache")
    # Another representation (page size, unread filter, cursor) has its own tag.
    for params in ({"limit": 2}, {"unread": "true"}):
        r = await api.client.get("/api/notifications", params=params,
                                 headers=h | {"If-None-Match": tag})  # fmt: skip
        assert r.status_code == 200 and r.headers["etag"] != tag
    for inm in ('"nope"', "garbage", "W/", '"' + "x" * 9000 + '"'):
        r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": inm})
        assert r.status_code == 200 and r.headers["etag"] == tag, inm
    # A new notification: 200 with it and a new tag.
    seed_feed(api.pg_url, user, 1)
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag})
    assert r.status_code == 200 and len(r.json()["items"]) == 6
    tag2 = r.headers["etag"]
    assert tag2 != tag
    # Reading one: 200 with its read_at and a new tag.
    target = r.json()["items"][3]["id"]
    read = await api.client.post(f"/api/notifications/{target}/read", headers=h)
    assert read.status_code == 200
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag2})
    assert r.status_code == 200 and r.headers["etag"] not in (tag, tag2)
    assert [i["id"] for i in r.json()["items"] if i["read_at"]] == [target]
    tag3 = r.headers["etag"]
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag3})
    assert r.status_code == 304
    # read-all too.
    assert (await api.client.post("/api/notifications/read-all", headers=h)).json()["marked"] == 5
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag3})
    assert r.status_code == 200 and all(i["read_at"] for i in r.json()["items"])


async def test_a_late_row_and_a_read_together_still_change_the_tag(
    api: Api, user: uuid.UUID
) -> None:
    """A feed row committing late (an id below the newest) while a read happens.

    The newest id and the unread count end as they were; the counter row's
    xmin (every read updates it) is what tells the two states apart.
    """
    h = bearer(user)
    helper = uuid.uuid4()
    seed_feed(api.pg_url, helper, 3)  # three events to point at
    add = (
        "INSERT INTO notifier.notification_events (id, user_id, event_id) OVERRIDING SYSTEM VALUE "
        "SELECT notifier.feed_top() + %s, %s, event_id FROM notifier.notification_events "
        "WHERE user_id = %s ORDER BY id OFFSET %s LIMIT 1"
    )
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(add, (1010, user, helper, 0))
        conn.execute(add, (1020, user, helper, 1))
    r = await api.client.get("/api/notifications", headers=h)
    items = r.json()["items"]
    tag, (top, low) = r.headers["etag"], [i["id"] for i in items]
    count = await api.client.get("/api/notifications/unread-count", headers=h)
    assert count.json() == {"count": 2}
    count_tag = count.headers["etag"]
    read = await api.client.post(f"/api/notifications/{low}/read", headers=h)
    assert read.status_code == 200
    with psycopg.connect(api.pg_url) as conn:  # the late row, between the two
        conn.execute(add, (1015, user, helper, 2))
        late = conn.execute(
            "SELECT id FROM notifier.notification_events WHERE user_id = %s AND id < %s "
            "AND id > %s", (user, top, low)
        ).fetchone()  # fmt: skip
    assert late is not None
    # Same newest id, same unread count (2 - 1 read + 1 late), other content.
    count = await api.client.get("/api/notifications/unread-count",
                                 headers=h | {"If-None-Match": count_tag})  # fmt: skip
    assert count.status_code == 304  # the count alone did not change
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag})
    assert r.status_code == 200, "a stale page would be served"
    assert [i["id"] for i in r.json()["items"]] == [top, late[0], low]


async def test_unread_count_answers_304_to_its_etag(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    r = await api.client.get("/api/notifications/unread-count", headers=h)
    assert r.json() == {"count": 0}
    tag, poll, cache = _validators(r)
    assert poll == "60" and cache == "private, no-cache"
    r = await api.client.get("/api/notifications/unread-count", headers=h | {"If-None-Match": tag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
    assert r.headers["x-poll-interval"] == "60"
    seed_feed(api.pg_url, user, 2)
    r = await api.client.get("/api/notifications/unread-count", headers=h | {"If-None-Match": tag})
    assert r.status_code == 200 and r.json() == {"count": 2} and r.headers["etag"] != tag
    # Another user's tag never matches mine, nor mine theirs.
    other = bearer(uuid.uuid4())
    r = await api.client.get("/api/notifications/unread-count",
                             headers=other | {"If-None-Match": tag})  # fmt: skip
    assert r.status_code == 200 and r.json() == {"count": 0} and r.headers["etag"] != tag
    feed_tag = (await api.client.get("/api/notifications", headers=h)).headers["etag"]
    r = await api.client.get("/api/notifications", headers=other | {"If-None-Match": feed_tag})
    assert r.status_code == 200 and r.json()["items"] == []


async def test_the_304_path_folds_a_long_unfolded_tail(api: Api, user: uuid.UUID) -> None:
    from notifier.api.feed import FOLD_AT

    h = bearer(user)
    seed_feed(api.pg_url, user, FOLD_AT + 10)
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": '"x"'})
    assert r.status_code == 200 and len(r.json()["items"]) == 20
    tag = r.headers["etag"]
    with psycopg.connect(api.pg_url) as conn:
        row = conn.execute(
            "SELECT unread, counted_upto >= %s FROM notifier.unread_counters WHERE user_id = %s",
            (r.json()["items"][0]["id"], user),
        ).fetchone()
    assert row == (FOLD_AT + 10, True)
    r = await api.client.get("/api/notifications", headers=h | {"If-None-Match": tag})
    assert r.status_code == 304
    # Without If-None-Match the page and the version come in one round trip; same tag.
    r = await api.client.get("/api/notifications", headers=h)
    assert r.status_code == 200 and r.headers["etag"] == tag
