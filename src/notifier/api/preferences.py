"""Preferences: `/api/preferences` (the full map; partial updates).

A missing row means the defaults: feed and webhook on, email off. GET lists
every known event plus any other event the user has set.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from notifier.api import auth, emails, parsing
from notifier.api.context import ctx
from notifier.api.routing import Endpoint, respond
from notifier.api.schemas import ChannelPrefs, PreferencesMap, PreferencesPatch

# Contract §6: the events the router and the platform emit (ping is a test only).
KNOWN_EVENTS = (
    "new_releases",
    "new_aliases",
    "new_members",
    "release_count_threshold",
    "notable_releases",
    "search_match",
)
DEFAULT = ChannelPrefs(feed=True, webhook=True, email=False)

# Index: preferences primary key (user_id, event).
SELECT = "SELECT event, feed, webhook, email FROM notifier.preferences WHERE user_id = %s"
# Index: preferences primary key; NULL keeps the stored (or default) value.
UPSERT = """
INSERT INTO notifier.preferences (user_id, event, feed, webhook, email)
VALUES (%(user)s, %(event)s, COALESCE(%(feed)s, true), COALESCE(%(webhook)s, true),
        COALESCE(%(email)s, false))
ON CONFLICT (user_id, event) DO UPDATE SET
    feed = COALESCE(%(feed)s, preferences.feed),
    webhook = COALESCE(%(webhook)s, preferences.webhook),
    email = COALESCE(%(email)s, preferences.email),
    updated_at = now()
"""


def merge(rows: list[tuple[str, bool, bool, bool]]) -> dict[str, ChannelPrefs]:
    """Stored rows over the defaults of every known event."""
    out = dict.fromkeys(KNOWN_EVENTS, DEFAULT)
    for event, feed, webhook, email in rows:
        out[event] = ChannelPrefs(feed=feed, webhook=webhook, email=email)
    return out


async def _current(request: Request, user_id: Any) -> dict[str, ChannelPrefs]:
    async with ctx(request).pool.connection() as conn:
        rows = await (await conn.execute(SELECT, (user_id,))).fetchall()
    return merge(rows)


async def get_preferences(request: Request) -> Response:
    """GET /api/preferences."""
    who = await auth.user(request)
    return respond(await _current(request, who.id))


async def put_preferences(request: Request) -> Response:
    """PUT /api/preferences: only the given events and channels change."""
    who = await auth.user(request)
    patch = await parsing.json_body(request, PreferencesPatch)
    async with ctx(request).pool.connection() as conn, conn.transaction():
        for event in sorted(patch):  # a fixed order: concurrent updates never deadlock
            p = patch[event]
            params = {"user": who.id, "event": event, "feed": p.feed, "webhook": p.webhook,
                      "email": p.email}  # fmt: skip
            await conn.execute(UPSERT, params)
        # The address is kept only while email is on for some event.
        await emails.sync(conn, who.id, who.email)
    return respond(await _current(request, who.id))


ENDPOINTS = [
    Endpoint("GET", "/api/preferences", get_preferences, "Channel preferences per event",
             "preferences", response=PreferencesMap),
    Endpoint("PUT", "/api/preferences", put_preferences, "Change some preferences",
             "preferences", response=PreferencesMap, body=PreferencesPatch,
             errors=(400, 413, 422)),
]  # fmt: skip
