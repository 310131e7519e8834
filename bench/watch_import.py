"""`POST /api/watchlist/import` on a large collection, through a real `notifier api` process.

    uv run python -m bench.watch_import [--releases 10000] [--rounds 5]

One user collects `--releases` releases (written by `GraphBuilder(platform=True)`
over schema-init's constraints and indexes), spread over 400 artists and 150
labels. Each round deletes the user's watches, then times one import that
creates them all (min_releases 1) and one re-run that finds them all existing;
beside them, the Cypher aggregation alone (the same query over a warm driver
connection from this process: the graph's share). Prints one table; the first
round includes the graph server compiling the query.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import psycopg
from neo4j import AsyncGraphDatabase

from notifier import db
from notifier.api.watchlist import IMPORT_QUERIES
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder, drop_platform_schema, platform_schema

JWT_KEY = "bench-jwt-key-bench-jwt-key-bench-jwt-key"
ARTISTS, LABELS = 400, 150
BODY = {"source": "collection", "entity_types": ["artist", "label"], "min_releases": 1}


def _collection(user: uuid.UUID, releases: int) -> GraphBuilder:
    g = GraphBuilder(platform=True)
    ids = [str(1_000_000 + n) for n in range(releases)]
    for n, rid in enumerate(ids):
        g.release(rid, f"Release {rid}", artists=[str(1 + n % ARTISTS)],
                  labels=[str(50_000 + n % LABELS)])  # fmt: skip
    return g.user(str(user), "bench", collected=ids)


async def _bare(svc: services.GraphService, database: str, user: uuid.UUID) -> float:
    """Seconds of the import's Cypher query alone, through the driver."""
    driver = AsyncGraphDatabase.driver(svc.uri, auth=(svc.user, svc.password))
    params = {"user": str(user), "artists": True, "labels": True, "min": 1}
    try:
        async with driver.session(database=database) as session:
            # Once to open the connection, then timed (the API's pool is warm too).
            await (await session.run(IMPORT_QUERIES["collection"], params)).consume()
            started = time.perf_counter()
            rows = await (await session.run(IMPORT_QUERIES["collection"], params)).values()
            took = time.perf_counter() - started
    finally:
        await driver.close()
    if len(rows) != ARTISTS + LABELS:
        raise RuntimeError(f"the bare query found {len(rows)} entities")
    return took


def main(argv: list[str] | None = None) -> int:
    """Seed the graph, start the API, time the rounds, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.watch_import", description=__doc__)
    p.add_argument("--releases", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    user = uuid.uuid4()
    with services.postgres() as pg, services.graph() as svc:
        name = f"bench_import_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db.migrate(pg.url(name))
        database = svc.new_database()
        neo4j = svc.admin_url is None

        async def seed() -> float:
            driver = AsyncGraphDatabase.driver(svc.uri, auth=(svc.user, svc.password))
            try:
                await platform_schema(driver, database, neo4j=neo4j)
                started = time.perf_counter()
                await _collection(user, args.releases).write(driver, database)
                return time.perf_counter() - started
            finally:
                await driver.close()

        seeded = asyncio.run(seed())
        print(f"wrote {args.releases:,} collected releases in {seeded:.1f}s", file=sys.stderr)
        port = services.free_port()
        env = dict(os.environ, POSTGRES_HOST=pg.host, POSTGRES_PORT=str(pg.port),
                   POSTGRES_USERNAME=pg.user, POSTGRES_PASSWORD=pg.password or "trust",
                   POSTGRES_DATABASE=name, NEO4J_HOST=svc.host, NEO4J_PORT=str(svc.port),
                   NEO4J_USERNAME=svc.user, NEO4J_PASSWORD=svc.password,
                   NEO4J_DATABASE=database, JWT_SECRET_KEY=JWT_KEY,
                   NOTIFIER_PORT=str(port), NOTIFIER_API_RATE_LIMIT="0",
                   LOG_LEVEL="WARNING")  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "notifier.cli", "api"], env=env)
        creates: list[float] = []
        reruns: list[float] = []
        bare: list[float] = []
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url + "/openapi.json", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the API did not start") from None
                    time.sleep(0.1)
            exp = datetime.now(UTC) + timedelta(hours=1)
            token = jwt.encode({"sub": str(user), "exp": exp}, JWT_KEY, algorithm="HS256")
            h = {"Authorization": f"Bearer {token}"}
            want = ARTISTS + LABELS
            with httpx.Client(base_url=url, timeout=120) as client:
                for _ in range(args.rounds):
                    with psycopg.connect(pg.url(name), autocommit=True) as conn:
                        conn.execute("DELETE FROM notifier.watchlists WHERE user_id = %s",
                                     (user,))  # fmt: skip
                    for runs, expect in ((creates, {"created": want, "existing": 0}),
                                         (reruns, {"created": 0, "existing": want})):  # fmt: skip
                        started = time.perf_counter()
                        got = client.post("/api/watchlist/import", json=BODY, headers=h).json()
                        runs.append(time.perf_counter() - started)
                        if got != expect | {"skipped": 0}:
                            raise RuntimeError(f"import answered {got}")
                    bare.append(asyncio.run(_bare(svc, database, user)))
        finally:
            proc.terminate()
            proc.wait(20)

            async def unschema() -> None:
                driver = AsyncGraphDatabase.driver(svc.uri, auth=(svc.user, svc.password))
                try:
                    await drop_platform_schema(driver, database, neo4j=neo4j)
                finally:
                    await driver.close()

            asyncio.run(unschema())
            svc.drop_database(database)
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    server = svc.server or svc.origin
    print(f"\nwatch import, {args.releases:,} collected releases -> {ARTISTS + LABELS} watches, "
          f"{args.rounds} rounds, graph {server}, {datetime.now(UTC):%Y-%m-%d}\n")  # fmt: skip
    print("| call | first ms | median ms | max ms |")
    print("|---|---|---|---|")
    for label, runs in (("import (creates all)", creates), ("re-run (all existing)", reruns),
                        ("Cypher query alone (bench process driver)", bare)):  # fmt: skip
        ms = [r * 1000 for r in runs]
        print(f"| {label} | {ms[0]:.0f} | {statistics.median(ms):.0f} | {max(ms):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
