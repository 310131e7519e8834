-- fan_out_to_users: the feed and outbox rows of one event for explicit
-- recipients (fanout.fan_out_to_users: /internal/events, scheduled events,
-- webhook.disabled notices). Run inside the caller's transaction, after
-- fanout.MARK_FANNED_OUT claimed the event with fanout.FEED_LOCK_KEY held shared.
--
-- Parameters:
--   id          the claimed event's id
--   users       the recipients' user ids (repeats count once)
--   email       whether email is on: one email outbox row per user
--
-- CTEs, top to bottom (each reads only those above it):
--   ev          the event (events_pkey)
--   recipients  (user, event) for each distinct user, with no watch
--   targets     each recipient with the channels its preferences pick
--   feed        the feed rows
--   hooks       the webhook outbox rows, one per endpoint that takes the event
--   mails       the email outbox rows
-- Returns one row: the counts of feed rows and outbox rows.
--
-- The fan-out CTEs are the same text as in finish_unit.sql (the router's
-- write, which fans out a unit's new events in the statement that inserts
-- them); tests/unit/test_queries.py checks it, so a change to the fan-out rules
-- is made in every file that holds them.
WITH ev AS (
    SELECT id, event, deliver_at FROM notifier.events WHERE id = %(id)s
),
recipients AS (
    SELECT DISTINCT u.user_id, ev.id AS event_id, ev.event, ev.deliver_at, NULL::uuid AS watch_id
    FROM ev CROSS JOIN unnest(%(users)s::uuid[]) AS u (user_id)
),
targets AS (
    SELECT r.user_id, r.event_id, r.event, r.deliver_at, r.watch_id,
           coalesce(p.feed, true) AS feed,
           coalesce(p.webhook, true) AS webhook,
           coalesce(p.email, false) AS email
    FROM recipients r
    -- preferences primary key (user_id, event)
    LEFT JOIN notifier.preferences p ON p.user_id = r.user_id AND p.event = r.event
),
feed AS (
    -- In (user_id, event_id) order: the b-trees on (user_id, ...) then take
    -- the rows in key order, which more than halves the insert time. No ON
    -- CONFLICT, so every row is inserted (or the statement fails): they are
    -- counted from `targets` rather than returned.
    INSERT INTO notifier.notification_events (user_id, event_id, watch_id)
    SELECT user_id, event_id, watch_id FROM targets WHERE feed ORDER BY user_id, event_id
),
hooks AS (
    INSERT INTO notifier.outbox (user_id, event_id, channel, webhook_id, next_attempt_at, status)
    SELECT t.user_id, t.event_id, 'webhook', w.id, greatest(now(), t.deliver_at),
           CASE WHEN w.active THEN 'pending' ELSE 'held' END
    FROM targets t
    -- webhook_configs_user_created_idx (user_id, …): each of the user's
    -- endpoints whose event_types takes the event (NULL: every event); a
    -- disabled one's message is kept, held, for POST /api/webhooks/{id}/recover
    JOIN notifier.webhook_configs w ON w.user_id = t.user_id
        AND (w.event_types IS NULL OR t.event = ANY(w.event_types))
    WHERE t.webhook
    RETURNING 1
),
mails AS (
    INSERT INTO notifier.outbox (user_id, event_id, channel, next_attempt_at)
    SELECT user_id, event_id, 'email', greatest(now(), deliver_at)
    FROM targets WHERE email AND %(email)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM targets WHERE feed),
       (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails)
