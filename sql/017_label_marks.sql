-- 017_label_marks: a label's new releases found from the cycle's new releases.
--
-- A label unit reads each label's sublabel tree and the ON edges into it
-- (graph.LABEL_TREES: degrees, not release ids). When the tree is the one
-- recorded here and the edges grew by exactly the ON pairs of the cycle's new
-- releases (cycle_releases.label_ids) on that tree, the label's releases are
-- the recorded ones plus those (diff.label_news); otherwise they are read in
-- full, as before. NULL (not a label, or written before this migration): the
-- label is read in full, which records both. Nullable columns without a
-- default: no table rewrite.
ALTER TABLE notifier.entity_snapshots
    -- SHA-256 of the sorted ids of the tree's labels holding releases (diff.LabelTree.digest).
    ADD COLUMN tree_digest bytea,
    -- ON edges into those labels when release_ids were recorded.
    ADD COLUMN edge_count bigint;
