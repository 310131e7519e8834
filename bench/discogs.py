"""One month on a Discogs-shaped graph: `uv run python -m bench.discogs --scale S`.

Scales: `discogs` (1/10 of the catalogue: 1.9M releases, 1M artists, 230k
labels, 250k masters; 1M users, 10M watches), `discogs-small` (1/100, the
same shape in a few minutes) and `tiny` (the test).

1. The graph (bench.discogs_graph): written into an empty Neo4j over Bolt
   (batched CREATE, the platform's constraints first, its other indexes
   after), then graphinator's latch for version v1.
2. The users, in PostgreSQL with INSERT … SELECT generate_series: watches
   of the most popular artists and labels (every one of the distinct
   entities at least once, the rest drawn by a power law), thousands of
   users watching the hub artist "Various" and the hub label "Not On
   Label", genre and style watches, saved searches watched by two users
   each, a webhook for one user in five.
3. `notifier router` (NOTIFIER_TRIGGER=graph) and `notifier delivery`
   start; the v1 latch fires the baseline cycle (untimed).
4. The month: +2 % of every record type written as graphinator writes it
   (GraphBuilder(platform=True): MERGE by id, stubs, sha256), one data type
   after the other, the latch of v2 growing after each; the clock starts
   when the latch is complete (PostgreSQL's clock, like every end time).
5. Figures: feed rows visible (the cycle is done: every unit committed its
   feed rows), webhooks delivered, the router's peak RSS, the 'releases'
   unit's span (finding the month's new releases), and the cost of the
   units holding the hubs beside the median unit (diff_units.stats); then
   PROFILE of the reads that grow with a hub, in the bench process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from neo4j import AsyncGraphDatabase, GraphDatabase

from bench.core import (
    Context,
    Figure,
    cpu_between,
    cpu_seconds,
    machine_cpu,
    niced,
    peak_rss_mb,
    table,
    timer,
)
from bench.delivery_rate import receiver
from bench.discogs_graph import (
    GENRES,
    SIGNALS,
    Generator,
    Loader,
    LoadStats,
    Month,
    Shape,
    month_builders,
    vocabulary,
    write_csv,
    write_latch,
)
from notifier import graph as graph_reads
from notifier.devkit import services

# fraction: of the real catalogue. users, watches (all kinds), entities (distinct
# artists and labels watched), tag_watches, searches (distinct; two watchers
# each), hub_watchers (each hub). heap/pagecache: MB for a Neo4j we start;
# shared_buffers: for a PostgreSQL we start, sized to hold the watches and the
# month's feed (at 1/10 the default 256MB made the fan-out read ~5.7M blocks
# from the OS cache; a quarter of this machine's memory is the usual size).
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"fraction": 0.0001, "users": 1_000, "watches": 10_000, "entities": 300,
             "tag_watches": 100, "searches": 50, "hub_watchers": 30,
             "heap": 1024, "pagecache": 512, "shared_buffers": "256MB", "limit": 300},
    "discogs-small": {"fraction": 0.01, "users": 100_000, "watches": 1_000_000,
                      "entities": 30_000, "tag_watches": 10_000, "searches": 5_000,
                      "hub_watchers": 1_000, "heap": 2048, "pagecache": 1536,
                      "shared_buffers": "1GB", "limit": 900},
    "discogs": {"fraction": 0.1, "users": 1_000_000, "watches": 10_000_000,
                "entities": 300_000, "tag_watches": 100_000, "searches": 50_000,
                "hub_watchers": 5_000, "heap": 4096, "pagecache": 4096,
                "shared_buffers": "4GB", "limit": 3600},
}  # fmt: skip
HUB_ID = "1"  # the hub artist's and the hub label's id (popularity rank 0)
ARTIST_SHARE = 0.73  # of the distinct watched entities; the rest are labels
USER = "discogs-user-"  # md5(USER || n)::uuid is user n

# Artist and label watches: slot s belongs to user s % users; the first
# `entities` slots walk the watched ranks (every one watched), the others
# draw a rank by a power law (popular entities have many watchers). Watched
# rank k is artist rank k + 1 (k < artists) else label rank k - artists + 1,
# id = rank * step % n + 1 as bench.discogs_graph.Ids. A user drawing the
# same entity twice keeps one watch (ON CONFLICT). Created a day ago.
WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, created_at)
SELECT md5(%(user)s || (s %% %(users)s))::uuid,
       CASE WHEN k < %(artists)s THEN 'artist' ELSE 'label' END,
       CASE WHEN k < %(artists)s THEN ((k + 1) * %(astep)s %% %(an)s + 1)::text
            ELSE ((k - %(artists)s + 1) * %(lstep)s %% %(ln)s + 1)::text END,
       NULL, now() - interval '1 day'
FROM (SELECT s, CASE WHEN s < %(entities)s THEN s
                     ELSE floor(%(entities)s * power(random(), 2.0))::bigint END AS k
      FROM generate_series(0, %(slots)s - 1) AS s) AS x
ON CONFLICT DO NOTHING
"""
HUB_WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, created_at)
SELECT md5(%(user)s || ((j * 37 + d) %% %(users)s))::uuid, t, %(hub)s, n, now() - interval '1 day'
FROM generate_series(0, %(hubs)s - 1) AS j,
     (VALUES ('artist', 'Various', 0), ('label', 'Not On Label', 1)) AS h (t, n, d)
ON CONFLICT DO NOTHING
"""
# Tag n (1-based) of `tags` is a genre when n <= genres, else a style.
TAG_WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, created_at)
SELECT md5(%(user)s || ((j * 13 + 5) %% %(users)s))::uuid,
       CASE WHEN t <= %(genres)s THEN 'genre' ELSE 'style' END,
       (%(tags)s::text[])[t], (%(tags)s::text[])[t], now() - interval '1 day'
FROM (SELECT j, j %% cardinality(%(tags)s::text[]) + 1 AS t
      FROM generate_series(0, %(n)s - 1) AS j) AS x
ON CONFLICT DO NOTHING
"""
# Saved search k: one of four forms over title words drawn by a power law
# (golden-ratio sequences, so both watchers of a search share its options).
SEARCH_WATCHES = """
INSERT INTO notifier.watchlists
    (user_id, entity_type, entity_id, entity_name, options, created_at)
SELECT md5(%(user)s || ((j * 17 + 3) %% %(users)s))::uuid, 'search',
       'search:' || substr(md5('discogs-search-' || k), 1, 40), o::text, o,
       now() - interval '1 day'
FROM (
    SELECT j, k, CASE k %% 4
        WHEN 0 THEN jsonb_build_object('q', w1)
        WHEN 1 THEN jsonb_build_object('q', w1, 'genre', g)
        WHEN 2 THEN jsonb_build_object('q', w1 || ' ' || w2)
        ELSE jsonb_build_object('q', w2, 'year_from', 2020) END AS o
    FROM (
        SELECT j, k,
               (%(words)s::text[])[1 + floor(cardinality(%(words)s::text[])
                   * power(k * 0.6180339887 - floor(k * 0.6180339887), 2))::int] AS w1,
               (%(words)s::text[])[1 + floor(cardinality(%(words)s::text[])
                   * power(k * 0.7548776662 - floor(k * 0.7548776662), 2))::int] AS w2,
               (%(genre_names)s::text[])[1 + k %% cardinality(%(genre_names)s::text[])] AS g
        FROM (SELECT j, j %% %(searches)s AS k
              FROM generate_series(0, 2 * %(searches)s - 1) AS j) AS a
    ) AS b
) AS c
ON CONFLICT DO NOTHING
"""
WEBHOOKS = """
INSERT INTO notifier.webhook_configs (user_id, url, secret)
SELECT md5(%(user)s || u)::uuid, %(url)s,
       'whsec_' || encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64')
FROM generate_series(0, %(users)s - 1, 5) AS u
"""
SEEDED = """
SELECT count(*), count(DISTINCT (entity_type, entity_id)),
       count(*) FILTER (WHERE entity_type IN ('genre', 'style')),
       count(DISTINCT entity_id) FILTER (WHERE entity_type = 'search'),
       count(*) FILTER (WHERE entity_type = 'artist' AND entity_id = %(hub)s),
       count(*) FILTER (WHERE entity_type = 'label' AND entity_id = %(hub)s),
       (SELECT count(*) FROM notifier.webhook_configs),
       count(DISTINCT user_id)
FROM notifier.watchlists
"""
CYCLE = "SELECT status, finished_at, stats, fired_at FROM notifier.cycles WHERE version = %s"
FEED_ROWS = """
SELECT count(*) FROM notifier.notification_events n
JOIN notifier.events e ON e.id = n.event_id WHERE e.version = %s
"""
EVENTS = """
SELECT entity_type || ':' || event, count(*) FROM notifier.events WHERE version = %s
GROUP BY 1 ORDER BY 1
"""
# Polled until none is left: outbox_due_idx holds the pending rows only, so the
# poll stays cheap beside delivery (a count of the whole outbox every half
# second took PostgreSQL CPU the measured phase would be charged for).
PENDING = "SELECT count(*) FROM notifier.outbox WHERE status = 'pending'"
OUTBOX = """
SELECT count(*) FILTER (WHERE status = 'delivered'), count(*), max(delivered_at)
FROM notifier.outbox
"""
# The measured cycle's units: type, whether it holds a hub, its cost (unit_ms
# includes its graph read), the releases unit's span from the firing.
UNITS = """
SELECT u.entity_type, %(hub)s = ANY (u.entity_ids) OR 'Electronic' = ANY (u.entity_ids),
       (u.stats ->> 'unit_ms')::int, (u.stats ->> 'graph_ms')::int,
       extract(epoch FROM u.finished_at - c.fired_at)::float8, u.stats
FROM notifier.diff_units u JOIN notifier.cycles c ON c.version = u.version
WHERE u.version = %(version)s
"""
# A hub unit's stats: entities found from the cycle's news, entities read in full.
HUB_PATHS = ("label_fast_path", "label_full_read", "artist_fast_path", "artist_full_read",
             "load_ms")  # fmt: skip
SPY_OUT = os.path.join(tempfile.gettempdir(), "discogs-router.pyspy.txt")
ROUTER_BATCH = 1000  # the release reads' batch as the router runs them (its default)
# The reads the router used before its release reads followed what is new,
# profiled beside today's for the record: every release of each new release's
# artists counted, and every release id streamed.
RELEASE_ARTISTS_BEFORE = (
    "UNWIND $ids AS id MATCH (r:Release {id: id})-[:BY]->(a:Artist) "
    "OPTIONAL MATCH (o:Release)-[:BY]->(a) "
    "RETURN r.id AS id, a.id AS other, a.name AS name, count(o) AS size"
)
ALL_RELEASE_IDS_BEFORE = "MATCH (r:Release) RETURN r.id AS id"
TAG_COUNTS_BEFORE = (
    "UNWIND $ids AS id MATCH (g:Genre {name: id}) "
    "OPTIONAL MATCH (r:Release)-[:IS]->(g) RETURN g.name AS id, count(r) AS n"
)


def _progress(what: str) -> None:
    print(f"  discogs: {what}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def graph_server(sizes: dict[str, Any]) -> Iterator[services.GraphService]:
    """NOTIFIER_TEST_NEO4J_URL's server, else a local Neo4j sized for the scale."""
    if os.environ.get(services.NEO4J_URL_ENV):
        with services.graph() as svc:
            yield svc
        return
    with services.local_neo4j(heap_mb=sizes["heap"], pagecache_mb=sizes["pagecache"]) as svc:
        yield svc


@contextlib.contextmanager
def imported_neo4j(
    sizes: dict[str, Any], gen: Generator, stats: LoadStats
) -> Iterator[services.GraphService]:
    """A local Neo4j started on a store written by `neo4j-admin database import full`.

    The CSV files come from `write_csv`; the import tool and the server are
    the Maven Central jars `notifier.devkit.services` uses. The schema is created by
    the caller once the server runs (index population over the data).
    """
    java = services.newest_java()
    if java is None:
        raise services.Neo4jNotInstallable("no JDK found (JAVA_HOME or /usr/lib/jvm)")
    version, lib = services.neo4j_jars(java)
    top = Path(tempfile.mkdtemp(prefix="notifier-neo4j-import-"))
    home, folder = top / "home", top / "csv"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "neo4j.conf").touch()
    folder.mkdir()
    jvm = [str(java.home / "bin" / "java"), f"-Xmx{sizes['heap']}m",
           "--enable-native-access=ALL-UNNAMED"]  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None
    try:
        with timer() as took:
            args, counts = write_csv(gen, folder)
        stats.csv_s = took()
        stats.nodes = sum(v for k, v in counts.items() if "-" not in k)
        for key, n in counts.items():
            if "-" in key:
                stats.add_rels(key, n)
        _progress(f"CSV written in {took():.0f} s; importing…")
        with timer() as took:
            done = subprocess.run(  # noqa: S603 - our JDK and Maven Central's jars
                [*jvm, "--add-opens=java.base/java.nio=ALL-UNNAMED",
                 "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED", "-cp", f"{lib}/*",
                 "org.neo4j.cli.AdminTool", "database", "import", "full", "neo4j", *args],
                env={**os.environ, "NEO4J_HOME": str(home), "NEO4J_CONF": str(home / "conf")},
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        stats.import_s = took()
        if done.returncode != 0:
            raise RuntimeError(f"neo4j-admin import failed:\n{done.stdout[-3000:]}")
        shutil.rmtree(folder)
        port, log = services.free_port(), top / "server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(  # noqa: S603 - as services.local_neo4j starts it
                [*jvm, "-XX:+UseParallelGC", "-cp", f"{lib}/*", str(services._JAVA_SOURCE),
                 str(home), str(port), str(sizes["pagecache"])],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=top,
            )  # fmt: skip
        services._wait(f"Neo4j {version}",
                       lambda: proc is not None and proc.poll() is None
                       and "NOTIFIER-GRAPH-READY" in log.read_text(), 300, log)  # fmt: skip
        yield services.GraphService("127.0.0.1", port, "neo4j", services.GRAPH_PASSWORD,
                                    origin="local-neo4j-import",
                                    server=f"Neo4j {version}")  # fmt: skip
    finally:
        if proc is not None:
            services._kill_group(proc)
        shutil.rmtree(top, ignore_errors=True)


def _env(pg: services.PostgresService, url: str, svc: services.GraphService) -> dict[str, str]:
    """Contract §2 variables: the graph latch trigger, polled every second."""
    prefixes = ("POSTGRES_", "NEO4J_", "RABBITMQ_", "NOTIFIER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        POSTGRES_HOST=pg.host, POSTGRES_PORT=str(pg.port), POSTGRES_USERNAME=pg.user,
        POSTGRES_PASSWORD=pg.password or "trust", POSTGRES_DATABASE=url.rsplit("/", 1)[1],
        NEO4J_HOST=svc.host, NEO4J_PORT=str(svc.port), NEO4J_USERNAME=svc.user,
        NEO4J_PASSWORD=svc.password, NEO4J_DATABASE="neo4j",
        NOTIFIER_TRIGGER="graph", NOTIFIER_GRAPH_POLL_SECONDS="1",
        NOTIFIER_WEBHOOK_ALLOW_PRIVATE="true", LOG_LEVEL="WARNING",
        NOTIFIER_ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
    )  # fmt: skip
    return env


class Placement(NamedTuple):
    """How the roles share the machine: the router's workers, the delivery
    replicas and their CPU niceness (also the receiver's). The defaults are
    the deployment the README recommends for a month on shared cores: four
    router workers, and delivery at a lower CPU weight than the router (nice
    10 here, as a lower CPU request gives its pod in Kubernetes), so the feed
    is not slowed by webhooks that have until 300 s. At the roles' own
    defaults (2, 1, 0) the feed's time depends on how much of the cores
    delivery takes meanwhile (bench/RESULTS.md, Session 14)."""

    router_workers: int = 4
    deliveries: int = 1
    delivery_nice: int = 10


class Roles:
    """`notifier router` and `deliveries` replicas of `notifier delivery` (role
    names delivery, delivery-2, ...), the latter at CPU niceness `nice`."""

    def __init__(self, env: dict[str, str], deliveries: int = 1, nice: int = 0) -> None:
        # (name, role, niceness) of each process
        placed = [("router", "router", 0)] + [
            (f"delivery-{i + 1}" if i else "delivery", "delivery", nice) for i in range(deliveries)
        ]
        self.procs = {
            name: subprocess.Popen(  # noqa: S603 - our interpreter and CLI
                [*niced(level), sys.executable, "-m", "notifier.cli", role],
                env=dict(env, NOTIFIER_PORT=str(services.free_port()), NOTIFIER_REPLICA=name),
            )
            for name, role, level in placed
        }

    def check(self) -> None:
        """Raise if a role has exited."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"notifier {role} exited with {proc.returncode}")

    def usage(self) -> dict[str, tuple[float, float]]:
        """(peak RSS MB, CPU s) of each role."""
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


async def _until(
    conn: psycopg.AsyncConnection[Any], roles: Roles, sql: str, params: Any, done: Any,
    limit: float, what: str, every: float = 0.2,
) -> tuple[Any, ...]:  # fmt: skip
    deadline = time.monotonic() + limit
    while True:
        row = await (await conn.execute(sql, params)).fetchone()
        if row is not None and done(row):
            return tuple(row)
        roles.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:.0f} s waiting for {what} ({row})")
        await asyncio.sleep(every)


async def seed(url: str, shape: Shape, sizes: dict[str, Any], hook_url: str) -> dict[str, Any]:
    """The users' watches and webhooks; what was seeded."""
    users, hubs = sizes["users"], sizes["hub_watchers"]
    searches, tags_n = sizes["searches"], sizes["tag_watches"]
    entities = min(sizes["entities"], shape.artists + shape.labels - 2)
    artists = min(shape.artists - 1, round(entities * ARTIST_SHARE))
    slots = sizes["watches"] - 2 * hubs - tags_n - 2 * searches
    gen = Generator(shape)
    tags = [*GENRES, *gen.style_list]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET max_parallel_workers_per_gather = 0")  # one random() stream
        await conn.execute("SELECT setseed(0.17)")
        await conn.execute(WATCHES, {
            "user": USER, "users": users, "artists": artists, "entities": entities,
            "slots": slots, "astep": shape.artist_ids.step, "an": shape.artist_ids.n,
            "lstep": shape.label_ids.step, "ln": shape.label_ids.n,
        })  # fmt: skip
        await conn.execute(HUB_WATCHES, {"user": USER, "users": users, "hub": HUB_ID, "hubs": hubs})
        await conn.execute(TAG_WATCHES, {"user": USER, "users": users, "genres": len(GENRES),
                                         "tags": tags, "n": tags_n})  # fmt: skip
        await conn.execute(SEARCH_WATCHES, {"user": USER, "users": users, "searches": searches,
                                            "words": vocabulary()[:1000],
                                            "genre_names": list(GENRES)})  # fmt: skip
        await conn.execute(WEBHOOKS, {"user": USER, "users": users, "url": hook_url})
        await conn.execute("VACUUM ANALYZE notifier.watchlists, notifier.webhook_configs")
        row = await (await conn.execute(SEEDED, {"hub": HUB_ID})).fetchone()
    assert row is not None
    keys = ("watches", "distinct_entities", "tag_watches", "distinct_searches",
            "hub_artist_watchers", "hub_label_watchers", "webhooks",
            "users_with_watches")  # fmt: skip
    return dict(zip(keys, row, strict=True))


async def write_month(svc: services.GraphService, gen: Generator, month: Month) -> float:
    """The month as graphinator writes it, its latch growing per data type; seconds taken."""
    driver = AsyncGraphDatabase.driver(svc.uri, auth=(svc.user, svc.password))
    flushed: list[str] = []
    try:
        with timer() as took:
            current = None
            for kind, builder in month_builders(gen, month):
                if current is not None and kind != current:
                    flushed.append(current)
                    await builder.latch(driver, "neo4j", "v2", flushed)
                current = kind
                await builder.write(driver, "neo4j")
    finally:
        await driver.close()
    return took()


def typical_units(shape: Shape, sizes: dict[str, Any]) -> tuple[list[str], list[str]]:
    """500 watched artists and 500 watched labels spread over the watched ranks (a unit's worth)."""
    entities = min(sizes["entities"], shape.artists + shape.labels - 2)
    artists = min(shape.artists - 1, round(entities * ARTIST_SHARE))
    labels = entities - artists
    a = [shape.artist_ids.id(r) for r in range(1, artists + 1, max(1, artists // 500))][:500]
    lb = [shape.label_ids.id(r) for r in range(1, labels + 1, max(1, labels // 500))][:500]
    return a, lb


def profile_hubs(
    svc: services.GraphService, month: Month, unit: tuple[list[str], list[str]]
) -> dict[str, Any]:
    """PROFILE (db hits, rows, ms) of the reads that grow with a hub, and the release scan."""
    new_ids = [str(i) for i in month.releases][:ROUTER_BATCH]
    queries = {
        "ARTIST_STATES [hub]": (graph_reads.ARTIST_STATES, {"ids": [HUB_ID]}),
        f"ARTIST_STATES [{len(unit[0])} watched artists]": (
            graph_reads.ARTIST_STATES, {"ids": unit[0]}),
        "ARTIST_MARKS [hub] (name and degrees)": (graph_reads.ARTIST_MARKS, {"ids": [HUB_ID]}),
        f"ARTIST_MARKS [{len(unit[0])} watched artists]": (
            graph_reads.ARTIST_MARKS, {"ids": unit[0]}),
        "LABEL_STATES [hub]": (graph_reads.LABEL_STATES, {"ids": [HUB_ID]}),
        f"LABEL_STATES [{len(unit[1])} watched labels]": (
            graph_reads.LABEL_STATES, {"ids": unit[1]}),
        "LABEL_TREES [hub] (tree and ON degrees)": (graph_reads.LABEL_TREES, {"ids": [HUB_ID]}),
        f"LABEL_TREES [{len(unit[1])} watched labels]": (
            graph_reads.LABEL_TREES, {"ids": unit[1]}),
        "TAG_COUNTS Genre [Electronic] (IS degree)": (
            graph_reads.TAG_COUNTS["Genre"], {"ids": ["Electronic"]}),
        "TAG_MASTERS Genre [Electronic] (masters' IS edges)": (
            graph_reads.TAG_MASTERS["Genre"], {"ids": ["Electronic"]}),
        "CYCLE_MASTERS (the masters' id pass, once a cycle, none new)": (
            graph_reads.CYCLE_MASTERS, {"mark": 2**62}),
        f"RELEASES [{len(new_ids)} new]": (graph_reads.RELEASES, {"ids": new_ids}),
        "ARTIST_SIZES [hub]": (graph_reads.ARTIST_SIZES, {"ids": [HUB_ID]}),
        "ARTIST_SIZES [500 watched artists]": (graph_reads.ARTIST_SIZES, {"ids": unit[0]}),
        "RELEASES_ABOVE the previous highest id": (
            graph_reads.RELEASES_ABOVE, {"max": month.releases.start - 1}),
        "RELEASE_COUNT (count store)": (graph_reads.RELEASE_COUNT, {}),
        f"RELEASE_ID_PAGE [{ROUTER_BATCH}] (a page of the full read)": (
            graph_reads.RELEASE_ID_PAGE, {"after": "", "limit": ROUTER_BATCH}),
        f"before: RELEASE_ARTISTS counting releases [{len(new_ids)} new]": (
            RELEASE_ARTISTS_BEFORE, {"ids": new_ids}),
        "before: every IS edge of the genre counted [Electronic]": (
            TAG_COUNTS_BEFORE, {"ids": ["Electronic"]}),
    }  # fmt: skip
    out: dict[str, Any] = {}
    with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as d:
        for name, (cypher, params) in queries.items():
            d.execute_query(cypher, params, database_="neo4j")  # planned and warm
            start = time.perf_counter()
            records, summary, _ = d.execute_query("PROFILE " + cypher, params, database_="neo4j")
            ms = (time.perf_counter() - start) * 1000
            hits, ops = _hits(summary.profile or {})
            out[name] = {"ms": round(ms, 1), "db_hits": hits, "rows": len(records),
                         "top": ops[:3]}  # fmt: skip
        start = time.perf_counter()
        with d.session(database="neo4j", fetch_size=ROUTER_BATCH) as session:
            n = sum(1 for _ in session.run(ALL_RELEASE_IDS_BEFORE))
        out["before: every release id streamed"] = {
            "ms": round((time.perf_counter() - start) * 1000), "rows": n}  # fmt: skip
        start, after, n = time.perf_counter(), "", 0
        while True:  # the full read as the router pages it now
            records, _, _ = d.execute_query(graph_reads.RELEASE_ID_PAGE,
                                            {"after": after, "limit": ROUTER_BATCH},
                                            database_="neo4j")  # fmt: skip
            page = records[0]["rows"] if records else []
            n += len(page)
            if len(page) < ROUTER_BATCH:
                break
            after = page[-1]
        out["RELEASE_ID_PAGE, every page (the full read)"] = {
            "ms": round((time.perf_counter() - start) * 1000), "rows": n}  # fmt: skip
    return out


def _hits(plan: dict[str, Any]) -> tuple[int, list[tuple[str, int]]]:
    """Total db hits of a profiled plan and its operators by hits, biggest first."""
    ops: list[tuple[str, int]] = []

    def walk(p: dict[str, Any]) -> None:
        ops.append((str(p.get("operatorType", "?")), int(p.get("dbHits", 0))))
        for child in p.get("children", []):
            walk(child)

    walk(plan)
    ops.sort(key=lambda o: -o[1])
    return sum(h for _, h in ops), ops


def spy(py_spy: str | None, pid: int, out: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` (raw folded stacks into `out`) until sent SIGINT."""
    if not py_spy:
        return None
    return subprocess.Popen(  # noqa: S603 - the py-spy the caller named
        [py_spy, "record", "-r", "50", "-f", "raw", "--nonblocking", "-o", out, "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def run(
    ctx: Context,
    sizes: dict[str, Any],
    svc: services.GraphService,
    py_spy: str | None = None,
    imported: LoadStats | None = None,
    graph_only: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Load (or, `imported`, index the imported graph), seed, baseline, the month; measure."""
    shape = Shape.at(sizes["fraction"])
    gen, month = Generator(shape), Month.after(shape)
    out: dict[str, Any] = {"shape": shape.__dict__ | {}, "load_average_start": os.getloadavg()}
    if imported is None:
        svc.new_database()  # empty (and schema-free) on a shared server
    with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as d, timer() as took:
        loader = Loader(d, "neo4j", _progress)
        if imported is None:
            stats = loader.load(gen)
        else:
            loader.stats = stats = imported
            loader.schema()
            loader.indexes()  # after the constraints: index_s covers both
            stats.index_s = took()
        write_latch(d, "neo4j", "v1", SIGNALS)
    total = took() + stats.csv_s + stats.import_s
    out["load"] = stats.__dict__ | {
        "total_s": round(total, 1),
        "loader": "import" if imported else "bolt",
    }
    _progress(
        f"graph loaded in {took():.0f} s ({stats.nodes:,} nodes, {stats.rels:,} rels; "
        f"releases with their edges {stats.release_s:.1f} s, other nodes {stats.node_s:.1f} s, "
        f"other rels {stats.rel_s:.1f} s, indexes {stats.index_s:.1f} s)"
    )
    if graph_only:  # the graph's side alone: the month and the reads' PROFILE
        out["month_write_s"] = round(await write_month(svc, gen, month), 1)
        with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as d:
            write_latch(d, "neo4j", "v2", SIGNALS)
        _progress(f"month written in {out['month_write_s']} s; profiling…")
        out["profile"] = profile_hubs(svc, month, typical_units(shape, sizes))
        return out
    url = ctx.fresh_database()
    limit = float(sizes["limit"])
    roles: Roles | None = None
    try:
        where = placement or Placement()
        with receiver(where.delivery_nice) as hook_url:
            with timer() as took:
                out["seeded"] = await seed(url, shape, sizes, hook_url)
            out["seed_s"] = round(took(), 1)
            _progress(f"users seeded in {took():.0f} s: {out['seeded']}")
            env = dict(_env(ctx.pg, url, svc), NOTIFIER_ROUTER_WORKERS=str(where.router_workers))
            roles = Roles(env, where.deliveries, where.delivery_nice)
            out["placement"] = where._asdict()
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                with timer() as took:
                    await _until(conn, roles, CYCLE, ("v1",), lambda r: r[0] == "done", limit,
                                 "the baseline cycle", every=0.5)  # fmt: skip
                out["baseline_cycle_s"] = round(took(), 1)
                _progress(f"baseline cycle done in {took():.0f} s")
                out["month_write_s"] = round(await write_month(svc, gen, month), 1)
                with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as d:
                    write_latch(d, "neo4j", "v2", SIGNALS)
                (start,) = await (await conn.execute("SELECT clock_timestamp()")).fetchone()  # type: ignore[misc]
                cpu_at_latch = machine_cpu()
                _progress(f"month written in {out['month_write_s']} s; latch complete")
                spying = spy(py_spy, roles.procs["router"].pid, SPY_OUT)
                _, finished, stats_v2, fired = await _until(
                    conn, roles, CYCLE, ("v2",), lambda r: r[0] == "done", limit, "cycle v2"
                )
                if spying is not None:
                    spying.send_signal(signal.SIGINT)
                    spying.wait(60)
                cpu_at_feed = machine_cpu()
                out["feed_s"] = (finished - start).total_seconds()
                out["fired_after_s"] = (fired - start).total_seconds()
                out["cycle_stats"] = stats_v2
                (out["feed_rows"],) = await (await conn.execute(FEED_ROWS, ("v2",))).fetchone()  # type: ignore[misc]
                out["events"] = dict(await (await conn.execute(EVENTS, ("v2",))).fetchall())  # type: ignore[arg-type]
                _progress(f"feed complete after {out['feed_s']:.1f} s")
                await _until(conn, roles, PENDING, (), lambda r: r[0] == 0, limit,
                             "the webhooks", every=0.5)  # fmt: skip
                delivered, total, last = await (await conn.execute(OUTBOX)).fetchone()  # type: ignore[misc]
                if delivered != total:
                    raise RuntimeError(f"{total - delivered} of {total} webhooks not delivered")
                out["webhooks"] = total
                out["webhooks_s"] = (last - start).total_seconds() if last is not None else 0.0
                _progress(f"webhooks delivered after {out['webhooks_s']:.1f} s")
                # CPU seconds by process group from the latch to the feed's end, then
                # to the last webhook (idle: of both cores), where the time went.
                out["cpu"] = {
                    "to_feed": cpu_between(cpu_at_latch, cpu_at_feed),
                    "to_webhooks": cpu_between(cpu_at_feed, machine_cpu()),
                }
                _progress(f"CPU seconds by process: {out['cpu']}")
                out["usage"] = roles.usage()
                units = await (
                    await conn.execute(UNITS, {"hub": HUB_ID, "version": "v2"})
                ).fetchall()
        out["units"] = _unit_costs(units)
        out["expected_new_releases"] = len(month.releases)
        out["profile"] = profile_hubs(svc, month, typical_units(shape, sizes))
    finally:
        if roles is not None:
            roles.stop()
        if svc.origin == "env":
            svc.new_database()  # leave a shared server empty
    return out


def _unit_costs(rows: list[Any]) -> dict[str, Any]:
    """The releases unit's span and stats; the hub units' cost beside the median unit."""
    out: dict[str, Any] = {}
    costs = sorted(r[2] for r in rows if r[0] != "releases" and r[2] is not None)
    median = costs[len(costs) // 2] if costs else 0
    out["median_unit_ms"] = median
    out["units"] = len(rows)
    by_type: dict[str, list[int]] = {}
    for kind, hub, unit_ms, graph_ms, span, stats in rows:
        if kind == "releases":
            out["releases_unit"] = {"span_s": round(span, 1), **stats}
            continue
        by_type.setdefault(kind, []).append(unit_ms or 0)
        if hub and kind in ("artist", "label", "genre"):
            out[f"hub_{kind}"] = {"unit_ms": unit_ms, "graph_ms": graph_ms,
                                  "ratio": round((unit_ms or 0) / max(median, 1), 1)}  # fmt: skip
            # How the hub's unit found its news (strategies.LabelStrategy, ArtistStrategy).
            out[f"hub_{kind}"].update({k: stats[k] for k in HUB_PATHS if k in (stats or {})})
    out["by_type"] = {k: {"units": len(v), "median_ms": sorted(v)[len(v) // 2], "max_ms": max(v)}
                      for k, v in by_type.items()}  # fmt: skip
    return out


def figures(m: dict[str, Any]) -> list[Figure]:
    """The table: each figure beside its target from the issue."""
    load = m["load"]
    releases = m["shape"]["releases"]
    if load["loader"] == "import":
        load_figures = [
            Figure("graph load: neo4j-admin import, nodes + relationships/s",
                   (load["nodes"] + load["rels"]) / max(load["import_s"], 1e-9), "items/s",
                   notes={"nodes": load["nodes"], "rels": load["rels"],
                          "import_s": round(load["import_s"], 1),
                          "csv_s": round(load["csv_s"], 1), "by_type": load["by_type"]}),
            Figure("graph load: total (CSV, import, constraints and indexes)", load["total_s"],
                   "s", notes={"index_s": round(load["index_s"], 1)}),
        ]  # fmt: skip
    else:
        load_figures = bolt_figures(load, releases)
    if "units" not in m:  # --graph-only
        return [
            *load_figures,
            Figure("month written as graphinator (MERGE)", m["month_write_s"], "s"),
        ]
    return [*load_figures, *cycle_figures(m)]


def bolt_figures(load: dict[str, Any], releases: int) -> list[Figure]:
    """The Bolt loader's rates."""
    return [
        Figure("graph load: artist, label, master nodes/s (batched CREATE over Bolt)",
               (load["nodes"] - releases) / max(load["node_s"], 1e-9), "nodes/s",
               notes={"nodes": load["nodes"] - releases, "s": round(load["node_s"], 1)}),
        Figure("graph load: their relationships/s (alias, member, sublabel, master)",
               (load["rels"] - load["release_rels"]) / max(load["rel_s"], 1e-9), "rels/s",
               notes={"rels": load["rels"] - load["release_rels"], "s": round(load["rel_s"], 1),
                      "by_type": load["by_type"]}),
        Figure("graph load: release edges/s (with their releases, one statement a batch)",
               load["release_rels"] / max(load["release_s"], 1e-9), "rels/s",
               notes={"releases": releases, "release_rels": load["release_rels"],
                      "s": round(load["release_s"], 1)}),
        Figure("graph load: total incl. indexes", load["total_s"], "s",
               notes={"index_s": round(load["index_s"], 1)}),
    ]  # fmt: skip


def cycle_figures(m: dict[str, Any]) -> list[Figure]:
    """The month's figures beside the issue's targets."""
    units = m["units"]
    rss = m["usage"]["router"][0]
    found = units.get("releases_unit", {}).get("span_s", float("nan"))
    out = [
        Figure("month written as graphinator (MERGE)", m["month_write_s"], "s"),
        Figure("feed rows visible after the latch", m["feed_s"], "s", target="<= 120 s",
               passed=m["feed_s"] <= 120,
               notes={"feed_rows": m["feed_rows"], "events": m["events"]}),
        Figure("webhooks delivered after the latch", m["webhooks_s"], "s", target="<= 300 s",
               passed=m["webhooks_s"] <= 300, notes={"webhooks": m["webhooks"]}),
        Figure("peak RSS: router", rss, "MB", target="<= 500 MB", passed=rss <= 500),
        Figure("month's new releases found (releases unit)", found, "s", target="<= 30 s",
               passed=found <= 30, notes=units.get("releases_unit", {})),
    ]  # fmt: skip
    for kind, what in (("artist", "hub artist"), ("label", "hub label"), ("genre", "genre unit")):
        hub = units.get(f"hub_{kind}")
        if hub is None:
            continue
        out.append(Figure(f"{what} unit cost / median unit", hub["ratio"], "x",
                          target="<= 10x", passed=hub["ratio"] <= 10,
                          notes=hub | {"median_unit_ms": units["median_unit_ms"]}))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one scale; print the table (and write JSON); 1 when a target is missed."""
    p = argparse.ArgumentParser(prog="python -m bench.discogs", description=__doc__)
    p.add_argument("--scale", choices=sorted(SCALES), default="discogs-small")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--py-spy", metavar="EXE", help="record the router with this py-spy from "
                   "the latch to the cycle's end (into SPY_OUT)")  # fmt: skip
    p.add_argument("--loader", choices=("auto", "bolt", "import"), default="auto",
                   help="batched CREATE over Bolt, or neo4j-admin import into a new local "
                   "Neo4j (auto: import, unless NOTIFIER_TEST_NEO4J_URL names one)")  # fmt: skip
    p.add_argument("--graph-only", action="store_true",
                   help="the graph, the month and the reads' PROFILE only "
                   "(no users, no router)")  # fmt: skip
    # Where the roles run on the one machine (Placement: four router workers,
    # one delivery at nice 10); `--router-workers 2 --delivery-nice 0` is the
    # roles' own defaults at equal priority (bench/RESULTS.md, Sessions 13-14).
    defaults = Placement()
    p.add_argument(
        "--router-workers",
        type=int,
        default=defaults.router_workers,
        help="NOTIFIER_ROUTER_WORKERS of the router (default %(default)s)",
    )
    p.add_argument(
        "--deliveries",
        type=int,
        default=defaults.deliveries,
        help="delivery replicas (default %(default)s)",
    )
    p.add_argument("--delivery-nice", type=int, default=defaults.delivery_nice,
                   help="CPU niceness of the delivery replicas and the webhook receiver "
                   "(default %(default)s; 0: the router's)")  # fmt: skip
    args = p.parse_args(argv)
    sizes = SCALES[args.scale]
    # A SIGTERM unwinds the stack, so the servers this run started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.ExitStack() as stack, timer() as took:
        pg = stack.enter_context(services.postgres({"shared_buffers": sizes["shared_buffers"]}))
        imported = None
        loader = args.loader
        if loader == "auto":  # measured: the import tool is faster from 1/100 up
            loader = "bolt" if os.environ.get(services.NEO4J_URL_ENV) else "import"
        if loader == "import":
            imported = LoadStats()
            gen = Generator(Shape.at(sizes["fraction"]))
            svc = stack.enter_context(imported_neo4j(sizes, gen, imported))
        else:
            svc = stack.enter_context(graph_server(sizes))
        ctx = Context(args.scale, {}, pg, stack)
        m = asyncio.run(run(ctx, sizes, svc, args.py_spy, imported, args.graph_only,
                            Placement(args.router_workers, args.deliveries,
                                      args.delivery_nice)))  # fmt: skip
        ctx.drop_databases()
    m["wall_s"] = round(took(), 1)
    m["load_average_end"] = os.getloadavg()
    figs = figures(m)
    print(table(figs))
    print(json.dumps({k: m.get(k) for k in ("shape", "seeded", "units", "profile", "wall_s",
                                            "load_average_start", "load_average_end")},
                     indent=1, default=str), file=sys.stderr)  # fmt: skip
    if args.json:
        meta = {"scale": args.scale, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} python {platform.python_version()}"}  # fmt: skip
        with open(args.json, "w") as out:
            json.dump({**meta, "figures": [f.as_dict() for f in figs], "run": m}, out,
                      indent=2, default=str)  # fmt: skip
    return 0 if all(f.passed is not False for f in figs) else 1


if __name__ == "__main__":
    sys.exit(main())
