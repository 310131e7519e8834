"""End-to-end cycle: completion messages in, feed rows and delivered webhooks out.

    uv run python -m bench.cycle [--scale tiny|small|full]

The real processes, started through the CLI: `notifier router`, `notifier
delivery` and `notifier api`, on PostgreSQL, RabbitMQ and the Bolt graph of
`notifier.devkit.services`. Every webhook points at one fast loopback receiver (the
one of `bench.delivery_rate`).

The data, at `full` scale: 100k users with 10 watches each (1M watches) over
200k watched entities: 60% artists, 40% labels, 0.15% genres and styles
(each tag watched by many users: one watch in 20 is a tag). Every artist and
tag has one release in the first import; 20% of the users have a webhook.

1. The graph of import `v1` is written with `GraphBuilder` (node keys
   indexed first, as `bench.diff_rate` does), the watches and webhooks are
   seeded in PostgreSQL with `INSERT … SELECT generate_series`, the processes
   start, and `v1` is signalled: its cycle records the baseline (untimed).
2. Import `v2` adds a new release to 10% of the watched entities (every
   entity whose number ends in 0): one per artist (on a changed label), one
   per label not reached that way, three per tag (staying under the first
   release-count milestone, so a tag yields exactly one `notable_releases`).
3. Both completion messages of `v2` are published (contract §3), and the
   clock runs from the last one (PostgreSQL's clock, like every end time):
   - feed complete: the cycle is `done` (a unit commits its feed rows before
     the cycle can be marked done) and the feed rows of `v2` number exactly
     the watches of the changed entities; unread counts read back through
     the API match;
   - webhooks delivered: every outbox row is `delivered` (the last
     `delivered_at`), and there are exactly as many as those watches by users
     with a webhook.
Peak RSS of the three processes comes from /proc at the end (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import jwt
import psycopg
from neo4j import AsyncGraphDatabase

from bench.core import SCALES, Context, Figure, cpu_seconds, peak_rss_mb, table, timer
from bench.delivery_rate import receiver
from bench.diff_rate import drop_constraints, index_keys
from notifier import secretbox
from notifier.config import Settings
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder
from notifier.router import queue_names

JWT_KEY = "bench-cycle-jwt-key-bench-cycle-jwt-key"
REQUIRED = ("graphinator", "tableinator")
# The router's default (two units at a time per process), said explicitly.
ROUTER_WORKERS = Settings.__dataclass_fields__["router_workers"].default
NEW_RELEASE = 10**9  # ids of v2's releases start here (v1's are below)
TAG_RELEASE = 10**8  # ids of the tags' own releases
CHUNK = 20_000  # graph nodes built and written per GraphBuilder

# The watches: `per` slots per user; the last slot of every other user is a
# tag, the others walk the artists then labels in order (row_number over the
# non-tag slots), so every artist and label gets the same number of watchers
# and a user's watches are distinct. Created a day ago: before any cycle.
WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, created_at)
SELECT md5('bench-user-' || u)::uuid, t, i, t || ' ' || i, now() - interval '1 day'
FROM (
    SELECT u, CASE WHEN tag AND e < %(genres)s THEN 'genre' WHEN tag THEN 'style'
                   WHEN e < %(artists)s THEN 'artist' ELSE 'label' END AS t,
              CASE WHEN tag AND e < %(genres)s THEN 'Genre ' || e
                   WHEN tag THEN 'Style ' || e
                   WHEN e < %(artists)s THEN (e + 1)::text
                   ELSE (e - %(artists)s + 1)::text END AS i
    FROM (
        SELECT u, tag, CASE WHEN tag THEN (u / 2) %% %(tags)s
                            ELSE (row_number() OVER (PARTITION BY tag ORDER BY u, k) - 1)
                                 %% (%(artists)s + %(labels)s) END AS e
        FROM (SELECT u, k, (k = %(per)s - 1 AND u %% 2 = 0) AS tag
              FROM generate_series(0, %(users)s - 1) AS u,
                   generate_series(0, %(per)s - 1) AS k) AS slots
    ) AS numbered
) AS w
"""
# One user in five has a webhook, all pointing at the receiver.
WEBHOOKS = """
INSERT INTO notifier.webhook_configs (user_id, url, secret)
SELECT md5('bench-user-' || u)::uuid, %(url)s,
       'whsec_' || encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64')
FROM generate_series(0, %(users)s - 1, 5) AS u
"""
# What v2 must produce: one event per changed entity (its number ends in 0),
# one feed row per watch of it, one outbox row per such watch with a webhook.
# A scan of watchlists, once, before the clock starts.
EXPECTED = """
SELECT count(*),
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM notifier.webhook_configs h
                                      WHERE h.user_id = w.user_id)),
       count(DISTINCT (entity_type, entity_id)),
       (SELECT count(DISTINCT (entity_type, entity_id)) FROM notifier.watchlists)
FROM notifier.watchlists w
WHERE substring(entity_id FROM '[0-9]+$')::bigint % 10 = 0
"""
# Primary key of cycles.
CYCLE = "SELECT status, finished_at, stats FROM notifier.cycles WHERE version = %s"
# events_version… scan by version, then notification_events by event (the
# join runs once, after the cycle is done).
FEED_ROWS = """
SELECT count(*) FROM notifier.notification_events n
JOIN notifier.events e ON e.id = n.event_id WHERE e.version = %s
"""
# A whole-table aggregate, polled every half second while webhooks go out.
OUTBOX = """
SELECT count(*) FILTER (WHERE status = 'delivered'), count(*), max(delivered_at)
FROM notifier.outbox
"""
# Where cycle v2 spent its time, per unit type (the runner's own stats; the
# releases unit records no timings: its span runs from the firing to its end).
# diff_units_version_type_seq_key prefix (version).
SPLIT = """
SELECT u.entity_type, count(*), sum((u.stats ->> 'graph_ms')::int)::bigint,
       sum((u.stats ->> 'diff_ms')::int)::bigint, sum((u.stats ->> 'unit_ms')::int)::bigint,
       round(extract(epoch FROM max(u.finished_at) - c.fired_at)::numeric, 1),
       round(extract(epoch FROM c.fired_at - %(start)s)::numeric, 2)
FROM notifier.diff_units u JOIN notifier.cycles c ON c.version = u.version
WHERE u.version = %(version)s GROUP BY u.entity_type, c.fired_at
"""
# Sample users' v2 feed rows, to compare with their unread count via the API.
SAMPLE = """
SELECT n.user_id, count(*) FROM notifier.notification_events n
JOIN notifier.events e ON e.id = n.event_id
WHERE e.version = %s GROUP BY n.user_id ORDER BY n.user_id LIMIT 20
"""


@dataclass(frozen=True)
class Plan:
    """How many of each entity, derived from the scale's sizes (pure)."""

    users: int
    per_user: int
    artists: int
    labels: int
    genres: int
    styles: int

    @classmethod
    def of(cls, users: int, watches: int, entities: int) -> Plan:
        """Split `entities` into artists, labels, genres and styles."""
        tags = max(2, round(entities * 0.0015))
        genres = max(1, tags // 20)
        artists = (entities - tags) * 3 // 5
        labels = entities - tags - artists
        return cls(users, max(2, watches // users), artists, labels, genres, tags - genres)

    @property
    def tags(self) -> int:
        """Genres and styles together (tag number n < genres is a genre)."""
        return self.genres + self.styles

    def tag_name(self, n: int) -> str:
        """The name of tag number n (the number in it decides whether it changes)."""
        return f"Genre {n}" if n < self.genres else f"Style {n}"

    def changed_label(self, artist: int) -> int:
        """The changed label (a multiple of 10) that a changed artist's new release is on."""
        return 10 * (1 + (artist // 10 - 1) % max(1, self.labels // 10))


def graph_v1(plan: Plan) -> Iterator[GraphBuilder]:
    """The first import, in chunks: labels, then artists with one release each, then tags."""
    for lo in range(1, plan.labels + 1, CHUNK):
        g = GraphBuilder()
        for n in range(lo, min(lo + CHUNK, plan.labels + 1)):
            g.label(str(n), f"Label {n}")
        yield g
    for lo in range(1, plan.artists + 1, CHUNK):
        g = GraphBuilder()
        for n in range(lo, min(lo + CHUNK, plan.artists + 1)):
            label = str((n - 1) % plan.labels + 1)
            g.artist(str(n), f"Artist {n}").release(str(n), artists=[str(n)], labels=[label])
        yield g
    g = GraphBuilder()
    for n in range(plan.tags):
        name, rid = plan.tag_name(n), str(TAG_RELEASE + 10 * n)
        if n < plan.genres:
            g.release(rid, genres=[name])
        else:
            g.style(name, genre=plan.tag_name(n % plan.genres)).release(rid, styles=[name])
    yield g


def graph_v2(plan: Plan) -> GraphBuilder:
    """The second import: new releases for every entity whose number ends in 0."""
    g = GraphBuilder()
    reached = set()
    for n in range(10, plan.artists + 1, 10):
        label = plan.changed_label(n)
        g.release(str(NEW_RELEASE + n), artists=[str(n)], labels=[str(label)])
        reached.add(label)
    for n in range(10, plan.labels + 1, 10):
        if n not in reached:
            g.release(str(NEW_RELEASE + 5_000_000 + n), labels=[str(n)])
    for n in range(0, plan.tags, 10):
        name = plan.tag_name(n)
        for k in range(1, 4):  # 1 + 3 releases: under the first milestone (100)
            rid = str(TAG_RELEASE + 10 * n + k)
            g.release(rid, genres=[name]) if n < plan.genres else g.release(rid, styles=[name])
    return g


def _env(ctx: Context, url: str, database: str, exchange: str) -> dict[str, str]:
    """Contract §2 variables for our services (like bench.delivery_rate builds them)."""
    pg, graph, rabbit = ctx.pg, ctx.graph(), ctx.rabbit()
    prefixes = ("POSTGRES_", "NEO4J_", "RABBITMQ_", "NOTIFIER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        POSTGRES_HOST=pg.host, POSTGRES_PORT=str(pg.port), POSTGRES_USERNAME=pg.user,
        POSTGRES_PASSWORD=pg.password or "trust", POSTGRES_DATABASE=url.rsplit("/", 1)[1],
        NEO4J_HOST=graph.host, NEO4J_PORT=str(graph.port), NEO4J_USERNAME=graph.user,
        NEO4J_PASSWORD=graph.password, NEO4J_DATABASE=database,
        RABBITMQ_HOST=rabbit.host, RABBITMQ_PORT=str(rabbit.port),
        RABBITMQ_USERNAME=rabbit.user, RABBITMQ_PASSWORD=rabbit.password,
        RABBITMQ_VHOST=rabbit.vhost, NOTIFIER_COMPLETION_EXCHANGE=exchange,
        NOTIFIER_REQUIRED_SERVICES=",".join(REQUIRED), JWT_SECRET_KEY=JWT_KEY,
        NOTIFIER_WEBHOOK_ALLOW_PRIVATE="true", NOTIFIER_API_RATE_LIMIT="0",
        NOTIFIER_ROUTER_WORKERS=str(ROUTER_WORKERS), LOG_LEVEL="WARNING",
        NOTIFIER_ENCRYPTION_KEY=secretbox.new_key(),
    )  # fmt: skip
    return env


class Processes:
    """`notifier router`, `delivery` and `api`, each on its own port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        for role in ("router", "delivery", "api"):
            self.ports[role] = services.free_port()
            self.procs[role] = subprocess.Popen(  # noqa: S603 - our interpreter and CLI
                [sys.executable, "-m", "notifier.cli", role],
                env=dict(env, NOTIFIER_PORT=str(self.ports[role])),
            )

    def url(self, role: str) -> str:
        """The HTTP origin of a role."""
        return f"http://127.0.0.1:{self.ports[role]}"

    def check(self) -> None:
        """Raise if a process has exited."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"notifier {role} exited with {proc.returncode}")

    async def healthy(self, limit: float = 120) -> None:
        """Wait for every role's /health to answer 200."""
        deadline = time.monotonic() + limit
        async with httpx.AsyncClient(timeout=5) as client:
            for role in self.procs:
                while True:
                    self.check()
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(self.url(role) + "/health")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"notifier {role} did not become healthy")
                    await asyncio.sleep(0.1)

    def usage(self) -> dict[str, tuple[float, float]]:
        """(peak RSS MB, CPU seconds) of each role, while it still runs."""
        return {r: (peak_rss_mb(p.pid), cpu_seconds(p.pid)) for r, p in self.procs.items()}

    def stop(self) -> None:
        """SIGTERM each, then wait."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _progress(what: str) -> None:
    print(f"  cycle: {what}", file=sys.stderr, flush=True)


async def _publish(rabbit: services.RabbitService, exchange: str, version: str) -> None:
    """Both required services' completion messages (contract §3), persistent, confirmed."""
    conn = await aio_pika.connect(rabbit.url)
    try:
        channel = await conn.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        for service in REQUIRED:
            body = {"type": "import_completed", "service": service, "version": version,
                    "completed_at": datetime.now(UTC).isoformat()}  # fmt: skip
            msg = aio_pika.Message(
                json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await ex.publish(msg, routing_key="")
    finally:
        await conn.close()


async def _cleanup_broker(rabbit: services.RabbitService, exchange: str) -> None:
    """Delete the run's exchange and the router's queues (the broker may be shared)."""
    queue, dlx, dlq = queue_names(exchange)
    conn = await aio_pika.connect(rabbit.url)
    try:
        channel = await conn.channel()
        for q in (queue, dlq):
            await channel.queue_delete(q)
        for ex in (exchange, dlx):
            await channel.exchange_delete(ex)
    finally:
        await conn.close()


async def _until(
    conn: psycopg.AsyncConnection[Any],
    procs: Processes,
    sql: str,
    params: tuple[Any, ...],
    done: Any,
    limit: float,
    what: str,
    every: float = 0.2,
    poke: Any = None,
) -> tuple[Any, ...]:
    """Poll `sql` until `done(row)`; fail after `limit` s or when a process exits."""
    deadline = time.monotonic() + limit
    while True:
        row = await (await conn.execute(sql, params)).fetchone()
        if row is not None and done(row):
            return tuple(row)
        procs.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:.0f} s waiting for {what} ({row})")
        if poke is not None:
            await poke()
        await asyncio.sleep(every)


async def measure(ctx: Context) -> dict[str, Any]:
    """Build, seed, run both cycles; the timings, counts and process usage."""
    plan = Plan.of(ctx.sizes["cycle_users"], ctx.sizes["cycle_watches"],
                   ctx.sizes["cycle_entities"])  # fmt: skip
    svc, rabbit = ctx.graph(), ctx.rabbit()
    database = svc.new_database()
    url = ctx.fresh_database()
    exchange = f"bench.import.completed.{uuid.uuid4().hex[:10]}"
    out: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    driver = AsyncGraphDatabase.driver(svc.uri, auth=(svc.user, svc.password))
    procs: Processes | None = None
    created: list[str] = []
    try:
        created = index_keys(svc, database)
        with timer() as took:
            for chunk in graph_v1(plan):
                await chunk.write(driver, database)
        out["graph_v1_s"] = round(took(), 1)
        _progress(f"graph v1 written in {took():.0f} s")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with receiver() as hook_url, timer() as took:
                await conn.execute(WATCHES, {
                    "users": plan.users, "per": plan.per_user, "tags": plan.tags,
                    "genres": plan.genres, "artists": plan.artists, "labels": plan.labels,
                })  # fmt: skip
                await conn.execute(WEBHOOKS, {"users": plan.users, "url": hook_url})
                await conn.execute("VACUUM ANALYZE notifier.watchlists, notifier.webhook_configs")
                row = await (await conn.execute(EXPECTED)).fetchone()
                assert row is not None
                feed_expected, hooks_expected, changed, entities = row
                out.update(seed_s=round(took(), 1), expected_feed_rows=feed_expected,
                           expected_webhooks=hooks_expected, changed_entities=changed,
                           watched_entities=entities)  # fmt: skip
                procs = Processes(_env(ctx, url, database, exchange))
                await procs.healthy()
                out.update(await _cycles(ctx, conn, procs, plan, driver, database, exchange))
                out["usage"] = procs.usage()
                if (out["feed_rows"], out["webhooks"]) != (feed_expected, hooks_expected):
                    raise RuntimeError(
                        f"cycle v2 wrote {out['feed_rows']} feed rows and {out['webhooks']} "
                        f"webhooks; expected {feed_expected} and {hooks_expected}"
                    )
    finally:
        if procs is not None:
            procs.stop()
        await driver.close()
        drop_constraints(svc, database, created)
        svc.drop_database(database)
        with contextlib.suppress(Exception):
            await _cleanup_broker(rabbit, exchange)
        with psycopg.connect(ctx.pg.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    out.update(users=plan.users, watches=plan.users * plan.per_user, artists=plan.artists,
               labels=plan.labels, genres=plan.genres, styles=plan.styles,
               router_workers=ROUTER_WORKERS)  # fmt: skip
    return out


def _token(sub: str, *, hours: float) -> str:
    """A bearer token for user `sub`, valid for `hours`."""
    exp = datetime.now(UTC) + timedelta(hours=hours)
    return jwt.encode({"sub": sub, "exp": exp}, JWT_KEY, algorithm="HS256")


async def _cycles(
    ctx: Context,
    conn: psycopg.AsyncConnection[Any],
    procs: Processes,
    plan: Plan,
    driver: Any,
    database: str,
    exchange: str,
) -> dict[str, Any]:
    """The baseline cycle (v1), then the measured one (v2)."""
    limit = {"tiny": 300.0, "small": 900.0}.get(ctx.scale, 3600.0)
    is_done = lambda r: r[0] == "done"  # noqa: E731
    out: dict[str, Any] = {}
    with timer() as took:
        await _publish(ctx.rabbit(), exchange, "v1")
        await _until(conn, procs, CYCLE, ("v1",), is_done, limit, "the baseline cycle")
    out["baseline_cycle_s"] = round(took(), 1)
    _progress(f"baseline cycle done in {took():.0f} s")
    with timer() as took:
        await graph_v2(plan).write(driver, database)
    out["graph_v2_s"] = round(took(), 1)

    # The API answers a few users' unread counts all along (and must agree at the end).
    sub = str(uuid.UUID(bytes=bytes(16)))
    token = _token(sub, hours=2)
    api = httpx.AsyncClient(base_url=procs.url("api"), timeout=30)

    async def unread(token: str) -> httpx.Response:
        return await api.get("/api/notifications/unread-count",
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    async def poke() -> None:
        (await unread(token)).raise_for_status()

    try:
        (start,) = await (await conn.execute("SELECT clock_timestamp()")).fetchone()  # type: ignore[misc]
        await _publish(ctx.rabbit(), exchange, "v2")
        _, finished, stats = await _until(conn, procs, CYCLE, ("v2",), is_done, limit,
                                          "cycle v2", poke=poke)  # fmt: skip
        out["feed_s"] = (finished - start).total_seconds()
        (out["feed_rows"],) = await (await conn.execute(FEED_ROWS, ("v2",))).fetchone()  # type: ignore[misc]
        keep = ("events", "feed_rows", "outbox_rows", "units", "entities", "new_releases")
        out["cycle_stats"] = {k: stats.get(k) for k in keep}
        split = await (await conn.execute(SPLIT, {"version": "v2", "start": start})).fetchall()
        out["fired_after_s"] = float(split[0][6]) if split else None
        # per unit type: units, graph ms, diff ms, unit ms up to the write (summed),
        # s from firing to the last
        out["units_v2"] = {r[0]: [r[1], r[2], r[3], r[4], float(r[5])] for r in split}
        _progress(f"feed complete after {out['feed_s']:.1f} s")
        _, total, last = await _until(
            conn, procs, OUTBOX, (), lambda r: r[0] == r[1], limit, "the webhooks", every=0.5
        )
        out["webhooks"] = total
        out["webhooks_s"] = (last - start).total_seconds() if last is not None else 0.0
        _progress(f"webhooks delivered after {out['webhooks_s']:.1f} s")
        mismatched = 0
        for user, rows in await (await conn.execute(SAMPLE, ("v2",))).fetchall():
            r = await unread(_token(str(user), hours=1))
            mismatched += r.json()["count"] != rows
        if mismatched:
            raise RuntimeError(f"{mismatched} sampled users' unread counts disagree with the feed")
    finally:
        await api.aclose()
    return out


async def cycle(ctx: Context) -> list[Figure]:
    """The figures: feed complete and webhooks delivered after the last message; peak RSS."""
    m = await measure(ctx)
    usage = m.pop("usage")
    notes = {k: v for k, v in m.items() if k not in ("feed_s", "webhooks_s")}
    notes["cpu_s"] = {role: round(cpu, 1) for role, (_, cpu) in usage.items()}
    figures = [
        Figure(name="cycle: feed complete", ours=m["feed_s"], unit="s", target="<= 120 s",
               passed=m["feed_s"] <= 120, notes=notes),
        Figure(name="cycle: webhooks delivered", ours=m["webhooks_s"], unit="s",
               target="<= 300 s", passed=m["webhooks_s"] <= 300,
               notes={"webhooks": m["webhooks"]}),
    ]  # fmt: skip
    for role, limit in (("router", 500), ("delivery", 200), ("api", 200)):
        rss = usage[role][0]
        figures.append(
            Figure(name=f"peak RSS: {role} (cycle)", ours=rss, unit="MB",
                   target=f"<= {limit} MB", passed=rss <= limit,
                   notes={"during": "the end-to-end cycle (baseline and measured)"})
        )  # fmt: skip
    return figures


def main() -> int:
    """Standalone: measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        ctx = Context(args.scale, SCALES[args.scale], pg, stack)
        figs = asyncio.run(cycle(ctx))
    print(table(figs))
    print(json.dumps(figs[0].notes, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
