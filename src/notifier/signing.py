"""Webhook signatures (contract §6). Pure functions, no I/O.

Two header families sign every delivery, both keyed with the base64-decoded
part of the secret after `whsec_`:

- `X-Discogsography-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
  (one `v1=` entry per signing secret during a rotation);
- Standard Webhooks: `webhook-id`, `webhook-timestamp` and
  `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<t>.<body>">`, the
  signatures space-separated during a rotation.

An endpoint created with `"signing": "ed25519"` is signed with Standard
Webhooks' asymmetric scheme instead: its stored key is `whsk_` + base64 of
the Ed25519 private key (seed and public key, 64 bytes, as libsodium and the
Standard Webhooks libraries write it), the receiver holds the `whpk_` public
key, and `webhook-signature: v1a,<base64 Ed25519 signature of
"<id>.<t>.<body>">`; no HMAC header is sent (there is no shared key).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNING_KEY_PREFIX = "whsk_"  # Standard Webhooks' asymmetric secret key
PUBLIC_KEY_PREFIX = "whpk_"


class BadSecret(ValueError):
    """A stored secret is not `whsec_` + base64; `str()` never contains it."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of `secret`: the base64-decoded part after `whsec_`."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadSecret("webhook secret is not valid base64 after 'whsec_'") from None
    if not key:
        raise BadSecret("webhook secret is empty")
    return key


def _mac(key: bytes, message: bytes) -> bytes:
    # One-shot OpenSSL digest (named, not hashlib.sha256): no HMAC object per signature.
    return hmac.digest(key, message, "sha256")


def discogsography_signature(keys: Sequence[bytes], timestamp: int, body: bytes) -> str:
    """The `X-Discogsography-Signature` value: `t=<ts>,v1=<hex>[,v1=<hex>…]`."""
    message = f"{timestamp}.".encode() + body
    return ",".join([f"t={timestamp}", *(f"v1={_mac(k, message).hex()}" for k in keys)])


def standard_signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value: `v1,<b64>[ v1,<b64>…]`."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(f"v1,{base64.b64encode(_mac(k, message)).decode()}" for k in keys)


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every signature header of one delivery attempt (keys: current secret first)."""
    if not keys:
        raise BadSecret("no signing secret")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(keys, msg_id, timestamp, body),
        "X-Discogsography-Signature": discogsography_signature(keys, timestamp, body),
    }


def verify_discogsography(
    secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300
) -> bool:
    """True when `header` carries a valid `v1=` for `secret` within `tolerance` seconds.

    Receivers can copy this; the tests use it as the independent check.
    """
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret_key(secret), f"{timestamp}.".encode() + body).hex()
    return any(k.strip() == "v1" and hmac.compare_digest(v.strip(), expected) for k, _, v in parts)


def new_ed25519() -> tuple[str, str]:
    """A new key pair: (`whsk_` private key to store, `whpk_` public key for the receiver)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return (
        SIGNING_KEY_PREFIX + base64.b64encode(seed + public).decode("ascii"),
        PUBLIC_KEY_PREFIX + base64.b64encode(public).decode("ascii"),
    )


@functools.lru_cache(maxsize=4096)
def ed25519_key(secret: str) -> Ed25519PrivateKey:
    """The private key of a stored `whsk_` secret (cached: loading costs more than signing).

    Accepts the 64-byte (seed + public key) form and a bare 32-byte seed.
    """
    try:
        raw = base64.b64decode(secret.removeprefix(SIGNING_KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise BadSecret("signing key is not valid base64 after 'whsk_'") from None
    if len(raw) not in (32, 64):
        raise BadSecret("signing key is not an Ed25519 key")
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


def public_key(secret: str) -> str:
    """The `whpk_` public key of a stored `whsk_` secret."""
    raw = ed25519_key(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def ed25519_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Standard Webhooks' asymmetric headers: `v1a,<b64 Ed25519 signature>` per key."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    signatures = " ".join(
        "v1a," + base64.b64encode(ed25519_key(s).sign(message)).decode("ascii") for s in secrets
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures}  # fmt: skip


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every signature header of one attempt, by the kind of the stored secrets.

    `whsk_` keys (an ed25519 endpoint; a rotation keeps the kind): Standard
    Webhooks' `v1a` only. Otherwise `whsec_` secrets: both HMAC families.
    """
    if not secrets:
        raise BadSecret("no signing secret")
    if secrets[0].startswith(SIGNING_KEY_PREFIX):
        return ed25519_headers(secrets, msg_id, timestamp, body)
    return headers([secret_key(s) for s in secrets], msg_id, timestamp, body)
