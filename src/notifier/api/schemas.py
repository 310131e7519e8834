"""msgspec structs for every request and response of the HTTP API (contract §5).

These are the single source of truth: handlers decode and encode with them,
and `/openapi.json` is generated from them (see `openapi.py`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# ------------------------------------------------------------------ shared

Limit = Annotated[int, Meta(ge=1, le=100, description="Page size, 1-100.")]
Cursor = Annotated[
    str,
    Meta(max_length=512, description="Opaque cursor from the previous page's `next_cursor`."),
]
EventName = Annotated[
    str,
    Meta(
        pattern="^[a-z][a-z0-9_.]{0,63}$",
        description="An event type, e.g. `new_releases`.",
    ),
]
ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
Year = Annotated[int, Meta(ge=1000, le=9999)]
AwareDatetime = Annotated[datetime, Meta(tz=True)]

WatchEntityType = Literal["artist", "label", "genre", "style", "search"]
OutboxStatus = Literal["pending", "delivered", "dead", "paused", "cancelled", "held", "recovered"]


class Status(msgspec.Struct):
    """`{"status": "ok"}`."""

    status: str


# ------------------------------------------------------------------ feed


class Notification(msgspec.Struct):
    """One entry of the user's feed."""

    id: int
    event: str
    entity_type: str | None
    entity_id: str | None
    entity_name: str | None
    detail: Annotated[msgspec.Raw, Meta(description="The event's detail object (contract §6).")]
    version: str | None
    created_at: datetime
    read_at: datetime | None
    watch_ids: Annotated[
        list[uuid.UUID],
        Meta(description="The user's watches that caused it: for a router event the watch "
             "of its entity (it may have been deleted since); empty for events sent to "
             "users by id (`/internal/events`, `ping`, `webhook.disabled`)."),
    ]  # fmt: skip


class NotificationPage(msgspec.Struct):
    """A page of the feed, newest first."""

    items: list[Notification]
    next_cursor: str | None


class PageQuery(msgspec.Struct, forbid_unknown_fields=False):
    """`limit` and `cursor`: the watchlist's query, and the start of the others' pages."""

    limit: Limit = 20
    cursor: Cursor | None = None


class FeedQuery(PageQuery):
    """Query of `GET /api/notifications`."""

    unread: bool = False


class UnreadCount(msgspec.Struct):
    """`{"count": n}`."""

    count: int


class ReadAll(msgspec.Struct):
    """Answer of `POST /api/notifications/read-all`."""

    status: str
    marked: int


# ------------------------------------------------------------------ watchlist


class SearchOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The `options` of a search watch: at least one field must be set."""

    q: ShortText | None = None
    entity_type: Literal["release", "master", "artist", "label"] | None = None
    genre: ShortText | None = None
    style: ShortText | None = None
    label: ShortText | None = None
    artist: ShortText | None = None
    format: ShortText | None = None
    year_from: Year | None = None
    year_to: Year | None = None


class ThresholdOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The `options` of a genre or style watch."""

    threshold: Annotated[int, Meta(ge=1, le=1_000_000_000)] | None = None


FormatName = Annotated[str, Meta(min_length=1, max_length=64)]


class ReleaseFilterOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The `options` of an artist or label watch: release filters, all optional.

    Only new releases that pass count: one of `formats` (case-insensitive; a
    release without formats fails), and a year within `year_from`..`year_to`
    (inclusive; a release without a year fails a bound). None passing: no
    notification.
    """

    formats: (
        Annotated[
            list[FormatName],
            Meta(min_length=1, max_length=20, description="Format names, e.g. `Vinyl`, `CD`."),
        ]
        | None
    ) = None
    year_from: Year | None = None
    year_to: Year | None = None


class WatchCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/watchlist`.

    `options` is `SearchOptions` for a search watch (then `entity_id` is
    ignored and set by the server), `ThresholdOptions` for a genre or style,
    and `ReleaseFilterOptions` (or nothing) for an artist or label.
    """

    entity_type: WatchEntityType
    entity_id: Annotated[str, Meta(max_length=512)] | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class Watch(msgspec.Struct):
    """One watched entity."""

    id: uuid.UUID
    entity_type: str
    entity_id: str
    entity_name: str | None
    options: dict[str, Any]
    created_at: datetime


class WatchPage(msgspec.Struct):
    """A page of the watchlist, newest first."""

    items: list[Watch]
    next_cursor: str | None


# ------------------------------------------------------------------ preferences


class ChannelPrefs(msgspec.Struct):
    """Which channels an event goes to."""

    feed: bool
    webhook: bool
    email: bool


class ChannelPrefsPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A partial update: absent or null fields keep their value."""

    feed: bool | None = None
    webhook: bool | None = None
    email: bool | None = None


PreferencesMap = dict[EventName, ChannelPrefs]
PreferencesPatch = Annotated[dict[EventName, ChannelPrefsPatch], Meta(max_length=64)]


# ------------------------------------------------------------------ webhook


Signing = Annotated[
    Literal["hmac", "ed25519"],
    Meta(description="`hmac` (a `whsec_` secret, the default) or `ed25519` (Standard Webhooks' "
         "`v1a` signatures, verified with the endpoint's `whpk_` public key)."),
]  # fmt: skip


Url = Annotated[str, Meta(min_length=1, max_length=2048)]
Description = Annotated[str, Meta(max_length=500)]
EventTypes = Annotated[
    list[EventName],
    Meta(min_length=1, max_length=64,
         description="The events this endpoint takes; absent or null: every event."),
]  # fmt: skip
RateLimit = Annotated[
    float,
    Meta(gt=0, le=10000, description="Messages per second at most, across delivery replicas."),
]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/webhook`."""

    url: Url
    signing: Signing = "hmac"


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/webhooks`."""

    url: Url
    description: Description | None = None
    event_types: EventTypes | None = None
    signing: Signing = "hmac"
    rate_limit: RateLimit | None = None


class EndpointPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `PATCH /api/webhooks/{id}`: absent fields keep their value, null clears.

    `"active": true` re-enables a disabled endpoint (its paused messages
    resume); `false` disables it (messages falling due meanwhile are held).
    """

    url: Url | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    event_types: EventTypes | UnsetType | None = UNSET
    rate_limit: RateLimit | UnsetType | None = UNSET
    active: bool | UnsetType = UNSET


class WebhookWithSecret(msgspec.Struct):
    """The webhook with its signing secret (only on creation and rotation).

    An ed25519 endpoint has no shared secret (`secret` is null): its
    `public_key` is what receivers verify with.
    """

    id: uuid.UUID
    url: str
    secret: str | None
    active: bool
    created_at: datetime
    previous_secret_expires_at: datetime | None = None
    signing: Signing = "hmac"
    public_key: str | None = None
    description: str | None = None
    event_types: list[str] | None = None
    rate_limit: float | None = None


class Webhook(msgspec.Struct):
    """The webhook (an endpoint) without its secret."""

    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str] | None
    signing: Signing
    public_key: str | None
    rate_limit: float | None
    active: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class Recover(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/webhooks/{id}/recover`: the window, `until` now when absent."""

    since: AwareDatetime
    until: AwareDatetime | None = None


class Recovered(msgspec.Struct):
    """Answer of `POST /api/webhooks/{id}/recover`."""

    redelivered: int


class WebhookList(msgspec.Struct):
    """A user's endpoints, oldest first (at most 10)."""

    items: list[Webhook]


class PingAccepted(msgspec.Struct):
    """Answer of `POST /api/webhook/test`."""

    status: str
    event_id: uuid.UUID
    delivery_id: int


class Attempt(msgspec.Struct):
    """One delivery attempt."""

    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class Delivery(msgspec.Struct):
    """One delivery (outbox row) with its attempts, oldest attempt first."""

    id: int
    message_id: Annotated[
        uuid.UUID, Meta(description="The `webhook-id` and body `id`: one per event and endpoint.")
    ]
    event_id: uuid.UUID
    event: str
    channel: str
    status: str
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    redelivery_of: int | None
    created_at: datetime
    delivered_at: datetime | None
    attempts: list[Attempt]


class DeliveryPage(msgspec.Struct):
    """A page of deliveries, newest first."""

    items: list[Delivery]
    next_cursor: str | None


class DeliveryQuery(PageQuery):
    """Query of `GET /api/webhook/deliveries`."""

    status: OutboxStatus | None = None


class RedeliverAccepted(msgspec.Struct):
    """Answer of `POST /api/webhook/deliveries/{id}/redeliver`."""

    status: str
    id: int
    redelivery_of: int
    event_id: uuid.UUID
    message_id: uuid.UUID


# ------------------------------------------------------------------ internal


class InternalEvent(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /internal/events`."""

    user_ids: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=10_000)]
    event: EventName
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=255)]
    entity_type: Annotated[str, Meta(max_length=64)] | None = None
    entity_id: Annotated[str, Meta(max_length=512)] | None = None
    entity_name: Annotated[str, Meta(max_length=512)] | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    deliver_at: AwareDatetime | None = None


class InternalEventAccepted(msgspec.Struct):
    """Answer of `POST /internal/events`."""

    id: uuid.UUID
    notifications: int
    scheduled: bool
    deliver_at: datetime


# ------------------------------------------------------------------ operations


class Health(msgspec.Struct):
    """Answer of `GET /health`."""

    status: str
    checks: dict[str, str]
