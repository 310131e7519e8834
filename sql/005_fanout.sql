-- 005_fanout: unread counters folded lazily, so fan-out writes no counter rows.
--
-- Before: fan-out upserted one unread_counters row per recipient in the same
-- statement as the feed rows (about a third of fan-out time, and row locks on
-- the counters held until the router's unit committed).
--
-- Now a counter row covers the feed rows up to `counted_upto`:
--   unread = the user's unread rows with id <= counted_upto.
-- The user's unread count is that number plus the unread rows above
-- counted_upto, counted through notification_events_user_unread_idx
-- (user_id, id DESC) WHERE read_at IS NULL. A missing counter row means
-- "nothing folded yet" (unread 0, counted_upto 0). Folding (notifier.api.feed)
-- moves counted_upto forward only while no fan-out transaction is open (an
-- advisory lock that fan-out holds shared), so no row at or below counted_upto
-- can commit later. Reads (one or all) subtract only rows at or below it.

-- The last feed id handed out (the identity sequence's last value, O(1)).
CREATE FUNCTION notifier.feed_top() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT coalesce(pg_sequence_last_value(
        pg_get_serial_sequence('notifier.notification_events', 'id')::regclass), 0) $$;

-- A counter row written without counted_upto holds a full count, as every
-- counter did before this file (existing rows now; a bulk seed later): it
-- covers the feed as it stands. The read path always writes counted_upto.
-- (Apply with fan-out stopped: rows of a fan-out still open then, or of one
-- run by code from before this file, could be counted twice or not at all.)
ALTER TABLE notifier.unread_counters
    ADD COLUMN counted_upto bigint NOT NULL DEFAULT notifier.feed_top();
