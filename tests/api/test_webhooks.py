"""Several endpoints per user: `/api/webhooks…`, and the singular routes on the oldest one."""

from __future__ import annotations

import uuid

import psycopg

from tests.api.conftest import Api, bearer

URL = "http://127.0.0.1:9/hook"


async def _create(api: Api, h: dict[str, str], **body: object) -> dict[str, object]:
    r = await api.client.post("/api/webhooks", json={"url": URL, **body}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_up_to_ten_endpoints_each_with_its_own_settings(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    assert (await api.client.get("/api/webhooks", headers=h)).json() == {"items": []}
    first = await _create(
        api, h, description="releases only", event_types=["new_releases"], rate_limit=2.5
    )
    assert first["description"] == "releases only" and first["event_types"] == ["new_releases"]
    assert first["rate_limit"] == 2.5 and str(first["secret"]).startswith("whsec_")
    signed = await _create(api, h, signing="ed25519")
    assert signed["secret"] is None and str(signed["public_key"]).startswith("whpk_")
    others = [await _create(api, h, description=f"n{i}") for i in range(8)]
    over = await api.client.post("/api/webhooks", json={"url": URL}, headers=h)
    assert over.status_code == 409 and over.json()["error"]["code"] == "webhook_limit"
    listed = (await api.client.get("/api/webhooks", headers=h)).json()["items"]
    assert [e["id"] for e in listed] == [first["id"], signed["id"], *(o["id"] for o in others)]
    assert "whsec_" not in str(listed) and "whsk_" not in str(listed)
    secrets = {str(first["secret"]), *(str(o["secret"]) for o in others)}
    assert len(secrets) == 9  # each its own secret

    one = await api.client.get(f"/api/webhooks/{first['id']}", headers=h)
    assert one.status_code == 200 and one.json()["signing"] == "hmac" and "secret" not in one.text
    r = await api.client.patch(
        f"/api/webhooks/{first['id']}",
        json={"description": None, "event_types": ["new_aliases", "ping"], "rate_limit": None},
        headers=h,
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["description"], got["event_types"], got["rate_limit"], got["url"]) == (
        None, ["new_aliases", "ping"], None, URL,
    )  # fmt: skip
    r = await api.client.patch(f"/api/webhooks/{first['id']}", json={"url": URL + "2"}, headers=h)
    assert r.json()["url"] == URL + "2" and r.json()["event_types"] == ["new_aliases", "ping"]
    for bad in ({"rate_limit": 0}, {"event_types": []}, {"event_types": ["Bad Name"]},
                {"colour": "red"}, {"url": ""}, {"active": "yes"}):  # fmt: skip
        r = await api.client.patch(f"/api/webhooks/{first['id']}", json=bad, headers=h)
        assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
    r = await api.client.patch(f"/api/webhooks/{first['id']}", content=b"{", headers=h)
    assert r.status_code == 400
    assert (
        await api.client.post("/api/webhooks", json={"url": URL, "rate_limit": -1}, headers=h)
    ).status_code == 422

    rotated = await api.client.post(f"/api/webhooks/{first['id']}/rotate-secret", headers=h)
    assert rotated.status_code == 200 and rotated.json()["secret"] != first["secret"]
    assert (
        await api.client.delete(f"/api/webhooks/{others[0]['id']}", headers=h)
    ).status_code == 204
    assert len((await api.client.get("/api/webhooks", headers=h)).json()["items"]) == 9
    assert (await api.client.get(f"/api/webhooks/{others[0]['id']}", headers=h)).status_code == 404
    assert (await api.client.post("/api/webhooks", json={"url": URL}, headers=h)).status_code == 201

    # Someone else's endpoint, or no such id: 404 on every route, nothing changed.
    stranger = bearer(uuid.uuid4())
    hook = first["id"]
    for method, path in (
        ("GET", f"/api/webhooks/{hook}"), ("PATCH", f"/api/webhooks/{hook}"),
        ("DELETE", f"/api/webhooks/{hook}"), ("POST", f"/api/webhooks/{hook}/rotate-secret"),
        ("POST", f"/api/webhooks/{hook}/test"), ("GET", f"/api/webhooks/{hook}/deliveries"),
        ("GET", "/api/webhooks/not-a-uuid"), ("GET", f"/api/webhooks/{uuid.uuid4()}"),
    ):  # fmt: skip
        r = await api.client.request(method, path, headers=stranger, json={"active": False})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
    assert (await api.client.get(f"/api/webhooks/{hook}", headers=h)).json()["active"] is True


async def test_singular_routes_act_on_the_oldest_endpoint(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    oldest = await _create(api, h, description="oldest")
    newer = await _create(api, h, description="newer")
    got = (await api.client.get("/api/webhook", headers=h)).json()
    assert got["id"] == oldest["id"] and got["description"] == "oldest"
    r = await api.client.post("/api/webhook", json={"url": URL + "/replaced"}, headers=h)
    assert r.status_code == 201 and r.json()["id"] == oldest["id"]
    assert r.json()["secret"] != oldest["secret"]
    listed = (await api.client.get("/api/webhooks", headers=h)).json()["items"]
    assert [(e["id"], e["url"]) for e in listed] == [
        (oldest["id"], URL + "/replaced"), (newer["id"], URL),
    ]  # fmt: skip
    ping = await api.client.post("/api/webhook/test", headers=h)
    own = await api.client.post(f"/api/webhooks/{newer['id']}/test", headers=h)
    assert ping.status_code == own.status_code == 202
    with psycopg.connect(api.pg_url) as conn:
        targets = dict(
            conn.execute(
                "SELECT id, webhook_id::text FROM notifier.outbox WHERE id = ANY(%s)",
                ([ping.json()["delivery_id"], own.json()["delivery_id"]],),
            ).fetchall()
        )
    assert targets == {
        ping.json()["delivery_id"]: oldest["id"],
        own.json()["delivery_id"]: newer["id"],
    }
    # Each endpoint's deliveries are its own; the singular list has the user's all.
    mine = await api.client.get(f"/api/webhooks/{newer['id']}/deliveries", headers=h)
    assert [d["id"] for d in mine.json()["items"]] == [own.json()["delivery_id"]]
    both = (await api.client.get("/api/webhook/deliveries", headers=h)).json()["items"]
    assert [d["id"] for d in both] == [own.json()["delivery_id"], ping.json()["delivery_id"]]
    # A redelivery goes to the delivery's own endpoint.
    again = await api.client.post(
        f"/api/webhook/deliveries/{own.json()['delivery_id']}/redeliver", headers=h
    )
    with psycopg.connect(api.pg_url) as conn:
        (target,) = conn.execute(
            "SELECT webhook_id::text FROM notifier.outbox WHERE id = %s", (again.json()["id"],)
        ).fetchone()  # type: ignore[misc]
    assert target == newer["id"]
    assert (await api.client.delete("/api/webhook", headers=h)).status_code == 204
    assert (await api.client.get("/api/webhook", headers=h)).json()["id"] == newer["id"]
    assert (await api.client.delete("/api/webhook", headers=h)).status_code == 204
    assert (await api.client.get("/api/webhook", headers=h)).status_code == 404


async def test_patch_active_disables_and_reenables(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    hook = (await _create(api, h))["id"]
    ping = (await api.client.post(f"/api/webhooks/{hook}/test", headers=h)).json()
    r = await api.client.patch(f"/api/webhooks/{hook}", json={"active": False}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["active"] is False and r.json()["disabled_reason"] == "disabled by the user"
    assert (await api.client.post(f"/api/webhooks/{hook}/test", headers=h)).status_code == 409
    with psycopg.connect(api.pg_url) as conn:
        status = conn.execute(
            "SELECT status FROM notifier.outbox WHERE id = %s", (ping["delivery_id"],)
        ).fetchone()
        assert status == ("paused",)  # kept while the endpoint is off
        # The notifier disabled it meanwhile (410): the reason is the notifier's.
        conn.execute(
            "UPDATE notifier.webhook_configs SET disabled_reason = 'gone (410)' WHERE id = %s",
            (hook,),
        )
    assert (await api.client.get(f"/api/webhooks/{hook}", headers=h)).json()[
        "disabled_reason"
    ] == "gone (410)"
    r = await api.client.patch(f"/api/webhooks/{hook}", json={"active": True}, headers=h)
    assert r.json()["active"] is True and r.json()["disabled_reason"] is None
    with psycopg.connect(api.pg_url) as conn:
        status = conn.execute(
            "SELECT status, attempts FROM notifier.outbox WHERE id = %s", (ping["delivery_id"],)
        ).fetchone()
    assert status == ("pending", 0)  # resumed, its schedule restarted
    assert (await api.client.post(f"/api/webhooks/{hook}/test", headers=h)).status_code == 202


async def test_recover_sends_the_windows_held_dead_and_paused_messages_again(
    api: Api, user: uuid.UUID
) -> None:
    h = bearer(user)
    hook = (await _create(api, h))["id"]
    with psycopg.connect(api.pg_url) as conn:
        ids = {}
        for status, age in (("held", "10 minutes"), ("dead", "10 minutes"),
                            ("paused", "10 minutes"), ("delivered", "10 minutes"),
                            ("pending", "10 minutes"), ("held", "3 hours")):  # fmt: skip
            event = conn.execute(
                "INSERT INTO notifier.events (dedup_key, source, event) VALUES (%s, 'router',"
                " 'new_releases') RETURNING id",
                (f"recover-{hook}-{status}-{age}",),
            ).fetchone()[0]  # type: ignore[index]
            ids[(status, age)] = conn.execute(
                "INSERT INTO notifier.outbox (user_id, event_id, webhook_id, status, created_at)"
                " VALUES (%s, %s, %s, %s, now() - %s::interval) RETURNING id",
                (user, event, hook, status, age),
            ).fetchone()[0]  # type: ignore[index]
    url = f"/api/webhooks/{hook}/recover"
    for bad in ({}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"},
                {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
                {"since": "2026-01-01T00:00:00Z", "extra": 1}):  # fmt: skip
        r = await api.client.post(url, json=bad, headers=h)
        assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
    stranger = await api.client.post(url, json={"since": "2026-01-01T00:00:00Z"},
                                     headers=bearer(uuid.uuid4()))  # fmt: skip
    assert stranger.status_code == 404
    await api.client.patch(f"/api/webhooks/{hook}", json={"active": False}, headers=h)
    off = await api.client.post(url, json={"since": "2026-01-01T00:00:00Z"}, headers=h)
    assert off.status_code == 409 and off.json()["error"]["code"] == "webhook_disabled"
    await api.client.patch(f"/api/webhooks/{hook}", json={"active": True}, headers=h)
    with psycopg.connect(api.pg_url) as conn:
        since = conn.execute("SELECT now() - interval '1 hour'").fetchone()[0]  # type: ignore[index]
    r = await api.client.post(url, json={"since": since.isoformat()}, headers=h)
    assert r.status_code == 202 and r.json() == {"redelivered": 2}, r.text
    with psycopg.connect(api.pg_url) as conn:
        got = dict(conn.execute("SELECT id, status FROM notifier.outbox WHERE redelivery_of IS NULL"
                                " AND webhook_id = %s", (hook,)).fetchall())  # fmt: skip
        copies = conn.execute(
            "SELECT c.redelivery_of, c.status, c.message_id <> o.message_id FROM notifier.outbox c"
            " JOIN notifier.outbox o ON o.id = c.redelivery_of ORDER BY 1"
        ).fetchall()
    # The paused row resumed when re-enabled (pending now); held and dead of the window went.
    assert got[ids[("held", "10 minutes")]] == "recovered"
    assert got[ids[("dead", "10 minutes")]] == "recovered"
    assert got[ids[("held", "3 hours")]] == "held"  # before the window
    assert got[ids[("delivered", "10 minutes")]] == "delivered"
    assert got[ids[("paused", "10 minutes")]] == "pending"
    assert copies == [
        (ids[("held", "10 minutes")], "pending", True),
        (ids[("dead", "10 minutes")], "pending", True),
    ]
    again = await api.client.post(url, json={"since": since.isoformat()}, headers=h)
    assert again.json() == {"redelivered": 0}  # nothing is sent twice
    wide = await api.client.post(url, json={"since": "2026-01-01T00:00:00Z"}, headers=h)
    assert wide.json() == {"redelivered": 1}  # the older held one
