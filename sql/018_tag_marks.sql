-- 018_tag_marks: a genre's (style's) release count found from what is new.
--
-- A tag unit reads each tag's IS degree (graph.TAG_COUNTS, O(1)) and the IS
-- edges of masters whose numeric id is above the mark recorded here
-- (graph.MASTERS_ABOVE). When the degree grew by exactly the IS edges of the
-- cycle's new releases (cycle_releases.genres/styles) and of those new
-- masters, the count is the recorded one plus the new releases' edges
-- (diff.tag_news); otherwise it is counted in full, as before. The tag's IS
-- degree is kept in edge_count (017). NULL (not a tag, or written before this
-- migration): counted in full, which records it. Nullable, no default: no
-- table rewrite.
ALTER TABLE notifier.entity_snapshots
    -- The highest numeric master id in the graph when release_count was recorded.
    ADD COLUMN master_mark bigint;
