"""Secrets at rest: nothing in clear in any table, no-store answers, the grace windows.

Endpoints are made through the real API; deliveries go through the real
delivery loop to a loopback receiver that verifies with `standardwebhooks`.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier import secretbox
from tests.api.conftest import Api, bearer, serve
from tests.conftest import stored_secrets
from tests.delivery.conftest import attempts_of, running, wait_until
from tests.delivery.receiver import receiver

URL = "http://127.0.0.1:9/hook"


def _no_store(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def _needles(secret: str) -> list[str]:
    """A secret as text, its base64 key, and its key bytes as a bytea column prints them."""
    encoded = secret.split("_", 1)[1]
    raw = base64.b64decode(encoded)
    return [secret, encoded, raw.hex(), raw[:16].hex()]


def _every_row_as_text(pg_url: str) -> dict[str, str]:
    """Each table of schema notifier: all its rows, every column, as PostgreSQL prints them."""
    out: dict[str, str] = {}
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'notifier' AND table_type = 'BASE TABLE'"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM notifier.{} t").format(sql.Identifier(table))
            ).fetchall()
            out[table] = "\n".join(r[0] for r in rows)
    return out


async def test_no_secret_or_token_is_stored_in_clear(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    shown: list[str] = []
    first = _no_store(await api.client.post("/api/webhook", json={"url": URL}, headers=h))
    shown.append(first["secret"])
    shown.append(
        _no_store(await api.client.post("/api/webhook/rotate-secret", headers=h))["secret"]
    )
    hmac_hook = _no_store(await api.client.post("/api/webhooks", json={"url": URL}, headers=h))
    shown.append(hmac_hook["secret"])
    for _ in range(2):
        rotated = await api.client.post(f"/api/webhooks/{hmac_hook['id']}/rotate-secret", headers=h)
        shown.append(_no_store(rotated)["secret"])
    signed = _no_store(
        await api.client.post("/api/webhooks", json={"url": URL, "signing": "ed25519"}, headers=h)
    )
    assert signed["secret"] is None
    _no_store(await api.client.post(f"/api/webhooks/{signed['id']}/rotate-secret", headers=h))
    again = _no_store(await api.client.post("/api/webhook", json={"url": URL + "2"}, headers=h))
    shown.append(again["secret"])
    feed = _no_store(await api.client.post("/api/feed-token", headers=h))
    token = feed["url"].rsplit("/", 1)[1].removesuffix(".atom")

    stored = stored_secrets(api.pg_url, user)  # decrypted with the key, to know the private keys
    private = [s for pair in stored for s in pair if s and s.startswith("whsk_")]
    assert len(private) == 2  # the ed25519 endpoint's key and the one it rotated from
    live = {s for pair in stored for s in pair if s} - set(private)
    # What signs now: the oldest's re-registered and rotated secrets, the other's last two.
    assert live == {shown[5], shown[1], shown[4], shown[3]}

    dump = _every_row_as_text(api.pg_url)
    assert {"webhook_configs", "feed_tokens"} <= set(dump)
    assert len(dump["webhook_configs"].splitlines()) == 3
    needles = [n for s in shown + private for n in _needles(s)] + [token]
    for table, text in dump.items():
        for needle in needles:
            assert needle not in text, f"a secret in clear in notifier.{table}"


async def test_rows_are_unreadable_without_the_key(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    with receiver() as r:
        made = _no_store(await api.client.post("/api/webhook", json={"url": r.url}, headers=h))
        with psycopg.connect(api.pg_url) as conn:
            hook, clear, sealed = conn.execute(
                "SELECT id, secret, secret_enc FROM notifier.webhook_configs WHERE user_id = %s",
                (user,),
            ).fetchone() or (None, None, None)
        assert clear is None and sealed is not None
        other = secretbox.Keyring(secretbox.parse_key(secretbox.new_key()))
        with pytest.raises(secretbox.UnreadableSecret):
            other.decrypt(sealed, hook)
        # A delivery process without the key cannot sign: the attempt fails, nothing is sent.
        ping = (await api.client.post("/api/webhook/test", headers=h)).json()
        async with running(api.pg_url, keys=None):
            attempts = await wait_until(
                lambda: attempts_of(api.pg_url, ping["delivery_id"]), "the failed attempt"
            )
        assert "bad_secret" in str(attempts[0]) and r.requests == []
        with psycopg.connect(api.pg_url) as conn:  # due again now, not at its next backoff
            conn.execute(
                "UPDATE notifier.outbox SET next_attempt_at = now() WHERE id = %s",
                (ping["delivery_id"],),
            )
        async with running(api.pg_url):
            await wait_until(lambda: r.requests, "the signed ping")
    assert Webhook(made["secret"]).verify(r.requests[0].body, r.requests[0].headers)


async def test_a_second_rotation_keeps_the_newest_two(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    with receiver() as r:
        s1 = _no_store(await api.client.post("/api/webhook", json={"url": r.url}, headers=h))
        s2 = _no_store(await api.client.post("/api/webhook/rotate-secret", headers=h))
        s3 = _no_store(await api.client.post("/api/webhook/rotate-secret", headers=h))
        assert stored_secrets(api.pg_url, user) == [(s3["secret"], s2["secret"])]
        assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 202
        async with running(api.pg_url):
            await wait_until(lambda: r.requests, "the ping")
    got = r.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (s3["secret"], s2["secret"]):
        assert Webhook(secret).verify(got.body, got.headers)["event"] == "ping"
    with pytest.raises(WebhookVerificationError):
        Webhook(s1["secret"]).verify(got.body, got.headers)


async def test_registering_again_keeps_the_old_secret_for_the_grace_period(
    api: Api, user: uuid.UUID
) -> None:
    h = bearer(user)
    with receiver() as r:
        old = _no_store(await api.client.post("/api/webhook", json={"url": URL}, headers=h))
        new = _no_store(await api.client.post("/api/webhook", json={"url": r.url}, headers=h))
        assert new["id"] == old["id"] and new["url"] == r.url
        assert new["previous_secret_expires_at"] is not None
        assert (await api.client.post("/api/webhook/test", headers=h)).status_code == 202
        async with running(api.pg_url):
            await wait_until(lambda: r.requests, "the ping")
    got = r.requests[0]
    for secret in (new["secret"], old["secret"]):  # a receiver still on the old one verifies
        assert Webhook(secret).verify(got.body, got.headers)["event"] == "ping"
    # Another signing kind cannot sign alongside: no grace then.
    ed = _no_store(
        await api.client.post("/api/webhook", json={"url": URL, "signing": "ed25519"}, headers=h)
    )
    assert ed["previous_secret_expires_at"] is None
    ((current, previous),) = stored_secrets(api.pg_url, user)
    assert current is not None and current.startswith("whsk_") and previous is None


async def test_without_a_key_no_secret_is_made(api_env: dict[str, str], pg_url: str) -> None:
    env = {k: v for k, v in api_env.items() if not k.startswith("NOTIFIER_ENCRYPTION_KEY")}
    server, url, _ = serve(env)
    h = bearer(uuid.uuid4())
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            for path in ("/api/webhook", "/api/webhooks"):
                r = await client.post(path, json={"url": URL}, headers=h)
                assert r.status_code == 503 and "whsec_" not in r.text
                assert r.json()["error"]["code"] == "encryption_key_missing"
    finally:
        server.stop()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM notifier.webhook_configs").fetchone() == (0,)
