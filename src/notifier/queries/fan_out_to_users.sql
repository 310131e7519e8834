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
-- targets to mails are written in _fan_out.sql (as for finish_unit.sql and
-- fan_out_events.sql), put in at the `-- include:` line when the statement is
-- loaded (queries.load).
WITH ev AS (
    SELECT id, event, deliver_at FROM notifier.events WHERE id = %(id)s
),
recipients AS (
    -- No watch says whether the user has an endpoint: the join looks.
    SELECT DISTINCT u.user_id, ev.id AS event_id, ev.event, ev.deliver_at, NULL::uuid AS watch_id,
           true AS has_webhook
    FROM ev CROSS JOIN unnest(%(users)s::uuid[]) AS u (user_id)
),
-- include: _fan_out
SELECT (SELECT count(*) FROM targets WHERE feed),
       (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails)
