-- _fan_out: the fan-out CTEs (targets, feed, hooks, mails) of a statement
-- that fans events out. Not a statement: finish_unit.sql, fan_out_events.sql
-- and fan_out_to_users.sql hold them at their `-- include: _fan_out` line
-- (queries.load), so a fan-out rule is written once.
--
-- Reads:  recipients (user_id, event_id, event, deliver_at, watch_id,
--         has_webhook: false when the user surely has no endpoint)
-- Uses:   email (see the including statement's header)
-- Gives:  targets (each recipient with the channels its preferences pick:
--         feed, webhook (only if it has an endpoint), email), feed, hooks,
--         mails (RETURNING 1 a row)
targets AS (
    SELECT r.user_id, r.event_id, r.event, r.deliver_at, r.watch_id,
           coalesce(p.feed, true) AS feed,
           coalesce(p.webhook, true) AND r.has_webhook AS webhook,
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
    -- webhook_configs_user_created_idx (user_id, …), probed only for the
    -- recipients who have an endpoint: each of the user's endpoints whose
    -- event_types takes the event (NULL: every event); a disabled one's
    -- message is kept, held, for POST /api/webhooks/{id}/recover
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
