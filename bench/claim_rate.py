"""Outbox claim+complete/s with a null transport vs PgQueuer on the same PostgreSQL.

    uv run python -m bench.claim_rate [--rows 20000] [--batch 200]

Ours: `poller.claim` + `poller.complete` (lease columns, one attempt row per
delivery) draining a prefilled outbox in batches, nothing sent. The peer:
PgQueuer (PyPI) `dequeue` + `log_jobs('successful')` draining the same number
of prefilled jobs in batches of the same size, on the same server, one
connection each. Both drain a queue filled before the clock starts; PgQueuer's
own batched enqueue rate is reported in the notes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from pgqueuer.db import PsycopgDriver
from pgqueuer.queries import EntrypointExecutionParameter, Queries
from pgqueuer.types import QueueEntrypoint, QueueManagerId

from bench.core import Context, Figure, timer
from bench.delivery_rate import fill_outbox
from notifier import poller, services

ENTRYPOINT = "bench"


async def ours(url: str, rows: int, batch: int) -> float:
    """Rows/s claimed and completed (delivered, with their attempt rows), nothing sent."""
    await fill_outbox(url, "https://example.invalid/hook", rows, 0)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        done_rows = 0
        with timer() as elapsed:
            while jobs := await poller.claim(conn, limit=batch, lease_seconds=60, replica="b"):
                now = datetime.now(UTC)
                await poller.complete(
                    conn,
                    [poller.Completion(j, "delivered", attempted_at=now, status_code=200)
                     for j in jobs],
                )  # fmt: skip
                done_rows += len(jobs)
    if done_rows != rows:
        raise RuntimeError(f"claimed {done_rows} of {rows} outbox rows")
    return rows / elapsed()


async def pgqueuer(url: str, rows: int, batch: int) -> tuple[float, float]:
    """PgQueuer (dequeue + log_jobs)/s draining `rows` prefilled jobs; and its enqueue/s."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        await queries.install()
        payload = b'{"event_id": "00000000-0000-0000-0000-000000000000"}'
        with timer() as enqueue_elapsed:
            for i in range(0, rows, 1000):
                n = min(1000, rows - i)
                await queries.enqueue([ENTRYPOINT] * n, [payload] * n, [0] * n)
        enqueue_rate = rows / enqueue_elapsed()
        await conn.execute("VACUUM ANALYZE pgqueuer")
        entrypoints = {QueueEntrypoint(ENTRYPOINT): EntrypointExecutionParameter(0)}
        manager = QueueManagerId(uuid.uuid4())
        done_rows = 0
        with timer() as elapsed:
            while jobs := await queries.dequeue(
                batch, entrypoints, manager, None, timedelta(seconds=60)
            ):
                await queries.log_jobs([(j, "successful", None) for j in jobs])
                done_rows += len(jobs)
    if done_rows != rows:
        raise RuntimeError(f"PgQueuer dequeued {done_rows} of {rows} jobs")
    return rows / elapsed(), enqueue_rate


async def claim_rate(ctx: Context, rows: int | None = None, batch: int = 200) -> Figure:
    """The figure: our claim+complete/s vs PgQueuer dequeue+complete/s, same batch size."""
    n = rows or ctx.sizes["claim_rows"]
    peer, enqueue_rate = await pgqueuer(ctx.fresh_database(), n, batch)
    mine = await ours(ctx.fresh_database(), n, batch)
    return Figure(
        name="outbox claim+complete/s (null transport)",
        ours=mine,
        unit="rows/s",
        peer=peer,
        peer_name=f"PgQueuer {_version()} dequeue+log_jobs",
        target=">= 10,000/s and >= 1.0x",
        passed=mine >= 10_000 and mine >= peer,
        notes={"rows": n, "batch": batch, "pgqueuer_enqueue_per_s": round(enqueue_rate)},
    )


def _version() -> str:
    from importlib.metadata import version

    return version("pgqueuer")


def main() -> int:
    """Standalone: measure and print the figure."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=200)
    args = p.parse_args()
    from bench.core import table

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        ctx = Context("custom", {"claim_rows": args.rows}, pg, stack)
        fig = asyncio.run(claim_rate(ctx, args.rows, args.batch))
    print(table([fig]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
