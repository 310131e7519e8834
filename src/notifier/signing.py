"""Webhook signatures (contract §6). Pure functions, no I/O.

Two header families sign every delivery, both keyed with the base64-decoded
part of the secret after `whsec_`:

- `X-Discogsography-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
  (one `v1=` entry per signing secret during a rotation);
- Standard Webhooks: `webhook-id`, `webhook-timestamp` and
  `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<t>.<body>">`, the
  signatures space-separated during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


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
    return hmac.new(key, message, hashlib.sha256).digest()


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
