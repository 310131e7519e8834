-- 016_release_marks: a cycle's new releases found without reading the whole
-- catalogue, and the saved searches matched once a cycle.
--
-- The releases unit compares the graph's release count with the previous
-- cycle's and reads only the releases above the previous highest id; when
-- the counts do not add up (a release appeared below that id, or one went
-- away) it reads every release id, as the first cycle does.
CREATE TABLE notifier.release_marks (
    version        text     PRIMARY KEY REFERENCES notifier.cycles (version),
    -- Release nodes in the graph when this cycle's releases unit ran.
    release_count  bigint   NOT NULL,
    -- The highest numeric release id known after this cycle.
    highest_id     bigint   NOT NULL,
    -- This cycle read every release id (the first cycle, or the counts did not add up).
    full_scan      boolean  NOT NULL
);

-- Every saved search matched against the cycle's new releases at once by the
-- releases unit (one pass over the releases, notifier.percolate); the search
-- units read their searches' rows. A search without a row matched nothing.
CREATE TABLE notifier.cycle_search_matches (
    version      text     NOT NULL REFERENCES notifier.cycles (version),
    search_id    text     NOT NULL,
    match_count  integer  NOT NULL,
    -- [[release_id, title], ...]: the first matches by release id (diff.SEARCH_MATCH_CAP).
    matches      jsonb    NOT NULL,
    -- A search unit reads its searches' rows: units.SEARCH_MATCHES.
    PRIMARY KEY (version, search_id)
);
