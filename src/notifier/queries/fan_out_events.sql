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
-- recipients is written in _watchers.sql, targets to mails in _fan_out.sql
-- (as for finish_unit.sql, the router's write), each put in at its
-- `-- include:` line when the statement is loaded (queries.load).
WITH ev AS (
    SELECT id, event, entity_type, entity_id, detail, deliver_at, audience
    FROM notifier.events
    WHERE id = ANY(%(ids)s)
),
-- include: _watchers,
-- include: _fan_out
SELECT (SELECT count(*) FROM targets WHERE feed),
       (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails)
