"""A real `notifier delivery` process against receivers failing in every way at once.

One webhook per failure (500, 429 + Retry-After, 410, hang, slow drip,
connection reset, TLS error, a 30 MB body, redirects to private addresses)
plus a healthy one. Each must end with the right row state and exactly one
attempt row carrying the right status code or error class and excerpt; the
process stays up and healthy, and the 30 MB answer is not read past the cap.

Then a measurement (printed, not asserted: timing is for bench/): the
delivery latency (receipt minus the moment the row fell due) of healthy
endpoints, p50 and p99, first with every endpoint answering, then while 10%
of the endpoints hang; the asserted facts are that nothing is lost and every
row to a hanging endpoint is recorded as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from notifier import backoff
from notifier.channels import EXCERPT_CHARS
from notifier.devkit import services
from tests.delivery.conftest import delivery_env, rows, wait_until
from tests.delivery.receiver import Plan, Received, Receiver, receiver
from tests.reliability.conftest import add_one_row, healthy, start_role, stop_procs

HUGE = 30 * 1024 * 1024
TIMEOUT_S = 2

# The attempt rows of one outbox row, oldest first (delivery_attempts_outbox_idx).
ATTEMPTS_SQL = """
SELECT status_code, error, response_excerpt, duration_ms
FROM notifier.delivery_attempts WHERE outbox_id = %s ORDER BY id
"""
# By primary key.
ROW_SQL = """
SELECT o.status, o.attempts, extract(epoch FROM o.next_attempt_at - now()), o.claim_token,
       w.active, w.disabled_reason
FROM notifier.outbox o JOIN notifier.webhook_configs w ON w.id = o.webhook_id
WHERE o.id = %s
"""


def _peak_rss_mb(pid: int) -> float:
    """Peak resident set of a running process (Linux VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def test_each_failure_gets_its_outcome_and_attempt_row(
    pg_server: services.PostgresService, pg_url: str, tmp_path: Path
) -> None:
    plans = {
        "/ok": Plan(),
        "/500": Plan(500, body=b"boom"),
        "/429": Plan(429, {"Retry-After": "3000"}, body=b"slow down"),
        "/410": Plan(410, body=b"gone"),
        "/hang": Plan(hang=30),
        "/drip": Plan(body=b"x" * 100, drip=0.2),
        "/reset": Plan(reset=True),
        "/huge": Plan(huge=HUGE),
        "/redirect-metadata": Plan(302, {"Location": "http://169.254.169.254/latest/meta-data/"}),
    }
    with receiver(lambda q: plans[q.path]) as r, receiver() as target:
        plans["/redirect-loopback"] = Plan(307, {"Location": target.url})
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            ids = {p: await add_one_row(conn, r.url.replace("/hook", p)) for p in plans}
            # https to a plain-HTTP server: the TLS handshake fails.
            ids["tls"] = await add_one_row(conn, f"https://127.0.0.1:{r.port}/tls")
        env = delivery_env(
            pg_server, pg_url, NOTIFIER_DELIVERY_TIMEOUT=TIMEOUT_S,
            NOTIFIER_DELIVERY_LEASE_SECONDS=3 * TIMEOUT_S,
            NOTIFIER_DELIVERY_RETRY_SCHEDULE="600,600", NOTIFIER_DELIVERY_POLL_SECONDS=0.1,
        )  # fmt: skip
        proc = start_role("delivery", env, tmp_path / "delivery.log")
        try:
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.delivery_attempts "
                             "HAVING count(*) >= %s", len(ids)),
                "an attempt for every row", limit=60, every=0.2,
            )  # fmt: skip
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.outbox WHERE claim_token IS NOT NULL "
                             "HAVING count(*) = 0"),
                "every outcome written", limit=30, every=0.2,
            )  # fmt: skip
            huge = [q for q in r.requests if q.path == "/huge"]
            await wait_until(lambda: huge[0].finished, "the 30 MB answer to end", limit=30)
            await asyncio.sleep(1)  # a second round would show as a second attempt
            async with httpx.AsyncClient() as client:
                health = await client.get(f"http://127.0.0.1:{env['NOTIFIER_PORT']}/health")
            rss = _peak_rss_mb(proc.pid)
            assert proc.poll() is None and health.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            stop_procs([proc])
        got = {p: ([a for a in await rows(pg_url, ATTEMPTS_SQL, i)],
                   (await rows(pg_url, ROW_SQL, i))[0]) for p, i in ids.items()}  # fmt: skip
        paths = [q.path for q in r.requests]
        huge_sent = huge[0].sent

    print(f"\n30 MB answer: {huge_sent / 2**20:.1f} MB written before the sender hung up; "
          f"peak RSS of the delivery process {rss:.0f} MB")  # fmt: skip
    for p, (attempts, row) in sorted(got.items()):
        shown = [(*a[:2], (a[2] or "")[:12], *a[3:]) for a in attempts]
        print(f"{p:20} row={row[:2]} attempts={shown}")
    # Exactly one attempt each: nothing retried within the test, nothing unrecorded.
    assert {p: len(a) for p, (a, _) in got.items()} == dict.fromkeys(ids, 1)
    assert sorted(paths) == sorted(plans)  # each path hit once, no redirect followed
    assert target.requests == []
    one = {p: a[0] for p, (a, _) in got.items()}
    state = {p: row for p, (_, row) in got.items()}

    assert one["/ok"][:3] == (200, None, "ok") and state["/ok"][0] == "delivered"
    assert one["/500"][:3] == (500, None, "boom")
    assert one["/429"][:3] == (429, None, "slow down")
    # Retry-After honoured (it only lengthens the schedule, never shortens it).
    assert 2900 <= state["/429"][2] <= 3000
    assert one["/410"][:3] == (410, None, "gone")
    assert state["/410"][0] == "paused" and state["/410"][4] is False
    assert "410" in state["/410"][5]
    for p in ("/hang", "/drip"):  # cut at the total deadline, however the bytes trickle
        assert one[p][:2] == (None, "timeout") and one[p][3] >= TIMEOUT_S * 1000 * 0.9
    assert one["/reset"][0] is None
    assert one["/reset"][1] in ("transport_error: ReadError", "protocol_error")
    assert one["tls"][:2] == (None, "tls_error")
    assert one["/huge"][0] == 200 and state["/huge"][0] == "delivered"
    assert 0 < len(one["/huge"][2]) <= EXCERPT_CHARS
    assert huge_sent < HUGE  # read up to the cap, then hung up: never the whole body
    for p in ("/redirect-metadata", "/redirect-loopback"):  # a failed attempt, not followed
        assert one[p][0] in (302, 307) and one[p][1] is None
    for p in ("/500", "/429", "/hang", "/drip", "/reset", "tls", "/redirect-metadata",
              "/redirect-loopback"):  # fmt: skip
        assert state[p][:2] == ("pending", 1) and state[p][3] is None, p
    for p in ("/500", "/hang", "/redirect-metadata"):  # the schedule's first step
        assert 600 * (1 - backoff.JITTER) - 60 <= state[p][2] <= 600 * (1 + backoff.JITTER), p


ENDPOINTS = 20
HANGING = 2  # 10% of the endpoints
HOOKS_PER_ENDPOINT = 5
PHASE_ROWS = 400
PHASE_SECONDS = 4.0

# Webhooks: HOOKS_PER_ENDPOINT per receiver URL (no index needed: plain inserts).
ADD_HOOKS_SQL = """
INSERT INTO notifier.webhook_configs (user_id, url, secret)
SELECT gen_random_uuid(), u, 'whsec_' || encode(sha256(u::bytea || i::text::bytea), 'base64')
FROM unnest(%s::text[]) AS u, generate_series(1, %s) AS i
"""
# One event (of the ids given) and one outbox row per row, falling due evenly over `seconds`
# from `start`, round-robin over the webhooks (joined by row number).
ADD_ROWS_SQL = """
WITH ev AS (
    INSERT INTO notifier.events (id, dedup_key, source, version, event, entity_type, entity_id,
                                 entity_name, detail, fanned_out_at)
    SELECT e.id, %(tag)s || (e.n - 1), 'router', '20260201', 'new_releases', 'artist',
           (e.n - 1)::text, 'Artist', '{"new_release_count": 1, "release_ids": ["1"]}'::jsonb, now()
    FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS e (id, n)
    RETURNING id, entity_id::int AS i
), hooks AS (
    SELECT id, user_id, row_number() OVER (ORDER BY id) - 1 AS k FROM notifier.webhook_configs
)
INSERT INTO notifier.outbox (user_id, event_id, webhook_id, next_attempt_at)
SELECT h.user_id, ev.id, h.id,
       %(start)s::timestamptz + make_interval(secs => ev.i * %(seconds)s / %(n)s)
FROM ev JOIN hooks h ON h.k = ev.i %% (SELECT count(*) FROM hooks)
RETURNING event_id::text, extract(epoch FROM next_attempt_at)::float8,
          (SELECT url FROM notifier.webhook_configs w WHERE w.id = webhook_id)
"""


# Rows of these events with a timeout attempt, and their attempts of any kind
# (a scan of the outbox, small here; delivery_attempts_outbox_idx for the join).
HANG_ATTEMPTS_SQL = """
SELECT count(DISTINCT o.id) FILTER (WHERE a.error = 'timeout' AND a.status_code IS NULL),
       count(a.id)
FROM notifier.outbox o JOIN notifier.delivery_attempts a ON a.outbox_id = o.id
WHERE o.event_id = ANY(%s::uuid[])
"""


def _received(recs: list[Receiver]) -> set[str]:
    return {json.loads(q.body)["event_id"] for r in recs for q in list(r.requests)}


async def _hang_timeouts(pg_url: str, events: list[str]) -> bool:
    ((timeouts, _),) = await rows(pg_url, HANG_ATTEMPTS_SQL, events)
    return bool(timeouts == len(events))


async def _add_rows(
    pg_url: str, tag: str, start: Any, ids: list[uuid.UUID], seconds: float
) -> list[tuple[str, float, str]]:
    """A row per event id, falling due evenly over `seconds` from `start`:
    (event, due epoch, url)."""
    args = {"tag": tag, "n": len(ids), "ids": ids, "start": start, "seconds": seconds}
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute(ADD_ROWS_SQL, args)
        return [(str(e), float(at), str(url)) for e, at, url in await cur.fetchall()]


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@pytest.mark.slow
async def test_healthy_latency_while_a_tenth_of_endpoints_hang(
    pg_server: services.PostgresService, pg_url: str, tmp_path: Path
) -> None:
    # Phase 2's rows, not a moment: a phase-1 row sent late to a hanging
    # endpoint is answered, so only phase 2's rows can end in a timeout.
    hang_events: set[str] = set()

    def answer(got: Received) -> Plan:
        return Plan(hang=60) if json.loads(got.body)["event_id"] in hang_events else Plan()

    with contextlib.ExitStack() as stack:
        recs = [stack.enter_context(receiver(answer if i < HANGING else None))
                for i in range(ENDPOINTS)]  # fmt: skip
        bad_urls = {r.url for r in recs[:HANGING]}
        await rows(pg_url, ADD_HOOKS_SQL + " RETURNING 1", [r.url for r in recs],
                   HOOKS_PER_ENDPOINT)  # fmt: skip
        env = delivery_env(
            pg_server, pg_url, NOTIFIER_DELIVERY_TIMEOUT=TIMEOUT_S,
            NOTIFIER_DELIVERY_LEASE_SECONDS=5 * TIMEOUT_S,
            NOTIFIER_DELIVERY_RETRY_SCHEDULE="600", NOTIFIER_DELIVERY_POLL_SECONDS=0.1,
        )  # fmt: skip
        proc = start_role("delivery", env, tmp_path / "delivery.log")
        # Stopped before the receivers close (the stack's last callback runs first).
        stack.callback(stop_procs, [proc])
        port = int(env["NOTIFIER_PORT"])
        await wait_until(lambda: healthy(port), "/health", limit=60, every=0.2)

        # Phase 0 warms up (connections to every endpoint), unmeasured; phase 1
        # is the baseline, every endpoint answering at once; in phase 2 a tenth
        # of the endpoints hang. Rows fall due after they are committed.
        due: dict[str, tuple[float, str, int]] = {}
        for phase, n, seconds in ((0, 100, 1.0), (1, PHASE_ROWS, PHASE_SECONDS),
                                  (2, PHASE_ROWS, PHASE_SECONDS)):  # fmt: skip
            ids = [uuid.uuid4() for _ in range(n)]
            if phase == 2:  # before the rows exist, so before any can be sent
                hang_events.update(str(i) for i in ids)
            start = (await rows(pg_url, "SELECT now() + interval '1.5 seconds'"))[0][0]
            added = await _add_rows(pg_url, f"p{phase}-", start, ids, seconds)
            due.update({event: (at, url, phase) for event, at, url in added})
            # Phases 0 and 1 end when every endpoint has its rows, so they do not overlap.
            want = {e for e, (_, url, p) in due.items()
                    if p == phase and (phase < 2 or url not in bad_urls)}  # fmt: skip
            await wait_until(
                lambda want=want: want <= _received(recs), f"phase {phase}'s healthy rows",
                limit=60, every=0.2,
            )  # fmt: skip
        hang_ids = [e for e, (_, url, p) in due.items() if p == 2 and url in bad_urls]
        await wait_until(
            lambda: _hang_timeouts(pg_url, hang_ids), "a timeout for every hanging row",
            limit=60, every=0.2,
        )  # fmt: skip
        ((_, hang_attempts),) = await rows(pg_url, HANG_ATTEMPTS_SQL, hang_ids)
        assert proc.poll() is None
        latencies: dict[int, list[float]] = {0: [], 1: [], 2: []}
        first_seen: dict[str, float] = {}
        for r in recs[HANGING:]:
            for q in r.requests:
                event = json.loads(q.body)["event_id"]
                first_seen[event] = min(q.wall, first_seen.get(event, q.wall))
        for event, at in first_seen.items():
            latencies[due[event][2]].append(at - due[event][0])
        statuses = dict(
            await rows(pg_url, "SELECT status, count(*) FROM notifier.outbox GROUP BY 1")
        )

    base_p99, hang_p99 = _p(latencies[1], 99), _p(latencies[2], 99)
    print(
        f"\nhealthy endpoints' latency (receipt - due), {len(latencies[1])} rows alone: "
        f"p50 {_p(latencies[1], 50) * 1000:.0f} ms, p99 {base_p99 * 1000:.0f} ms; "
        f"{len(latencies[2])} rows while {HANGING}/{ENDPOINTS} endpoints hang: "
        f"p50 {_p(latencies[2], 50) * 1000:.0f} ms, p99 {hang_p99 * 1000:.0f} ms; "
        f"p99 ratio {hang_p99 / base_p99:.2f}x"
    )
    hung = PHASE_ROWS * HANGING // ENDPOINTS
    assert len(hang_ids) == hung
    # Nothing lost: every row of an always-healthy endpoint arrived, in both phases…
    assert len(latencies[1]) == len(latencies[2]) == PHASE_ROWS - hung
    # …every other row is delivered, and each hanging one has exactly its one timeout.
    assert statuses == {"delivered": 100 + 2 * PHASE_ROWS - hung, "pending": hung}
    assert hang_attempts == hung
