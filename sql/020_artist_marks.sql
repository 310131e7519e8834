-- 020_artist_marks: an artist's news found from the cycle's new releases and masters.
--
-- An artist unit reads each artist's name and three degrees from the degree
-- store (graph.ARTIST_MARKS: BY in, ALIAS_OF either way, MEMBER_OF in), not
-- its release ids, and graph_digest (007) is now the digest of that row.
-- When the snapshot is the previous cycle's and the BY degree (kept in
-- edge_count, 017) grew by exactly the BY edges of the cycle's new releases
-- (cycle_releases.artist_ids) and new masters (cycle_masters.artist_ids),
-- the artist's releases are the recorded ones plus those (diff.artist_news);
-- its aliases and members are the recorded ones while their degrees below
-- are unchanged, else read alone. Otherwise it is read in full, as before.
-- NULL (not an artist, or written before this migration): read in full, which
-- records them. Nullable columns without a default: no table rewrite.
ALTER TABLE notifier.entity_snapshots
    -- ALIAS_OF edges of the artist, either direction, when alias_ids were recorded.
    ADD COLUMN alias_edges bigint,
    -- MEMBER_OF edges into the artist when member_ids were recorded.
    ADD COLUMN member_edges bigint;
