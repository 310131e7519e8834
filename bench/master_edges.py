"""The artist units' count of the cycle's new masters by artist, old way vs new.

    uv run python -m bench.master_edges [--masters 5000] [--ids 500] [--rounds 30]

One PostgreSQL (notifier.services), migrated. Two months of synthetic new
masters (`--masters` each: 5,000 is a month at 1/10 of Discogs, 250k masters
growing by 2 %; 50,000 the full catalogue's), about 1.1 BY edges a master
with artist ids log-uniform over 1M (id 1 about 5 % of the edges, as a hub),
copied as the releases unit copies them (releases.master_rows' shape into
cycle_masters, releases.master_edge_rows into cycle_master_edges), then
analyzed as the unit does. Then alternated rounds (old, new, new, old, ...)
of the count for `--ids` distinct ids (the hub and popular ids in one set of
each round, uniform ids in the other): the old query unnests every master of
the version (cycle_masters.artist_ids), the new one reads the edges table's
primary key (strategies.NEW_MASTERS_BY_ARTISTS). Both must return the same
counts. Prints ms per query (median and mean) and the COPY cost of each table.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from typing import Any

import psycopg

from bench.core import print_named, spread_ms
from notifier import db, releases, strategies
from notifier.devkit import services

# The count as it was: every new master of the version unnested.
OLD_MASTERS_BY_ARTISTS = """
SELECT t.artist_id, count(*)
FROM notifier.cycle_masters m, unnest(m.artist_ids) AS t (artist_id)
WHERE m.version = %(version)s AND t.artist_id = ANY(%(ids)s)
GROUP BY t.artist_id
"""
ARTISTS = 1_000_000

MasterRow = tuple[str, int, list[str], list[str], list[str]]


def _zipf(rng: random.Random) -> str:
    # log-uniform: P(k) ~ 1/k, id 1 about ln 2 / ln n of all draws (5 % for 1M)
    return str(int(ARTISTS ** rng.random()))


def _masters(rng: random.Random, version: str, first: int, count: int) -> list[MasterRow]:
    return [
        (version, i, [_zipf(rng) for _ in range(1 + (rng.random() < 0.1))], ["Rock"], ["Punk"])
        for i in range(first, first + count)
    ]


def _copy(conn: psycopg.Connection[Any], rows: list[MasterRow]) -> tuple[float, float, int]:
    """Copy the masters, then their edges, as the releases unit does:
    (ms copying masters, ms copying edges, edges)."""
    version = {"version": rows[0][0]}
    conn.execute(releases.CLEAR_CYCLE_MASTERS, version)
    conn.execute(releases.CLEAR_CYCLE_MASTER_EDGES, version)
    t0 = time.perf_counter()
    with conn.cursor().copy(releases.COPY_CYCLE_MASTERS) as copy:
        for r in rows:
            copy.write_row(r)
    t1 = time.perf_counter()
    edges = releases.master_edge_rows(rows)
    with conn.cursor().copy(releases.COPY_CYCLE_MASTER_EDGES) as copy:
        for e in edges:
            copy.write_row(e)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, len(edges)


def _ids(rng: random.Random, count: int, hub: bool) -> list[str]:
    # With the hub: the others drawn as the edges are (popular ids, many hits);
    # without: uniformly (a unit of ids few new masters name).
    ids = {"1"} if hub else set()
    while len(ids) < count:
        ids.add(_zipf(rng) if hub else str(rng.randrange(1, ARTISTS)))
    return sorted(ids)


def _timed(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]
) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) * 1000, {a: int(n) for a, n in rows}


def run(url: str, n_masters: int, n_ids: int, rounds: int) -> dict[str, Any]:
    """Fill, copy, analyze and measure; the figures by name."""
    rng = random.Random(23)
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for v, prev in (("v1", None), ("v2", "v1")):
            conn.execute(
                "INSERT INTO notifier.cycles (version, status, required_services, previous_version)"
                " VALUES (%s, 'running', '{}', %s)",
                (v, prev),
            )
        for v, first in (("v1", 1), ("v2", 1 + n_masters)):
            masters_ms, edges_ms, out["edges"] = _copy(conn, _masters(rng, v, first, n_masters))
        out["copy_masters_ms"], out["copy_edges_ms"] = round(masters_ms), round(edges_ms)
        conn.execute("ANALYZE notifier.cycle_masters, notifier.cycle_master_edges")
    # psycopg prepares a query run 5 times, as the router's pools do.
    with psycopg.connect(url, autocommit=True, prepare_threshold=5) as conn:
        plan = conn.execute(
            "EXPLAIN " + strategies.NEW_MASTERS_BY_ARTISTS,
            {"version": "v2", "ids": _ids(rng, n_ids, True)},
        ).fetchall()
        out["plan_new"] = " / ".join(r[0].strip()[:90] for r in plan)
        queries = {"old": OLD_MASTERS_BY_ARTISTS, "new": strategies.NEW_MASTERS_BY_ARTISTS}
        sets = ("hub", "uniform")
        times: dict[str, list[float]] = {f"{d}_{s}": [] for d in sets for s in ("old", "new")}
        found = 0
        for r in range(rounds):
            for hub in (True, False):
                params = {"version": "v2", "ids": _ids(rng, n_ids, hub)}
                got: dict[str, dict[str, int]] = {}
                for side in ("old", "new") if (r + hub) % 2 == 0 else ("new", "old"):
                    ms, got[side] = _timed(conn, queries[side], params)
                    times[f"{sets[not hub]}_{side}"].append(ms)
                if got["old"] != got["new"]:
                    raise RuntimeError("the two counts differ")
                found += sum(got["new"].values())
        out.update(spread_ms(times))
        out["queries_per_side"] = len(times["hub_old"])
        out["edges_counted"] = found
    return out


def main() -> int:
    """Standalone: measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--masters", type=int, default=5_000)
    p.add_argument("--ids", type=int, default=500)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        db.migrate(pg.url())
        got = run(pg.url(), args.masters, args.ids, args.rounds)
    print_named(got)
    return 0


if __name__ == "__main__":
    sys.exit(main())
