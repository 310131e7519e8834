"""Several webhook endpoints per user: `/api/webhooks…` (contract §5).

Up to `MAX_ENDPOINTS` a user, each with its own URL, secret (or ed25519 key
pair), optional `event_types` filter, description, state, deliveries and
`rate_limit`. Someone else's endpoint id answers 404, before the body is read.
The singular `/api/webhook` routes (`webhook.py`) act on the oldest endpoint.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, parsing, ratelimit
from notifier.api import webhook as single
from notifier.api.context import ctx, row_or_404
from notifier.api.errors import ApiError, FieldError, not_found
from notifier.api.routing import Endpoint, no_content, respond
from notifier.api.schemas import (
    DeliveryPage,
    DeliveryQuery,
    EndpointCreate,
    EndpointPatch,
    PingAccepted,
    Recover,
    Recovered,
    Webhook,
    WebhookList,
    WebhookWithSecret,
)

MAX_ENDPOINTS = 10

# Index: webhook_configs_user_created_idx (user_id, created_at, id).
LIST = f"""
SELECT {single.COLUMNS} FROM notifier.webhook_configs WHERE user_id = %s
ORDER BY created_at, id
"""  # noqa: S608 - built from constants only, never from input
COUNT = "SELECT count(*) FROM notifier.webhook_configs WHERE user_id = %s"
# By primary key, the owner checked.
GET_ONE = f"""
SELECT {single.COLUMNS} FROM notifier.webhook_configs WHERE id = %(id)s AND user_id = %(user)s
"""  # noqa: S608 - built from constants only, never from input
# By primary key, the owner checked. A flag per field says whether the body
# set it (null clears); `active` false stops the endpoint as the user's choice,
# true clears what disabled it. A new rate limit starts a full bucket.
PATCH = f"""
UPDATE notifier.webhook_configs SET
    url = CASE WHEN %(set_url)s THEN %(url)s ELSE url END,
    description = CASE WHEN %(set_description)s THEN %(description)s ELSE description END,
    event_types = CASE WHEN %(set_event_types)s THEN %(event_types)s::text[] ELSE event_types END,
    rate_limit = CASE WHEN %(set_rate_limit)s THEN %(rate_limit)s::float8 ELSE rate_limit END,
    rate_tokens = CASE WHEN %(set_rate_limit)s THEN NULL ELSE rate_tokens END,
    active = coalesce(%(active)s::boolean, active),
    disabled_reason = CASE WHEN %(active)s::boolean THEN NULL
                           WHEN NOT %(active)s::boolean AND active THEN 'disabled by the user'
                           ELSE disabled_reason END,
    disabled_at = CASE WHEN %(active)s::boolean THEN NULL
                       WHEN NOT %(active)s::boolean AND active THEN now()
                       ELSE disabled_at END,
    failing_since = CASE WHEN %(active)s::boolean THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = %(id)s AND user_id = %(user)s
RETURNING {single.COLUMNS}
"""  # noqa: S608 - built from constants only, never from input
# Index: outbox_webhook_status_idx (webhook_id, status). Stopped by the user:
# what was pending waits, paused (resumed by "active": true).
PAUSE_PENDING = """
UPDATE notifier.outbox SET status = 'paused', updated_at = now()
WHERE webhook_id = %s AND status = 'pending'
"""


# Index: outbox_webhook_status_idx (webhook_id, status), one probe per
# status. The held, dead and paused messages of one endpoint made in the
# window are sent again as new rows (the message_id default: a new id each,
# `redelivery_of` naming the original); the originals become 'recovered', so
# a later re-enable or recovery sends none of them twice. Only original
# messages are picked, and copies made by an earlier recovery in their turn.
RECOVER = """
WITH picked AS (
    UPDATE notifier.outbox o SET status = 'recovered', updated_at = now()
    WHERE o.webhook_id = %(hook)s AND o.status IN ('held', 'dead', 'paused')
      AND o.channel = 'webhook'
      AND o.created_at >= %(since)s AND o.created_at < %(until)s
    RETURNING o.id, o.user_id, o.event_id, o.webhook_id
), copies AS (
    INSERT INTO notifier.outbox (user_id, event_id, channel, webhook_id, redelivery_of)
    SELECT user_id, event_id, 'webhook', webhook_id, id FROM picked ORDER BY id
    RETURNING 1
)
SELECT count(*) FROM copies
"""


async def recover_messages(
    conn: AsyncConnection[Any], hook: uuid.UUID, since: datetime, until: datetime
) -> int:
    """Send the endpoint's held, dead and paused messages of [since, until) again; how many."""
    cur = await conn.execute(RECOVER, {"hook": hook, "since": since, "until": until})
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _endpoint_id(request: Request) -> uuid.UUID:
    return parsing.path_uuid(request, "id", "webhook")


async def list_endpoints(request: Request) -> Response:
    """GET /api/webhooks: the user's endpoints, oldest first, without secrets."""
    who = await auth.user(request)
    async with ctx(request).pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(LIST, (who.id,))
        rows = await cur.fetchall()
    return respond(WebhookList(items=[Webhook(**r) for r in rows]))


async def create_endpoint(request: Request) -> Response:
    """POST /api/webhooks: 201 with the endpoint and its secret (or public key); 409 past 10."""
    who = await auth.user(request)
    body = await parsing.json_body(request, EndpointCreate)
    c = ctx(request)
    keys = single.keyring(c.settings)
    url = body.url.strip()
    await single.check_url(url, c.settings.webhook_allow_private, c.resolver)
    made = single.new_keys(body.signing, keys, uuid.uuid4())
    params: dict[str, Any] = {
        "user": who.id, "url": url, "description": body.description,
        "event_types": body.event_types, "rate_limit": body.rate_limit, **made,
    }  # fmt: skip
    async with c.pool.connection() as conn, conn.transaction():
        await conn.execute(single.LOCK_USER, (str(who.id),))
        count = await (await conn.execute(COUNT, (who.id,))).fetchone()
        if count is not None and count[0] >= MAX_ENDPOINTS:
            raise ApiError(
                409, f"at most {MAX_ENDPOINTS} webhook endpoints a user", code="webhook_limit"
            )
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(single.INSERT, params)
        row = await cur.fetchone()
    assert row is not None
    return single.with_secret(row, made["secret"], 201)


async def _check_owner(pool: AsyncConnectionPool, user: uuid.UUID, hook: uuid.UUID) -> None:
    """404 unless endpoint `hook` exists and belongs to `user`."""
    async with pool.connection() as conn:
        if await (await conn.execute(GET_ONE, {"id": hook, "user": user})).fetchone() is None:
            raise not_found("webhook")


async def get_endpoint(request: Request) -> Response:
    """GET /api/webhooks/{id}: the endpoint without its secret."""
    who = await auth.user(request)
    params = {"id": _endpoint_id(request), "user": who.id}
    return respond(Webhook(**await row_or_404(request, GET_ONE, params, "webhook")))


async def patch_endpoint(request: Request) -> Response:
    """PATCH /api/webhooks/{id}: a partial update; `"active": true` re-enables."""
    who = await auth.user(request)
    hook = _endpoint_id(request)
    c = ctx(request)
    await _check_owner(c.pool, who.id, hook)  # someone else's id: 404 whatever the body
    body = await parsing.json_body(request, EndpointPatch)
    url = body.url.strip() if isinstance(body.url, str) else None
    if url is not None:
        await single.check_url(url, c.settings.webhook_allow_private, c.resolver)
    fields = ("description", "event_types", "rate_limit")
    params: dict[str, Any] = {"id": hook, "user": who.id, "set_url": url is not None, "url": url}
    for name in fields:
        value = getattr(body, name)
        params[f"set_{name}"] = value is not msgspec.UNSET
        params[name] = None if value is msgspec.UNSET else value
    params["active"] = None if body.active is msgspec.UNSET else body.active
    async with c.pool.connection() as conn, conn.transaction():
        lock = await (await conn.execute(single.LOCK, {"id": hook, "user": who.id})).fetchone()
        if lock is None:
            raise not_found("webhook")
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(PATCH, params)
        row = await cur.fetchone()
        assert row is not None
        if body.active is True and not lock[1]:
            await conn.execute(single.RESUME_PAUSED, (hook,))
        elif body.active is False and lock[1]:
            await conn.execute(PAUSE_PENDING, (hook,))
    return respond(Webhook(**row))


async def delete_endpoint(request: Request) -> Response:
    """DELETE /api/webhooks/{id}: 204; what it had not delivered is cancelled."""
    who = await auth.user(request)
    hook = _endpoint_id(request)
    async with ctx(request).pool.connection() as conn, conn.transaction():
        await single.delete_endpoint(conn, who.id, hook)
    return no_content()


async def rotate_endpoint(request: Request) -> Response:
    """POST /api/webhooks/{id}/rotate-secret: 200 with the new secret (or public key)."""
    who = await auth.user(request)
    hook = _endpoint_id(request)
    c = ctx(request)
    keys = single.keyring(c.settings)
    async with c.pool.connection() as conn:
        return await single.rotate_endpoint(conn, keys, who.id, hook)


async def ping_endpoint(request: Request) -> Response:
    """POST /api/webhooks/{id}/test: a `ping` through the outbox (409 while disabled)."""
    who = await auth.user(request)
    ratelimit.spend(ctx(request).sends, who.id)
    hook = _endpoint_id(request)
    async with ctx(request).pool.connection() as conn:
        return await single.ping_endpoint(conn, who.id, hook)


async def recover(request: Request) -> Response:
    """POST /api/webhooks/{id}/recover: 202 `{"redelivered": n}` (409 while disabled)."""
    who = await auth.user(request)
    ratelimit.spend(ctx(request).sends, who.id)
    hook = _endpoint_id(request)
    c = ctx(request)
    await _check_owner(c.pool, who.id, hook)  # someone else's id: 404 whatever the body
    body = await parsing.json_body(request, Recover)
    until = body.until or datetime.now(UTC)
    if until <= body.since:
        raise ApiError(
            422, "until must be after since",
            details=[FieldError(location="body", field="until", message="not after since")],
        )  # fmt: skip
    async with c.pool.connection() as conn, conn.transaction():
        lock = await (await conn.execute(single.LOCK, {"id": hook, "user": who.id})).fetchone()
        if lock is None:
            raise not_found("webhook")
        if not lock[1]:
            raise single.disabled()
        n = await recover_messages(conn, hook, body.since, until)
    return respond(Recovered(redelivered=n), 202)


async def endpoint_deliveries(request: Request) -> Response:
    """GET /api/webhooks/{id}/deliveries: that endpoint's deliveries with attempts."""
    who = await auth.user(request)
    hook = _endpoint_id(request)
    await _check_owner(ctx(request).pool, who.id, hook)
    return await single.delivery_page(request, who.id, hook)


ENDPOINTS = [
    Endpoint("GET", "/api/webhooks", list_endpoints, "The user's webhook endpoints", "webhook",
             response=WebhookList),
    Endpoint("POST", "/api/webhooks", create_endpoint, "Add a webhook endpoint", "webhook",
             status=201, response=WebhookWithSecret, body=EndpointCreate, errors=(409, 503),
             description=f"Up to {MAX_ENDPOINTS} a user (then 409 `webhook_limit`). The secret "
             "(or, for ed25519 signing, the `whpk_` public key) is shown here and on "
             "rotation only."),
    Endpoint("GET", "/api/webhooks/{id}", get_endpoint, "One endpoint, without its secret",
             "webhook", response=Webhook, path_params={"id": "uuid"}, errors=(404,)),
    Endpoint("PATCH", "/api/webhooks/{id}", patch_endpoint, "Change an endpoint", "webhook",
             response=Webhook, body=EndpointPatch, path_params={"id": "uuid"}, errors=(404,),
             description="Absent fields keep their value; null clears `description`, "
             "`event_types`, `rate_limit`. `active: true` re-enables a disabled endpoint "
             "(its paused messages resume)."),
    Endpoint("DELETE", "/api/webhooks/{id}", delete_endpoint, "Remove an endpoint", "webhook",
             status=204, path_params={"id": "uuid"}, errors=(404,)),
    Endpoint("POST", "/api/webhooks/{id}/rotate-secret", rotate_endpoint,
             "Rotate an endpoint's secret", "webhook", response=WebhookWithSecret,
             path_params={"id": "uuid"}, errors=(404, 503),
             description="The previous secret (or key) keeps signing alongside for 24 hours."),
    Endpoint("POST", "/api/webhooks/{id}/test", ping_endpoint, "Send a ping to an endpoint",
             "webhook", status=202, response=PingAccepted, path_params={"id": "uuid"},
             errors=(404, 409)),
    Endpoint("GET", "/api/webhooks/{id}/deliveries", endpoint_deliveries,
             "An endpoint's deliveries with attempts", "webhook", response=DeliveryPage,
             query=DeliveryQuery, path_params={"id": "uuid"}, errors=(400, 404, 422)),
    Endpoint("POST", "/api/webhooks/{id}/recover", recover,
             "Send an endpoint's failed, dead or held messages again", "webhook", status=202,
             response=Recovered, body=Recover, path_params={"id": "uuid"}, errors=(404, 409),
             description="Every message to this endpoint made in [since, until) that died, "
             "was paused or was held while the endpoint was disabled is sent again, each with "
             "its own new webhook-id; the originals are marked `recovered`."),
]  # fmt: skip
