-- 015_retention: what retention (notifier.retention) and erasure
-- (DELETE /internal/users/{user_id}) need to find their rows without scans.
--
-- Retention walks the feed, the outbox and the attempts by primary key in
-- bounded batches (ids grow with time), so it needs no index there. Events
-- have uuid keys: they are walked by age, keyset on (created_at, id).
CREATE INDEX events_created_idx ON notifier.events (created_at, id);

-- An outbox row may only go once no redelivery of it is left (the foreign key
-- redelivery_of). Redeliveries are few: a partial index stays small.
CREATE INDEX outbox_redelivery_of_idx ON notifier.outbox (redelivery_of)
    WHERE redelivery_of IS NOT NULL;

-- Erasure removes a user from the recipients of /internal/events (router
-- events have none), and deletes the pings and notices made for that user.
CREATE INDEX events_recipients_idx ON notifier.events USING gin (recipients)
    WHERE recipients IS NOT NULL;
