"""Feed latency at scale, through a real `notifier api` process.

    uv run python -m bench.feed_latency [--rows 1000000] [--requests 2000] [--total-rows N]

One user gets `--rows` notifications (one INSERT … SELECT generate_series),
beside 100 other users' rows; with `--total-rows` (the `feed_total_rows` size,
10M at full scale) other users' rows, interleaved with the user's, fill the
real table up to that many. Sequential keep-alive requests on loopback
measure p50/p99 of: the first feed page, the first unread page, a deep page
(by cursor), and unread-count, each 200; the first page and unread-count again
with the `If-None-Match` of their ETag (the cheap-polling 304 path); and, as
the peer, a bare Starlette JSON endpoint under the same uvicorn on the same
machine. The kinds of request are interleaved one by one, so the machine's
load hits all alike. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import psycopg

from bench.core import Context, Figure, peak_rss_mb
from notifier import db
from notifier.devkit import services

JWT_KEY = "bench-jwt-key-bench-jwt-key-bench-jwt-key"
FIRST_PAGE, UNREAD_COUNT = "feed first page (20)", "unread-count"
FIRST_PAGE_304, UNREAD_COUNT_304 = "feed first page, 304", "unread-count, 304"
PEER = "bare Starlette JSON (peer)"

EVENTS = """
INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id,
                             entity_name, detail, fanned_out_at)
SELECT 'bench:' || g, 'router', '20260201', 'new_releases', 'artist', g::text, 'Artist ' || g,
       jsonb_build_object('new_release_count', 3, 'release_ids', jsonb_build_array('1', '2', '3')),
       now()
FROM generate_series(1, %(n)s) AS g
"""
# The user's rows, with every 101st row going to one of 100 other users instead;
# and after each of them `m` rows of other users (`extra` in all, 0 by default),
# inserted in that order so that the user's rows are spread over the table's
# pages as they would be after months of fan-outs. Each row names a watch, as
# a router event's row does (`watch_id`, sql/012).
FEED = """
INSERT INTO notifier.notification_events (user_id, event_id, read_at, watch_id)
SELECT CASE WHEN j > 0 THEN md5('bench-other-' || ((e.n * %(m)s + j) %% %(users)s))::uuid
            WHEN e.n %% 101 = 0 THEN %(others)s[1 + e.n %% 100] ELSE %(user)s END,
       e.id, CASE WHEN (e.n + j) %% 3 = 0 THEN now() END,
       md5('bench-watch-' || e.n || ':' || j)::uuid
FROM (SELECT id, row_number() OVER (ORDER BY entity_id::bigint) AS n
      FROM notifier.events WHERE dedup_key LIKE 'bench:%%') e,
     generate_series(0, %(m)s) AS j
WHERE j = 0 OR (e.n - 1) * %(m)s + j <= %(extra)s
ORDER BY e.n, j
"""
OTHER_USERS = 100_000  # the extra rows' users (90 rows each for 9M)
COUNTER = """
INSERT INTO notifier.unread_counters (user_id, unread)
SELECT %(user)s, count(*) FROM notifier.notification_events
WHERE user_id = %(user)s AND read_at IS NULL
"""
# Everyone else's unread counters, when other users' rows were seeded.
OTHER_COUNTERS = """
INSERT INTO notifier.unread_counters (user_id, unread)
SELECT user_id, count(*) FILTER (WHERE read_at IS NULL) FROM notifier.notification_events
WHERE user_id <> %(user)s GROUP BY user_id
"""

BARE_APP = """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def count(request):
    return JSONResponse({"count": 0})
app = Starlette(routes=[Route("/count", count)])
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning")
"""


# The feed table's secondary indexes and unique constraint, as the migrations
# made them (the catalog's own definitions; the primary key stays).
INDEX_DEFS = """
SELECT i.indexname, i.indexdef, c.conname, pg_get_constraintdef(c.oid)
FROM pg_indexes i
LEFT JOIN pg_constraint c ON c.conname = i.indexname
    AND c.conrelid = 'notifier.notification_events'::regclass
WHERE i.schemaname = 'notifier' AND i.tablename = 'notification_events'
  AND i.indexname <> 'notification_events_pkey'
"""


@contextlib.contextmanager
def _indexes_rebuilt(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Drop the feed table's secondary indexes for a bulk load; rebuild them after.

    Inserting 9M rows in random user order into those indexes runs at about
    25k rows/s here; building them afterwards from the catalog's own
    definitions takes a third of that time. The result is the same table
    with the same indexes (freshly built ones are denser than grown ones).
    """
    defs = conn.execute(INDEX_DEFS).fetchall()
    for index, _, constraint, _ in defs:
        if constraint:
            conn.execute(f'ALTER TABLE notifier.notification_events DROP CONSTRAINT "{constraint}"')
        else:
            conn.execute(f'DROP INDEX notifier."{index}"')  # names from the catalog
    yield
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for _, indexdef, constraint, condef in defs:
        if constraint:
            conn.execute(
                f'ALTER TABLE notifier.notification_events ADD CONSTRAINT "{constraint}" {condef}'
            )
        else:
            conn.execute(indexdef)


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


Target = tuple[httpx.Client, str, dict[str, str], int]  # client, path, headers, status


def _get(client: httpx.Client, path: str, headers: dict[str, str], status: int) -> None:
    got = client.get(path, headers=headers).status_code
    if got != status:
        raise RuntimeError(f"GET {path}: {got}, expected {status}")


def _measure(targets: dict[str, Target], n: int) -> dict[str, list[float]]:
    """`n` timed requests of each target (each must answer its status), interleaved.

    Round-robin over the targets (the peer included), so a load spike on the
    shared machine lands on every figure alike instead of on whichever ran then.
    """
    for target in targets.values():
        for _ in range(min(200, n)):  # warm-up: connections, plans, caches
            _get(*target)
    samples: dict[str, list[float]] = {label: [] for label in targets}
    for _ in range(n):
        for label, target in targets.items():
            start = time.perf_counter()
            _get(*target)
            samples[label].append((time.perf_counter() - start) * 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000)[int(q * 1000) - 1]


@dataclass
class Measured:
    """Latency samples (ms) per request kind, the read-all timing, the API's peak RSS."""

    samples: dict[str, list[float]]
    marked: int
    read_all_s: float
    api_rss_mb: float
    table_rows: int = 0
    seed_s: float = 0.0


def measure(
    pg: services.PostgresService, rows: int, requests: int, total_rows: int = 0
) -> Measured:
    """Seed a fresh database, start `notifier api` and the bare peer, measure, clean up.

    With `total_rows` > `rows`, other users' rows fill the table up to that many.
    """
    extra = max(0, total_rows - rows)
    per_event = -(-extra // rows)  # other users' rows after each of the user's
    user, others = uuid.uuid4(), [uuid.uuid4() for _ in range(100)]
    name = f"bench_feed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate(pg.url(name))
        started = time.perf_counter()
        with psycopg.connect(pg.url(name)) as conn:
            conn.execute(EVENTS, {"n": rows})
            with _indexes_rebuilt(conn) if extra else contextlib.nullcontext():
                conn.execute(FEED, {"user": user, "others": others, "m": per_event,
                                    "extra": extra, "users": OTHER_USERS})  # fmt: skip
            conn.execute(COUNTER, {"user": user})
            if extra:
                conn.execute(OTHER_COUNTERS, {"user": user})
        with psycopg.connect(pg.url(name), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE notifier.events, notifier.notification_events")
            # Flush the bulk load's dirty pages now, not during the measurement (a
            # checkpoint after 10M rows otherwise lands on the first requests).
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute("CHECKPOINT")
            got = conn.execute(
                "SELECT count(*) FILTER (WHERE user_id = %s), count(*) "
                "FROM notifier.notification_events",
                (user,),
            ).fetchone()
        seeded = time.perf_counter() - started
        mine, total = got if got else (0, 0)
        print(f"seeded {mine:,} rows for the user ({total:,} in all) in {seeded:.1f}s",
              file=sys.stderr)  # fmt: skip

        port, bare_port = services.free_port(), services.free_port()
        env = dict(os.environ, POSTGRES_HOST=pg.host, POSTGRES_PORT=str(pg.port),
                   POSTGRES_USERNAME=pg.user, POSTGRES_PASSWORD=pg.password or "trust",
                   POSTGRES_DATABASE=name, NEO4J_PASSWORD="unused", JWT_SECRET_KEY=JWT_KEY,  # noqa: S106
                   NOTIFIER_PORT=str(port), NOTIFIER_API_RATE_LIMIT="0",
                   LOG_LEVEL="WARNING")  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "notifier.cli", "api"], env=env))
        bare_cmd = [sys.executable, "-c", BARE_APP, str(bare_port)]  # our own code
        procs.append(subprocess.Popen(bare_cmd))  # noqa: S603
        api, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        _wait(api + "/openapi.json", procs[0])
        _wait(bare + "/count", procs[1])
        exp = datetime.now(UTC) + timedelta(hours=1)
        token = jwt.encode({"sub": str(user), "exp": exp}, JWT_KEY, algorithm="HS256")
        h = {"Authorization": f"Bearer {token}"}
        with (
            httpx.Client(base_url=api, timeout=600) as client,
            httpx.Client(base_url=bare, timeout=30) as peer,
        ):
            cursor = None
            for _ in range(min(50, rows // 20 - 1)):
                page = client.get("/api/notifications", params={"cursor": cursor} if cursor
                                  else {}, headers=h).json()  # fmt: skip
                cursor = page["next_cursor"]
            page_tag = client.get("/api/notifications", headers=h).headers["etag"]
            count_tag = client.get("/api/notifications/unread-count", headers=h).headers["etag"]
            results = _measure(
                {
                    FIRST_PAGE: (client, "/api/notifications", h, 200),
                    "feed unread first page": (client, "/api/notifications?unread=true", h, 200),
                    "feed deep page (cursor)": (
                        client, f"/api/notifications?cursor={cursor}", h, 200),
                    UNREAD_COUNT: (client, "/api/notifications/unread-count", h, 200),
                    FIRST_PAGE_304: (
                        client, "/api/notifications", h | {"If-None-Match": page_tag}, 304),
                    UNREAD_COUNT_304: (client, "/api/notifications/unread-count",
                                       h | {"If-None-Match": count_tag}, 304),
                    PEER: (peer, "/count", {}, 200),
                },
                requests,
            )  # fmt: skip
            started = time.perf_counter()
            marked = client.post("/api/notifications/read-all", headers=h).json()["marked"]
            read_all_s = time.perf_counter() - started
        api_rss = peak_rss_mb(procs[0].pid)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return Measured(results, marked, read_all_s, api_rss, total, seeded)


async def feed_latency(ctx: Context) -> list[Figure]:
    """The figures: feed first page and unread-count p99 vs bare Starlette; API peak RSS."""
    rows, requests = ctx.sizes["feed_rows"], ctx.sizes["feed_requests"]
    total = ctx.sizes.get("feed_total_rows", 0)  # full scale: the 10M rows in all
    m = await asyncio.to_thread(measure, ctx.pg, rows, requests, total)
    peer = _p(m.samples[PEER], 0.99)
    notes = {"user_rows": rows, "table_rows": m.table_rows, "seed_s": round(m.seed_s, 1),
             "requests": requests, "peer_p50_ms": _p(m.samples[PEER], 0.5)}  # fmt: skip
    figures = []
    for label, name, limit in ((FIRST_PAGE, "feed first page p99", 10.0),
                               (UNREAD_COUNT, "unread-count p99", 5.0),
                               (FIRST_PAGE_304, "feed 304 (If-None-Match) p99", 5.0),
                               (UNREAD_COUNT_304, "unread-count 304 p99", 5.0)):  # fmt: skip
        p99 = _p(m.samples[label], 0.99)
        figures.append(
            Figure(
                name=name,
                ours=p99,
                unit="ms",
                peer=peer,
                peer_name="bare Starlette JSON p99",
                target=f"<= {limit:g} ms",
                passed=p99 <= limit,
                notes={**notes, "p50_ms": _p(m.samples[label], 0.5)},
            )
        )
    figures.append(
        Figure(
            name="peak RSS: api",
            ours=m.api_rss_mb,
            unit="MB",
            target="<= 200 MB",
            passed=m.api_rss_mb <= 200,
            notes={"during": f"the feed-latency run, {rows} rows, read-all of {m.marked}"},
        )
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    """Seed, start the servers, measure, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.feed_latency", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--total-rows", type=int, default=0,
                   help="fill the table with other users' rows up to this many")  # fmt: skip
    args = p.parse_args(argv)
    with services.postgres() as pg:
        m = measure(pg, args.rows, args.requests, args.total_rows)
    results = m.samples
    peer = _p(results[PEER], 0.99)
    print(f"\nfeed latency, {args.rows:,} notifications for one user ({m.table_rows:,} in the "
          f"table), {args.requests} requests "
          f"each, sequential keep-alive on loopback, {datetime.now(UTC):%Y-%m-%d}\n")  # fmt: skip
    print("| request | p50 ms | p99 ms | p99 / bare p99 | target |")
    print("|---|---|---|---|---|")
    for label, samples in results.items():
        target = {
            FIRST_PAGE: "p99 <= 10 ms",
            UNREAD_COUNT: "p99 <= 5 ms",
            FIRST_PAGE_304: "p99 <= 5 ms",
            UNREAD_COUNT_304: "p99 <= 5 ms",
        }.get(label, "")
        print(f"| {label} | {_p(samples, 0.5):.2f} | {_p(samples, 0.99):.2f} | "
              f"{_p(samples, 0.99) / peer:.2f}x | {target} |")  # fmt: skip
    print(
        f"\nread-all (one request) marked {m.marked:,} notifications in {m.read_all_s:.2f}s; "
        f"api peak RSS {m.api_rss_mb:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
