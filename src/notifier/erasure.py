"""Erasure: `DELETE /internal/users/{user_id}` removes every row of one user.

One transaction, so the user is either all there or all gone. It first takes
the fan-out lock (`fanout.FEED_LOCK_KEY`) exclusively: a fan-out already
running commits before, and none writes new rows for the user until the
erasure has committed (its watches are gone by then, so router events no
longer reach the user). A send in flight for a deleted outbox row finds no row
to complete (`outbox.COMPLETE_SQL` records attempts only for rows that exist).

Events stay: they are shared by every watcher of an entity. The user's id
leaves the recipients of /internal/events, and the events made for that user
alone (pings, `webhook.disabled` notices, internal events addressed only to
them) go with their rows.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection

from notifier import fanout

LOCK_FAN_OUT = "SELECT pg_advisory_xact_lock(%s)"
# Rare and service-only: it may wait for a long fan-out and delete a large
# feed, beyond the API session's usual limits (db.conninfo_for).
LONGER_LIMITS = ("SET LOCAL lock_timeout = '120s'", "SET LOCAL statement_timeout = '600s'")

# Every table holding a user's rows, in an order the foreign keys accept
# (attempts before their outbox rows, outbox rows before their endpoints).
# tests/api/test_erasure.py checks that every table with a user_id column is
# here. Indexes: each table's (user_id, …) key or index; delivery_attempts
# through outbox_user_id_idx, then delivery_attempts_outbox_idx.
ERASE_ROWS: dict[str, str] = {
    "delivery_attempts": """
        DELETE FROM notifier.delivery_attempts a USING notifier.outbox o
        WHERE o.user_id = %(user)s AND a.outbox_id = o.id""",
    "outbox": "DELETE FROM notifier.outbox WHERE user_id = %(user)s",
    "webhook_configs": "DELETE FROM notifier.webhook_configs WHERE user_id = %(user)s",
    "notification_events": "DELETE FROM notifier.notification_events WHERE user_id = %(user)s",
    "unread_counters": "DELETE FROM notifier.unread_counters WHERE user_id = %(user)s",
    "watchlists": "DELETE FROM notifier.watchlists WHERE user_id = %(user)s",
    "preferences": "DELETE FROM notifier.preferences WHERE user_id = %(user)s",
    "user_emails": "DELETE FROM notifier.user_emails WHERE user_id = %(user)s",
    "feed_tokens": "DELETE FROM notifier.feed_tokens WHERE user_id = %(user)s",
    # Email digests (sql/013): attempts through email_digests_user_version_key
    # and email_digest_attempts_digest_idx; items by email_digest_items_user_idx.
    "email_digest_attempts": """
        DELETE FROM notifier.email_digest_attempts a USING notifier.email_digests d
        WHERE d.user_id = %(user)s AND a.digest_id = d.id""",
    "email_digests": "DELETE FROM notifier.email_digests WHERE user_id = %(user)s",
    "email_digest_items": "DELETE FROM notifier.email_digest_items WHERE user_id = %(user)s",
}
# Index: events_recipients_idx (gin). Events made for this user alone go (no
# feed or outbox row of any other user points at them); shared ones lose the id.
ERASE_EVENTS = """
DELETE FROM notifier.events
WHERE recipients @> ARRAY[%(user)s]::uuid[] AND recipients <@ ARRAY[%(user)s]::uuid[]
"""
FORGET_RECIPIENT = """
UPDATE notifier.events SET recipients = array_remove(recipients, %(user)s::uuid)
WHERE recipients @> ARRAY[%(user)s]::uuid[]
"""


async def erase_user(conn: AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, int]:
    """Delete every row of `user_id` in one transaction; the rows removed per table."""
    params = {"user": user_id}
    removed: dict[str, int] = {}
    async with conn.transaction():
        for setting in LONGER_LIMITS:
            await conn.execute(setting)
        await conn.execute(LOCK_FAN_OUT, (fanout.FEED_LOCK_KEY,))
        for table, statement in ERASE_ROWS.items():
            removed[table] = (await conn.execute(statement, params)).rowcount
        removed["events"] = (await conn.execute(ERASE_EVENTS, params)).rowcount
        await conn.execute(FORGET_RECIPIENT, params)
    return removed
