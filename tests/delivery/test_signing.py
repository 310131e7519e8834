"""Unit tests of the pure signing functions (contract §6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier import signing

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-of-enough-bytes!!").decode()
BODY = b'{"id":"e1","event":"ping","detail":{}}'


def test_key_is_the_base64_part_after_the_prefix() -> None:
    assert signing.secret_key(SECRET) == b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not base64!", "whsec_@@@@"])
def test_bad_secrets_raise_without_echoing_the_secret(bad: str) -> None:
    with pytest.raises(signing.BadSecret) as info:
        signing.secret_key(bad)
    assert bad.removeprefix("whsec_") == "" or bad.removeprefix("whsec_") not in str(info.value)


def test_discogsography_header_is_hex_hmac_of_t_dot_body() -> None:
    header = signing.discogsography_signature([signing.secret_key(SECRET)], 1700000000, BODY)
    expected = hmac.new(
        b"0123456789abcdef0123456789abcdef", b"1700000000." + BODY, hashlib.sha256
    ).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signing.verify_discogsography(SECRET, header, BODY, now=1700000010)
    assert not signing.verify_discogsography(SECRET, header, BODY + b" ", now=1700000010)
    assert not signing.verify_discogsography(OTHER, header, BODY, now=1700000010)
    assert not signing.verify_discogsography(SECRET, header, BODY, now=1700009999)
    assert not signing.verify_discogsography(SECRET, "v1=abc", BODY, now=1700000000)


def test_standard_webhooks_library_verifies_unchanged() -> None:
    now = int(time.time())
    h = signing.headers([signing.secret_key(SECRET)], "msg_1", now, BODY)
    assert h["webhook-id"] == "msg_1" and h["webhook-timestamp"] == str(now)
    assert Webhook(SECRET).verify(BODY, h) == {"id": "e1", "event": "ping", "detail": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(BODY, h)


def test_rotation_signs_with_both_secrets() -> None:
    keys = [signing.secret_key(OTHER), signing.secret_key(SECRET)]
    now = int(time.time())
    h = signing.headers(keys, "msg_2", now, BODY)
    assert len(h["webhook-signature"].split(" ")) == 2
    assert h["X-Discogsography-Signature"].count("v1=") == 2
    for secret in (SECRET, OTHER):
        Webhook(secret).verify(BODY, h)
        assert signing.verify_discogsography(secret, h["X-Discogsography-Signature"], BODY, now=now)


def test_no_keys_is_an_error() -> None:
    with pytest.raises(signing.BadSecret):
        signing.headers([], "m", 1, BODY)


def _verify_v1a(public: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """Standard Webhooks' `v1a` checked with `cryptography` alone (not notifier.signing)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert public.startswith("whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public[5:]))
    for part in header.split(" "):
        version, _, sig = part.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(sig), f"{msg_id}.{timestamp}.".encode() + body)
        except InvalidSignature:
            continue
        return True
    return False


def test_ed25519_signs_v1a_and_sends_no_hmac_header() -> None:
    private, public = signing.new_ed25519()
    assert private.startswith("whsk_") and len(base64.b64decode(private[5:])) == 64
    assert len(base64.b64decode(public[5:])) == 32 and signing.public_key(private) == public
    now = int(time.time())
    h = signing.sign([private], "msg_3", now, BODY)
    assert set(h) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert h["webhook-signature"].startswith("v1a,") and " " not in h["webhook-signature"]
    assert _verify_v1a(public, "msg_3", str(now), BODY, h["webhook-signature"])
    assert not _verify_v1a(public, "msg_3", str(now), BODY + b" ", h["webhook-signature"])
    assert not _verify_v1a(public, "msg_4", str(now), BODY, h["webhook-signature"])
    _, stranger = signing.new_ed25519()
    assert not _verify_v1a(stranger, "msg_3", str(now), BODY, h["webhook-signature"])


def test_ed25519_rotation_signs_with_both_keys() -> None:
    (old, old_public), (new, new_public) = signing.new_ed25519(), signing.new_ed25519()
    h = signing.sign([new, old], "msg_5", 1700000000, BODY)
    assert len(h["webhook-signature"].split(" ")) == 2
    for public in (old_public, new_public):
        assert _verify_v1a(public, "msg_5", "1700000000", BODY, h["webhook-signature"])


@pytest.mark.parametrize("bad", ["whsk_", "whsk_not base64!", "whsk_" + "A" * 20])
def test_bad_ed25519_keys_raise_without_echoing(bad: str) -> None:
    with pytest.raises(signing.BadSecret) as info:
        signing.sign([bad], "m", 1, BODY)
    assert bad.removeprefix("whsk_") == "" or bad.removeprefix("whsk_") not in str(info.value)


def test_hmac_secrets_still_sign_both_families() -> None:
    h = signing.sign([SECRET], "msg_6", int(time.time()), BODY)
    assert h["webhook-signature"].startswith("v1,") and "X-Discogsography-Signature" in h
    assert Webhook(SECRET).verify(BODY, h) == {"id": "e1", "event": "ping", "detail": {}}
