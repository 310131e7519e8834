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
