-- 021_webhook_watches: fan-out looks up endpoints only for watchers who have one.
--
-- Each recipient of an event was probed in webhook_configs_user_created_idx
-- though four users in five have no endpoint: half of a webhook outbox row's
-- cost in finish_unit (bench/RESULTS.md, "Session 11"). A watch now carries
-- whether its user has an endpoint (has_webhook: false means none), kept by
-- the triggers below whoever writes watches or endpoints (the API, the
-- import, erasure, seeds); the `hooks` CTE (queries/_fan_out.sql) joins
-- webhook_configs for flagged recipients only.
--
-- A watch and an endpoint of one user written at once must not miss each
-- other (each unseen by the other's snapshot): both triggers take the same
-- transaction-scoped advisory lock, the user's bucket of 256 (so a bulk
-- insert of many users' watches holds at most 256 locks), and the statement
-- after the lock reads with a fresh snapshot (READ COMMITTED, as every writer
-- here uses), so the second writer sees the first's committed row.
--
-- A constant default: the column is added without rewriting the table; the
-- backfill then updates the watches of users with an endpoint (one in five).
ALTER TABLE notifier.watchlists ADD COLUMN has_webhook boolean NOT NULL DEFAULT false;
UPDATE notifier.watchlists w SET has_webhook = true
WHERE EXISTS (SELECT 1 FROM notifier.webhook_configs c WHERE c.user_id = w.user_id);

CREATE FUNCTION notifier.lock_user_webhooks(who uuid) RETURNS void LANGUAGE sql VOLATILE
    AS $$ SELECT pg_advisory_xact_lock(2003265643, hashtext(who::text) & 255) $$;

-- A new watch: whether its user has an endpoint now.
CREATE FUNCTION notifier.watch_has_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notifier.lock_user_webhooks(NEW.user_id);
    NEW.has_webhook := EXISTS (
        SELECT 1 FROM notifier.webhook_configs c WHERE c.user_id = NEW.user_id);
    RETURN NEW;
END $$;
CREATE TRIGGER watchlists_has_webhook BEFORE INSERT ON notifier.watchlists
    FOR EACH ROW EXECUTE FUNCTION notifier.watch_has_webhook();

-- An endpoint added: its user's watches are flagged. The user's last
-- endpoint removed: unflagged. (user_id never changes on either table.)
-- Also the foreign key's old ON DELETE SET NULL: the removed endpoint's
-- outbox rows lose their webhook_id (outbox_webhook_status_idx), so the key
-- need not be checked on each of the many rows fan-out inserts.
CREATE FUNCTION notifier.endpoint_flags_watches() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM notifier.lock_user_webhooks(NEW.user_id);
        UPDATE notifier.watchlists SET has_webhook = true
        WHERE user_id = NEW.user_id AND NOT has_webhook;
    ELSE
        PERFORM notifier.lock_user_webhooks(OLD.user_id);
        UPDATE notifier.watchlists SET has_webhook = false
        WHERE user_id = OLD.user_id AND has_webhook
          AND NOT EXISTS (SELECT 1 FROM notifier.webhook_configs c WHERE c.user_id = OLD.user_id);
        UPDATE notifier.outbox SET webhook_id = NULL WHERE webhook_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_configs_flag_watches AFTER INSERT OR DELETE ON notifier.webhook_configs
    FOR EACH ROW EXECUTE FUNCTION notifier.endpoint_flags_watches();

-- A row whose endpoint went meanwhile (fan-out read it under an older
-- snapshot) keeps the id: delivery finds no endpoint and records it dead,
-- "webhook deleted", as for a NULL webhook_id.
ALTER TABLE notifier.outbox DROP CONSTRAINT outbox_webhook_id_fkey;
