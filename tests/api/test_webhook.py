"""Webhook routes: register, read, rotate, test ping, deliveries, redeliver, delete, SSRF."""

from __future__ import annotations

import base64
import uuid

import httpx
import psycopg

from tests.api.conftest import Api, bearer, serve
from tests.conftest import stored_secrets

URL = "http://127.0.0.1:9/hook"


async def test_register_read_rotate_delete(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    assert (await api.client.get("/api/webhook", headers=h)).status_code == 404
    r = await api.client.post("/api/webhook", json={"url": URL}, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()
    assert {"url", "secret", "active", "created_at"} <= set(created)
    assert created["url"] == URL and created["active"] is True
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"][6:])) >= 24
    got = await api.client.get("/api/webhook", headers=h)
    assert got.status_code == 200 and "secret" not in got.text
    assert got.json()["disabled_reason"] is None and got.json()["url"] == URL
    assert (await api.client.get("/api/webhook", headers=bearer(uuid.uuid4()))).status_code == 404

    rotated = (await api.client.post("/api/webhook/rotate-secret", headers=h)).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    with psycopg.connect(api.pg_url) as conn:
        row = conn.execute(
            "SELECT previous_secret_expires_at - now() > interval '23 hours' "
            "FROM notifier.webhook_configs WHERE user_id = %s",
            (user,),
        ).fetchone()
    assert row == (True,)
    assert stored_secrets(api.pg_url, user) == [(rotated["secret"], created["secret"])]

    # The notifier disabled it: GET says why; registering again re-enables it.
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(
            "UPDATE notifier.webhook_configs SET active = false, disabled_reason = 'gone (410)',"
            " disabled_at = now() WHERE user_id = %s",
            (user,),
        )
    got = (await api.client.get("/api/webhook", headers=h)).json()
    assert got["active"] is False and got["disabled_reason"] == "gone (410)"
    assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 409
    again = await api.client.post("/api/webhook", json={"url": URL + "2"}, headers=h)
    assert again.status_code == 201 and again.json()["active"] is True
    got = (await api.client.get("/api/webhook", headers=h)).json()
    assert got["disabled_reason"] is None and got["url"] == URL + "2"

    assert (
        await api.client.delete("/api/webhook", headers=bearer(uuid.uuid4()))
    ).status_code == 404
    assert (await api.client.delete("/api/webhook", headers=h)).status_code == 204
    assert (await api.client.get("/api/webhook", headers=h)).status_code == 404
    assert (await api.client.delete("/api/webhook", headers=h)).status_code == 404
    assert (await api.client.post("/api/webhook/rotate-secret", headers=h)).status_code == 404


async def test_ping_deliveries_and_redeliver(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 404
    await api.client.post("/api/webhook", json={"url": URL}, headers=h)
    r = await api.client.post("/api/webhook/test", headers=h)
    assert r.status_code == 202, r.text
    ping = r.json()
    with psycopg.connect(api.pg_url) as conn:
        event = conn.execute(
            "SELECT source, event, detail FROM notifier.events WHERE id = %s", (ping["event_id"],)
        ).fetchone()
        assert event == ("ping", "ping", {})
        outbox = conn.execute(
            "SELECT user_id, channel, status FROM notifier.outbox WHERE id = %s",
            (ping["delivery_id"],),
        ).fetchone()
        assert outbox == (user, "webhook", "pending")
        feed = conn.execute(
            "SELECT count(*) FROM notifier.notification_events WHERE user_id = %s", (user,)
        ).fetchone()
        assert feed == (0,)
        # What the delivery role would record: two attempts, then success.
        conn.execute(
            "INSERT INTO notifier.delivery_attempts (outbox_id, user_id, duration_ms, status_code,"
            " error) VALUES (%(o)s, %(u)s, 12, 500, NULL), (%(o)s, %(u)s, 30000, NULL, 'timeout')",
            {"o": ping["delivery_id"], "u": user},
        )
        conn.execute(
            "UPDATE notifier.outbox SET status = 'delivered', attempts = 2,"
            " delivered_at = now() WHERE id = %s",
            (ping["delivery_id"],),
        )
    for _ in range(2):
        assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 202
    page = (await api.client.get("/api/webhook/deliveries?limit=2", headers=h)).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = await api.client.get(
        "/api/webhook/deliveries", params={"cursor": page["next_cursor"]}, headers=h
    )
    first = rest.json()["items"]
    assert [d["id"] for d in first] == [ping["delivery_id"]]
    d = first[0]
    assert d["status"] == "delivered" and d["event"] == "ping" and d["attempt_count"] == 2
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in d["attempts"]] == [
        (500, None, 12),
        (None, "timeout", 30000),
    ]
    delivered = await api.client.get("/api/webhook/deliveries?status=delivered", headers=h)
    assert [x["id"] for x in delivered.json()["items"]] == [ping["delivery_id"]]
    assert (
        await api.client.get("/api/webhook/deliveries?status=bad", headers=h)
    ).status_code == 422

    r = await api.client.post(f"/api/webhook/deliveries/{ping['delivery_id']}/redeliver", headers=h)
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["redelivery_of"] == ping["delivery_id"] and again["event_id"] == ping["event_id"]
    with psycopg.connect(api.pg_url) as conn:
        row = conn.execute(
            "SELECT event_id, status, redelivery_of, message_id FROM notifier.outbox WHERE id = %s",
            (again["id"],),
        ).fetchone()
        (original,) = conn.execute(
            "SELECT message_id FROM notifier.outbox WHERE id = %s", (ping["delivery_id"],)
        ).fetchone()  # type: ignore[misc]
    # A redelivery is the same message again: the same webhook-id as the original.
    assert row == (uuid.UUID(ping["event_id"]), "pending", ping["delivery_id"], original)
    assert again["message_id"] == str(original) != ping["event_id"]
    assert d["message_id"] == str(original)
    other = bearer(uuid.uuid4())
    r = await api.client.post(
        f"/api/webhook/deliveries/{ping['delivery_id']}/redeliver", headers=other
    )
    assert r.status_code == 404
    assert (await api.client.get("/api/webhook/deliveries", headers=other)).json()["items"] == []

    # Deleting the webhook cancels what has not gone out yet.
    assert (await api.client.delete("/api/webhook", headers=h)).status_code == 204
    with psycopg.connect(api.pg_url) as conn:
        statuses = conn.execute(
            "SELECT status, count(*) FROM notifier.outbox WHERE user_id = %s GROUP BY 1 ORDER BY 1",
            (user,),
        ).fetchall()
    assert statuses == [("cancelled", 3), ("delivered", 1)]


async def test_ssrf_guard_without_private(api_env: dict[str, str], pg_url: str) -> None:
    env = dict(api_env, NOTIFIER_WEBHOOK_ALLOW_PRIVATE="false")
    server, url, _ = serve(env)
    h = bearer(uuid.uuid4())
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for bad in ("http://example.com/hook", "https://127.0.0.1/x", "https://10.1.2.3/",
                        "https://169.254.169.254/latest", "https://localhost/x",
                        "https://[::1]/x", "https://2130706433/", "ftp://example.com/",
                        "not a url"):  # fmt: skip
                r = await client.post("/api/webhook", json={"url": bad}, headers=h)
                assert r.status_code == 422, bad
                err = r.json()["error"]
                assert err["code"] == "invalid_url" and err["details"][0]["field"] == "url"
            assert (await client.get("/api/webhook", headers=h)).status_code == 404
    finally:
        server.stop()


async def test_an_ed25519_webhook_shows_its_public_key_never_its_private_key(
    api: Api, user: uuid.UUID
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    h = bearer(user)
    r = await api.client.post("/api/webhook", json={"url": URL, "signing": "ed25519"}, headers=h)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["signing"] == "ed25519" and created["secret"] is None
    public = created["public_key"]
    assert public.startswith("whpk_")
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public[5:]))  # a real Ed25519 key
    assert "whsk_" not in r.text
    got = await api.client.get("/api/webhook", headers=h)
    assert got.json()["public_key"] == public and got.json()["signing"] == "ed25519"
    assert "whsk_" not in got.text and "whsec_" not in got.text
    with psycopg.connect(api.pg_url) as conn:
        stored_public = conn.execute(
            "SELECT public_key FROM notifier.webhook_configs WHERE user_id = %s", (user,)
        ).fetchone()
    assert stored_public == (public,)
    ((private, _),) = stored_secrets(api.pg_url, user)
    assert private is not None and private.startswith("whsk_")
    rotated = await api.client.post("/api/webhook/rotate-secret", headers=h)
    assert rotated.status_code == 200 and "whsk_" not in rotated.text
    assert (
        rotated.json()["public_key"].startswith("whpk_") and rotated.json()["public_key"] != public
    )
    assert rotated.json()["secret"] is None
    assert stored_secrets(api.pg_url, user)[0][1] == private  # the old key signs for 24 h
    bad = await api.client.post("/api/webhook", json={"url": URL, "signing": "rsa"}, headers=h)
    assert bad.status_code == 422 and bad.json()["error"]["code"]
    # Back to HMAC: registering again with the default gives a whsec_ secret.
    again = await api.client.post("/api/webhook", json={"url": URL}, headers=h)
    assert again.json()["secret"].startswith("whsec_") and again.json()["public_key"] is None
    assert (await api.client.get("/api/webhook", headers=h)).json()["signing"] == "hmac"
