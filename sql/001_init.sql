-- 001_init: the tables of the whole pipeline.
--
-- Flow: router (cycles, cycle_signals, diff_units, entity_snapshots, events)
--   -> fan-out (notification_events = the feed, outbox)
--   -> delivery (outbox, delivery_attempts, webhook_configs).
-- Every table that grows with users carries user_id, so it can later be
-- distributed by user_id (Citus) or partitioned by time.
-- Applied by `notifier migrate` in one transaction under an advisory lock.

CREATE SCHEMA IF NOT EXISTS notifier;

-- ------------------------------------------------------------------ watches

-- What users watch. entity_id is the graph id (artist, label), the name
-- (genre, style) or, for a saved search, a server-made hash of its options.
CREATE TABLE notifier.watchlists (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid        NOT NULL,
    entity_type  text        NOT NULL
        CHECK (entity_type IN ('artist', 'label', 'genre', 'style', 'search')),
    entity_id    text        NOT NULL CHECK (length(entity_id) BETWEEN 1 AND 512),
    entity_name  text,
    options      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- POST /api/watchlist is idempotent: the same watch again returns this row.
    CONSTRAINT watchlists_user_entity_key UNIQUE (user_id, entity_type, entity_id)
);
-- GET /api/watchlist: a user's watches, keyset-paginated newest first.
CREATE INDEX watchlists_user_created_idx ON notifier.watchlists (user_id, created_at DESC, id DESC);
-- Router: distinct watched entities per type, and the fan-out join from an
-- event's (entity_type, entity_id) to its watchers (with created_at for the
-- "watches created after the cycle started do not receive it" filter).
CREATE INDEX watchlists_entity_idx ON notifier.watchlists (entity_type, entity_id, created_at);

-- Per-user, per-event channel switches. A missing row means the defaults:
-- feed and webhook on, email off.
CREATE TABLE notifier.preferences (
    user_id     uuid        NOT NULL,
    event       text        NOT NULL,
    feed        boolean     NOT NULL DEFAULT true,
    webhook     boolean     NOT NULL DEFAULT true,
    email       boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Fan-out LEFT JOIN on (user_id, event); GET /api/preferences by user_id.
    PRIMARY KEY (user_id, event)
);

-- ------------------------------------------------------------------ cycles

-- One row per import version. A cycle fires once every required service has
-- signalled; exactly one router moves it from 'collecting' to 'running'.
CREATE TABLE notifier.cycles (
    version            text        PRIMARY KEY,
    status             text        NOT NULL DEFAULT 'collecting'
        CHECK (status IN ('collecting', 'running', 'done', 'failed')),
    required_services  text[]      NOT NULL,
    previous_version   text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    fired_at           timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    stats              jsonb       NOT NULL DEFAULT '{}'::jsonb
);
-- Routers look for fired cycles with unfinished work.
CREATE INDEX cycles_running_idx ON notifier.cycles (fired_at) WHERE status = 'running';

-- Each completion message, unique per (version, service): duplicates and
-- redeliveries are absorbed by the primary key.
CREATE TABLE notifier.cycle_signals (
    version       text        NOT NULL REFERENCES notifier.cycles (version),
    service       text        NOT NULL,
    completed_at  timestamptz,
    received_at   timestamptz NOT NULL DEFAULT now(),
    message       jsonb       NOT NULL,
    -- "have all required services signalled this version?" reads by version.
    PRIMARY KEY (version, service)
);

-- The diff of a cycle, split into chunks of distinct watched entities. Router
-- replicas claim units with FOR UPDATE SKIP LOCKED and a lease; a unit whose
-- lease expired (its router died) is claimed again.
CREATE TABLE notifier.diff_units (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version      text        NOT NULL REFERENCES notifier.cycles (version),
    entity_type  text        NOT NULL,
    seq          integer     NOT NULL,
    entity_ids   text[]      NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'done')),
    claimed_by   text,
    lease_until  timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    finished_at  timestamptz,
    stats        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Unit creation is idempotent per cycle.
    CONSTRAINT diff_units_version_type_seq_key UNIQUE (version, entity_type, seq)
);
-- Claiming the next pending unit of a cycle (lease_until null or past).
CREATE INDEX diff_units_pending_idx ON notifier.diff_units (version, id) WHERE status = 'pending';

-- The last state of each watched entity seen in the graph. Id sets are sorted
-- bigint arrays (Discogs ids are numeric strings; others are logged, counted
-- and skipped). Updated in the same transaction as the events it produces.
CREATE TABLE notifier.entity_snapshots (
    entity_type    text        NOT NULL,
    entity_id      text        NOT NULL,
    entity_name    text,
    version        text        NOT NULL,
    release_ids    bigint[],
    alias_ids      bigint[],
    member_ids     bigint[],
    release_count  bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- Diff: load the snapshots of one unit's entities by key.
    PRIMARY KEY (entity_type, entity_id)
);

-- ------------------------------------------------------------------ events

-- Immutable events: one per (version, entity, event type) from the router, or
-- one per idempotency key from /internal/events. The id is the webhook-id
-- receivers see, the same on every retry and redelivery. Payload columns
-- never change after insert; cancelled_at is state kept beside them.
CREATE TABLE notifier.events (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    dedup_key        text        NOT NULL,
    source           text        NOT NULL CHECK (source IN ('router', 'internal', 'ping')),
    version          text,
    event            text        NOT NULL,
    entity_type      text,
    entity_id        text,
    entity_name      text,
    detail           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deliver_at       timestamptz NOT NULL DEFAULT now(),
    -- /internal/events: the users it is for (router events go to watchers).
    recipients       uuid[],
    recipient_count  integer,
    -- Set once feed and outbox rows exist; scheduled events wait for deliver_at.
    fanned_out_at    timestamptz,
    cancelled_at     timestamptz,
    -- A re-run of a cycle, or a repeated idempotency key, inserts nothing new.
    CONSTRAINT events_dedup_key UNIQUE (dedup_key)
);
-- Fan-out of one cycle: the events of a version.
CREATE INDEX events_version_idx ON notifier.events (version) WHERE version IS NOT NULL;
-- The scheduler: events due for fan-out (scheduled /internal/events).
CREATE INDEX events_unfanned_idx ON notifier.events (deliver_at)
    WHERE fanned_out_at IS NULL AND cancelled_at IS NULL;

-- The feed: one row per (user, event). Read state lives here, beside the
-- immutable event it points to.
CREATE TABLE notifier.notification_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid        NOT NULL,
    -- No foreign key to events: a per-row FK trigger cost ~17% of fan-out time
    -- (bench/fanout.py); events are immutable and outlive their feed rows.
    event_id    uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    -- Fan-out is idempotent: a user gets an event at most once.
    CONSTRAINT notification_events_user_event_key UNIQUE (user_id, event_id)
);
-- GET /api/notifications: newest first, keyset on (user_id, id).
CREATE INDEX notification_events_user_id_idx ON notifier.notification_events (user_id, id DESC);
-- GET /api/notifications?unread=true and POST read-all: only unread rows.
CREATE INDEX notification_events_user_unread_idx ON notifier.notification_events (user_id, id DESC)
    WHERE read_at IS NULL;

-- Maintained unread counts, so GET /api/notifications/unread-count is one
-- primary-key read however large the feed. Fan-out adds, read/read-all subtract.
CREATE TABLE notifier.unread_counters (
    user_id  uuid   PRIMARY KEY,
    unread   bigint NOT NULL DEFAULT 0 CHECK (unread >= 0)
);

-- ------------------------------------------------------------------ webhooks

-- One webhook per user. During a rotation previous_secret signs alongside the
-- new one until previous_secret_expires_at.
CREATE TABLE notifier.webhook_configs (
    id                          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                     uuid        NOT NULL,
    url                         text        NOT NULL,
    secret                      text        NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    active                      boolean     NOT NULL DEFAULT true,
    disabled_reason             text,
    disabled_at                 timestamptz,
    failing_since               timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    -- GET/DELETE /api/webhook and the fan-out join find a user's webhook.
    CONSTRAINT webhook_configs_user_key UNIQUE (user_id)
);

-- One row per (event, recipient, channel) to send. The poller claims due rows
-- (status 'pending', next_attempt_at <= now()) with FOR UPDATE SKIP LOCKED and
-- pushes next_attempt_at forward by the lease: a crashed sender's row becomes
-- due again by itself. claim_token guards against a late completion by a
-- sender whose lease was taken over.
CREATE TABLE notifier.outbox (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid        NOT NULL,
    event_id         uuid        NOT NULL,  -- no FK, as for notification_events
    channel          text        NOT NULL DEFAULT 'webhook' CHECK (channel IN ('webhook', 'email')),
    webhook_id       uuid        REFERENCES notifier.webhook_configs (id) ON DELETE SET NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead', 'paused', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claim_token      uuid,
    claimed_by       text,
    redelivery_of    bigint      REFERENCES notifier.outbox (id),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Fan-out is idempotent: one original delivery per (user, event, channel);
-- redeliveries (redelivery_of set) are extra rows.
CREATE UNIQUE INDEX outbox_user_event_channel_key ON notifier.outbox (user_id, event_id, channel)
    WHERE redelivery_of IS NULL;
-- The poller's claim: due pending rows in due order.
CREATE INDEX outbox_due_idx ON notifier.outbox (next_attempt_at) WHERE status = 'pending';
-- GET /api/webhook/deliveries: a user's deliveries, newest first (keyset on id).
CREATE INDEX outbox_user_id_idx ON notifier.outbox (user_id, id DESC);
-- Disabling/re-enabling a webhook pauses/resumes its rows.
CREATE INDEX outbox_webhook_status_idx ON notifier.outbox (webhook_id, status);
-- DELETE /internal/events/{id}: cancel an event's undelivered rows.
CREATE INDEX outbox_event_idx ON notifier.outbox (event_id);

-- Every delivery attempt, appended by the sender.
CREATE TABLE notifier.delivery_attempts (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id         bigint      NOT NULL REFERENCES notifier.outbox (id),
    user_id           uuid        NOT NULL,
    attempted_at      timestamptz NOT NULL DEFAULT now(),
    duration_ms       integer     NOT NULL,
    status_code       integer,
    error             text,
    response_excerpt  text
);
-- GET /api/webhook/deliveries: the attempts of one page of deliveries.
CREATE INDEX delivery_attempts_outbox_idx ON notifier.delivery_attempts (outbox_id, id);
