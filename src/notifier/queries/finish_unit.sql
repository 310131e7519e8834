-- finish_unit: a diff unit's whole write, one statement (so one implicit
-- transaction), run by units.UnitRunner once the unit's diff is done.
--
-- It checks the unit is still pending and claimed by this router, upserts the
-- changed snapshots, inserts the unit's events already fanned out (feed rows,
-- webhook outbox rows, email digest items, the feed's NOTIFY) and marks the
-- unit done. All or nothing: a crash leaves the unit to be redone from scratch
-- with the same result, and a router whose claim was taken over writes nothing,
-- because every write reads its rows through `owned`.
--
-- Parameters:
--   unit        the unit's id (diff_units primary key)
--   me          this router's id: the unit must still be claimed by it
--   feed_lock   fanout.FEED_LOCK_KEY, held shared until commit (an unread
--               counter fold takes it exclusively)
--   type        the unit's entity type
--   rows        the changed snapshots, one JSON array (unitstore.snapshot_params)
--               of {i, n, v, r, a, m, c, h, t, e, k, ae, me}: entity id, name,
--               version, release, alias and member ids, release count, graph
--               digest in hex, a label's tree digest in hex, its ON (a tag's
--               IS, an artist's BY) edge count, a tag's master mark, an
--               artist's ALIAS_OF and MEMBER_OF edge counts
--   events      the unit's events, one JSON array (fanout.draft_params) of
--               {k, e, t, i, n, d, a}: dedup key, event, entity type, id and
--               name, detail, audience (absent: every watcher)
--   version     the cycle's version (the events', the digest items')
--   before      the cycle's start: only watches created before it count
--   milestones  fanout.THRESHOLD_MILESTONES as a JSON array
--   email       false: no email outbox row per event (`mails` writes none)...
--   digest      ...but digest items when email is on: one mail a user a cycle
--   channel     fanout.FEED_CHANNEL, the NOTIFY channel
--   stats       the unit's stats, a JSON object; the counts are added to it
--
-- CTEs, top to bottom (each reads only those above it):
--   owned       the unit's id, locked, if still pending and ours; else no row
--   snaps       the changed snapshots, inserted or replaced
--   drafts      one row per element of `events`
--   ev          the events inserted (those of a re-run hit events_dedup_key)
--   recipients  (user, event, watch) for each watcher an event goes to
--   targets     each recipient with the channels its preferences pick
--   feed        the feed rows
--   hooks       the webhook outbox rows, one per endpoint that takes the event
--   mails       the email outbox rows (none here: `email` is false)
--   digested    the email digest items
--   announced   one NOTIFY per event, when any feed row was written
--   done        the unit marked done, with its stats and counts
-- Returns one row: whether the unit was ours, then the counts of events, feed
-- rows, outbox rows and announcements.
--
-- The fan-out CTEs are written once for the three statements that fan out:
-- recipients in _watchers.sql, targets to mails in _fan_out.sql, each put in
-- at its `-- include:` line when the statement is loaded (queries.load).
WITH owned AS (
    -- diff_units primary key. A concurrent run of the same unit waits on the
    -- row lock, then finds it done or not its own. The feed lock is taken here,
    -- before any feed row: a feed row's id is drawn when it is inserted, after
    -- this CTE gave the row it is made from.
    SELECT id FROM notifier.diff_units
    WHERE id = %(unit)s AND status = 'pending' AND claimed_by = %(me)s
      AND pg_advisory_xact_lock_shared(%(feed_lock)s) IS NOT NULL
    FOR UPDATE
),
snaps AS (
    -- entity_snapshots primary key. The rows travel as one JSON array:
    -- psycopg's text[] dumper escapes each element in Python, about 4x the CPU
    -- of encoding JSON for a 500-entity unit.
    INSERT INTO notifier.entity_snapshots
        (entity_type, entity_id, entity_name, version, release_ids, alias_ids, member_ids,
         release_count, graph_digest, tree_digest, edge_count, master_mark, alias_edges,
         member_edges, updated_at)
    SELECT %(type)s, i, n, v, r, a, m, c, decode(h, 'hex'), decode(t, 'hex'), e, k, ae, me,
           now()
    FROM owned, jsonb_to_recordset(%(rows)s::jsonb)
         AS x (i text, n text, v text, r bigint[], a bigint[], m bigint[], c bigint, h text,
               t text, e bigint, k bigint, ae bigint, me bigint)
    ON CONFLICT (entity_type, entity_id) DO UPDATE SET
        entity_name = excluded.entity_name, version = excluded.version,
        release_ids = excluded.release_ids, alias_ids = excluded.alias_ids,
        member_ids = excluded.member_ids, release_count = excluded.release_count,
        graph_digest = excluded.graph_digest, tree_digest = excluded.tree_digest,
        edge_count = excluded.edge_count, master_mark = excluded.master_mark,
        alias_edges = excluded.alias_edges, member_edges = excluded.member_edges,
        updated_at = now()
),
drafts AS (
    SELECT x.* FROM owned, jsonb_to_recordset(%(events)s::jsonb)
         AS x (k text, e text, t text, i text, n text, d jsonb, a jsonb)
),
ev AS (
    -- The events are new, so inserting them is their claim: they are inserted
    -- already fanned out. Index: events_dedup_key.
    INSERT INTO notifier.events
        (dedup_key, source, version, event, entity_type, entity_id, entity_name, detail,
         fanned_out_at, audience)
    SELECT k, 'router', %(version)s, e, t, i, n, coalesce(d, '{}'), now(), a FROM drafts
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id, event, entity_type, entity_id, detail, deliver_at, audience
),
-- include: _watchers,
-- include: _fan_out,
digested AS (
    -- A cycle's email goes out as one digest a user (sql/013_email_digests.sql):
    -- the cycle's end makes one digest row per user from these items. Ordered
    -- as the feed rows. Index: email_digest_items primary key.
    INSERT INTO notifier.email_digest_items (version, user_id, event_id)
    SELECT %(version)s, user_id, event_id FROM targets
    WHERE email AND %(digest)s
    ORDER BY user_id, event_id
),
announced AS (
    -- Delivered to listeners at commit (fanout.FEED_CHANNEL).
    SELECT pg_notify(%(channel)s, jsonb_build_object('event_id', id)::text) FROM ev
    WHERE EXISTS (SELECT 1 FROM targets WHERE feed)
),
done AS (
    UPDATE notifier.diff_units u
    SET status = 'done', finished_at = now(), lease_until = NULL,
        stats = %(stats)s::jsonb || jsonb_build_object(
            'events', (SELECT count(*) FROM ev),
            'feed_rows', (SELECT count(*) FROM targets WHERE feed),
            'outbox_rows', (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails))
    FROM owned WHERE u.id = owned.id
)
SELECT (SELECT count(*) FROM owned) > 0,
       (SELECT count(*) FROM ev),
       (SELECT count(*) FROM targets WHERE feed),
       (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails),
       (SELECT count(*) FROM announced)
