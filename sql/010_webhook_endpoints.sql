-- 010_webhook_endpoints: one id per message.
--
-- The id a receiver sees (`webhook-id`, the body's `id`) names one message:
-- one event sent to one endpoint. Until now it was the event's id, so the
-- same event sent to 30 users' endpoints on one receiver carried one id 30
-- times and a receiver deduplicating on it (as Standard Webhooks tells it to)
-- dropped 29. Each outbox row now carries its own message_id, kept on every
-- retry (the same row) and copied by a redelivery (a new row, same message).
-- Rows written before this file have none: coalesce(message_id, event_id)
-- keeps the id they were already sent with. No default on ADD COLUMN (a
-- volatile default would rewrite the table and re-id rows in flight); the
-- default then applies to new rows only. Unindexed, so a claim stays HOT.
ALTER TABLE notifier.outbox ADD COLUMN message_id uuid;
ALTER TABLE notifier.outbox ALTER COLUMN message_id SET DEFAULT gen_random_uuid();

-- ed25519 endpoints (Standard Webhooks' asymmetric signatures): `secret` then
-- holds the `whsk_` private key, shown to no one, and public_key its `whpk_`
-- public key, which receivers verify with. NULL: an HMAC (`whsec_`) endpoint.
ALTER TABLE notifier.webhook_configs ADD COLUMN public_key text;

-- The user is told when the notifier disables an endpoint (410, or failing
-- past the schedule): a `webhook.disabled` event, fanned out to that user's
-- feed (and email, webhooks by preference), made by the delivery role.
ALTER TABLE notifier.events DROP CONSTRAINT events_source_check;
ALTER TABLE notifier.events ADD CONSTRAINT events_source_check
    CHECK (source IN ('router', 'internal', 'ping', 'system'));

-- Several endpoints per user (up to 10, counted by the API under a per-user
-- advisory lock): the one-per-user key goes. Existing webhooks are endpoints
-- as they stand; the singular /api/webhook routes act on a user's oldest.
-- event_types: NULL = every event. rate_limit: messages per second, NULL =
-- none; rate_tokens/rate_at are its token bucket, shared by every delivery
-- replica (poller.PACE_SQL takes tokens for a claimed batch in one statement).
ALTER TABLE notifier.webhook_configs DROP CONSTRAINT webhook_configs_user_key;
ALTER TABLE notifier.webhook_configs
    ADD COLUMN description text CHECK (length(description) <= 500),
    ADD COLUMN event_types text[] CHECK (cardinality(event_types) BETWEEN 1 AND 64),
    ADD COLUMN rate_limit double precision CHECK (rate_limit > 0 AND rate_limit <= 10000),
    ADD COLUMN rate_tokens double precision,
    ADD COLUMN rate_at timestamptz;
-- GET /api/webhooks and the singular routes (a user's endpoints, oldest
-- first), and the fan-out join from a recipient to its endpoints.
CREATE INDEX webhook_configs_user_created_idx
    ON notifier.webhook_configs (user_id, created_at, id);

-- One original message per (user, event, endpoint) now, not per (user, event,
-- channel): the same event goes to each of a user's endpoints. Email rows
-- have no endpoint and keep their own key. Redeliveries and recoveries
-- (redelivery_of set) are extra rows, as before.
DROP INDEX notifier.outbox_user_event_channel_key;
-- Fan-out's guard against a second webhook message of an event to one
-- endpoint (the name kept: the key of one original row per recipient).
CREATE UNIQUE INDEX outbox_user_event_channel_key ON notifier.outbox (user_id, event_id, webhook_id)
    WHERE redelivery_of IS NULL AND channel = 'webhook';
-- Fan-out's guard against a second email of an event to one user.
CREATE UNIQUE INDEX outbox_user_event_email_key ON notifier.outbox (user_id, event_id)
    WHERE redelivery_of IS NULL AND channel = 'email';

-- Nothing lost while an endpoint is disabled: fan-out writes the messages
-- that fall due meanwhile as 'held' (never claimed), and
-- POST /api/webhooks/{id}/recover sends the held, dead and paused messages
-- of a window again, each as a new row with its own message_id; the
-- originals become 'recovered' (so nothing is sent twice under two ids).
-- NOT VALID, then VALIDATE: the check of existing rows runs without blocking
-- writes to the outbox.
ALTER TABLE notifier.outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE notifier.outbox ADD CONSTRAINT outbox_status_check CHECK (status IN
    ('pending', 'delivered', 'dead', 'paused', 'cancelled', 'held', 'recovered')) NOT VALID;
ALTER TABLE notifier.outbox VALIDATE CONSTRAINT outbox_status_check;
