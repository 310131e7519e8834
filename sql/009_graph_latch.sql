-- 009_graph_latch: cycles fired by the graph's completion latch (contract §3a).
--
-- Discogsography's graphinator writes (:ExtractionCompletion {version, signals})
-- once it has flushed each data type; no platform service publishes the
-- import_completed message yet. A router polling the graph records a complete
-- latch as a signal of source 'graph'; messages keep source 'amqp'. The source
-- is part of the key, so a message naming any service can never stand in for
-- (or block) the latch's signal of the same version.
ALTER TABLE notifier.cycle_signals
    ADD COLUMN source text NOT NULL DEFAULT 'amqp' CHECK (source IN ('amqp', 'graph'));
ALTER TABLE notifier.cycle_signals DROP CONSTRAINT cycle_signals_pkey;
-- "have all required services signalled this version?" reads by version, source.
ALTER TABLE notifier.cycle_signals ADD PRIMARY KEY (version, source, service);

-- Which source fired the cycle: the first to report the version complete.
ALTER TABLE notifier.cycles
    ADD COLUMN fired_by text CHECK (fired_by IN ('amqp', 'graph'));
