"""Real backing services for every test: PostgreSQL, RabbitMQ and a Bolt graph.

Each server is started once per session (see notifier.devkit.services for the order
of preference: env URL, testcontainers, local binaries); each test gets its
own database, exchange names and graph database. A service that cannot be had
stops the whole run with the reason; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import psycopg
import pytest
from neo4j import AsyncDriver, AsyncGraphDatabase

from notifier import db, secretbox
from notifier.devkit import services
from tests.smtp import Inbox, smtp_server

T = TypeVar("T")

# The session's key for webhook secrets at rest (every process of a test shares it).
ENCRYPTION_KEY = secretbox.new_key()
KEYS = secretbox.Keyring(secretbox.parse_key(ENCRYPTION_KEY))


def stored_secrets(pg_url: str, user: uuid.UUID) -> list[tuple[str | None, str | None]]:
    """The user's endpoints' (secret, previous secret) as stored, decrypted; oldest first."""
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT id, secret, secret_enc, previous_secret, previous_secret_enc "
            "FROM notifier.webhook_configs WHERE user_id = %s ORDER BY created_at, id",
            (user,),
        ).fetchall()
    return [
        (secretbox.read(KEYS, h, s, se), secretbox.read(KEYS, h, p, pe)) for h, s, se, p, pe in rows
    ]


def _start(request: pytest.FixtureRequest, name: str, cm: AbstractContextManager[T]) -> T:
    try:
        value = cm.__enter__()
    except services.ServiceUnavailable as exc:
        pytest.exit(f"cannot start {name} for the tests: {exc}", returncode=3)
    request.addfinalizer(lambda: cm.__exit__(None, None, None))
    return value


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> services.PostgresService:
    """The session's PostgreSQL server."""
    return _start(request, "PostgreSQL", services.postgres())


@pytest.fixture(scope="session")
def rabbit_server(request: pytest.FixtureRequest) -> services.RabbitService:
    """The session's RabbitMQ broker."""
    return _start(request, "RabbitMQ", services.rabbitmq())


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> services.RedisService:
    """The session's Redis (where the platform keeps its token revocations)."""
    return _start(request, "Redis", services.redis())


_GRAPH_USED: list[str] = []


@pytest.fixture(scope="session")
def graph_server(request: pytest.FixtureRequest) -> services.GraphService:
    """The session's Bolt graph server (its name and version go in the terminal summary)."""
    svc = _start(request, "the Bolt graph server", services.graph())
    _GRAPH_USED.append(services.describe_graph(svc))
    return svc


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which graph server the run used, e.g. `graph: Neo4j 2026.08.1 community`."""
    terminalreporter.write_line(f"graph: {_GRAPH_USED[0] if _GRAPH_USED else 'not started'}")


@pytest.fixture(scope="session")
def pg_template(pg_server: services.PostgresService) -> str:
    """A migrated database that per-test databases are cloned from."""
    name = f"notifier_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db.migrate(pg_server.url(name))
    return name


def _new_database(pg_server: services.PostgresService, template: str | None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: services.PostgresService, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    yield from _new_database(pg_server, pg_template)


@pytest.fixture
def empty_pg_url(pg_server: services.PostgresService) -> Iterator[str]:
    """A fresh database with no schema at all."""
    yield from _new_database(pg_server, None)


@pytest.fixture
def exchange_name() -> str:
    """A completion exchange name of this test's own."""
    return f"import.completed.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def graph_db(graph_server: services.GraphService) -> Iterator[str]:
    """A fresh, empty graph database for this test."""
    name = graph_server.new_database()
    yield name
    graph_server.drop_database(name)


@pytest.fixture
async def platform_graph(
    graph_server: services.GraphService, graph_driver: AsyncDriver, graph_db: str
) -> AsyncIterator[str]:
    """This test's graph database with schema-init's constraints and indexes (dropped after)."""
    from notifier.devkit.graphbuilder import platform_schema_applied

    neo4j = graph_server.admin_url is None  # an ArcadeDB server has an admin URL
    async with platform_schema_applied(graph_driver, graph_db, neo4j=neo4j):
        yield graph_db


@pytest.fixture
async def graph_driver(graph_server: services.GraphService) -> AsyncIterator[AsyncDriver]:
    """An async `neo4j` driver on the session's graph server."""
    driver = AsyncGraphDatabase.driver(
        graph_server.uri, auth=(graph_server.user, graph_server.password)
    )
    yield driver
    await driver.close()


@pytest.fixture
def notifier_env(
    pg_server: services.PostgresService,
    pg_url: str,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
    graph_db: str,
    exchange_name: str,
) -> dict[str, str]:
    """Environment for a `notifier` process wired to this test's services."""
    return env_for(pg_server, pg_url, rabbit_server, graph_server, graph_db, exchange_name)


def env_for(
    pg_server: services.PostgresService,
    pg_url: str,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
    graph_db: str,
    exchange_name: str,
    **extra: Any,
) -> dict[str, str]:
    """The contract §2 variables for these services (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "NEO4J_"))}
    env.update(
        POSTGRES_HOST=pg_server.host,
        POSTGRES_PORT=str(pg_server.port),
        POSTGRES_USERNAME=pg_server.user,
        POSTGRES_PASSWORD=pg_server.password or "trust-auth-ignores-this",
        POSTGRES_DATABASE=pg_url.rsplit("/", 1)[1],
        RABBITMQ_HOST=rabbit_server.host,
        RABBITMQ_PORT=str(rabbit_server.port),
        RABBITMQ_USERNAME=rabbit_server.user,
        RABBITMQ_PASSWORD=rabbit_server.password,
        RABBITMQ_VHOST=rabbit_server.vhost,
        NEO4J_HOST=graph_server.host,
        NEO4J_PORT=str(graph_server.port),
        NEO4J_USERNAME=graph_server.user,
        NEO4J_PASSWORD=graph_server.password,
        NEO4J_DATABASE=graph_db,
        NOTIFIER_COMPLETION_EXCHANGE=exchange_name,
        JWT_SECRET_KEY="test-jwt-secret-key-that-is-long-enough-for-hs256",
        NOTIFIER_ENCRYPTION_KEY=ENCRYPTION_KEY,
        NOTIFIER_WEBHOOK_ALLOW_PRIVATE="true",
        LOG_LEVEL="INFO",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A running aiosmtpd server on loopback that accepts everything (tests.smtp)."""
    with smtp_server(Inbox()) as served:
        yield served
