"""Webhooks over TLS: a real loopback HTTPS receiver with certificates made by `openssl`."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from notifier import signing
from notifier.channels.webhook import USER_AGENT, WebhookOptions, WebhookSender
from notifier.outbox import Job
from tests.delivery.conftest import (
    add_delivery,
    attempts_of,
    has_status,
    new_secret,
    running,
    wait_until,
)
from tests.delivery.receiver import receiver

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Certs:
    """PEM files: our test CA, and server certificates (chain file, key file)."""

    ca: Path
    loopback: tuple[Path, Path]  # for 127.0.0.1 and localhost, issued by `ca`
    elsewhere: tuple[Path, Path]  # for elsewhere.test only, issued by `ca`
    stranger: tuple[Path, Path]  # for 127.0.0.1, issued by a CA nobody trusts


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n{done.stderr}")


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return cert, key


def _issue(d: Path, name: str, ca: tuple[Path, Path], san: str, serial: int) -> tuple[Path, Path]:
    cert, key, csr, ext = (d / f"{name}{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(serial),
             "-days", "2", "-extfile", ext, "-out", cert)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA and server certificates, made once per module."""
    if shutil.which("openssl") is None:
        pytest.fail("`openssl` is needed to make the test certificates: apt-get install openssl")
    d = tmp_path_factory.mktemp("tls")
    ca, other = _ca(d, "test-ca"), _ca(d, "other-ca")
    return Certs(
        ca=ca[0],
        loopback=_issue(d, "loopback", ca, "IP:127.0.0.1,DNS:localhost", 1),
        elsewhere=_issue(d, "elsewhere", ca, "DNS:elsewhere.test", 2),
        stranger=_issue(d, "stranger", other, "IP:127.0.0.1", 3),
    )


def server_tls(chain: tuple[Path, Path]) -> ssl.SSLContext:
    """A receiver's server context presenting `chain`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*chain)
    return ctx


def client_tls(certs: Certs) -> ssl.SSLContext:
    """The sender's default context, also trusting the test CA."""
    ctx = httpx.create_ssl_context(trust_env=False)
    ctx.load_verify_locations(cafile=certs.ca)
    return ctx


def options(ctx: ssl.SSLContext | None) -> WebhookOptions:
    return WebhookOptions(allow_private=True, total_timeout=3.0, read_timeout=3.0, ssl_context=ctx)


async def test_webhooks_are_delivered_over_tls_on_one_kept_alive_connection(
    pg_url: str, conn: Conn, certs: Certs
) -> None:
    with receiver(tls=server_tls(certs.loopback)) as r:
        assert r.url.startswith("https://127.0.0.1:")
        async with running(pg_url, options=options(client_tls(certs))):
            first, event, _, secret = await add_delivery(conn, r.url)
            await wait_until(
                lambda: has_status(pg_url, first, "delivered"), "the first delivery", limit=10
            )
            second, *_ = await add_delivery(conn, r.url)  # after the first: no concurrency
            await wait_until(
                lambda: has_status(pg_url, second, "delivered"), "the second delivery", limit=10
            )
        assert r.connections == 1  # the second POST reused the first's TLS connection
    assert len(r.requests) == 2 and all(q.tls in {"TLSv1.2", "TLSv1.3"} for q in r.requests)
    got = r.requests[0]
    assert got.path == "/hook" and got.headers["host"] == f"127.0.0.1:{r.port}"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == USER_AGENT
    assert json.loads(got.body)["event_id"] == str(event)
    assert int(got.headers["content-length"]) == len(got.body)
    assert Webhook(secret).verify(got.body, got.headers)["id"] == got.headers["webhook-id"]
    assert signing.verify_discogsography(
        secret, got.headers["x-discogsography-signature"], got.body, now=int(time.time())
    )
    body = json.loads(got.body)
    assert {k: v for k, v in body.items() if k != "timestamp"} == {
        "id": got.headers["webhook-id"], "event_id": str(event), "event": "new_releases",
        "entity_type": "artist", "entity_id": "123",
        "entity_name": "John Coltrane", "detail": {"new_release_count": 1, "release_ids": ["456"]},
        "version": "20260201",
    }  # fmt: skip
    for outbox_id in (first, second):
        assert [a[:3] for a in await attempts_of(pg_url, outbox_id)] == [(200, None, "ok")]


async def test_an_untrusted_certificate_or_a_wrong_name_is_a_tls_error(
    pg_url: str, conn: Conn, certs: Certs
) -> None:
    with (
        receiver(tls=server_tls(certs.stranger)) as stranger,
        receiver(tls=server_tls(certs.elsewhere)) as elsewhere,
    ):
        async with running(pg_url, options=options(client_tls(certs))):
            rows_ = [(await add_delivery(conn, r.url))[0] for r in (stranger, elsewhere)]
            for outbox_id in rows_:
                await wait_until(lambda i=outbox_id: attempts_of(pg_url, i), "an attempt", limit=10)
        for outbox_id in rows_:
            assert (await attempts_of(pg_url, outbox_id))[0][:3] == (None, "tls_error", None)
            assert not await has_status(pg_url, outbox_id, "delivered")
    assert stranger.requests == [] and elsewhere.requests == []
    assert stranger.connections >= 1 and elsewhere.connections >= 1  # refused in the handshake


async def test_the_default_context_does_not_trust_a_private_ca(certs: Certs) -> None:
    job = Job(
        outbox_id=1, claim_token=uuid.uuid4(), user_id=uuid.uuid4(), channel="webhook",
        attempts=1, webhook_id=uuid.uuid4(), message_id=uuid.uuid4(), event_id=uuid.uuid4(),
        event="new_releases",
        entity_type="artist", entity_id="1", entity_name="A", detail_json="{}",
        version="20260101", timestamp="2026-01-01T00:00:00Z", cancelled=False,
        url="", webhook_active=True, secrets=(new_secret(),), email=None,
    )  # fmt: skip
    with receiver(tls=server_tls(certs.loopback)) as r:
        default = WebhookSender(options(None))  # production: no context given
        trusting = WebhookSender(options(client_tls(certs)))
        try:
            refused = await default.send(msgspec.structs.replace(job, url=r.url))
            accepted = await trusting.send(msgspec.structs.replace(job, url=r.url))
        finally:
            await default.aclose()
            await trusting.aclose()
    assert refused.result.error == "tls_error" and refused.result.status_code is None
    assert accepted.result.status_code == 200 and len(r.requests) == 1
