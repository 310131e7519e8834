"""PostgreSQL: connections and the migration runner."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from notifier.config import Settings

log = logging.getLogger(__name__)

# pg_advisory_lock key: any fixed bigint; this is "notifier" in ASCII.
MIGRATION_LOCK_KEY = 0x6E6F746966696572

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS notifier;
CREATE TABLE IF NOT EXISTS notifier.schema_migrations (
    version     text        PRIMARY KEY,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


# Per role: (statement_timeout, lock_timeout) in seconds from the settings; 0 is "never".
# Migrations wait for the migration lock and rewrite tables for as long as it takes.
def conninfo_for(settings: Settings, role: str) -> str:
    """The settings' conninfo with the session limits of `role` (api, delivery, router, migrate)."""
    if role == "migrate":
        statement, lock = 0.0, 0.0
    elif role == "router":  # a unit's diff and fan-out statements run long on big installs
        statement, lock = settings.router_statement_timeout, settings.pg_lock_timeout
    else:
        statement, lock = settings.pg_statement_timeout, settings.pg_lock_timeout
    return with_timeouts(settings.postgres_conninfo, statement=statement, lock=lock)


def with_timeouts(conninfo: str, *, statement: float, lock: float) -> str:
    """`conninfo` cancelling statements after `statement` s and lock waits after `lock` s."""
    options = f"-c statement_timeout={round(statement * 1000)} -c lock_timeout={round(lock * 1000)}"
    return make_conninfo(conninfo, options=options)


class MigrationError(RuntimeError):
    """A migration failed or an applied file was changed afterwards."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's text."""
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, recorded when applied."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations_dir() -> Path:
    """`sql/` of the source tree, or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("no sql/ directory found beside the notifier package")


def migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered `NNN_name.sql` files, in order."""
    files = sorted((directory or migrations_dir()).glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(p.stem, p) for p in files]


def migrate(conninfo: str, directory: Path | None = None) -> list[str]:
    """Apply the migrations not yet applied; return their versions.

    Runs under a session advisory lock, so replicas started together apply each
    file once: the others wait, then find nothing left to do. Each file runs in
    its own transaction with its `schema_migrations` row.
    """
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Whatever the server's or the conninfo's defaults: no limit here.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET lock_timeout = 0")
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            with conn.transaction():
                conn.execute(BOOTSTRAP)
            done: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM notifier.schema_migrations").fetchall()
            )
            for m in migrations(directory):
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"{m.path.name} changed after it was applied; add a new file instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(m.path.read_bytes())  # several statements: simple protocol
                        conn.execute(
                            "INSERT INTO notifier.schema_migrations (version, checksum) "
                            "VALUES (%s, %s)",
                            (m.version, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.path.name}: {exc}") from exc
                log.info("applied migration", extra={"migration": m.version})
                applied_now.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def pool(conninfo: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """An async connection pool (open it with `await pool.open()` or `async with`)."""
    return AsyncConnectionPool(
        conninfo, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
    )
