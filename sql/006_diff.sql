-- 006_diff: room on each snapshot page for the router's per-cycle stamp.
--
-- Every cycle rewrites each watched entity's snapshot row (most of them only
-- get the cycle's version stamp: units.STAMP_SNAPSHOTS). With full pages
-- (fillfactor 100, the default) such an update cannot stay on its page, so it
-- also inserts a new primary-key entry: measured on 450 unchanged artists of
-- a unit, 3.3 WAL records per row and 5.2 ms; with 30 % of each page free the
-- updates are heap-only (HOT): 1.4 records per row and 3.2 ms. Pages written
-- from now on keep the room (existing rows move there as they are rewritten).
ALTER TABLE notifier.entity_snapshots SET (fillfactor = 70);
