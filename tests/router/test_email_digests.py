"""Email digests end to end: two routers run a cycle, two delivery loops mail it (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from neo4j import AsyncDriver

from notifier import config, cycles, fanout
from notifier.channels.email import EmailSender
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import Router
from tests.delivery.conftest import running
from tests.delivery.conftest import wait_until as wait_for
from tests.router.conftest import Publish, cycle_done, feed, q, signal_all, watch, write
from tests.smtp import Inbox

FROM = "notifier@discogsography.example"
PUBLIC = "https://discogsography.example/notifier"


@asynccontextmanager
async def routers(env: dict[str, str], n: int) -> AsyncIterator[list[Router]]:
    """`n` in-process routers with the email channel on, one diff unit per entity."""
    started: list[tuple[Router, asyncio.Task[int]]] = []
    for i in range(n):
        settings = config.load(
            dict(env, NOTIFIER_SMTP_HOST="127.0.0.1", NOTIFIER_SMTP_FROM=FROM,
                 NOTIFIER_ROUTER_UNIT_SIZE="1", NOTIFIER_REPLICA=f"r{i}"),
            "router",
        )  # fmt: skip
        r = Router(settings)
        started.append((r, asyncio.create_task(r.run(serve_http=False))))
        await asyncio.wait_for(r.ready.wait(), 60)
    try:
        yield [r for r, _ in started]
    finally:
        for r, task in started:
            r.stop.set()
            assert await asyncio.wait_for(task, 60) == 0


def _prefs(pg_url: str, user: uuid.UUID, **email_on: bool) -> None:
    for event, on in email_on.items():
        q(pg_url, "INSERT INTO notifier.preferences (user_id, event, email) VALUES (%s, %s, %s)",
          user, event, on)  # fmt: skip


def _first(g: GraphBuilder) -> None:
    g.artist("1", "John Coltrane").artist("2", "Miles Davis").label("10", "Blue Note")
    g.release("100", artists=["1"], labels=["10"]).release("200", artists=["2"])


def _second(g: GraphBuilder) -> None:
    for i in range(12):  # more than a digest lists for one event: "and 2 more"
        g.release(str(101 + i), artists=["1"], labels=["10"] if i < 3 else [])
    g.release("201", artists=["2"], labels=["10"])
    g.artist("6", "Trane").alias("6", "1")
    g.artist("7", "A Member").member("7", "1")


def _settled(pg_url: str) -> bool:
    left = q(
        pg_url,
        "SELECT (SELECT count(*) FROM notifier.email_digests"
        "        WHERE status = 'pending' OR claim_token IS NOT NULL)"
        "     + (SELECT count(*) FROM notifier.outbox WHERE channel = 'email'"
        "        AND (status = 'pending' OR claim_token IS NOT NULL))",
    )
    return left == [(0,)]


async def _deliver(pg_url: str, port: int) -> None:
    """Two delivery loops (two replicas' worth) until nothing is left to mail."""
    a = EmailSender("127.0.0.1", port, FROM, PUBLIC)
    b = EmailSender("127.0.0.1", port, FROM, PUBLIC)
    async with (
        running(pg_url, channels={"email": a}, schedule=(3600,)),
        running(pg_url, channels={"email": b}, schedule=(3600,)),
    ):
        await wait_for(lambda: _settled(pg_url), "every mail settled", limit=60)


async def _internal_event(pg_url: str, user: uuid.UUID) -> None:
    """An /internal/events event for `user`, fanned out as the API does."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event, entity_type, entity_id,"
            " entity_name, detail, recipients, recipient_count) VALUES (%s, 'internal',"
            " 'price_drop', 'release', '100', 'A Love Supreme', '{\"price\": 9}', %s, 1)"
            " RETURNING id",
            (uuid.uuid4().hex, [user]),
        )
        row = await cur.fetchone()
        assert row is not None
        await fanout.fan_out_to_users(conn, row[0], [user], email=True)


async def test_a_cycle_is_one_digest_a_user_sent_once(
    router_env: dict[str, str],
    publish: Publish,
    pg_url: str,
    graph_driver: AsyncDriver,
    graph_db: str,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    fan, other, quiet = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for entity_type, entity_id in (("artist", "1"), ("artist", "2"), ("label", "10")):
        watch(pg_url, fan, entity_type, entity_id)
    watch(pg_url, other, "artist", "2")
    watch(pg_url, quiet, "artist", "1")
    # new_members stays in the fan's feed but not in the mail.
    _prefs(pg_url, fan, new_releases=True, new_aliases=True, new_members=False, price_drop=True)
    _prefs(pg_url, other, new_releases=True)
    for user, address in ((fan, "fan@example.org"), (other, "other@example.org"),
                          (quiet, "quiet@example.org")):  # fmt: skip
        q(pg_url, "INSERT INTO notifier.user_emails (user_id, email) VALUES (%s, %s)",
          user, address)  # fmt: skip
    await write(graph_driver, graph_db, _first)
    async with routers(router_env, 2):
        await signal_all(publish, "v1")
        await cycle_done(pg_url, "v1")
        await write(graph_driver, graph_db, _second)
        await signal_all(publish, "v2")
        await cycle_done(pg_url, "v2")
    assert ("new_members", "1", "v2") in feed(pg_url, fan)
    # One digest a user with email on, none for the baseline; no outbox mail per event.
    digests = q(pg_url, "SELECT user_id, version, event_count FROM notifier.email_digests")
    assert sorted(digests) == sorted([(fan, "v2", 4), (other, "v2", 1)])
    assert q(pg_url, "SELECT count(*) FROM notifier.outbox WHERE channel = 'email'") == [(0,)]
    await _internal_event(pg_url, fan)
    await _deliver(pg_url, port)

    mails: dict[str, list[email.message.EmailMessage]] = {}
    for rcpts, raw in inbox.messages:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        mails.setdefault(rcpts[0], []).append(msg)
    assert sorted((k, len(v)) for k, v in mails.items()) == [
        ("fan@example.org", 2),  # the digest, and the internal event on its own
        ("other@example.org", 1),
    ]
    single = next(m for m in mails["fan@example.org"] if "price" in m["Subject"])
    digest = next(m for m in mails["fan@example.org"] if m is not single)
    assert "A Love Supreme" in single.get_content()
    assert digest["Subject"] == "[Discogsography] 4 updates in import v2"
    ((message_id,),) = q(
        pg_url, "SELECT message_id FROM notifier.email_digests WHERE user_id = %s", fan
    )
    assert digest["Message-ID"] == f"<{message_id}@notifier.discogsography>"
    text_part, html_part = digest.get_body(("plain",)), digest.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    # Grouped by watch: each entity once, its events beneath it.
    order = [text.index(h) for h in ("Artist: John Coltrane", "Artist: Miles Davis",
                                      "Label: Blue Note")]  # fmt: skip
    assert order == sorted(order)
    coltrane = text[order[0] : order[1]]
    assert "12 new releases: 101, 102" in coltrane and "and 2 more" in coltrane
    assert "new aliases: Trane (6)" in coltrane
    assert "members" not in text and "A Member" not in html  # email off for new_members
    assert "1 new release: 201" in text[order[1] : order[2]]
    assert "4 new releases: 101, 102, 103, 201" in text[order[2] :]
    assert f"{PUBLIC}/api/notifications" in text
    assert html.count('<h2 class="watch">') == 3
    assert f'href="{PUBLIC}/api/notifications"' in html
    assert 'href="https://www.discogs.com/label/10"' in html

    # A re-run of the whole cycle by two routers mails nothing more.
    q(pg_url, "UPDATE notifier.diff_units SET status = 'pending', claimed_by = NULL,"
              " lease_until = NULL WHERE version = 'v2'")  # fmt: skip
    q(pg_url, "UPDATE notifier.cycles SET status = 'running' WHERE version = 'v2'")
    async with routers(router_env, 2):
        await cycle_done(pg_url, "v2")
    assert q(pg_url, "SELECT count(*) FROM notifier.email_digests") == [(2,)]
    await _deliver(pg_url, port)
    assert len(inbox.messages) == 3
    assert q(pg_url, "SELECT status, attempts FROM notifier.email_digests") == [
        ("delivered", 1),
        ("delivered", 1),
    ]


async def test_a_digest_waits_for_every_unit_of_its_cycle(pg_url: str) -> None:
    user = uuid.uuid4()
    q(pg_url, "INSERT INTO notifier.cycles (version, required_services, status, fired_at)"
              " VALUES ('v7', '{}', 'running', now())")  # fmt: skip
    q(
        pg_url,
        "INSERT INTO notifier.diff_units (version, entity_type, seq, entity_ids, status)"
        " VALUES ('v7', 'artist', 1, '{1}', 'done'), ('v7', 'artist', 2, '{2}', 'pending')",
    )
    q(pg_url, "INSERT INTO notifier.email_digest_items (version, user_id, event_id)"
              " VALUES ('v7', %s, gen_random_uuid())", user)  # fmt: skip

    async def finish() -> list[tuple[object, ...]]:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await cycles.finish_cycles(conn)
        return q(pg_url, "SELECT user_id, event_count FROM notifier.email_digests")

    assert await finish() == []  # a unit is still pending: its events may be on their way
    q(pg_url, "UPDATE notifier.diff_units SET status = 'done' WHERE version = 'v7'")
    q(pg_url, "INSERT INTO notifier.email_digest_items (version, user_id, event_id)"
              " VALUES ('v7', %s, gen_random_uuid())", user)  # fmt: skip
    assert await finish() == [(user, 2)]
    q(pg_url, "UPDATE notifier.cycles SET status = 'running' WHERE version = 'v7'")
    assert await finish() == [(user, 2)]  # finishing again adds nothing
