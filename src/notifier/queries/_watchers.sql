-- _watchers: the `recipients` CTE of a statement that fans events out to
-- their watchers. Not a statement: finish_unit.sql and fan_out_events.sql
-- hold it at their `-- include: _watchers` line (queries.load).
--
-- Reads:  ev (id, event, entity_type, entity_id, detail, deliver_at, audience)
-- Uses:   before, milestones (see the including statement's header)
-- Gives:  recipients (user_id, event_id, event, deliver_at, watch_id,
--         has_webhook), one row for each watcher an event goes to; has_webhook
--         false: the user has no webhook endpoint (021_webhook_watches)
recipients AS (
    SELECT w.user_id, ev.id AS event_id, ev.event, ev.deliver_at, w.id AS watch_id,
           w.has_webhook
    FROM ev
    -- watchlists_entity_idx (entity_type, entity_id, created_at): the join and
    -- the created_at filter.
    CROSS JOIN LATERAL (
        -- OFFSET 0 keeps this an index range scan per event: joined freely,
        -- a small watchlists table and a guessed 100 events made the planner
        -- hash the whole table (4.6 ms for 50 events over 10,000 watches).
        SELECT w.id, w.user_id, w.options, w.has_webhook FROM notifier.watchlists w
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
)
