"""Remember the `email` claim of user tokens for the email channel.

The delivery role never sees tokens, so the API records the address in
`notifier.user_emails`, but only while the user has email on for some event
(preferences): a user who never asked for email leaves no address behind.
`PUT /api/preferences` records the token's address when it turns email on
and forgets it when it turns the last one off (`sync`); other requests update
a changed address of a user with email on (`EmailBook.note`). Each replica
remembers the (user, address) pairs it has looked at, so this is one
statement per user and address per replica, not one per request. Both take
a per-user advisory lock, so a request recording an address cannot undo a
concurrent `PUT` that turned email off.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000

# Serializes the statements below per user (a 64-bit hash of the user id).
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('user_emails:' || %(user)s::text, 0))"
# Index: preferences primary key prefix (user_id), user_emails primary key;
# an unchanged address writes nothing, a user with email off nowhere nothing.
RECORD = """
INSERT INTO notifier.user_emails (user_id, email)
SELECT %(user)s, %(email)s
WHERE EXISTS (SELECT 1 FROM notifier.preferences WHERE user_id = %(user)s AND email)
ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()
WHERE user_emails.email IS DISTINCT FROM EXCLUDED.email
"""
# After a preference change, in its transaction: forget the address when no
# event has email on any more. Same indexes.
FORGET = """
DELETE FROM notifier.user_emails
WHERE user_id = %(user)s
  AND NOT EXISTS (SELECT 1 FROM notifier.preferences WHERE user_id = %(user)s AND email)
"""


def usable(email: str | None) -> bool:
    """A plausible address (the table's check: 3-320 characters; one '@')."""
    return (
        email is not None
        and 3 <= len(email) <= 320
        and email.count("@") == 1
        and not any(c in email for c in "\x00\r\n")  # no header injection in To:
    )


@dataclass
class EmailBook:
    """The addresses this replica has already recorded."""

    written: dict[uuid.UUID, str] = field(default_factory=dict)

    async def note(self, pool: AsyncConnectionPool, user_id: uuid.UUID, email: str | None) -> None:
        """Record `email` for `user_id` if it is new here; never fails the request."""
        if not usable(email) or self.written.get(user_id) == email:
            return
        assert email is not None
        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(LOCK, {"user": user_id})
                await conn.execute(RECORD, {"user": user_id, "email": email})
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("could not record a user's email", extra={"error": type(exc).__name__})
            return
        if len(self.written) >= MAX_REMEMBERED:
            self.written.clear()
        self.written[user_id] = email


async def sync(conn: AsyncConnection[Any], user_id: uuid.UUID, email: str | None) -> None:
    """In a preference change's transaction: keep the address only while email is on."""
    await conn.execute(LOCK, {"user": user_id})
    await conn.execute(FORGET, {"user": user_id})
    if usable(email):
        await conn.execute(RECORD, {"user": user_id, "email": email})
