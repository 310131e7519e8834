"""Deliveries/s of one `notifier delivery` process vs a bare httpx loop, same run.

    uv run python -m bench.delivery_rate [--rows 20000] [--concurrency 8]
                                         [--endpoints-per-user 1]

Both post to the same fast loopback receiver (a raw asyncio HTTP/1.1 server
in its own process) with the same concurrency. Ours: N outbox rows over 500
webhook endpoints (`--endpoints-per-user` of them a user, each event going to
all of one user's endpoints), due at one instant; a fresh `notifier delivery` process claims,
signs, sends, and records every attempt; the clock runs from the instant the
rows fall due to the moment the last one is `delivered` in PostgreSQL. The
peer: one `httpx.AsyncClient` and `concurrency` tasks posting the same N
bodies with the same header set (fixed values: no signing, no database),
measured before and after ours; the better of its two runs is the peer.
Under our client sits our own transport (per-endpoint h11 keep-alive pools,
channels/http1.py) where the peer has httpx's default (httpcore); the notes
also give the peer's loop on our transport (`bare_on_our_transport`).

Concurrency 8 by default: every webhook here points at one receiver, i.e.
one endpoint, and 8 is the default per-endpoint cap. It is also where the
bare loop is fastest: httpcore's pool walks its connections quadratically,
so one `AsyncClient` at concurrency 64 posts about a third as fast (ours
keeps one small pool per endpoint, so many endpoints do not pay that).
Also usable as a figure of `python -m bench` (`delivery_rate(ctx)`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg

from bench.core import (
    Context,
    Figure,
    cpu_between,
    cpu_seconds,
    machine_cpu,
    niced,
    peak_rss_mb,
    timer,
)
from notifier import secretbox
from notifier.devkit import services

WEBHOOKS = 500
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Answer(asyncio.Protocol):
    """Answers every HTTP/1.1 request with 200 ok, keep-alive."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            m = _CONTENT_LENGTH.search(self.buf, 0, end)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            self.transport.write(_RESPONSE)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def receiver(nice: int = 0) -> Any:
    port = services.free_port()
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*niced(nice), sys.executable, "-m", "bench.delivery_rate", "--serve", str(port)]
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/", content=b"{}")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        proc.terminate()
        proc.wait()


async def fill_outbox(url: str, hook_url: str, rows: int, due_in: float, per_user: int = 1) -> None:
    """`rows` outbox rows over WEBHOOKS endpoints, `per_user` endpoints a user.

    With several endpoints a user, each event goes to every endpoint of one
    user (as fan-out writes it: one message, one id, per endpoint), so
    `rows / per_user` events make the same `rows` messages.
    """
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO notifier.webhook_configs (user_id, url, secret, created_at) "
            "SELECT md5('bench-user-' || (i / %s))::uuid, %s, 'whsec_' || encode(decode("
            "md5(random()::text) || md5(random()::text), 'hex'), 'base64'), "
            "now() + make_interval(secs => i) FROM generate_series(0, %s - 1) AS i",
            (per_user, hook_url, WEBHOOKS),
        )
        await conn.execute(
            "INSERT INTO notifier.events (dedup_key, source, version, event, entity_type, "
            "entity_id, entity_name, detail, fanned_out_at) SELECT 'b' || i, 'router', '20260201', "
            "'new_releases', 'artist', i::text, 'Artist ' || i, "
            "jsonb_build_object('new_release_count', 3, 'release_ids', "
            "jsonb_build_array('456', '789', '1011')), now() FROM generate_series(1, %s) AS i",
            (-(-rows // per_user),),
        )
        await conn.execute(
            "INSERT INTO notifier.outbox (user_id, event_id, webhook_id, next_attempt_at) "
            "SELECT w.user_id, e.id, w.id, now() + make_interval(secs => %(due)s) "
            "FROM (SELECT id, row_number() OVER () %% %(users)s AS k FROM notifier.events) e "
            "JOIN (SELECT id, user_id, (row_number() OVER (ORDER BY created_at) - 1) / %(per)s"
            "      AS k FROM notifier.webhook_configs) w ON w.k = e.k "
            "LIMIT %(rows)s",
            {"due": due_in, "users": WEBHOOKS // per_user, "per": per_user, "rows": rows},
        )
        await conn.execute("VACUUM ANALYZE notifier.outbox")


async def _ours(
    ctx: Context, url: str, hook_url: str, rows: int, concurrency: int, replicas: int = 1,
    per_user: int = 1,
) -> tuple[float, float, float]:  # fmt: skip
    """Deliveries/s of fresh `notifier delivery` processes; peak RSS (MB) of one; CPU ms/row."""
    due_in = 8.0 + 2 * replicas
    await fill_outbox(url, hook_url, rows, due_in, per_user)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT min(next_attempt_at) FROM notifier.outbox")
        (due_at,) = await cur.fetchone()  # type: ignore[misc]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "NOTIFIER_"))}
        env.update(
            POSTGRES_HOST=ctx.pg.host, POSTGRES_PORT=str(ctx.pg.port),
            POSTGRES_USERNAME=ctx.pg.user, POSTGRES_PASSWORD=ctx.pg.password or "trust",
            POSTGRES_DATABASE=url.rsplit("/", 1)[1], NOTIFIER_WEBHOOK_ALLOW_PRIVATE="true",
            LOG_LEVEL="WARNING", NOTIFIER_ENCRYPTION_KEY=secretbox.new_key(),
            NOTIFIER_DELIVERY_CONCURRENCY=str(concurrency),
            NOTIFIER_DELIVERY_PER_ENDPOINT=str(concurrency),  # one receiver for every webhook
            NOTIFIER_DELIVERY_BATCH=str(max(200, concurrency)),
        )  # fmt: skip
        ports = [services.free_port() for _ in range(replicas)]
        procs = [
            subprocess.Popen(  # noqa: S603, ASYNC220 - our interpreter; started once
                [sys.executable, *_profiler(), "-m", "notifier.cli", "delivery"],
                env={**env, "NOTIFIER_PORT": str(port), "NOTIFIER_REPLICA": f"bench-{port}"},
            )
            for port in ports
        ]
        try:
            async with httpx.AsyncClient() as probe:
                for port in ports:  # every process must be up before the rows fall due
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            got = await probe.get(f"http://127.0.0.1:{port}/health")
                            if got.status_code == 200:
                                break
                        await asyncio.sleep(0.1)
            cur = await conn.execute("SELECT extract(epoch FROM %s - now())::float", (due_at,))
            due_in_s = (await cur.fetchone())[0]  # type: ignore[index]
            up_in_time = due_in_s > 0
            await asyncio.sleep(max(due_in_s, 0))
            cpu_before = sum(cpu_seconds(p.pid) for p in procs)  # start-up left out
            machine_before = machine_cpu()
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'delivered'), max(delivered_at) "
                    "FROM notifier.outbox"
                )
                done, last = await cur.fetchone()  # type: ignore[misc]
                if done == rows:
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("notifier delivery exited early")
                await asyncio.sleep(0.2)
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
            machine = cpu_between(machine_before, machine_cpu())
            rss = max(peak_rss_mb(p.pid) for p in procs)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        elapsed = (last - due_at).total_seconds()
        print(
            f"notifier delivery x{replicas}: {cpu:.1f} s CPU over {elapsed:.1f} s", file=sys.stderr
        )
        # Every process group's CPU a delivery (ms): PostgreSQL's share of the
        # claim, completion and attempt rows beside delivery's own (the bench's
        # poll, a count of the outbox every 0.2 s, is in "postgres" too).
        per_row = {k: round(1000 * v / rows, 3) for k, v in machine.items() if k != "idle"}
        print(f"CPU ms a delivery by process group: {per_row}", file=sys.stderr)
        if not up_in_time:
            raise RuntimeError("the rows fell due before the delivery processes were up")
        return float(rows / elapsed), rss, 1000 * cpu / rows


def _profiler() -> list[str]:
    """`-m cProfile -o PATH` when BENCH_PROFILE=PATH is set (to see where time goes)."""
    path = os.environ.get("BENCH_PROFILE")
    return ["-m", "cProfile", "-o", path] if path else []


async def _bare(
    hook_url: str, rows: int, concurrency: int, *, own_transport: bool = False
) -> tuple[float, float]:
    """Requests/s of the bare loop; and its CPU ms per request.

    `own_transport`: the same loop on the transport `notifier delivery` uses
    (`EndpointPools`, not httpx's default), for the notes only.
    """
    body = (
        b'{"id":"00000000-0000-0000-0000-000000000000","event":"new_releases",'
        b'"entity_type":"artist","entity_id":"1","entity_name":"Artist 1","detail":'
        b'{"new_release_count": 3, "release_ids": ["456", "789", "1011"]},'
        b'"version":"20260201","timestamp":"2026-02-01T00:00:00Z"}'
    )
    # The same header set as a signed delivery (fixed values: no signing work).
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Discogsography-Notifier/1 (+webhooks)",
        "webhook-id": "00000000-0000-0000-0000-000000000000",
        "webhook-timestamp": "1769904000",
        "webhook-signature": "v1," + "A" * 43 + "=",
        "X-Discogsography-Signature": "t=1769904000,v1=" + "0" * 64,
    }
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(rows):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = None
    if own_transport:
        from notifier.channels.webhook import EndpointPools

        transport = EndpointPools(allow_private=True, per_endpoint=concurrency, max_pools=8)
    async with httpx.AsyncClient(limits=limits, trust_env=False, transport=transport) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                r = await client.post(hook_url, content=body, headers=headers)
                assert r.status_code == 200

        cpu = time.process_time()
        with timer() as elapsed:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu = time.process_time() - cpu
    return rows / elapsed(), 1000 * cpu / rows


async def delivery_rate(
    ctx: Context, rows: int | None = None, concurrency: int = 8, per_user: int = 1
) -> list[Figure]:
    """The figures: ours vs the bare httpx loop, same receiver, same concurrency; peak RSS."""
    n = rows or ctx.sizes.get("outbox_rows", 20_000)
    url = ctx.fresh_database()
    with receiver() as hook_url:
        bare_before, bare_cpu = await _bare(hook_url, n, concurrency)
        ours, rss, ours_cpu = await _ours(ctx, url, hook_url, n, concurrency, per_user=per_user)
        bare_after, bare_cpu_after = await _bare(hook_url, n, concurrency)
        own, own_cpu = await _bare(hook_url, n, concurrency, own_transport=True)
    bare = max(bare_before, bare_after)
    rate = Figure(
        name="delivery rate (one process)",
        ours=ours,
        unit="deliveries/s",
        peer=bare,
        peer_name=f"bare httpx loop, concurrency {concurrency}",
        target=">= 1,500/s and >= 0.8x",
        passed=ours >= 1500 and ours >= 0.8 * bare,
        notes={
            "rows": n,
            "concurrency": concurrency,
            "endpoints_per_user": per_user,
            "bare_runs": [round(bare_before, 1), round(bare_after, 1)],
            # CPU per delivery, our process vs the bare loop: load barely moves these.
            "cpu_ms_per_delivery": round(ours_cpu, 3),
            "bare_cpu_ms_per_request": round(min(bare_cpu, bare_cpu_after), 3),
            # The peer's loop on our transport (h11 pools, not httpcore's): our
            # pipeline's overhead over the bare requests of the same transport.
            "bare_on_our_transport": round(own, 1),
            "bare_on_our_transport_cpu_ms": round(own_cpu, 3),
        },
    )
    memory = Figure(
        name="peak RSS: delivery",
        ours=rss,
        unit="MB",
        target="<= 200 MB",
        passed=rss <= 200,
        notes={"during": f"the delivery-rate run, {n} rows"},
    )
    return [rate, memory]


# The held-lock alternative, for comparison: claim, (send), complete inside one
# transaction that keeps the row locks; no lease columns are written.
_HELD_CLAIM = """
SELECT o.id, o.user_id FROM notifier.outbox o
WHERE o.status = 'pending' AND o.next_attempt_at <= now()
ORDER BY o.next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED
"""
_HELD_ATTEMPTS = """
INSERT INTO notifier.delivery_attempts
    (outbox_id, user_id, attempted_at, duration_ms, status_code, error, response_excerpt)
SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::timestamptz[], %s::int[], %s::int[],
                     %s::text[], %s::text[])
"""
_HELD_COMPLETE = """
UPDATE notifier.outbox SET status = 'delivered', delivered_at = now(),
    attempts = attempts + 1, updated_at = now()
WHERE id = ANY(%s)
"""


async def claim_rates(ctx: Context, rows: int, batch: int = 200) -> tuple[float, float]:
    """Rows/s claimed and completed with a null transport: lease vs held lock."""
    from datetime import UTC, datetime

    from notifier import outbox

    results = []
    for mode in ("lease", "held"):
        url = ctx.fresh_database()
        await fill_outbox(url, "https://example.invalid/hook", rows, 0)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with timer() as elapsed:
                while True:
                    if mode == "lease":
                        jobs = await outbox.claim(conn, limit=batch, lease_seconds=60, replica="b")
                        now = datetime.now(UTC)
                        done = [
                            outbox.Completion(j, "delivered", attempted_at=now, status_code=200)
                            for j in jobs
                        ]
                        await outbox.complete(conn, done)
                        n = len(jobs)
                    else:
                        async with conn.transaction():
                            cur = await conn.execute(_HELD_CLAIM, (batch,))
                            got = await cur.fetchall()
                            ids = [r[0] for r in got]
                            await conn.execute(
                                _HELD_ATTEMPTS,
                                (ids, [r[1] for r in got], [datetime.now(UTC)] * len(ids),
                                 [0] * len(ids), [200] * len(ids), [None] * len(ids),
                                 [None] * len(ids)),
                            )  # fmt: skip
                            await conn.execute(_HELD_COMPLETE, (ids,))
                        n = len(ids)
                    if n == 0:
                        break
            results.append(rows / elapsed())
    return results[0], results[1]


def main() -> int:
    """Standalone: measure and print the figure."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--replicas", type=int, default=0, help="also measure this many processes together"
    )
    p.add_argument(
        "--endpoints-per-user", type=int, default=1,
        help=f"webhook endpoints a user (of the {WEBHOOKS}); each event goes to all of one "
        "user's endpoints",
    )  # fmt: skip
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    from bench.core import table

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        ctx = Context("custom", {"outbox_rows": args.rows}, pg, stack)
        figs = asyncio.run(delivery_rate(ctx, args.rows, args.concurrency, args.endpoints_per_user))
        lease, held = asyncio.run(claim_rates(ctx, args.rows))
        if args.replicas:
            with receiver() as hook_url:
                rate, _, cpu = asyncio.run(
                    _ours(ctx, ctx.fresh_database(), hook_url, args.rows, args.concurrency,
                          args.replicas)
                )  # fmt: skip
            print(f"{args.replicas} delivery processes together: {rate:,.0f} deliveries/s, "
                  f"{cpu:.2f} ms CPU per delivery")  # fmt: skip
    print(table(figs))
    print(f"\n{figs[0].name}: {figs[0].notes}")
    print(
        f"\nclaim+complete with a null transport, {args.rows} rows, batches of 200: "
        f"lease {lease:,.0f} rows/s, held lock {held:,.0f} rows/s ({lease / held:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
