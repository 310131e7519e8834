"""Outbox claim+complete/s with a null transport vs PgQueuer on the same PostgreSQL.

    uv run python -m bench.claim_rate [--rows 20000] [--batch 200]

Ours: `outbox.claim` + `outbox.complete` (a lease per row, one attempt row
per delivery, each job with everything sending needs: body fields, URL,
secrets) draining a prefilled outbox in batches, nothing sent. The peer:
PgQueuer (PyPI) `dequeue` + `log_jobs('successful')` (its completion, logged
in its log table) draining the same number of prefilled jobs in batches of the
same size, on the same server, one connection each, its queue table tuned as
its `pgq autovac` command does. Each PgQueuer job carries in its payload what
ours returns (body, URL, secret; `_peer_payload`). Both drain a queue filled
before the clock starts, on a fresh database per round; PgQueuer's own batched
enqueue rate is in the notes. The two run in alternated rounds and the figure
takes the best round of each: a busy machine slows both, and the ratio of
single rounds moved by ±30% from run to run. Each side's clock starts after a
CHECKPOINT: neither pays for writing out the other's (or its own) fill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
from pgqueuer.db import PsycopgDriver
from pgqueuer.queries import EntrypointExecutionParameter, Queries
from pgqueuer.types import QueueEntrypoint, QueueManagerId

from bench.core import Context, Figure, timer
from bench.delivery_rate import fill_outbox
from notifier import outbox
from notifier.devkit import services

ENTRYPOINT = "bench"


async def ours(url: str, rows: int, batch: int) -> float:
    """Rows/s claimed and completed (delivered, with their attempt rows), nothing sent."""
    await fill_outbox(url, "https://example.invalid/hook", rows, 0)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")  # the fill written out before the clock starts
        done_rows = 0
        with timer() as elapsed:
            while jobs := await outbox.claim(conn, limit=batch, lease_seconds=60, replica="b"):
                now = datetime.now(UTC)
                await outbox.complete(
                    conn,
                    [outbox.Completion(j, "delivered", attempted_at=now, status_code=200)
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
        # PgQueuer's own tuning for busy queues (`pgq autovac`): fillfactor 70
        # and eager autovacuum on its queue table; we tune ours (004) too.
        await queries.optimize_autovacuum()
        payload = _peer_payload()
        with timer() as enqueue_elapsed:
            for i in range(0, rows, 1000):
                n = min(1000, rows - i)
                await queries.enqueue([ENTRYPOINT] * n, [payload] * n, [0] * n)
        enqueue_rate = rows / enqueue_elapsed()
        await conn.execute("VACUUM ANALYZE pgqueuer")
        await conn.execute("CHECKPOINT")  # as for ours
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
    rounds = ROUNDS.get(ctx.scale, 3)
    peers: list[float] = []
    mine: list[float] = []
    enqueue: list[float] = []

    async def peer_round() -> None:
        rate, enqueue_rate = await pgqueuer(ctx.fresh_database(), n, batch)
        peers.append(rate)
        enqueue.append(enqueue_rate)

    async def our_round() -> None:
        mine.append(await ours(ctx.fresh_database(), n, batch))

    for i in range(rounds):  # alternated: peer, ours, ours, peer, …
        for run in (peer_round, our_round) if i % 2 == 0 else (our_round, peer_round):
            await run()
    best, best_peer = max(mine), max(peers)
    return Figure(
        name="outbox claim+complete/s (null transport)",
        ours=best,
        unit="rows/s",
        peer=best_peer,
        peer_name=f"PgQueuer {_version()} dequeue+log_jobs; best of {rounds} alternated rounds",
        target=">= 10,000/s and >= 1.0x",
        passed=best >= 10_000 and best >= best_peer,
        notes={
            "rows": n,
            "batch": batch,
            "rounds": {"ours": [round(r) for r in mine], "pgqueuer": [round(r) for r in peers]},
            "pgqueuer_enqueue_per_s": round(max(enqueue)),
        },
    )


# Alternated rounds of each side; 4 at 200k rows keeps `full` to about 2.5
# minutes (with 2 the first round of each side, slowed by what the stage
# before left to write out, decided the ratio).
ROUNDS = {"full": 4}


def _peer_payload() -> bytes:
    """What a PgQueuer job needs to send the same webhook: body, URL and secret.

    Our claim returns exactly this (the body's fields, the URL, the secrets),
    read from the event and the webhook config; a PgQueuer job carries it in
    its payload. The values have the sizes of the rows `fill_outbox` writes.
    """
    return msgspec.json.encode(
        {
            "url": "https://example.invalid/hook",
            "secret": "whsec_" + "A" * 44,
            "body": {
                "id": str(uuid.uuid4()), "event": "new_releases", "entity_type": "artist",
                "entity_id": "12345", "entity_name": "Artist 12345",
                "detail": {"new_release_count": 3, "release_ids": ["456", "789", "1011"]},
                "version": "20260201", "timestamp": "2026-02-01T00:00:00Z",
            },
        }
    )  # fmt: skip


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
