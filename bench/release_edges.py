"""The artist and label units' lookup of the cycle's new releases, old way vs new.

    uv run python -m bench.release_edges [--releases 38000] [--ids 500] [--rounds 30]

One PostgreSQL (notifier.services), migrated. Two months of synthetic new
releases (`--releases` each, as at 1/10 of Discogs: about 1.4 BY and 1.1 ON
edges a release, artist ids log-uniform over 1M and label ids over 230k, so
id 1 holds about 5 % of the edges, as a hub does) are copied as the releases
unit copies them: cycle_releases, then their edges (releases.edge_rows,
cycle_release_edges), a page of 1,000 at a time, each COPY timed; the last
month is copied again in alternated rounds beside the edges made in the
server from each page just copied (INSERT_EDGES, no Python per edge). Then
alternated rounds (old, new, new, old, ...) of both lookups for `--ids`
distinct ids drawn from the same distributions (the hub among them in one set
of each round): the old query unnests every row of the version
(cycle_releases.artist_ids / label_ids), the new one reads the edges table's
primary key (strategies.NEW_BY_ARTISTS / NEW_ON_LABELS). Both must return the
same pairs. Prints ms per query (median and mean over all rounds) and the
COPY cost of the pairs beside that of the releases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from typing import Any

import psycopg

from bench.core import print_named, spread_ms
from notifier import db, releases, strategies
from notifier.devkit import services
from notifier.percolate import CycleRelease

# The lookups as they were: every row of the version unnested.
OLD_BY_ARTISTS = """
SELECT t.artist_id, r.release_id
FROM notifier.cycle_releases r, unnest(r.artist_ids) AS t (artist_id)
WHERE r.version = %(version)s AND t.artist_id = ANY(%(ids)s)
"""
OLD_ON_LABELS = """
SELECT t.label_id, r.release_id
FROM notifier.cycle_releases r, unnest(r.label_ids) AS t (label_id)
WHERE r.version = %(version)s AND t.label_id = ANY(%(ids)s)
"""
# The peer of the edges' COPY: the same rows made in the server from a page of
# cycle_releases just copied (no Python per edge).
INSERT_EDGES = """
INSERT INTO notifier.cycle_release_edges (version, kind, entity_id, release_id, ord)
SELECT r.version, k.kind, t.id, r.release_id, t.n
FROM notifier.cycle_releases r
CROSS JOIN LATERAL (VALUES ('by', r.artist_ids), ('on', r.label_ids)) AS k (kind, ids)
CROSS JOIN LATERAL unnest(k.ids) WITH ORDINALITY AS t (id, n)
WHERE r.version = %(version)s AND r.release_id BETWEEN %(first)s AND %(last)s
"""
ARTISTS, LABELS = 1_000_000, 230_000
PAGE = 1000


def _zipf(rng: random.Random, n: int) -> str:
    # log-uniform: P(k) ~ 1/k, id 1 about ln 2 / ln n of all draws (5 % for 1M)
    return str(int(n ** rng.random()))


def _rows(rng: random.Random, version: str, first: int, count: int) -> list[CycleRelease]:
    out = []
    for i in range(first, first + count):
        artists = [_zipf(rng, ARTISTS) for _ in range(1 + (rng.random() < 0.4))]
        labels = [_zipf(rng, LABELS) for _ in range(1 + (rng.random() < 0.1))]
        names_a, names_l = [f"Artist {a}" for a in artists], [f"Label {b}" for b in labels]
        title = f"Release title {i}"
        search_text = " ".join([title, *names_a, *names_l]).lower()
        row = CycleRelease(version, i, title, 2026, ["Vinyl", "LP"], artists, names_a, labels,
                           names_l, ["Electronic"], ["House", "Techno"], search_text,
                           rng.randrange(1, 5000))  # fmt: skip
        out.append(row)
    return out


async def _copy(
    url: str, rows: list[CycleRelease], server: bool = False
) -> tuple[float, float, int]:
    """Copy the rows, then their edges, a page at a time as the releases unit does:
    (ms copying releases, ms copying edges, edges)."""
    version = rows[0].version
    rel_ms = edge_ms = 0.0
    n = 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(releases.CLEAR_CYCLE_RELEASES, {"version": version})
        await conn.execute(releases.CLEAR_CYCLE_RELEASE_EDGES, {"version": version})
        for at in range(0, len(rows), PAGE):
            page = rows[at : at + PAGE]
            t0 = time.perf_counter()
            async with conn.cursor().copy(releases.COPY_CYCLE_RELEASES) as copy:
                for r in page:
                    await copy.write_row(r)
            t1 = time.perf_counter()
            edges = releases.edge_rows(page)
            if server:
                first, last = page[0].release_id, page[-1].release_id
                await conn.execute(INSERT_EDGES, {"version": version, "first": first, "last": last})
            else:
                async with conn.cursor().copy(releases.COPY_CYCLE_RELEASE_EDGES) as copy:
                    for e in edges:
                        await copy.write_row(e)
            t2 = time.perf_counter()
            rel_ms, edge_ms, n = (
                rel_ms + (t1 - t0) * 1000,
                edge_ms + (t2 - t1) * 1000,
                n + len(edges),
            )
    return rel_ms, edge_ms, n


def _ids(rng: random.Random, n: int, count: int, hub: bool) -> list[str]:
    # With the hub: the others drawn as the edges are (popular ids, many hits);
    # without: uniformly (a unit of ids few new releases name).
    ids = {"1"} if hub else set()
    while len(ids) < count:
        ids.add(_zipf(rng, n) if hub else str(rng.randrange(1, n)))
    return sorted(ids)


def _timed(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) * 1000, Counter(map(tuple, rows))


def run(
    url: str, n_releases: int, n_ids: int, rounds: int, prepare: int | None = 5
) -> dict[str, Any]:
    """Fill, copy and measure; the figures by name."""
    rng = random.Random(17)
    with psycopg.connect(url, autocommit=True) as conn:
        for v, prev in (("v1", None), ("v2", "v1")):
            conn.execute(
                "INSERT INTO notifier.cycles (version, status, required_services, previous_version)"
                " VALUES (%s, 'running', '{}', %s)",
                (v, prev),
            )
    out: dict[str, Any] = {}
    copies = []
    for v, first in (("v1", 1), ("v2", 1 + n_releases)):
        rows = _rows(rng, v, first, n_releases)
        copies.append(asyncio.run(_copy(url, rows)))
    # Alternated rounds of the last month's copy: edges by COPY, then made in the server.
    for r in range(4):
        for server in (False, True) if r % 2 == 0 else (True, False):
            copies.append(asyncio.run(_copy(url, rows, server)))
            key = "insert_select" if server else "copy"
            out.setdefault(f"{key}_releases_ms", []).append(round(copies[-1][0]))
            out.setdefault(f"{key}_edges_ms", []).append(round(copies[-1][1]))
    with psycopg.connect(url, autocommit=True) as conn:  # the COPY's rows, last
        asyncio.run(_copy(url, rows))
        sql = "SELECT count(*) FROM notifier.cycle_release_edges WHERE version = 'v2'"
        got = conn.execute(sql).fetchone()
    out["edges"] = copies[-1][2]
    out["edges_stored"] = None if got is None else got[0]
    # psycopg prepares a query run 5 times (the router's pools too); then
    # PostgreSQL may settle on a generic plan. None: every query planned afresh.
    with psycopg.connect(url, autocommit=True, prepare_threshold=prepare) as conn:
        conn.execute("VACUUM ANALYZE notifier.cycle_releases")
        conn.execute("VACUUM ANALYZE notifier.cycle_release_edges")
        plan = conn.execute(
            "EXPLAIN " + strategies.NEW_BY_ARTISTS,
            {"version": "v2", "ids": _ids(rng, ARTISTS, n_ids, True)},
        ).fetchall()
        out["plan_hub"] = " / ".join(r[0].strip()[:90] for r in plan)
        plan = conn.execute(
            "EXPLAIN " + strategies.NEW_BY_ARTISTS,
            {"version": "v2", "ids": _ids(rng, ARTISTS, n_ids, False)},
        ).fetchall()
        out["plan_uniform"] = " / ".join(r[0].strip()[:90] for r in plan)
        kinds = {
            "by": (ARTISTS, OLD_BY_ARTISTS, strategies.NEW_BY_ARTISTS),
            "on": (LABELS, OLD_ON_LABELS, strategies.NEW_ON_LABELS),
        }
        sets = ("hub", "uniform")
        times: dict[str, list[float]] = {
            f"{k}_{d}_{s}": [] for k in kinds for d in sets for s in ("old", "new")
        }
        found: dict[str, int] = Counter()
        for r in range(rounds):
            for kind, (n, old_sql, new_sql) in kinds.items():
                for hub in (True, False):
                    params = {"version": "v2", "ids": _ids(rng, n, n_ids, hub)}
                    order = ("old", "new") if (r + hub) % 2 == 0 else ("new", "old")
                    got = {}
                    for side in order:
                        ms, got[side] = _timed(conn, old_sql if side == "old" else new_sql, params)
                        times[f"{kind}_{sets[not hub]}_{side}"].append(ms)
                    if got["old"] != got["new"]:
                        raise RuntimeError(f"{kind}: the two lookups differ")
                    found[kind] += sum(got["new"].values())
        out.update(spread_ms(times))
        out["queries_per_side"] = len(times["by_hub_old"])
        out.update({f"pairs_found_{k}": v for k, v in found.items()})
    return out


def main() -> int:
    """Standalone: measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--releases", type=int, default=38_000)
    p.add_argument("--ids", type=int, default=500)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--no-prepare", action="store_true", help="never prepare the lookups")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        db.migrate(pg.url())
        prepare = None if args.no_prepare else 5
        got = run(pg.url(), args.releases, args.ids, args.rounds, prepare)
    print_named(got)
    return 0


if __name__ == "__main__":
    sys.exit(main())
