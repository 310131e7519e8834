-- 004_outbox_claim: a cheaper claim and completion of outbox rows.
--
-- The lease moves out of next_attempt_at into lease_until, a column no index
-- reads. A claim then writes only unindexed columns (lease_until,
-- claim_token, claimed_by, attempts, updated_at), so PostgreSQL can make it a
-- HOT update: a new row version on the same page and no new entry in any of
-- the outbox's indexes. Before, a claim moved next_attempt_at, and each
-- claimed row got a new entry in all six indexes. A claimed row stays in
-- outbox_due_idx at its due time; the claim skips it while its lease runs
-- (`lease_until > now()`), and takes it again once the lease has run out.
ALTER TABLE notifier.outbox ADD COLUMN lease_until timestamptz;

-- HOT needs room on the row's page. Rows are written by fan-out in due order
-- and claimed in batches, so a claim updates most rows of a page at once:
-- leave half of each new page free for their new versions. Applies to pages
-- written from now on; old rows keep their pages.
ALTER TABLE notifier.outbox SET (fillfactor = 40);

-- A completion changes status (and next_attempt_at), so it cannot be HOT; it
-- still writes an entry in every index whose predicate the new row matches.
-- Only rows not yet sent need outbox_event_idx: the query it serves cancels
-- those. A delivered row now skips it.
DROP INDEX notifier.outbox_event_idx;
-- DELETE /internal/events/{id} (api/internal.py CANCEL_OUTBOX): WHERE
-- event_id = $1 AND status IN ('pending', 'paused').
CREATE INDEX outbox_event_idx ON notifier.outbox (event_id) WHERE status IN ('pending', 'paused');

-- An attempt row is written only by poller.complete, for a row it has just
-- claimed from the outbox, and outbox rows are never deleted; the foreign
-- key's per-row check (one query per attempt row) cost about a tenth of a
-- completion (bench/claim_rate.py). As for notification_events.event_id.
ALTER TABLE notifier.delivery_attempts DROP CONSTRAINT delivery_attempts_outbox_id_fkey;
