"""Sealing clear rows, rotating the encryption key (`notifier encrypt-secrets`), the start check."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from notifier import cli, config, secretbox
from notifier.devkit import services
from tests.conftest import KEYS
from tests.delivery.conftest import (
    add_delivery,
    add_webhook,
    delivery_env,
    new_secret,
    rows,
    running,
    wait_until,
)
from tests.delivery.receiver import receiver

Conn = psycopg.AsyncConnection[Any]
URL = "http://127.0.0.1:9/hook"


def _run(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str) -> int:
    """`notifier <argv>` in this process with exactly `env`'s notifier settings."""
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if name.startswith(("POSTGRES_", "NOTIFIER_", "NEO4J_", "JWT_")):
                m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return cli.main(list(argv))


def _env(pg_server: services.PostgresService, pg_url: str, **extra: str) -> dict[str, str]:
    env = delivery_env(pg_server, pg_url, **extra)
    return {k: v for k, v in env.items() if v != ""}


async def _stored(pg_url: str) -> list[tuple[Any, ...]]:
    return await rows(
        pg_url,
        "SELECT id, secret, secret_enc, previous_secret, previous_secret_enc,"
        " previous_secret_expires_at FROM notifier.webhook_configs ORDER BY id",
    )


async def test_clear_rows_are_sealed_once_and_still_sign(
    pg_server: services.PostgresService, pg_url: str, conn: Conn,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    old = new_secret()
    env = _env(pg_server, pg_url)
    with receiver() as r:
        # Rows as the notifier wrote them before sql/014: secrets in clear.
        _, _, hook, secret = await add_delivery(conn, r.url, previous=old)
        expired, _, _ = await add_webhook(conn, URL, previous=new_secret(), previous_valid=False)
        assert _run(monkeypatch, env, "encrypt-secrets") == 0
        assert "moved 2 webhook secret(s)" in capsys.readouterr().out
        by_id = {row[0]: row for row in await _stored(pg_url)}
        for _, clear, sealed, previous_clear, _, _ in by_id.values():
            assert clear is None and previous_clear is None and sealed is not None
        assert KEYS.decrypt(by_id[hook][2], hook) == secret
        assert KEYS.decrypt(by_id[hook][4], hook) == old
        assert by_id[expired][4] is None and by_id[expired][5] is None  # expired: dropped
        assert _run(monkeypatch, env, "encrypt-secrets") == 0  # idempotent
        assert "moved 0 webhook secret(s)" in capsys.readouterr().out

        async with running(pg_url):
            await wait_until(lambda: r.requests, "the delivery")
    got = r.requests[0]
    for key in (secret, old):  # the sealed current and previous secrets both sign
        assert Webhook(key).verify(got.body, got.headers)["event"] == "new_releases"


async def test_a_key_rotation_keeps_every_row_readable(
    pg_server: services.PostgresService, pg_url: str, conn: Conn,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    key_a, key_b = secretbox.new_key(), secretbox.new_key()
    a, b = secretbox.parse_key(key_a), secretbox.parse_key(key_b)
    with receiver() as r:
        _, _, hook, secret = await add_delivery(conn, r.url)
        assert _run(monkeypatch, _env(pg_server, pg_url, NOTIFIER_ENCRYPTION_KEY=key_a),
                    "encrypt-secrets") == 0  # fmt: skip
        # Step 1 of the rotation: the new key current, the old one previous. Delivery signs.
        async with running(pg_url, keys=secretbox.Keyring(b, a)):
            await wait_until(lambda: r.requests, "the delivery")
        assert Webhook(secret).verify(r.requests[0].body, r.requests[0].headers)
    rotated = _env(pg_server, pg_url, NOTIFIER_ENCRYPTION_KEY=key_b,
                   NOTIFIER_ENCRYPTION_KEY_PREVIOUS=key_a)  # fmt: skip
    capsys.readouterr()
    assert _run(monkeypatch, rotated, "encrypt-secrets") == 0
    assert "moved 1 webhook secret(s)" in capsys.readouterr().out
    ((_, _, sealed, *_),) = await _stored(pg_url)
    assert secretbox.Keyring(b).decrypt(sealed, hook) == secret  # the old key can go now
    with pytest.raises(secretbox.UnreadableSecret):
        secretbox.Keyring(a).decrypt(sealed, hook)
    # A key that never wrote anything: the row is reported, not destroyed.
    wrong = _env(pg_server, pg_url, NOTIFIER_ENCRYPTION_KEY=secretbox.new_key())
    assert _run(monkeypatch, wrong, "encrypt-secrets") == 1
    assert "1 unreadable" in capsys.readouterr().out
    assert (await _stored(pg_url))[0][2] == sealed


@pytest.mark.parametrize("role", ["api", "delivery", "all"])
async def test_no_start_without_a_key_once_a_webhook_exists(
    role: str, pg_server: services.PostgresService, pg_url: str, conn: Conn,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    env = _env(pg_server, pg_url, NEO4J_PASSWORD="unused-here",
               JWT_SECRET_KEY="a-long-enough-jwt-key-for-these-tests-0123456789")  # fmt: skip
    del env["NOTIFIER_ENCRYPTION_KEY"]
    settings = config.load(env, role=role)
    cli._seal_at_start(settings)  # no webhook yet: a key is not needed
    await add_webhook(conn, URL)
    assert _run(monkeypatch, env, role) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "NOTIFIER_ENCRYPTION_KEY: required once a webhook exists" in err
    assert _run(monkeypatch, env | {"NOTIFIER_ENCRYPTION_KEY": "too-short"}, role) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("notifier: configuration error: ")
    assert "NOTIFIER_ENCRYPTION_KEY: expected base64" in err and "too-short" not in err


async def test_the_start_seals_clear_rows(
    pg_server: services.PostgresService, pg_url: str, conn: Conn
) -> None:
    hook, _, secret = await add_webhook(conn, URL)
    cli._seal_at_start(config.load(_env(pg_server, pg_url), role="delivery"))
    ((_, clear, sealed, *_),) = await _stored(pg_url)
    assert clear is None and KEYS.decrypt(sealed, hook) == secret


async def test_replicas_sealing_at_once_move_each_row_once(pg_url: str, conn: Conn) -> None:
    made = {}
    for _ in range(60):
        hook, _, secret = await add_webhook(conn, URL)
        made[hook] = secret
    passes: list[secretbox.Pass] = []
    start = threading.Barrier(2)

    def replica() -> None:
        with psycopg.connect(pg_url, autocommit=True) as c:
            start.wait()
            passes.append(secretbox.reencrypt(c, KEYS, batch=7))

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(p.moved for p in passes) == 60 and all(p.unreadable == 0 for p in passes)
    for hook, clear, sealed, *_ in await _stored(pg_url):
        assert clear is None and KEYS.decrypt(sealed, hook) == made[hook]


async def test_an_unreadable_previous_secret_does_not_stop_signing(pg_url: str, conn: Conn) -> None:
    current, previous = new_secret(), new_secret()
    foreign = secretbox.Keyring(secretbox.parse_key(secretbox.new_key()))
    with receiver() as r:
        _, _, hook, _ = await add_delivery(conn, r.url)
        await conn.execute(
            "UPDATE notifier.webhook_configs SET secret = NULL, secret_enc = %s,"
            " previous_secret = NULL, previous_secret_enc = %s,"
            " previous_secret_expires_at = now() + interval '1 day' WHERE id = %s",
            (KEYS.encrypt(current, hook), foreign.encrypt(previous, hook), hook),
        )
        async with running(pg_url):
            await wait_until(lambda: r.requests, "the delivery")
    got = r.requests[0]
    assert Webhook(current).verify(got.body, got.headers)
    assert " " not in got.headers["webhook-signature"]  # the previous one left out
