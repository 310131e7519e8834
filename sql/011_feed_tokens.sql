-- 011_feed_tokens: the secret URL of a user's Atom feed (POST /api/feed-token,
-- GET /feeds/{token}.atom).
--
-- One token per user: a new one replaces (revokes) the previous one. Only the
-- SHA-256 of the token is stored (the token is 256 random bits, so a plain
-- hash suffices); the URL is shown once, when it is made.
CREATE TABLE notifier.feed_tokens (
    -- POST /api/feed-token upserts the user's one row.
    user_id     uuid        PRIMARY KEY,
    token_hash  bytea       NOT NULL CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- GET /feeds/{token}.atom: the token's hash to its user, one index probe.
CREATE UNIQUE INDEX feed_tokens_hash_key ON notifier.feed_tokens (token_hash);
