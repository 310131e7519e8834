"""Email digests through the delivery loop, against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.channels.email import EmailSender
from tests.delivery.conftest import add_event, rows, running, wait_until
from tests.smtp import Inbox, smtp_server

Conn = psycopg.AsyncConnection[Any]
FROM = "notifier@discogsography.example"


class Flaky(Inbox):
    """Answers the first `failures` messages with 451, then accepts; keeps every try."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.tries: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.tries.append(envelope.content)
        if len(self.tries) <= self.failures:
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, int]]:
    """An aiosmtpd server refusing the first two messages with 451."""
    with smtp_server(Flaky(2)) as served:
        yield served


async def _digest(conn: Conn, user: uuid.UUID, address: str | None, n: int = 3) -> int:
    """A user's digest of version v9 with `n` events, as a finished cycle leaves it."""
    if address:
        await conn.execute(
            "INSERT INTO notifier.user_emails (user_id, email) VALUES (%s, %s)", (user, address)
        )
    for _ in range(n):
        event = await add_event(conn)
        await conn.execute(
            "INSERT INTO notifier.email_digest_items (version, user_id, event_id)"
            " VALUES ('v9', %s, %s)",
            (user, event),
        )
    cur = await conn.execute(
        "INSERT INTO notifier.email_digests (user_id, version, event_count)"
        " VALUES (%s, 'v9', %s) RETURNING id",
        (user, n),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def _settled(pg_url: str) -> Any:
    return rows(
        pg_url,
        "SELECT 1 FROM notifier.email_digests HAVING count(*) FILTER"
        " (WHERE status = 'pending' OR claim_token IS NOT NULL) = 0",
    )


async def test_smtp_failure_is_retried_then_delivered_once_with_one_message_id(
    pg_url: str, conn: Conn, flaky: tuple[Flaky, int]
) -> None:
    inbox, port = flaky
    digest = await _digest(conn, uuid.uuid4(), "fan@example.org")
    sender = EmailSender("127.0.0.1", port, FROM)
    async with running(pg_url, channels={"email": sender}, schedule=(0.05, 0.05, 0.05)):
        await wait_until(lambda: _settled(pg_url), "the digest settled")
    assert len(inbox.messages) == 1 and len(inbox.tries) == 3
    ids = {
        email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]
        for raw in inbox.tries
    }
    ((message_id, status, attempts),) = await rows(
        pg_url, "SELECT message_id, status, attempts FROM notifier.email_digests"
    )
    assert ids == {f"<{message_id}@notifier.discogsography>"}  # one id on every attempt
    assert (status, attempts) == ("delivered", 3)
    tries = await rows(
        pg_url,
        "SELECT status_code, error FROM notifier.email_digest_attempts WHERE digest_id = %s"
        " ORDER BY id",
        digest,
    )
    assert tries == [(451, "smtp_error"), (451, "smtp_error"), (250, None)]


async def test_two_delivery_replicas_send_each_digest_once(
    pg_url: str, conn: Conn, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    users = [uuid.uuid4() for _ in range(30)]
    for i, user in enumerate(users):
        await _digest(conn, user, f"fan{i}@example.org", n=2)
    nobody = await _digest(conn, uuid.uuid4(), None)
    a = EmailSender("127.0.0.1", port, FROM)
    b = EmailSender("127.0.0.1", port, FROM)
    async with (
        running(pg_url, channels={"email": a}, schedule=(3600,)),
        running(pg_url, channels={"email": b}, schedule=(3600,)),
    ):
        await wait_until(lambda: _settled(pg_url), "every digest settled")
    recipients = sorted(r for rcpts, _ in inbox.messages for r in rcpts)
    assert recipients == sorted(f"fan{i}@example.org" for i in range(30))
    assert await rows(
        pg_url, "SELECT status, count(*) FROM notifier.email_digests GROUP BY 1 ORDER BY 1"
    ) == [("dead", 1), ("delivered", 30)]
    # A digest without an address is dead at once: nothing sent, no attempt counted.
    assert await rows(
        pg_url, "SELECT attempts, last_error FROM notifier.email_digests WHERE id = %s", nobody
    ) == [(0, "no email address known for the user")]
    assert await rows(pg_url, "SELECT count(*) FROM notifier.email_digest_attempts") == [(30,)]
