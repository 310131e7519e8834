"""Feed latency at scale, through a real `notifier api` process.

    uv run python -m bench.feed_latency [--rows 1000000] [--requests 2000]

One user gets `--rows` notifications (one INSERT … SELECT generate_series),
beside 100 other users' rows. Sequential keep-alive requests on loopback
measure p50/p99 of: the first feed page, the first unread page, a deep page
(by cursor), and unread-count; and, as the peer, a bare Starlette JSON
endpoint under the same uvicorn on the same machine. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import psycopg

from notifier import db, services

JWT_KEY = "bench-jwt-key-bench-jwt-key-bench-jwt-key"

EVENTS = """
INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, entity_id,
                             entity_name, detail, fanned_out_at)
SELECT 'bench:' || g, 'router', '20260201', 'new_releases', 'artist', g::text, 'Artist ' || g,
       jsonb_build_object('new_release_count', 3, 'release_ids', jsonb_build_array('1', '2', '3')),
       now()
FROM generate_series(1, %(n)s) AS g
"""
# The user's rows, with every 101st row going to one of 100 other users instead.
FEED = """
INSERT INTO notifier.notification_events (user_id, event_id, read_at)
SELECT CASE WHEN e.n %% 101 = 0 THEN %(others)s[1 + e.n %% 100] ELSE %(user)s END,
       e.id, CASE WHEN e.n %% 3 = 0 THEN now() END
FROM (SELECT id, row_number() OVER (ORDER BY entity_id::bigint) AS n
      FROM notifier.events WHERE dedup_key LIKE 'bench:%%') e
"""
COUNTER = """
INSERT INTO notifier.unread_counters (user_id, unread)
SELECT %(user)s, count(*) FROM notifier.notification_events
WHERE user_id = %(user)s AND read_at IS NULL
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _measure(client: httpx.Client, path: str, n: int, headers: dict[str, str]) -> list[float]:
    for _ in range(min(200, n)):  # warm-up: connections, plans, caches
        client.get(path, headers=headers).raise_for_status()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000)[int(q * 1000) - 1]


def main(argv: list[str] | None = None) -> int:
    """Seed, start the servers, measure, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.feed_latency", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    user, others = uuid.uuid4(), [uuid.uuid4() for _ in range(100)]
    with services.postgres() as pg:
        name = f"bench_feed_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        procs: list[subprocess.Popen[bytes]] = []
        try:
            db.migrate(pg.url(name))
            started = time.perf_counter()
            with psycopg.connect(pg.url(name)) as conn:
                conn.execute(EVENTS, {"n": args.rows})
                conn.execute(FEED, {"user": user, "others": others})
                conn.execute(COUNTER, {"user": user})
            with psycopg.connect(pg.url(name), autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE notifier.events, notifier.notification_events")
                rows = conn.execute(
                    "SELECT count(*) FROM notifier.notification_events WHERE user_id = %s", (user,)
                ).fetchone()
            seeded = time.perf_counter() - started
            print(f"seeded {rows[0] if rows else 0:,} rows for the user in {seeded:.1f}s",
                  file=sys.stderr)  # fmt: skip

            port, bare_port = _free_port(), _free_port()
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
            with httpx.Client(base_url=api, timeout=600) as client:
                cursor = None
                for _ in range(50):
                    page = client.get("/api/notifications", params={"cursor": cursor} if cursor
                                      else {}, headers=h).json()  # fmt: skip
                    cursor = page["next_cursor"]
                results = {
                    "feed first page (20)": _measure(
                        client, "/api/notifications", args.requests, h
                    ),
                    "feed unread first page": _measure(
                        client, "/api/notifications?unread=true", args.requests, h
                    ),
                    "feed page 51 (cursor)": _measure(
                        client, f"/api/notifications?cursor={cursor}", args.requests, h
                    ),
                    "unread-count": _measure(
                        client, "/api/notifications/unread-count", args.requests, h
                    ),
                }
                started = time.perf_counter()
                marked = client.post("/api/notifications/read-all", headers=h).json()["marked"]
                read_all_s = time.perf_counter() - started
            with httpx.Client(base_url=bare, timeout=30) as client:
                results["bare Starlette JSON (peer)"] = _measure(
                    client, "/count", args.requests, {}
                )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(20)
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    peer = _p(results["bare Starlette JSON (peer)"], 0.99)
    print(f"\nfeed latency, {args.rows:,} notifications for one user, {args.requests} requests "
          f"each, sequential keep-alive on loopback, {datetime.now(UTC):%Y-%m-%d}\n")  # fmt: skip
    print("| request | p50 ms | p99 ms | p99 / bare p99 | target |")
    print("|---|---|---|---|---|")
    for label, samples in results.items():
        target = "p99 <= 10 ms" if label in ("feed first page (20)", "unread-count") else ""
        print(f"| {label} | {_p(samples, 0.5):.2f} | {_p(samples, 0.99):.2f} | "
              f"{_p(samples, 0.99) / peer:.2f}x | {target} |")  # fmt: skip
    print(f"\nread-all (one request) marked {marked:,} notifications in {read_all_s:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
