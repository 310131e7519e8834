-- 014_secret_encryption: webhook secrets encrypted at rest.
--
-- secret_enc / previous_secret_enc hold the `whsec_` secret (or an ed25519
-- endpoint's `whsk_` private key) sealed with AES-256-GCM under
-- NOTIFIER_ENCRYPTION_KEY (format in src/notifier/secretbox.py). The key
-- never reaches the database, so this file cannot encrypt: rows written
-- before it keep their clear `secret` until the api or delivery role starts
-- with the key (or `notifier encrypt-secrets` runs), which seals them and
-- sets the clear columns to NULL. Until then readers fall back to the clear
-- value, so nothing stops signing during the upgrade.
-- Metadata-only changes (nullable columns without default, DROP NOT NULL);
-- the CHECK is added NOT VALID, then validated without blocking writes.
ALTER TABLE notifier.webhook_configs
    ADD COLUMN secret_enc bytea,
    ADD COLUMN previous_secret_enc bytea,
    ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE notifier.webhook_configs ADD CONSTRAINT webhook_configs_secret_check
    CHECK (secret IS NOT NULL OR secret_enc IS NOT NULL) NOT VALID;
ALTER TABLE notifier.webhook_configs VALIDATE CONSTRAINT webhook_configs_secret_check;
