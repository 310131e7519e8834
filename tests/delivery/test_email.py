"""The email channel against a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
from typing import Any

import psycopg

from notifier import config, delivery
from notifier.channels.email import EmailSender
from tests.delivery.conftest import add_event, add_outbox, rows, running, wait_until
from tests.smtp import Inbox

Conn = psycopg.AsyncConnection[Any]


async def _user_with_email(conn: Conn, address: str | None) -> Any:
    import uuid

    user = uuid.uuid4()
    if address:
        await conn.execute(
            "INSERT INTO notifier.user_emails (user_id, email) VALUES (%s, %s)", (user, address)
        )
    return user


async def test_email_is_sent_and_failures_recorded(
    pg_url: str, conn: Conn, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    ok_user = await _user_with_email(conn, "fan@example.org")
    bad_user = await _user_with_email(conn, "ghost@refused.example")
    nobody = await _user_with_email(conn, None)
    event = await add_event(conn)
    ok = await add_outbox(conn, ok_user, event, None, channel="email")
    bad = await add_outbox(conn, bad_user, event, None, channel="email")
    none = await add_outbox(conn, nobody, event, None, channel="email")
    sender = EmailSender("127.0.0.1", port, "notifier@discogsography.example")
    async with running(pg_url, channels={"email": sender}, schedule=(3600,)):
        await wait_until(
            lambda: rows(pg_url, "SELECT 1 FROM notifier.outbox WHERE claim_token IS NULL "
                         "AND status <> 'pending' OR attempts = 1 AND claim_token IS NULL "
                         "HAVING count(*) = 3"), "three outcomes")  # fmt: skip
    assert len(inbox.messages) == 1
    rcpts, raw = inbox.messages[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert rcpts == ["fan@example.org"]
    assert msg["Subject"] == "[Discogsography] new releases: John Coltrane"
    ((message,),) = await rows(pg_url, "SELECT message_id FROM notifier.outbox WHERE id = %s", ok)
    assert msg["Message-ID"] == f"<{message}@notifier.discogsography>"  # one per recipient
    assert "release_ids" in msg.get_content()
    status = dict(await rows(pg_url, "SELECT id, status FROM notifier.outbox"))
    assert status == {ok: "delivered", bad: "pending", none: "dead"}
    attempts = await rows(
        pg_url, "SELECT outbox_id, status_code, error FROM notifier.delivery_attempts ORDER BY 1"
    )
    assert sorted(attempts) == sorted([(ok, 250, None), (bad, 550, "recipient_refused")])


def test_email_channel_is_off_by_default() -> None:
    base = {"POSTGRES_PASSWORD": "x"}
    assert set(delivery.channels_for(config.load(base, "delivery"))) == {"webhook"}
    on = config.load(
        {**base, "NOTIFIER_SMTP_HOST": "127.0.0.1", "NOTIFIER_SMTP_FROM": "n@example.org"},
        "delivery",
    )
    assert set(delivery.channels_for(on)) == {"webhook", "email"}


async def test_a_disabled_endpoint_is_mailed_when_the_user_wants_email(
    pg_url: str, conn: Conn, smtp: tuple[Inbox, int]
) -> None:
    from tests.delivery.conftest import add_webhook
    from tests.delivery.receiver import Plan, receiver

    inbox, port = smtp
    with receiver(lambda _: Plan(410)) as r:
        hook, user, _ = await add_webhook(conn, r.url)
        await conn.execute(
            "INSERT INTO notifier.user_emails (user_id, email) VALUES (%s, 'fan@example.org')",
            (user,),
        )
        await conn.execute(
            "INSERT INTO notifier.preferences (user_id, event, email) VALUES"
            " (%s, 'webhook.disabled', true)",
            (user,),
        )
        await add_outbox(conn, user, await add_event(conn), hook)
        sender = EmailSender("127.0.0.1", port, "notifier@discogsography.example")
        async with running(pg_url, channels={"email": sender}):
            await wait_until(lambda: inbox.messages, "the mail")
    rcpts, raw = inbox.messages[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert rcpts == ["fan@example.org"] and len(inbox.messages) == 1
    assert msg["Subject"].startswith("[Discogsography] webhook.disabled")
    text = msg.get_content()
    assert str(hook) in text and r.url in text and "410" in text
    feed = await rows(
        pg_url,
        "SELECT e.event, e.detail->>'endpoint_id' FROM notifier.notification_events n"
        " JOIN notifier.events e ON e.id = n.event_id WHERE n.user_id = %s",
        user,
    )
    assert feed == [("webhook.disabled", str(hook))]
