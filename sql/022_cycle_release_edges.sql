-- 022_cycle_release_edges: the cycle's new releases' BY and ON edges, keyed by entity.
--
-- Artist and label units look up the cycle's new releases of a few hundred
-- artists or labels each (strategies.NEW_BY_ARTISTS, NEW_ON_LABELS). Read
-- from cycle_releases.artist_ids/label_ids, every unit unnested all of the
-- cycle's rows; here each lookup is one index range scan per id. The
-- releases unit writes these rows beside cycle_releases (releases.edge_rows),
-- from the same arrays, which keep their own readers (percolation, ranking).
--
-- kind 'by': entity_id is an artist id; 'on': a label id. One row per edge as
-- the graph holds it: `ord` is the id's 1-based position in the release's
-- artist_ids or label_ids, so an id listed twice (two edges) stays twice, as
-- the fast paths count edges (diff.artist_news, diff.label_news).
CREATE TABLE notifier.cycle_release_edges (
    version     text    NOT NULL REFERENCES notifier.cycles (version),
    kind        text    NOT NULL CHECK (kind IN ('by', 'on')),
    entity_id   text    NOT NULL,
    release_id  bigint  NOT NULL,
    ord         integer NOT NULL,
    -- NEW_BY_ARTISTS / NEW_ON_LABELS: version, kind and entity_id = ANY(ids).
    PRIMARY KEY (version, kind, entity_id, release_id, ord)
);
