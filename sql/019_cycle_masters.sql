-- 019_cycle_masters: the cycle's new masters, read once by the releases unit.
--
-- The releases unit makes one pass over the masters' ids (graph.CYCLE_MASTERS)
-- and records here the masters whose numeric id is above the previous cycle's
-- highest master id (release_marks.master_highest_id), with the ids of the
-- artists they are BY and the genres and styles they are IS (one entry per
-- edge, as graphinator MERGEs one edge per master and artist or tag). Genre
-- and style units read them instead of the graph (strategies.TagStrategy),
-- so entity_snapshots.master_mark (018, whose comment predates this) is no
-- longer written nor read: NULL on snapshots written since.
--
-- The rows are the cycle's new masters only when its releases unit is done,
-- did not fall back to a full scan (full_scan false) and the previous cycle
-- recorded master_highest_id (releases.NEW_MASTERS_KNOWN); otherwise the unit
-- writes no row and readers count in full.
CREATE TABLE notifier.cycle_masters (
    version     text    NOT NULL REFERENCES notifier.cycles (version),
    master_id   bigint  NOT NULL,
    artist_ids  text[]  NOT NULL DEFAULT '{}',
    genres      text[]  NOT NULL DEFAULT '{}',
    styles      text[]  NOT NULL DEFAULT '{}',
    -- Readers scan one version's rows by this key.
    PRIMARY KEY (version, master_id)
);

-- Nullable, no default: no table rewrite. NULL (written before this
-- migration): the next cycle records no master as new and counts in full.
ALTER TABLE notifier.release_marks
    -- The highest numeric master id known after this cycle.
    ADD COLUMN master_highest_id bigint;
