"""`notifier dev`: the whole pipeline on a laptop, with nothing to configure.

1. Starts throwaway PostgreSQL and a Bolt graph (Neo4j where Java and Maven
   are there, ArcadeDB otherwise) through `notifier.devkit.services` (the module the
   tests use), unless `POSTGRES_HOST` or `NEO4J_HOST` point at running ones.
   RabbitMQ only with `NOTIFIER_TRIGGER=amqp`: the default here is the graph
   latch, as Discogsography writes it today.
2. Migrates, seeds a small Discogsography-shaped graph, two demo users with
   watches, and a local webhook receiver that verifies every signature.
3. Runs every role in this process (`notifier all`), completes the import's
   latch in the graph as graphinator does (the baseline cycle), adds
   releases, aliases and members to the graph, and completes the next version.
4. Prints, live, the notifications appearing in the demo users' feeds and the
   signed webhooks arriving, and a `curl` line with a valid demo token.

Ctrl-C (or SIGTERM) stops the roles, then every service it started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import jwt
import psycopg
import uvicorn
from neo4j import AsyncDriver, AsyncGraphDatabase
from neo4j.exceptions import Neo4jError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier import config, db, lifecycle, logs, secretbox, signing
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder, platform_schema

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
NAMES = {ALICE: "alice", BOB: "bob"}
FIRST_VERSION, SECOND_VERSION = "20260101", "20260201"

Say = Callable[[str], None]


def say(line: str) -> None:
    """Print one line of the demo's narration, at once."""
    print(line, flush=True)


# --------------------------------------------------------------------------- sample data


def first_import() -> GraphBuilder:
    """The graph as the first (baseline) import leaves it (written as graphinator writes)."""
    g = GraphBuilder(platform=True)
    g.artist("1", "John Coltrane").artist("2", "Alice Coltrane").artist("3", "Miles Davis")
    g.artist("4", "John Coltrane Quartet").member("1", "4")
    g.label("10", "Impulse!").label("11", "Impulse! Jazz Classics", parent="10")
    g.label("12", "Blue Note").style("Modal", genre="Jazz").style("Hard Bop", genre="Jazz")
    releases = [
        ("100", "A Love Supreme", 1965, ["1", "4"], ["10"], ["Modal"]),
        ("101", "Ballads", 1963, ["1"], ["10"], ["Modal"]),
        ("102", "Blue Train", 1957, ["1"], ["12"], ["Hard Bop"]),
        ("103", "Journey in Satchidananda", 1971, ["2"], ["10"], ["Modal"]),
        ("104", "Kind of Blue", 1959, ["3"], ["12"], ["Modal"]),
    ]
    return _add_releases(g, releases, formats=["Vinyl", "LP"])


def second_import() -> GraphBuilder:
    """What the next monthly import adds."""
    g = GraphBuilder(platform=True)
    g.artist("5", "Trane").alias("5", "1").artist("6", "McCoy Tyner").member("6", "4")
    releases = [
        ("200", "Live at Birdland", 1964, ["1", "4"], ["11"], ["Modal"]),
        ("201", "A Love Supreme: Live in Seattle", 2021, ["1"], ["10"], ["Modal"]),
        ("202", "Ptah, the El Daoud", 1970, ["2"], ["10"], ["Modal"]),
    ]
    return _add_releases(g, releases)


# A demo release: id, title, year, artist ids, label ids, styles (genre Jazz).
Release = tuple[str, str, int, list[str], list[str], list[str]]


def _add_releases(
    g: GraphBuilder, releases: list[Release], formats: list[str] | None = None
) -> GraphBuilder:
    """`g` with `releases` added."""
    for rid, title, year, artists, labels, styles in releases:
        g.release(
            rid, title, year=year, formats=formats, artists=artists, labels=labels,
            genres=["Jazz"], styles=styles,
        )  # fmt: skip
    return g


WATCHES: list[tuple[uuid.UUID, str, str, dict[str, Any]]] = [
    (ALICE, "artist", "1", {}),
    (ALICE, "label", "10", {}),
    (ALICE, "search", "search:demo-love", {"q": "love supreme"}),
    (BOB, "artist", "4", {}),
    (BOB, "artist", "2", {}),
    (BOB, "style", "Modal", {"threshold": 6}),
]
ENTITY_NAMES = {
    "1": "John Coltrane",
    "10": "Impulse!",
    "4": "John Coltrane Quartet",
    "2": "Alice Coltrane",
    "Modal": "Modal",
    "search:demo-love": "q=love supreme",
}


def demo_token(settings: config.Settings, user: uuid.UUID) -> str:
    """A 30-day HS256 access token for a demo user."""
    exp = datetime.now(UTC) + timedelta(days=30)
    return jwt.encode({"sub": str(user), "exp": exp}, settings.jwt_secret_key, algorithm="HS256")


# --------------------------------------------------------------------------- services


@contextlib.contextmanager
def backing_services(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fill `env` with throwaway services for whatever is not configured."""
    with contextlib.ExitStack() as stack:
        if not os.environ.get("POSTGRES_HOST"):
            say("starting PostgreSQL …")
            pg = stack.enter_context(services.postgres())
            database = "notifier_dev"
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                if not conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone():
                    conn.execute(f'CREATE DATABASE "{database}"')
            env.update(
                POSTGRES_HOST=pg.host,
                POSTGRES_PORT=str(pg.port),
                POSTGRES_USERNAME=pg.user,
                POSTGRES_PASSWORD=pg.password or "dev",
                POSTGRES_DATABASE=database,
            )
        amqp = "amqp" in env.get("NOTIFIER_TRIGGER", "amqp")
        if amqp and not os.environ.get("RABBITMQ_HOST"):
            say("starting RabbitMQ …")
            mq = stack.enter_context(services.rabbitmq())
            env.update(
                RABBITMQ_HOST=mq.host,
                RABBITMQ_PORT=str(mq.port),
                RABBITMQ_USERNAME=mq.user,
                RABBITMQ_PASSWORD=mq.password,
                RABBITMQ_VHOST=mq.vhost,
            )
        if not os.environ.get("NEO4J_HOST"):
            say("starting the graph (Neo4j from Maven Central, else ArcadeDB) …")
            graph = stack.enter_context(services.graph())
            database = graph.new_database()
            say(f"graph: {services.describe_graph(graph)}")
            env.update(
                NEO4J_HOST=graph.host,
                NEO4J_PORT=str(graph.port),
                NEO4J_USERNAME=graph.user,
                NEO4J_PASSWORD=graph.password,
                NEO4J_DATABASE=database,
            )
        yield env


def dev_environment() -> dict[str, str]:
    """The defaults `notifier dev` runs with (the caller's environment wins)."""
    env = dict(os.environ)
    env.setdefault("JWT_SECRET_KEY", secrets.token_urlsafe(32))
    env.setdefault("NOTIFIER_SERVICE_TOKEN", secrets.token_urlsafe(24))
    env.setdefault("NOTIFIER_ENCRYPTION_KEY", secretbox.new_key())
    env.setdefault("NOTIFIER_WEBHOOK_ALLOW_PRIVATE", "true")
    env.setdefault("NOTIFIER_REPLICA", "dev")
    env.setdefault("LOG_LEVEL", "WARNING")
    # The platform's own completion signal today (contract §3a), polled each second.
    env.setdefault("NOTIFIER_TRIGGER", "graph")
    env.setdefault("NOTIFIER_GRAPH_POLL_SECONDS", "1")
    if "NOTIFIER_PORT" not in env and not _port_free(8010):
        env["NOTIFIER_PORT"] = str(services.free_port())
    return env


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# --------------------------------------------------------------------------- demo


class Receiver:
    """A local webhook receiver that verifies both signatures of every request."""

    def __init__(self, secret: str, out: Say) -> None:
        self.secret, self.out, self.received = secret, out, 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        """Verify, print, answer 204."""
        body = await request.body()
        ok = signing.verify_discogsography(
            self.secret,
            request.headers.get("x-discogsography-signature", ""),
            body,
            now=int(time.time()),
        )
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        self.received += 1
        mark = "signature verified" if ok else "BAD SIGNATURE"
        self.out(
            f"  webhook → alice: {doc.get('event')} {doc.get('entity_type')} "
            f"{doc.get('entity_name')!r} {_summary(doc.get('detail'))} "
            f"[webhook-id {request.headers.get('webhook-id')}, {mark}]"
        )
        return Response(status_code=204 if ok else 400)


def _summary(detail: Any) -> str:
    from notifier.client import summarize

    text = summarize(detail)
    return f"({text})" if text else ""


async def _seed_postgres(settings: config.Settings, hook_url: str, secret: str) -> None:
    async with await psycopg.AsyncConnection.connect(settings.postgres_conninfo) as conn:
        for user, entity_type, entity_id, options in WATCHES:
            await conn.execute(
                "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, "
                "options, created_at) VALUES (%s, %s, %s, %s, %s, now() - interval '1 hour') "
                "ON CONFLICT (user_id, entity_type, entity_id) DO NOTHING",
                (user, entity_type, entity_id, ENTITY_NAMES[entity_id], json.dumps(options)),
            )
        # Alice's endpoints (several are allowed since sql/010): point them all
        # here, or make her first one. Each secret is sealed with its row's id.
        keys = secretbox.from_settings(settings.encryption_key, settings.encryption_key_previous)
        if keys is None:
            raise config.ConfigError("NOTIFIER_ENCRYPTION_KEY: required by `notifier dev`")
        cur = await conn.execute(
            "SELECT id FROM notifier.webhook_configs WHERE user_id = %s", (ALICE,)
        )
        hooks = [row[0] for row in await cur.fetchall()]
        if not hooks:
            hooks = [uuid.uuid4()]
            await conn.execute(
                "INSERT INTO notifier.webhook_configs (id, user_id, url, secret_enc) "
                "VALUES (%s, %s, %s, %s)",
                (hooks[0], ALICE, hook_url, keys.encrypt(secret, hooks[0])),
            )
        for hook in hooks:
            await conn.execute(
                "UPDATE notifier.webhook_configs SET url = %s, secret = NULL, secret_enc = %s, "
                "previous_secret = NULL, previous_secret_enc = NULL, public_key = NULL, "
                "active = true, disabled_reason = NULL WHERE id = %s",
                (hook_url, keys.encrypt(secret, hook), hook),
            )
        await conn.commit()


async def _complete(
    settings: config.Settings, graph: AsyncDriver, version: str, stop: asyncio.Event, out: Say
) -> None:
    """Tell the router `version` is complete the way the trigger listens for."""
    if "graph" in settings.trigger:
        # One signal per data type, as graphinator records them after each flush.
        signals: list[str] = []
        for data_type in settings.graph_signals:
            signals.append(data_type)
            await GraphBuilder.latch(graph, settings.neo4j_database, version, signals)
        out(f"  latch   → (:ExtractionCompletion {{version: {version!r}, signals: {signals}}})")
    else:
        await _publish(settings, version, stop)


async def _publish(settings: config.Settings, version: str, stop: asyncio.Event) -> None:
    """Publish every required service's completion, once the router's queue is bound."""
    from notifier.router import amqp_url, queue_names

    queue = queue_names(settings.completion_exchange)[0]
    conn = await aio_pika.connect_robust(amqp_url(settings))
    async with conn:
        # A fanout exchange drops what no queue is bound to: wait for the router's.
        while not stop.is_set():
            probe = await conn.channel()
            try:
                await probe.declare_queue(queue, passive=True)
                break
            except aio_pika.exceptions.ChannelClosed:
                await asyncio.sleep(0.2)
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            settings.completion_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        for service in settings.required_services:
            body = {
                "type": "import_completed",
                "service": service,
                "version": version,
                "completed_at": datetime.now(UTC).isoformat(),
            }
            await exchange.publish(
                aio_pika.Message(
                    json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key="",
            )


async def _cycle_done(settings: config.Settings, version: str, stop: asyncio.Event) -> bool:
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_conninfo, autocommit=True
    ) as c:
        while not stop.is_set():
            cur = await c.execute(
                "SELECT status FROM notifier.cycles WHERE version = %s", (version,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] in ("done", "failed"):
                return bool(row[0] == "done")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    return False


async def _print_feed(settings: config.Settings, out: Say, stop: asyncio.Event) -> None:
    """Print each demo user's new feed rows as fan-out announces them."""
    from notifier.fanout import FEED_CHANNEL

    async with await psycopg.AsyncConnection.connect(
        settings.postgres_conninfo, autocommit=True
    ) as c:
        await c.execute(f"LISTEN {FEED_CHANNEL}")
        reader = await psycopg.AsyncConnection.connect(settings.postgres_conninfo, autocommit=True)
        async with reader:
            while not stop.is_set():
                async for note in c.notifies(timeout=0.5, stop_after=1):
                    await _print_event(reader, json.loads(note.payload)["event_id"], out)


async def _print_event(reader: psycopg.AsyncConnection[Any], event_id: str, out: Say) -> None:
    cur = await reader.execute(
        "SELECT n.user_id, e.event, e.entity_type, e.entity_name, e.detail "
        "FROM notifier.notification_events n JOIN notifier.events e ON e.id = n.event_id "
        "WHERE n.event_id = %s AND n.user_id = ANY(%s)",
        (event_id, list(NAMES)),
    )
    for user, event, etype, name, detail in await cur.fetchall():
        out(f"  feed    → {NAMES[user]}: {event} {etype} {name!r} {_summary(detail)}")


async def _platform_schema(graph: AsyncDriver, database: str) -> None:
    """schema-init's constraints and indexes; ArcadeDB takes all but the FULLTEXT ones."""
    try:
        await platform_schema(graph, database)
    except Neo4jError:
        await platform_schema(graph, database, neo4j=False)


async def demo(
    settings: config.Settings, stop: asyncio.Event, out: Say = say, *, started_graph: bool = True
) -> int:
    """Run the demo until `stop` is set; return the exit code."""
    from notifier import all as all_roles

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret, out)
    hook_port = services.free_port()
    hook = lifecycle.QuietServer(
        uvicorn.Config(
            receiver.app, host="127.0.0.1", port=hook_port, log_level="warning", lifespan="off"
        )
    )
    tasks = [asyncio.create_task(hook.serve(), name="receiver")]

    db.migrate(settings.postgres_conninfo)
    graph = AsyncGraphDatabase.driver(
        settings.neo4j_uri, auth=(settings.neo4j_username, settings.neo4j_password)
    )
    try:
        if started_graph:
            await _platform_schema(graph, settings.neo4j_database)
        await first_import().write(graph, settings.neo4j_database)
        await _seed_postgres(settings, f"http://127.0.0.1:{hook_port}/hook", secret)
        tasks.append(asyncio.create_task(all_roles.serve(settings, stop), name="roles"))
        tasks.append(asyncio.create_task(_print_feed(settings, out, stop), name="feed"))

        out(f"\nimport {FIRST_VERSION} completed: the baseline (no notifications expected)")
        await _complete(settings, graph, FIRST_VERSION, stop, out)
        if await _cycle_done(settings, FIRST_VERSION, stop):
            out(f"import {SECOND_VERSION}: adding releases, an alias and a member …")
            await second_import().write(graph, settings.neo4j_database)
            await _complete(settings, graph, SECOND_VERSION, stop, out)
            if await _cycle_done(settings, SECOND_VERSION, stop):
                out(f"cycle {SECOND_VERSION} done")
        base = f"http://127.0.0.1:{settings.port}"
        out("\nThe feed, as alice:")
        out(
            f"  curl -H 'Authorization: Bearer {demo_token(settings, ALICE)}' "
            f"{base}/api/notifications"
        )
        out(f"  live: curl -N -H 'Authorization: Bearer …' {base}/api/notifications/stream")
        out("Ctrl-C stops everything.")
        await stop.wait()
    finally:
        stop.set()
        hook.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await graph.close()
    return 0


def main(_: config.Settings) -> int:
    """Entry point of `notifier dev`."""
    env = dev_environment()
    try:
        with backing_services(env):
            settings = config.load(env, role="all")
            logs.setup(settings.log_level, "dev", settings.replica)

            # A graph of the caller's (NEO4J_HOST) has the platform's schema already.
            started = not os.environ.get("NEO4J_HOST")
            code = lifecycle.run("dev", lambda stop: demo(settings, stop, started_graph=started))
    except services.ServiceUnavailable as exc:
        print(f"notifier dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    say("stopped; every service this command started is gone")
    return code
