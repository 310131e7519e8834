"""secretbox: the format of sealed webhook secrets and the encryption key settings."""

from __future__ import annotations

import base64
import secrets
import uuid
from pathlib import Path

import pytest

from notifier import config, secretbox

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
BASE = {"POSTGRES_PASSWORD": "x"}


def _keys(previous: bytes | None = None) -> secretbox.Keyring:
    return secretbox.Keyring(secrets.token_bytes(32), previous)


def test_round_trip_and_the_stored_form_holds_nothing_of_the_secret() -> None:
    keys, hook = _keys(), uuid.uuid4()
    sealed = keys.encrypt(SECRET, hook)
    assert keys.decrypt(sealed, hook) == SECRET
    assert sealed[0] == secretbox.VERSION and sealed[1:5] == keys.current_id
    key_material = base64.b64decode(SECRET[6:])
    for needle in (SECRET.encode(), SECRET[6:].encode(), key_material, key_material[:8]):
        assert needle not in sealed
    assert keys.encrypt(SECRET, hook) != sealed  # a fresh nonce every time


def test_the_previous_key_still_decrypts_and_the_current_one_writes() -> None:
    old = _keys()
    hook = uuid.uuid4()
    sealed = old.encrypt(SECRET, hook)
    rotated = _keys(previous=old.current)
    assert rotated.decrypt(sealed, hook) == SECRET
    resealed = rotated.encrypt(SECRET, hook)
    assert resealed[1:5] == rotated.current_id != old.current_id
    with pytest.raises(secretbox.UnreadableSecret):
        old.decrypt(resealed, hook)


def test_a_wrong_key_fails_clearly_without_showing_the_value() -> None:
    hook = uuid.uuid4()
    sealed = _keys().encrypt(SECRET, hook)
    with pytest.raises(secretbox.UnreadableSecret) as err:
        _keys().decrypt(sealed, hook)
    message = str(err.value)
    assert "NOTIFIER_ENCRYPTION_KEY" in message and sealed[1:5].hex() in message
    assert SECRET not in message and sealed.hex()[10:] not in message


def test_a_value_copied_to_another_row_or_altered_does_not_decrypt() -> None:
    keys, hook = _keys(), uuid.uuid4()
    sealed = keys.encrypt(SECRET, hook)
    with pytest.raises(secretbox.UnreadableSecret, match="another row"):
        keys.decrypt(sealed, uuid.uuid4())
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(secretbox.UnreadableSecret):
        keys.decrypt(flipped, hook)
    with pytest.raises(secretbox.UnreadableSecret, match="format"):
        keys.decrypt(b"\x02" + sealed[1:], hook)


def test_read_falls_back_to_a_clear_row_and_needs_a_key_for_a_sealed_one() -> None:
    keys, hook = _keys(), uuid.uuid4()
    assert secretbox.read(None, hook, SECRET, None) == SECRET  # written before sql/014
    assert secretbox.read(keys, hook, None, keys.encrypt(SECRET, hook)) == SECRET
    with pytest.raises(secretbox.UnreadableSecret, match="NOTIFIER_ENCRYPTION_KEY"):
        secretbox.read(None, hook, None, keys.encrypt(SECRET, hook))
    # Written in clear after sealing (an older replica during a rollout): the clear one is newer.
    assert secretbox.read(keys, hook, "whsec_newer", keys.encrypt(SECRET, hook)) == "whsec_newer"


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
@pytest.mark.parametrize("strip_padding", [False, True])
def test_keys_in_standard_and_url_safe_base64(encode: object, strip_padding: bool) -> None:
    raw = bytes(range(200, 232))  # has bytes that encode to + / and - _
    text = encode(raw).decode()  # type: ignore[operator]
    if strip_padding:
        text = text.rstrip("=")
    s = config.load(BASE | {"NOTIFIER_ENCRYPTION_KEY": text + "\n"}, role="migrate")
    assert s.encryption_key == raw
    assert "encryption_key=***" in repr(s) and text not in repr(s)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NOTIFIER_ENCRYPTION_KEY": "not base64 at all!"}, "NOTIFIER_ENCRYPTION_KEY"),
        ({"NOTIFIER_ENCRYPTION_KEY": base64.b64encode(bytes(16)).decode()}, "got 16 bytes"),
        ({"NOTIFIER_ENCRYPTION_KEY": base64.b64encode(bytes(33)).decode()}, "got 33 bytes"),
        ({"NOTIFIER_ENCRYPTION_KEY": secretbox.new_key(),
          "NOTIFIER_ENCRYPTION_KEY_PREVIOUS": "short"}, "NOTIFIER_ENCRYPTION_KEY_PREVIOUS"),
        ({"NOTIFIER_ENCRYPTION_KEY_PREVIOUS": secretbox.new_key()},
         "NOTIFIER_ENCRYPTION_KEY: required when NOTIFIER_ENCRYPTION_KEY_PREVIOUS"),
    ],
)  # fmt: skip
def test_a_malformed_key_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(BASE | env, role="migrate")
    assert named in str(err.value) and "\n" not in str(err.value)
    for value in env.values():
        assert value not in str(err.value)


def test_the_key_from_a_file(tmp_path: Path) -> None:
    key = secretbox.new_key()
    path = tmp_path / "key"
    path.write_text(key + "\n")
    s = config.load(BASE | {"NOTIFIER_ENCRYPTION_KEY_FILE": str(path)}, role="migrate")
    assert s.encryption_key == base64.b64decode(key)


def test_token_settings_and_their_secrets_stay_out_of_repr() -> None:
    env = BASE | {"NOTIFIER_JWT_ISSUER": "discogsography", "NOTIFIER_JWT_AUDIENCE": "notifier",
                  "REDIS_HOST": "redis", "REDIS_PASSWORD": "redis-pw-0123"}  # fmt: skip
    s = config.load(env, role="migrate")
    assert (s.jwt_issuer, s.jwt_audience, s.redis_host, s.redis_port) == (
        "discogsography", "notifier", "redis", 6379,
    )  # fmt: skip
    assert s.redis_password == "redis-pw-0123" and "redis-pw-0123" not in repr(s)
    with pytest.raises(config.ConfigError, match=r"^REDIS_PORT: "):
        config.load(env | {"REDIS_PORT": "99999"}, role="migrate")
    unset = config.load(BASE, role="migrate")
    assert (unset.jwt_issuer, unset.redis_host, unset.encryption_key) == (None, None, None)
