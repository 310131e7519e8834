"""Webhook secrets at rest: AES-256-GCM under `NOTIFIER_ENCRYPTION_KEY`.

A stored value (a bytea column) is

    version (1 byte, 0x01) | key id (4 bytes) | nonce (12 bytes) | ciphertext + tag

The key id is the first 4 bytes of SHA-256 of the key, so the reader picks
the key that wrote a value (`NOTIFIER_ENCRYPTION_KEY` or, during a key
rotation, `NOTIFIER_ENCRYPTION_KEY_PREVIOUS`) without anyone numbering keys.
The endpoint's id is the associated data: a value copied into another row
does not decrypt there (someone who can write the table cannot make the
notifier sign their deliveries with another user's secret).

`reencrypt` moves every row to the current key: clear rows written before
`sql/014_secret_encryption.sql`, and rows under the previous key. It runs in
batches under `FOR UPDATE SKIP LOCKED`, so several replicas may run it at once.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("notifier.secretbox")

KEY_BYTES = 32
VERSION = 1
KEY_ID_BYTES = 4
NONCE_BYTES = 12
HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES
_AAD_PREFIX = b"notifier.webhook_configs:"
BATCH = 500


class UnreadableSecret(ValueError):
    """A stored value cannot be decrypted; `str()` says why, never the value."""


def parse_key(text: str) -> bytes:
    """The 32 bytes of a key given as base64 (standard or URL-safe, padding optional).

    Raises `ValueError` with a message that never contains the value.
    """
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    alphabet = b"-_" if ("-" in cleaned or "_" in cleaned) else b"+/"
    try:
        raw = base64.b64decode(padded.encode("ascii"), altchars=alphabet, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError(
            "expected base64 of 32 random bytes (e.g. `openssl rand -base64 32`)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"expected base64 of exactly {KEY_BYTES} bytes, got {len(raw)} bytes")
    return raw


def new_key() -> str:
    """A fresh key, base64 (what `notifier dev` and the tests use)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> bytes:
    """The 4-byte id a value written with `key` carries."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def _aad(row: uuid.UUID) -> bytes:
    return _AAD_PREFIX + row.bytes


@dataclass(frozen=True)
class Keyring:
    """The current key (encrypts and decrypts) and the previous one (decrypts only)."""

    current: bytes
    previous: bytes | None = None

    def __repr__(self) -> str:
        return f"Keyring(current={key_id(self.current).hex()}, previous=" + (
            f"{key_id(self.previous).hex()})" if self.previous else "None)"
        )

    @functools.cached_property
    def current_id(self) -> bytes:
        """The key id of the current key."""
        return key_id(self.current)

    @functools.cached_property
    def _ciphers(self) -> dict[bytes, AESGCM]:
        # Built once: the delivery role decrypts a secret for every claimed row.
        keys = [k for k in (self.previous, self.current) if k is not None]
        return {key_id(k): AESGCM(k) for k in keys}

    def encrypt(self, plaintext: str, row: uuid.UUID) -> bytes:
        """The stored form of `plaintext`, the secret of endpoint `row`."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self.current_id].encrypt(nonce, plaintext.encode(), _aad(row))
        return bytes([VERSION]) + self.current_id + nonce + sealed

    def decrypt(self, blob: bytes, row: uuid.UUID) -> str:
        """The secret of endpoint `row` stored as `blob`; `UnreadableSecret` when it cannot be."""
        return self._remembered(bytes(blob), row)

    @functools.cached_property
    def _remembered(self) -> Callable[[bytes, uuid.UUID], str]:
        # Delivery decrypts the same few endpoints' secrets for every batch, and a
        # hit costs a fraction of a decryption (AES-GCM context setup).
        return functools.lru_cache(maxsize=4096)(self._decrypt)

    def _decrypt(self, blob: bytes, row: uuid.UUID) -> str:
        if len(blob) <= HEADER_BYTES or blob[0] != VERSION:
            raise UnreadableSecret("not a stored secret of a known format")
        kid, nonce = blob[1 : 1 + KEY_ID_BYTES], blob[1 + KEY_ID_BYTES : HEADER_BYTES]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnreadableSecret(
                f"written with key id {kid.hex()}, which is neither NOTIFIER_ENCRYPTION_KEY "
                "nor NOTIFIER_ENCRYPTION_KEY_PREVIOUS"
            )
        try:
            return cipher.decrypt(nonce, blob[HEADER_BYTES:], _aad(row)).decode()
        except InvalidTag:
            raise UnreadableSecret("does not decrypt (altered, or from another row)") from None


def from_settings(current: bytes | None, previous: bytes | None) -> Keyring | None:
    """The keyring of the configured keys, or None when no key is configured."""
    return None if current is None else Keyring(current, previous)


def read(
    keys: Keyring | None, row: uuid.UUID, clear: str | None, sealed: bytes | None
) -> str | None:
    """A secret as stored: the clear value of a row not yet sealed, else `sealed` decrypted.

    This version always empties the clear column when it writes a sealed
    value, so a row holding both was written in clear afterwards, by a
    replica of an older version during a rollout: the clear value is newer.
    """
    if clear is not None or sealed is None:
        return clear
    if keys is None:
        raise UnreadableSecret("NOTIFIER_ENCRYPTION_KEY is not set")
    return keys.decrypt(sealed, row)


# ------------------------------------------------------------------ the re-encryption pass

# Index: webhook_configs primary key (keyset from `after`). A row needs work
# when it holds a clear value or a value under another key; an expired
# previous secret is dropped on the way (it signs nothing any more).
PENDING = """
SELECT id, secret, secret_enc, previous_secret, previous_secret_enc,
       coalesce(previous_secret_expires_at > now(), false) AS previous_live
FROM notifier.webhook_configs
WHERE id > %(after)s
  AND (secret IS NOT NULL OR previous_secret IS NOT NULL
       OR substring(secret_enc FROM 2 FOR 4) <> %(kid)s
       OR substring(previous_secret_enc FROM 2 FOR 4) <> %(kid)s
       OR (previous_secret_enc IS NOT NULL AND previous_secret_expires_at <= now()))
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
# By primary key; the row is locked by PENDING in the same transaction.
STORE = """
UPDATE notifier.webhook_configs SET
    secret = NULL, secret_enc = %(secret)s,
    previous_secret = NULL, previous_secret_enc = %(previous)s,
    previous_secret_expires_at = CASE WHEN %(previous)s::bytea IS NULL THEN NULL
                                      ELSE previous_secret_expires_at END
WHERE id = %(id)s
"""
ANY_WEBHOOK = "SELECT EXISTS (SELECT 1 FROM notifier.webhook_configs)"


@dataclass
class Pass:
    """What one `reencrypt` run did."""

    moved: int = 0
    unreadable: int = 0


def reencrypt(conn: psycopg.Connection[Any], keys: Keyring, *, batch: int = BATCH) -> Pass:
    """Store every webhook secret under the current key (idempotent, replica-safe).

    Rows another replica holds locked are skipped (it is moving them); rows
    no configured key can read are left as they are and counted.
    """
    done = Pass()
    after = uuid.UUID(int=0)
    while True:
        with conn.transaction():
            rows = conn.execute(
                PENDING, {"after": after, "kid": keys.current_id, "limit": batch}
            ).fetchall()
            updates = []
            for hook, clear, sealed, prev_clear, prev_sealed, prev_live in rows:
                after = hook
                try:
                    current = read(keys, hook, clear, sealed)
                    previous = read(keys, hook, prev_clear, prev_sealed) if prev_live else None
                except UnreadableSecret as exc:
                    done.unreadable += 1
                    log.error("webhook secret unreadable", extra={"webhook_id": str(hook),
                                                                  "error": str(exc)})  # fmt: skip
                    continue
                if current is None:
                    continue
                updates.append({
                    "id": hook, "secret": keys.encrypt(current, hook),
                    "previous": None if previous is None else keys.encrypt(previous, hook),
                })  # fmt: skip
            if updates:
                with conn.cursor() as cur:
                    cur.executemany(STORE, updates)
            done.moved += len(updates)
        if len(rows) < batch:
            return done


def any_webhook(conn: psycopg.Connection[Any]) -> bool:
    """True when at least one webhook endpoint exists."""
    row = conn.execute(ANY_WEBHOOK).fetchone()
    return bool(row and row[0])
