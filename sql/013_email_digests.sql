-- 013_email_digests: email as one digest a user per cycle (contract §6).
--
-- A cycle's router events no longer become one email outbox row each. Fan-out
-- records which of the cycle's events a user's preferences send by email
-- (email_digest_items); when the cycle is done (every unit done), the
-- statement that marks it done creates one digest row per user who has items
-- (email_digests, unique per user and version), and the delivery role claims
-- digests as it claims outbox rows: SKIP LOCKED, a lease, a claim token, every
-- attempt recorded, retried on the schedule, one Message-ID for all attempts.
-- /internal/events and system events (webhook.disabled) still go through the
-- outbox, one mail each.

CREATE TABLE notifier.email_digest_items (
    version     text        NOT NULL,
    user_id     uuid        NOT NULL,
    event_id    uuid        NOT NULL,  -- no FK, as for notification_events
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The cycle's end groups a version's items per user (prefix version); a
    -- digest reads its user's events (prefix version, user_id); fan-out's
    -- guard against an event listed twice.
    PRIMARY KEY (version, user_id, event_id)
);
-- Erasure and retention: a user's items (DELETE … WHERE user_id = $1).
CREATE INDEX email_digest_items_user_idx ON notifier.email_digest_items (user_id);

CREATE TABLE notifier.email_digests (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid        NOT NULL,
    version          text        NOT NULL,
    -- The mail's Message-ID, the same on every attempt.
    message_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
    event_count      integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    claim_token      uuid,
    claimed_by       text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- One digest a user per cycle, however often the cycle's end is attempted;
    -- erasure finds a user's digests by its prefix.
    CONSTRAINT email_digests_user_version_key UNIQUE (user_id, version)
);
-- The digest claim: due pending digests in due order.
CREATE INDEX email_digests_due_idx ON notifier.email_digests (next_attempt_at)
    WHERE status = 'pending';

-- Every attempt at sending a digest (as delivery_attempts for outbox rows).
CREATE TABLE notifier.email_digest_attempts (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest_id         bigint      NOT NULL,
    user_id           uuid        NOT NULL,
    attempted_at      timestamptz NOT NULL,
    duration_ms       integer     NOT NULL,
    status_code       integer,
    error             text,
    response_excerpt  text
);
-- A digest's attempts, oldest first (operators, tests, erasure by digest id).
CREATE INDEX email_digest_attempts_digest_idx ON notifier.email_digest_attempts (digest_id, id);

-- Addresses are kept only while their user has email on for some event (the
-- API records and forgets them on that rule from now on); forget the others.
-- user_emails is one row per API user, preferences read by primary key prefix.
DELETE FROM notifier.user_emails ue
WHERE NOT EXISTS (SELECT 1 FROM notifier.preferences p WHERE p.user_id = ue.user_id AND p.email);
