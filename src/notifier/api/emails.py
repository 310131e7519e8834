"""Remember the `email` claim of user tokens for the email channel.

The delivery role never sees tokens, so the API records the address in
`notifier.user_emails` whenever a token carries a new one for its user. Each
replica remembers what it has written, so this is one upsert per user and
address per replica, not one per request.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000

# Index: user_emails primary key; an unchanged address writes nothing.
RECORD = """
INSERT INTO notifier.user_emails (user_id, email) VALUES (%s, %s)
ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()
WHERE user_emails.email IS DISTINCT FROM EXCLUDED.email
"""


def usable(email: str | None) -> bool:
    """A plausible address (the table's check: 3-320 characters; one '@')."""
    return (
        email is not None
        and 3 <= len(email) <= 320
        and email.count("@") == 1
        and ("\x00" not in email)
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
            async with pool.connection() as conn:
                await conn.execute(RECORD, (user_id, email))
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("could not record a user's email", extra={"error": type(exc).__name__})
            return
        if len(self.written) >= MAX_REMEMBERED:
            self.written.clear()
        self.written[user_id] = email
