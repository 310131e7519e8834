"""Retention of the router's per-cycle work rows: done cycles but the newest N lose them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from notifier import config, db, retention

NOW = datetime.now(UTC)
WORK_TABLES = ("cycle_releases", "cycle_release_edges", "cycle_masters", "cycle_master_edges",
               "cycle_search_matches")  # fmt: skip
# Versions named against their firing order: the pass must order by time, not name.
OLDEST, MIDDLE, NEWEST, RUNNING = "v9", "v1", "v2", "v0"
CYCLES = ((OLDEST, "done", 4), (MIDDLE, "done", 3), (NEWEST, "done", 2), (RUNNING, "running", 1))
# (kind, entity_id, release_id, ord): one artist listed twice on a release.
EDGES = (("by", "a1", 100, 1), ("by", "a1", 100, 2), ("by", "a2", 101, 1), ("by", "a3", 102, 1),
         ("on", "l1", 100, 1), ("on", "l1", 101, 1), ("on", "l2", 104, 1))  # fmt: skip
# Rows a cycle has in each work table (edges more than releases, as in a month).
# (artist_id, master_id, ord): one artist listed twice on a master.
MASTER_EDGES = (("a1", -1, 1), ("a1", -1, 2), ("a2", 0, 1), ("a1", 1, 1))
ROWS = {"cycle_releases": 5, "cycle_release_edges": len(EDGES), "cycle_masters": 3,
        "cycle_master_edges": len(MASTER_EDGES), "cycle_search_matches": 4}  # fmt: skip
NO_OTHER = {"feed_days": 0, "events_days": 0, "outbox_days": 0, "attempts_days": 0}


def _seed(pg_url: str) -> None:
    """Three done cycles and a running one, each with work rows in all five tables."""
    with psycopg.connect(pg_url) as conn:
        for version, status, days_ago in CYCLES:
            at = NOW - timedelta(days=days_ago)
            conn.execute(
                "INSERT INTO notifier.cycles (version, status, required_services, created_at,"
                " fired_at) VALUES (%s, %s, '{graphinator}', %s, %s)",
                (version, status, at, at),
            )
            for i in range(ROWS["cycle_releases"]):
                conn.execute(
                    "INSERT INTO notifier.cycle_releases (version, release_id) VALUES (%s, %s)",
                    (version, 100 + i),
                )
            for edge in EDGES:
                conn.execute(
                    "INSERT INTO notifier.cycle_release_edges"
                    " (version, kind, entity_id, release_id, ord) VALUES (%s, %s, %s, %s, %s)",
                    (version, *edge),
                )
            for i in range(ROWS["cycle_masters"]):  # a negative id too: below any start key
                conn.execute(
                    "INSERT INTO notifier.cycle_masters (version, master_id) VALUES (%s, %s)",
                    (version, i - 1),
                )
            for edge in MASTER_EDGES:
                conn.execute(
                    "INSERT INTO notifier.cycle_master_edges (version, artist_id, master_id, ord)"
                    " VALUES (%s, %s, %s, %s)",
                    (version, *edge),
                )
            for i in range(ROWS["cycle_search_matches"]):
                conn.execute(
                    "INSERT INTO notifier.cycle_search_matches"
                    " (version, search_id, match_count, matches) VALUES (%s, %s, 1, '[]')",
                    (version, f"s{i}"),
                )


def _left(pg_url: str) -> dict[str, dict[str, int]]:
    """Rows left per work table, per version."""
    with psycopg.connect(pg_url) as conn:
        left: dict[str, dict[str, int]] = {}
        for table in WORK_TABLES:
            query = psycopg.sql.SQL(
                "SELECT version, count(*) FROM notifier.{} GROUP BY version"
            ).format(psycopg.sql.Identifier(table))
            left[table] = {v: int(n) for v, n in conn.execute(query).fetchall()}
        return left


def _all_of(*versions: str) -> dict[str, dict[str, int]]:
    return {t: {v: ROWS[t] for v in versions} for t in WORK_TABLES}


async def _pass(pg_url: str, policy: retention.Policy) -> retention.Removed:
    async with db.pool(pg_url, min_size=1, max_size=2) as pool:
        removed = await retention.run_pass(pool, policy, NOW)
    assert removed is not None
    return removed


async def test_done_cycles_but_the_newest_lose_their_work_rows(pg_url: str) -> None:
    _seed(pg_url)
    removed = await _pass(pg_url, retention.Policy(**NO_OTHER, cycles=2))
    assert (removed.cycles, removed.cycle_rows) == (1, sum(ROWS.values()))
    # The running cycle's rows stay (its units read them), and the two newest done ones'.
    assert _left(pg_url) == _all_of(MIDDLE, NEWEST, RUNNING)
    again = await _pass(pg_url, retention.Policy(**NO_OTHER, cycles=2))
    assert (again.cycles, again.cycle_rows) == (0, 0)
    assert _left(pg_url) == _all_of(MIDDLE, NEWEST, RUNNING)


async def test_zero_cycles_keeps_every_cycles_rows(pg_url: str) -> None:
    _seed(pg_url)
    removed = await _pass(pg_url, retention.Policy(**NO_OTHER, cycles=0))
    assert (removed.cycles, removed.cycle_rows) == (0, 0)
    assert _left(pg_url) == _all_of(OLDEST, MIDDLE, NEWEST, RUNNING)


async def test_batches_smaller_than_a_cycle_still_delete_all_of_it(pg_url: str) -> None:
    _seed(pg_url)
    removed = await _pass(pg_url, retention.Policy(**NO_OTHER, cycles=1, batch=2))
    assert (removed.cycles, removed.cycle_rows) == (2, 2 * sum(ROWS.values()))
    # Each table of each cycle in batches of 2: never one DELETE of the whole cycle.
    assert removed.batches >= 2 * sum((n + 1) // 2 for n in ROWS.values())
    assert _left(pg_url) == _all_of(NEWEST, RUNNING)


def test_the_setting_reaches_the_policy() -> None:
    env = {"POSTGRES_PASSWORD": "x"}
    assert retention.Policy.from_settings(config.load(env, role="delivery")).cycles == 2
    for value, cycles in (("5", 5), (" 0 ", 0)):
        s = config.load(env | {"NOTIFIER_RETENTION_CYCLES": value}, role="delivery")
        assert retention.Policy.from_settings(s).cycles == cycles
    with pytest.raises(config.ConfigError, match=r"^NOTIFIER_RETENTION_CYCLES: expected"):
        config.load(env | {"NOTIFIER_RETENTION_CYCLES": "-1"}, role="delivery")
