-- fan_out_events: the feed and outbox rows of some events for their watchers
-- (fanout.fan_out_events). Run inside the caller's transaction, after
-- fanout.MARK_FANNED_OUT claimed the events with fanout.FEED_LOCK_KEY held
-- shared: only events claimed by this transaction are fanned out, once.
--
-- Parameters:
--   ids         the claimed events' ids
--   before      the cycle's start: only watches created before it count
--   milestones  fanout.THRESHOLD_MILESTONES as a JSON array
--   email       whether email is on: one email outbox row per event and user
--
-- CTEs, top to bottom (each reads only those above it):
--   ev          the events (events_pkey)
--   recipients  (user, event, watch) for each watcher an event goes to
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
    SELECT id, event, entity_type, entity_id, detail, deliver_at, audience
    FROM notifier.events
    WHERE id = ANY(%(ids)s)
),
recipients AS (
    SELECT w.user_id, ev.id AS event_id, ev.event, ev.deliver_at, w.id AS watch_id
    FROM ev
    -- watchlists_entity_idx (entity_type, entity_id, created_at): the join and
    -- the created_at filter.
    CROSS JOIN LATERAL (
        -- OFFSET 0 keeps this an index range scan per event: joined freely,
        -- a small watchlists table and a guessed 100 events made the planner
        -- hash the whole table (4.6 ms for 50 events over 10,000 watches).
        SELECT w.id, w.user_id, w.options FROM notifier.watchlists w
        WHERE w.entity_type = ev.entity_type AND w.entity_id = ev.entity_id
          AND w.created_at < %(before)s
        OFFSET 0
    ) AS w
    -- An audience is compared by equality: jsonb containment (@>) would let
    -- `{}` match any filter.
    WHERE (ev.audience IS NULL
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(ev.audience) AS a (o)
                      WHERE a.o = w.options))
      AND (ev.event <> 'release_count_threshold'
           OR (w.options ? 'threshold' AND w.options -> 'threshold' = ev.detail -> 'threshold')
           OR (NOT w.options ? 'threshold' AND %(milestones)s::jsonb @> (ev.detail -> 'threshold')))
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
