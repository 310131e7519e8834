-- 012_watch_filters: release filters on artist and label watches, and the
-- watch behind each feed row.
--
-- Adding nullable columns without a default changes only the catalog: no
-- table is rewritten, whatever its size.

-- Who among an event's watchers receives it: the distinct watch `options`
-- (filters) whose outcome it is, `{}` standing for unfiltered watches; NULL
-- (every router event before this file, and every entity without filtered
-- watchers) means all of them. Written at insert, never changed.
ALTER TABLE notifier.events ADD COLUMN audience jsonb;

-- The watch that caused a feed row (NULL for /internal/events, pings and
-- notices): the API shows it as `watch_ids`.
ALTER TABLE notifier.notification_events ADD COLUMN watch_id uuid;

-- The diff (units.FILTERED_WATCHES): the filtered watchers of the entities
-- with new releases, one probe per entity. Partial: filtered watches are few,
-- and an entity without any is settled by one probe of this small index.
CREATE INDEX watchlists_filtered_idx ON notifier.watchlists (entity_type, entity_id, created_at)
    WHERE entity_type IN ('artist', 'label') AND options <> '{}'::jsonb;
