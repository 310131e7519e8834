-- 023_cycle_master_edges: the BY edges of the cycle's new masters, keyed by artist.
--
-- Artist units count the new masters BY a few hundred artists each
-- (strategies.NEW_MASTERS_BY_ARTISTS). Read from cycle_masters.artist_ids,
-- every unit unnested all of the cycle's new masters (3-4 s of the 1/10
-- month, O(units x new masters)); here each lookup is one index range scan
-- per id. The releases unit writes these rows beside cycle_masters
-- (releases.master_edge_rows), from the same arrays; cycle_masters.artist_ids
-- is still written, so a replica of the previous version reads what it did.
--
-- One row per edge as the graph holds it: `ord` is the id's 1-based position
-- in the master's artist_ids, so an id listed twice (two edges) stays twice,
-- as diff.artist_news counts edges.
CREATE TABLE notifier.cycle_master_edges (
    version     text    NOT NULL REFERENCES notifier.cycles (version),
    artist_id   text    NOT NULL,
    master_id   bigint  NOT NULL,
    ord         integer NOT NULL,
    -- NEW_MASTERS_BY_ARTISTS: version and artist_id = ANY(ids).
    PRIMARY KEY (version, artist_id, master_id, ord)
);
