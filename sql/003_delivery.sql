-- 003_delivery: what the delivery stage needs beyond 001.
--
-- The email channel (contract §2) sends to the `email` claim of the user's
-- token. The API records it here whenever it sees a token carrying one, so
-- that the delivery role, which never sees tokens, knows where to send.
CREATE TABLE IF NOT EXISTS notifier.user_emails (
    -- The poller's claim joins an email outbox row to its address by user_id.
    user_id     uuid        PRIMARY KEY,
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
