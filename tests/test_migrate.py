"""`notifier migrate`: the schema, idempotence, and safety under concurrency."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from notifier import db
from notifier.devkit import services
from tests.conftest import env_for

TABLES = {
    "schema_migrations", "watchlists", "preferences", "cycles", "cycle_signals", "diff_units",
    "entity_snapshots", "events", "notification_events", "unread_counters", "webhook_configs",
    "outbox", "delivery_attempts", "feed_tokens",
}  # fmt: skip


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'notifier'"
        ).fetchall()
    return {r[0] for r in rows}


def _applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM notifier.schema_migrations")]


def test_migrate_creates_the_schema_then_is_a_no_op(empty_pg_url: str) -> None:
    first = db.migrate(empty_pg_url)
    assert first == [m.version for m in db.migrations()]
    assert first[0].startswith("001_")
    assert _tables(empty_pg_url) >= TABLES
    assert db.migrate(empty_pg_url) == []
    assert _applied(empty_pg_url) == first


def test_seed_names_keep_their_roles(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        cols = {
            (t, c)
            for t, c in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'notifier'"
            )
        }
    for col in ("user_id", "entity_type", "entity_id", "options", "created_at"):
        assert ("watchlists", col) in cols
    for col in ("user_id", "url", "secret", "active"):
        assert ("webhook_configs", col) in cols
    for col in ("user_id", "event_id", "read_at"):
        assert ("notification_events", col) in cols


def test_concurrent_migrations_apply_each_file_once(empty_pg_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: db.migrate(empty_pg_url), range(4)))
    everything = [m.version for m in db.migrations()]
    assert sorted(results, key=len, reverse=True) == [everything, [], [], []]
    assert _applied(empty_pg_url) == everything


def test_two_cli_processes_at_once(
    pg_server: services.PostgresService,
    empty_pg_url: str,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
) -> None:
    env = env_for(pg_server, empty_pg_url, rabbit_server, graph_server, "unused", "unused")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "notifier.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(o[0].strip() for o in outs)
    assert said[0] == "applied 0 migration(s): none needed"
    everything = [m.version for m in db.migrations()]
    assert said[1] == f"applied {len(everything)} migration(s): {', '.join(everything)}"
    assert _tables(empty_pg_url) >= TABLES


def test_a_changed_applied_file_is_refused(empty_pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("CREATE TABLE notifier.a (x int);")
    assert db.migrate(empty_pg_url, tmp_path) == ["001_a"]
    (tmp_path / "001_a.sql").write_text("CREATE TABLE notifier.a (x bigint);")
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        db.migrate(empty_pg_url, tmp_path)


def test_a_failing_file_is_rolled_back_and_named(empty_pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE notifier.ok (x int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE notifier.half (x int); SELEC 1;")
    with pytest.raises(db.MigrationError, match=r"002_bad\.sql"):
        db.migrate(empty_pg_url, tmp_path)
    assert _applied(empty_pg_url) == ["001_ok"]
    assert "half" not in _tables(empty_pg_url)
    # The lock was released: a fixed file applies.
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE notifier.half (x int);")
    assert db.migrate(empty_pg_url, tmp_path) == ["002_bad"]


def test_every_index_carries_a_comment_naming_its_query() -> None:
    for m in db.migrations():
        lines = m.path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*CREATE (UNIQUE )?INDEX", line):
                assert lines[i - 1].lstrip().startswith("--"), f"{m.path.name}:{i + 1}: {line}"
            if "PRIMARY KEY (" in line or "UNIQUE (" in line:
                assert lines[i - 1].lstrip().startswith("--"), f"{m.path.name}:{i + 1}: {line}"


def test_every_index_exists_and_is_valid(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'notifier' AND i.indisvalid"
            )
        }
    sql = "\n".join(m.path.read_text() for m in db.migrations())
    declared = set(re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+)", sql))
    assert declared and declared <= names


def test_010_keeps_existing_webhooks_and_the_ids_already_sent(
    empty_pg_url: str, tmp_path: Path
) -> None:
    import shutil

    for m in db.migrations():
        if m.version < "010":
            shutil.copy(m.path, tmp_path / m.path.name)
    db.migrate(empty_pg_url, tmp_path)  # the schema as it stood before 010
    with psycopg.connect(empty_pg_url) as conn:
        hook, user = conn.execute(
            "INSERT INTO notifier.webhook_configs (user_id, url, secret) VALUES"
            " (gen_random_uuid(), 'https://example.org/h', 'whsec_AAAA') RETURNING id, user_id"
        ).fetchone()  # type: ignore[misc]
        event = conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, event) VALUES ('k', 'router',"
            " 'new_releases') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO notifier.outbox (user_id, event_id, webhook_id) VALUES (%s, %s, %s)",
            (user, event, hook),
        )
    applied = db.migrate(empty_pg_url)
    assert applied[0] == "010_webhook_endpoints"
    with psycopg.connect(empty_pg_url) as conn:
        # The webhook is now the user's one endpoint, unchanged; a second one fits.
        got = conn.execute(
            "SELECT id, url, secret, active, event_types, rate_limit, public_key"
            " FROM notifier.webhook_configs WHERE user_id = %s",
            (user,),
        ).fetchall()
        assert got == [(hook, "https://example.org/h", "whsec_AAAA", True, None, None, None)]
        conn.execute(
            "INSERT INTO notifier.webhook_configs (user_id, url, secret)"
            " VALUES (%s, 'https://x', 's')",
            (user,),
        )
        # A row made before 010 keeps the id it may already have been sent with.
        row = conn.execute(
            "SELECT message_id, coalesce(message_id, event_id) FROM notifier.outbox"
        ).fetchone()
        assert row == (None, event)
        # Rows made after it get one of their own.
        conn.execute(
            "INSERT INTO notifier.outbox (user_id, event_id, webhook_id, redelivery_of)"
            " VALUES (%s, %s, %s, 1)",
            (user, event, hook),
        )
        fresh = conn.execute(
            "SELECT message_id FROM notifier.outbox WHERE redelivery_of = 1"
        ).fetchone()
        assert fresh is not None and fresh[0] is not None and fresh[0] != event
