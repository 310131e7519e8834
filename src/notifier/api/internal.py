"""`/internal/events`: other platform services notify users through the notifier.

Guarded by `NOTIFIER_SERVICE_TOKEN` and the named `NOTIFIER_SERVICE_TOKENS`
(the routes answer 404 while none is set).
An event for now is fanned out in the request's transaction; one with a
future `deliver_at` is stored with its recipients and fanned out when due by
the delivery role (`fanout.fan_out_due`). The idempotency key is the event's
dedup key, scoped per calling service: a repeat from the same caller answers
the first result and creates nothing; another service's equal key is its own.
`notifications` is the number of distinct users the event is addressed to.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from notifier import erasure, fanout
from notifier.api import auth, parsing
from notifier.api.context import ctx
from notifier.api.errors import ApiError, FieldError, not_found
from notifier.api.routing import Endpoint, no_content, respond
from notifier.api.schemas import InternalEvent, InternalEventAccepted

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 60 * 1024  # so that a webhook body stays under 64 KiB

# events_dedup_key (unique) absorbs a repeated idempotency key.
INSERT_EVENT = """
INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id, entity_name,
                             detail, deliver_at, recipients, recipient_count)
VALUES (%(key)s, 'internal', %(event)s, %(entity_type)s, %(entity_id)s, %(entity_name)s,
        %(detail)s::jsonb, COALESCE(%(deliver_at)s, now()), %(users)s::uuid[], %(count)s)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, recipient_count, deliver_at, deliver_at > now() AS scheduled
"""
# Index: events_dedup_key.
EXISTING = """
SELECT id, recipient_count, deliver_at, deliver_at > created_at
FROM notifier.events WHERE dedup_key = %s
"""
# Index: events primary key.
CANCEL_EVENT = """
UPDATE notifier.events SET cancelled_at = COALESCE(cancelled_at, now())
WHERE id = %s AND source = 'internal'
RETURNING id
"""
# Index: outbox_event_idx (event_id).
CANCEL_OUTBOX = """
UPDATE notifier.outbox SET status = 'cancelled', updated_at = now()
WHERE event_id = %s AND status IN ('pending', 'paused')
"""


def dedup_key(idempotency_key: str, service: str = "") -> str:
    """The events.dedup_key of an /internal/events idempotency key of `service`.

    Keys of `NOTIFIER_SERVICE_TOKEN` keep their original form; a named
    service's keys are its own ("internal@" never begins an unnamed one).
    """
    if not service:
        return f"internal:{idempotency_key}"
    return f"internal@{service}:{idempotency_key}"


async def create_event(request: Request) -> Response:
    """POST /internal/events: 202 `{"id", "notifications"}`."""
    caller = auth.service(request)
    body = await parsing.json_body(request, InternalEvent, parsing.INTERNAL_BODY_LIMIT)
    detail = msgspec.json.encode(body.detail)
    if len(detail) > MAX_DETAIL_BYTES:
        message = f"detail is larger than {MAX_DETAIL_BYTES} bytes"
        raise ApiError(
            422, message, details=[FieldError(location="body", field="detail", message=message)]
        )
    users = list(dict.fromkeys(body.user_ids))
    key = dedup_key(body.idempotency_key, caller)
    c = ctx(request)
    params = {
        "key": key, "event": body.event, "entity_type": body.entity_type,
        "entity_id": body.entity_id, "entity_name": body.entity_name,
        "detail": detail.decode(), "deliver_at": body.deliver_at, "users": users,
        "count": len(users),
    }  # fmt: skip
    async with c.pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(INSERT_EVENT, params)).fetchone()
        if row is None:
            row = await (await conn.execute(EXISTING, (key,))).fetchone()
            assert row is not None  # the conflicting insert has committed
        elif not row[3]:
            await fanout.fan_out_to_users(conn, row[0], users, email=c.settings.smtp_enabled)
    answer = InternalEventAccepted(
        id=row[0], notifications=row[1] or 0, scheduled=bool(row[3]),
        deliver_at=row[2].astimezone(UTC),
    )  # fmt: skip
    return respond(answer, 202)


async def cancel_event(request: Request) -> Response:
    """DELETE /internal/events/{id}: what has not gone out yet never will."""
    auth.service(request)
    event_id: uuid.UUID = parsing.path_uuid(request, "id", "event")
    async with ctx(request).pool.connection() as conn, conn.transaction():
        if await (await conn.execute(CANCEL_EVENT, (event_id,))).fetchone() is None:
            raise not_found("event")
        await conn.execute(CANCEL_OUTBOX, (event_id,))
    return no_content()


async def erase_user(request: Request) -> Response:
    """DELETE /internal/users/{user_id}: every row of the user is gone (`erasure`)."""
    auth.service(request)
    user_id: uuid.UUID = parsing.path_uuid(request, "user_id", "user")
    async with ctx(request).pool.connection() as conn:
        removed = await erasure.erase_user(conn, user_id)
    log.info("user erased", extra={"rows": sum(removed.values())})
    return no_content()


ENDPOINTS = [
    Endpoint("POST", "/internal/events", create_event, "Notify users (platform services)",
             "internal", status=202, response=InternalEventAccepted, body=InternalEvent,
             auth="service", errors=(400, 401, 404, 413, 422),
             description="Needs the service token. `deliver_at` in the future schedules it; "
             "the same `idempotency_key` answers the same result and creates nothing."),
    Endpoint("DELETE", "/internal/events/{id}", cancel_event, "Cancel an event", "internal",
             status=204, path_params={"id": "uuid"}, auth="service", errors=(401, 404)),
    Endpoint("DELETE", "/internal/users/{user_id}", erase_user, "Erase a user", "internal",
             status=204, path_params={"user_id": "uuid"}, auth="service", errors=(401, 404),
             description="Needs the service token. Every row of the user (watches, feed, "
             "preferences, endpoints, outbox, attempts, tokens) is deleted in one transaction "
             "and nothing more is sent to them. Erasing an unknown user answers 204 too."),
]  # fmt: skip
