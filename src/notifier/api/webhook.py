"""The user's webhook: `/api/webhook…` (register, read, delete, rotate, test,
deliveries, redeliver), and what the `/api/webhooks…` routes share with them.

A user has up to 10 endpoints (`webhooks.py`); these singular routes act on
the oldest one. Registering again replaces its URL and secret and re-enables
it when disabled (its paused deliveries resume). The secret is shown only
when created or rotated, in a `Cache-Control: no-store` answer; after a
rotation or a re-registration the previous secret keeps signing alongside the
new one for `PREVIOUS_SECRET_HOURS` (a second rotation meanwhile keeps the
newest two). An ed25519 endpoint shows its `whpk_` public key instead; its
`whsk_` private key is never shown. Secrets are stored encrypted
(`secretbox.py`), bound to the endpoint's id.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response

from notifier import secretbox, signing, ssrf
from notifier.api import auth, cursor, parsing, ratelimit
from notifier.api.context import ctx, row_or_404
from notifier.api.errors import ApiError, FieldError, not_found
from notifier.api.routing import Endpoint, no_content, respond
from notifier.api.schemas import (
    Attempt,
    Delivery,
    DeliveryPage,
    DeliveryQuery,
    PingAccepted,
    RedeliverAccepted,
    Webhook,
    WebhookCreate,
    WebhookWithSecret,
)
from notifier.config import Settings
from notifier.resolver import Resolver, ResolveTimeout

CURSOR_KIND = "d"
SECRET_BYTES = 32
PREVIOUS_SECRET_HOURS = 24
MAX_ATTEMPTS_SHOWN = 50

# What GET answers (no secret).
COLUMNS = """id, url, description, event_types,
CASE WHEN public_key IS NULL THEN 'hmac' ELSE 'ed25519' END AS signing, public_key, rate_limit,
active, disabled_reason, disabled_at, failing_since, created_at, updated_at"""
# What creation and rotation answer, with the new secret (`with_secret`).
CREATED_COLUMNS = """id, url, public_key, active, created_at, previous_secret_expires_at,
description, event_types, rate_limit"""
# An answer carrying a secret must not stay in any cache (browser, proxy).
NO_STORE = {"Cache-Control": "no-store"}

# One writer of a user's set of endpoints at a time: the count of 10 and "the
# oldest" of the singular routes are read under it (transaction-scoped).
LOCK_USER = "SELECT pg_advisory_xact_lock(hashtextextended('notifier.webhooks:' || %s, 0))"
# Index: webhook_configs_user_created_idx (user_id, created_at, id).
OLDEST = """
SELECT id FROM notifier.webhook_configs WHERE user_id = %s ORDER BY created_at, id LIMIT 1
"""
_SAME_KIND = "((public_key IS NULL) = (%(public_key)s::text IS NULL))"
INSERT = f"""
INSERT INTO notifier.webhook_configs
    (id, user_id, url, secret_enc, public_key, description, event_types, rate_limit)
VALUES (%(id)s, %(user)s, %(url)s, %(secret_enc)s, %(public_key)s, %(description)s,
        %(event_types)s, %(rate_limit)s)
RETURNING {CREATED_COLUMNS}
"""  # noqa: S608 - built from constants only, never from input
# By primary key: POST /api/webhook again replaces the oldest endpoint's URL and
# key. The old secret keeps signing for the grace period, as after a rotation,
# unless the signing kind changes (an HMAC secret and an ed25519 key cannot
# sign one delivery together).
REPLACE = f"""
UPDATE notifier.webhook_configs SET
    url = %(url)s, secret = NULL, secret_enc = %(secret_enc)s, public_key = %(public_key)s,
    previous_secret = CASE WHEN {_SAME_KIND} THEN secret END,
    previous_secret_enc = CASE WHEN {_SAME_KIND} THEN secret_enc END,
    previous_secret_expires_at = CASE WHEN {_SAME_KIND}
        THEN now() + interval '{PREVIOUS_SECRET_HOURS} hours' END,
    rate_tokens = NULL,
    active = true, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL,
    updated_at = now()
WHERE id = %(id)s
RETURNING {CREATED_COLUMNS}
"""  # noqa: S608 - built from constants only, never from input
# Index: outbox_webhook_status_idx (webhook_id, status).
# A resumed row starts its retry schedule again (attempts = 0): otherwise a row
# paused after exhausting the schedule would disable the webhook at once.
RESUME_PAUSED = """
UPDATE notifier.outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
       updated_at = now()
WHERE webhook_id = %s AND status = 'paused'
"""
# Index: webhook_configs_user_created_idx; the oldest endpoint.
GET = f"""
SELECT {COLUMNS} FROM notifier.webhook_configs WHERE user_id = %s
ORDER BY created_at, id LIMIT 1
"""  # noqa: S608 - built from constants only, never from input
# Index: outbox_webhook_status_idx: undelivered rows of a deleted webhook never go out.
CANCEL_UNSENT = """
UPDATE notifier.outbox SET status = 'cancelled', updated_at = now()
WHERE webhook_id = %s AND status IN ('pending', 'paused', 'held')
"""
# By primary key, the owner checked.
DELETE = "DELETE FROM notifier.webhook_configs WHERE id = %(id)s AND user_id = %(user)s"
LOCK = """
SELECT id, active FROM notifier.webhook_configs WHERE id = %(id)s AND user_id = %(user)s
FOR UPDATE
"""
# By primary key, the owner checked. An endpoint keeps its kind: an ed25519
# one gets a new key pair (the caller makes both kinds of key; the statement
# keeps the one that fits).
ROTATE = f"""
UPDATE notifier.webhook_configs SET
    previous_secret = secret, previous_secret_enc = secret_enc,
    previous_secret_expires_at = now() + interval '{PREVIOUS_SECRET_HOURS} hours',
    secret = NULL,
    secret_enc = CASE WHEN public_key IS NULL THEN %(secret_enc)s ELSE %(private_enc)s END,
    public_key = CASE WHEN public_key IS NULL THEN NULL ELSE %(public_key)s END,
    updated_at = now()
WHERE id = %(id)s AND user_id = %(user)s
RETURNING {CREATED_COLUMNS}
"""  # noqa: S608 - built from constants only, never from input
# events_dedup_key (unique) holds the random ping key; the ping goes straight
# to the outbox (it is no feed item), so it is fanned out at insert.
INSERT_PING = """
INSERT INTO notifier.events (dedup_key, source, event, detail, fanned_out_at, recipients,
                             recipient_count)
VALUES (%(key)s, 'ping', 'ping', '{}'::jsonb, now(), ARRAY[%(user)s]::uuid[], 1)
RETURNING id
"""
# message_id: a redelivery is the same message again (same webhook-id); a
# ping is a new one (the column default).
INSERT_OUTBOX = """
INSERT INTO notifier.outbox (user_id, event_id, channel, webhook_id, redelivery_of, message_id)
VALUES (%(user)s, %(event)s, 'webhook', %(webhook)s, %(redelivery_of)s,
        coalesce(%(message)s::uuid, gen_random_uuid()))
RETURNING id
"""
_DELIVERY_COLUMNS = """
o.id, coalesce(o.message_id, o.event_id) AS message_id, o.event_id, e.event, o.channel,
o.status, o.attempts AS attempt_count,
CASE WHEN o.status IN ('pending', 'paused') THEN o.next_attempt_at END AS next_attempt_at,
o.last_error, o.redelivery_of, o.created_at, o.delivered_at
"""
# Index: outbox_user_id_idx (user_id, id DESC); events by primary key. One
# endpoint's deliveries are the user's filtered by webhook_id: a user has at
# most 10 endpoints, so no index of its own (one less for fan-out to write).
DELIVERIES = f"""
SELECT {_DELIVERY_COLUMNS}
FROM notifier.outbox o JOIN notifier.events e ON e.id = o.event_id
WHERE o.user_id = %(user)s AND o.id < %(before)s
  AND (%(status)s::text IS NULL OR o.status = %(status)s::text)
  AND (%(hook)s::uuid IS NULL OR o.webhook_id = %(hook)s::uuid)
ORDER BY o.id DESC LIMIT %(limit)s
"""  # noqa: S608 - built from constants only, never from input
# Index: delivery_attempts_outbox_idx (outbox_id, id).
ATTEMPTS = """
SELECT outbox_id, attempted_at, duration_ms, status_code, error FROM (
    SELECT a.*, row_number() OVER (PARTITION BY outbox_id ORDER BY id DESC) AS rn
    FROM notifier.delivery_attempts a WHERE outbox_id = ANY(%(ids)s) AND user_id = %(user)s
) latest
WHERE rn <= %(max)s ORDER BY outbox_id, id
"""
# Index: outbox primary key, then the user check.
ORIGINAL = """
SELECT event_id, channel, coalesce(message_id, event_id), webhook_id
FROM notifier.outbox WHERE id = %(id)s AND user_id = %(user)s
"""


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (Standard Webhooks format)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def keyring(settings: Settings) -> secretbox.Keyring:
    """The keys that seal secrets; 503 when none is configured (nothing stored in clear)."""
    keys = secretbox.from_settings(settings.encryption_key, settings.encryption_key_previous)
    if keys is None:
        raise ApiError(
            503, "webhooks are unavailable: the server has no NOTIFIER_ENCRYPTION_KEY",
            code="encryption_key_missing",
        )  # fmt: skip
    return keys


def new_keys(scheme: str, keys: secretbox.Keyring, hook: uuid.UUID) -> dict[str, Any]:
    """A new endpoint's id, its secret (sealed, and clear for the answer) and public key."""
    if scheme == "ed25519":
        secret, public = signing.new_ed25519()
    else:
        secret, public = new_secret(), None
    return {"id": hook, "secret": secret, "secret_enc": keys.encrypt(secret, hook),
            "public_key": public}  # fmt: skip


def with_secret(row: dict[str, Any], secret: str, status: int = 200) -> Response:
    """The creation/rotation answer (no-store): the HMAC secret, or an ed25519 public key only.

    A `whsk_` private key never leaves the server.
    """
    public = row.pop("public_key")
    if public is not None:
        body = WebhookWithSecret(**row, secret=None, signing="ed25519", public_key=public)
    else:
        body = WebhookWithSecret(**row, secret=secret, signing="hmac")
    return respond(body, status, headers=NO_STORE)


async def check_url(url: str, allow_private: bool, resolver: Resolver) -> None:
    """The SSRF guard (DNS on the bounded resolver); a 422 naming the reason when refused."""
    try:
        await ssrf.check_url_async(url, allow_private=allow_private, resolver=resolver)
    except ssrf.UnsafeURL as exc:
        reason = str(exc)
    except ResolveTimeout:
        reason = "the host did not resolve in time"
    else:
        return
    raise ApiError(
        422, f"unusable webhook URL: {reason}", code="invalid_url",
        details=[FieldError(location="body", field="url", message=reason)],
    )  # fmt: skip


def disabled() -> ApiError:
    """409: the endpoint is disabled (test, redeliver, recover)."""
    return ApiError(
        409, "the webhook is disabled; re-enable it (PATCH active, or register it again)",
        code="webhook_disabled",
    )  # fmt: skip


async def oldest(conn: AsyncConnection[Any], user: uuid.UUID) -> uuid.UUID:
    """The id of the user's oldest endpoint (what the singular routes act on); 404 if none."""
    row = await (await conn.execute(OLDEST, (user,))).fetchone()
    if row is None:
        raise not_found("webhook")
    return row[0]  # type: ignore[no-any-return]


async def rotate_endpoint(
    conn: AsyncConnection[Any], keys: secretbox.Keyring, user: uuid.UUID, hook: uuid.UUID
) -> Response:
    """Rotate one endpoint's secret (or key pair): 200 with the new secret (or public key)."""
    private, public = signing.new_ed25519()
    secret = new_secret()
    params = {"user": user, "id": hook, "public_key": public,
              "secret_enc": keys.encrypt(secret, hook),
              "private_enc": keys.encrypt(private, hook)}  # fmt: skip
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(ROTATE, params)
    row = await cur.fetchone()
    if row is None:
        raise not_found("webhook")
    return with_secret(row, secret)


async def ping_endpoint(conn: AsyncConnection[Any], user: uuid.UUID, hook: uuid.UUID) -> Response:
    """Send a `ping` to one endpoint through the outbox: 202 (409 while disabled)."""
    async with conn.transaction():
        row = await (await conn.execute(LOCK, {"id": hook, "user": user})).fetchone()
        if row is None:
            raise not_found("webhook")
        if not row[1]:
            raise disabled()
        key = f"ping:{user}:{uuid.uuid4()}"
        event = await (await conn.execute(INSERT_PING, {"key": key, "user": user})).fetchone()
        assert event is not None
        params = {"user": user, "event": event[0], "webhook": hook, "redelivery_of": None,
                  "message": None}  # fmt: skip
        out = await (await conn.execute(INSERT_OUTBOX, params)).fetchone()
        assert out is not None
    return respond(PingAccepted(status="accepted", event_id=event[0], delivery_id=out[0]), 202)


async def delete_endpoint(conn: AsyncConnection[Any], user: uuid.UUID, hook: uuid.UUID) -> None:
    """Delete one endpoint; what it had not delivered is cancelled. Run in a transaction."""
    row = await (await conn.execute(LOCK, {"id": hook, "user": user})).fetchone()
    if row is None:
        raise not_found("webhook")
    await conn.execute(CANCEL_UNSENT, (hook,))
    await conn.execute(DELETE, {"id": hook, "user": user})


async def delivery_page(request: Request, user: uuid.UUID, hook: uuid.UUID | None) -> Response:
    """A page of deliveries (of one endpoint, or all the user's), newest first, with attempts."""
    q = parsing.query(request, DeliveryQuery)
    before = cursor.decode_id(q.cursor, CURSOR_KIND) if q.cursor else cursor.MAX_BIGINT
    params = {"user": user, "before": before, "status": q.status, "limit": q.limit + 1,
              "hook": hook}  # fmt: skip
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(DELIVERIES, params)
        rows = await cur.fetchall()
        page = rows[: q.limit]
        attempts: dict[int, list[Attempt]] = {r["id"]: [] for r in page}
        if page:
            ids = [r["id"] for r in page]
            await cur.execute(ATTEMPTS, {"ids": ids, "user": user, "max": MAX_ATTEMPTS_SHOWN})
            for a in await cur.fetchall():
                attempts[a.pop("outbox_id")].append(Attempt(**a))
    items = [Delivery(**r, attempts=attempts[r["id"]]) for r in page]
    next_cursor = cursor.encode(CURSOR_KIND, items[-1].id) if len(rows) > q.limit else None
    return respond(DeliveryPage(items=items, next_cursor=next_cursor))


async def register(request: Request) -> Response:
    """POST /api/webhook: 201 with the secret; replaces the oldest endpoint's URL and key."""
    who = await auth.user(request)
    body = await parsing.json_body(request, WebhookCreate)
    c = ctx(request)
    keys = keyring(c.settings)
    url = body.url.strip()
    await check_url(url, c.settings.webhook_allow_private, c.resolver)
    async with c.pool.connection() as conn, conn.transaction():
        await conn.execute(LOCK_USER, (str(who.id),))
        cur = conn.cursor(row_factory=dict_row)
        first = await (await conn.execute(OLDEST, (who.id,))).fetchone()
        # The secret is sealed with the endpoint's id: a new one, or the oldest's.
        made = new_keys(body.signing, keys, uuid.uuid4() if first is None else first[0])
        params: dict[str, Any] = {"user": who.id, "url": url, **made}
        if first is None:
            await cur.execute(
                INSERT, params | {"description": None, "event_types": None, "rate_limit": None}
            )
        else:
            await cur.execute(REPLACE, params)
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(RESUME_PAUSED, (row["id"],))
    return with_secret(row, made["secret"], 201)


async def get_webhook(request: Request) -> Response:
    """GET /api/webhook: the oldest endpoint, no secret, with `disabled_reason`."""
    who = await auth.user(request)
    return respond(Webhook(**await row_or_404(request, GET, (who.id,), "webhook")))


async def delete_webhook(request: Request) -> Response:
    """DELETE /api/webhook: the oldest endpoint; undelivered deliveries are cancelled."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn, conn.transaction():
        await conn.execute(LOCK_USER, (str(who.id),))
        await delete_endpoint(conn, who.id, await oldest(conn, who.id))
    return no_content()


async def rotate_secret(request: Request) -> Response:
    """POST /api/webhook/rotate-secret: 200 with the new secret."""
    who = await auth.user(request)
    c = ctx(request)
    keys = keyring(c.settings)
    async with c.pool.connection() as conn:
        return await rotate_endpoint(conn, keys, who.id, await oldest(conn, who.id))


async def test_ping(request: Request) -> Response:
    """POST /api/webhook/test: a `ping` event through the normal outbox."""
    who = await auth.user(request)
    ratelimit.spend(ctx(request).sends, who.id)
    async with ctx(request).pool.connection() as conn:
        return await ping_endpoint(conn, who.id, await oldest(conn, who.id))


async def deliveries(request: Request) -> Response:
    """GET /api/webhook/deliveries: every endpoint's, newest first, each with its attempts."""
    who = await auth.user(request)
    return await delivery_page(request, who.id, None)


async def redeliver(request: Request) -> Response:
    """POST /api/webhook/deliveries/{id}/redeliver: same message to its endpoint, same id."""
    who = await auth.user(request)
    ratelimit.spend(ctx(request).sends, who.id)
    did = parsing.path_int(request, "id", "delivery")
    async with ctx(request).pool.connection() as conn, conn.transaction():
        original = await (await conn.execute(ORIGINAL, {"id": did, "user": who.id})).fetchone()
        if original is None or original[1] != "webhook":
            raise not_found("delivery")
        hook = await (
            await conn.execute(LOCK, {"id": original[3], "user": who.id})
        ).fetchone()  # fmt: skip
        if hook is None:
            raise not_found("webhook")
        if not hook[1]:
            raise disabled()
        params: dict[str, Any] = {"user": who.id, "event": original[0], "webhook": hook[0],
                                  "redelivery_of": did, "message": original[2]}  # fmt: skip
        out = await (await conn.execute(INSERT_OUTBOX, params)).fetchone()
        assert out is not None
    return respond(
        RedeliverAccepted(status="accepted", id=out[0], redelivery_of=did, event_id=original[0],
                          message_id=original[2]),
        202,
    )  # fmt: skip


ENDPOINTS = [
    Endpoint("POST", "/api/webhook", register, "Register (or replace) the webhook", "webhook",
             status=201, response=WebhookWithSecret, body=WebhookCreate,
             errors=(400, 413, 422, 503),
             description="Acts on the user's oldest endpoint (creates one when there is none). "
             "The URL must be https (http too when private addresses are allowed) "
             "and must not resolve to a private address. The secret is shown only here and "
             "on rotation (`Cache-Control: no-store`); the previous one keeps signing for 24 "
             "hours. 503 `encryption_key_missing` while the server has no encryption key."),
    Endpoint("GET", "/api/webhook", get_webhook, "The webhook, without its secret", "webhook",
             response=Webhook, errors=(404,)),
    Endpoint("DELETE", "/api/webhook", delete_webhook, "Remove the webhook", "webhook",
             status=204, errors=(404,)),
    Endpoint("POST", "/api/webhook/rotate-secret", rotate_secret, "Rotate the signing secret",
             "webhook", response=WebhookWithSecret, errors=(404, 503),
             description="The previous secret keeps signing alongside for 24 hours (a second "
             "rotation meanwhile keeps the newest two)."),
    Endpoint("POST", "/api/webhook/test", test_ping, "Send a ping event", "webhook",
             status=202, response=PingAccepted, errors=(404, 409)),
    Endpoint("GET", "/api/webhook/deliveries", deliveries, "Recent deliveries with attempts",
             "webhook", response=DeliveryPage, query=DeliveryQuery, errors=(400, 422)),
    Endpoint("POST", "/api/webhook/deliveries/{id:int}/redeliver", redeliver,
             "Deliver a message again (same webhook-id)", "webhook", status=202,
             response=RedeliverAccepted, path_params={"id": "integer"}, errors=(404, 409)),
]  # fmt: skip
