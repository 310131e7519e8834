-- 002_router: the release sets the router needs for search percolation and
-- for genre/style notable releases.
--
-- A cycle's "new releases" are the set difference of the release ids in the
-- graph at this cycle and those seen at any earlier cycle. seen_releases keeps
-- one row per release id ever seen (first_version = the cycle that first saw
-- it); the scan of a cycle inserts with ON CONFLICT DO NOTHING, so a scan
-- interrupted by a crash and run again gives the same set.

CREATE TABLE notifier.seen_releases (
    release_id     bigint  PRIMARY KEY,
    first_version  text    NOT NULL
);
-- The new releases of a cycle: WHERE first_version = $version; and "was there
-- any earlier scan?" (first_version <> $version) to detect the baseline scan.
CREATE INDEX seen_releases_version_idx ON notifier.seen_releases (first_version, release_id);

-- The cycle's new releases with what percolation and the notable ranking need
-- (names and tags as the graph gives them). Written by the cycle's 'releases'
-- unit before any search/genre/style unit runs; kept for later inspection.
CREATE TABLE notifier.cycle_releases (
    version       text     NOT NULL REFERENCES notifier.cycles (version),
    release_id    bigint   NOT NULL,
    title         text,
    year          integer,
    formats       text[]   NOT NULL DEFAULT '{}',
    artist_ids    text[]   NOT NULL DEFAULT '{}',
    artist_names  text[]   NOT NULL DEFAULT '{}',
    label_ids     text[]   NOT NULL DEFAULT '{}',
    label_names   text[]   NOT NULL DEFAULT '{}',
    genres        text[]   NOT NULL DEFAULT '{}',
    styles        text[]   NOT NULL DEFAULT '{}',
    -- lower(title, artist names, label names): the haystack of a search's q.
    search_text   text     NOT NULL DEFAULT '',
    -- Notable ranking key: the release count of its biggest artist.
    rank          bigint   NOT NULL DEFAULT 0,
    -- Percolation and notable releases scan one version by this key.
    PRIMARY KEY (version, release_id)
);
