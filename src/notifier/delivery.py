"""`notifier delivery`: the poller feeding the senders (contract §1, §6).

One asyncio loop runs:
- the poller: claims due outbox rows in batches (`outbox.claim`, a lease; see
  outbox.py for why a lease and not a held lock) whenever there is room for
  more rows in flight, and starts one task per row;
- the senders: each task sends its row through its channel and turns the
  attempt into the row's next state (`backoff.decide`);
- the completer: writes outcomes and attempt rows in batches, one transaction
  per batch (`outbox.complete`), so the database cost per delivery stays small;
- the scheduler: fans out scheduled events when they fall due
  (`fanout.fan_out_due`);
- the digest loop, when the email channel is on: mails each cycle's email
  digests (`digest_sender`, one a user per cycle);
- `/health` and `/metrics` on `NOTIFIER_PORT`.

SIGTERM drains: no new claims, rows in flight get until the send timeout to
finish, anything still unsent is released (due again at once, attempt not
counted), outcomes are flushed, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import prometheus_client
import psycopg
from psycopg_pool import AsyncConnectionPool

from notifier import (
    backoff,
    config,
    db,
    digest_sender,
    fanout,
    lifecycle,
    outbox,
    retention,
    secretbox,
)
from notifier.channels import Channel, Sent
from notifier.channels.webhook import WebhookOptions, WebhookSender
from notifier.resolver import Resolver

log = logging.getLogger(__name__)

ATTEMPTS = prometheus_client.Counter(
    "notifier_delivery_attempts",
    "Delivery attempts and other row outcomes, by channel and outcome.",
    ["channel", "outcome"],
)
SEND_SECONDS = prometheus_client.Histogram(
    "notifier_delivery_send_seconds",
    "Duration of one send attempt.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CLAIMED = prometheus_client.Counter("notifier_delivery_claimed_rows", "Outbox rows claimed.")
INFLIGHT = prometheus_client.Gauge("notifier_delivery_inflight", "Outbox rows being sent.")
FANNED_OUT = prometheus_client.Counter(
    "notifier_delivery_scheduled_fanouts", "Scheduled events fanned out by the delivery role."
)
DB_ERRORS = prometheus_client.Counter(
    "notifier_delivery_db_errors", "Database errors in the delivery loop, by stage.", ["stage"]
)

RELEASE_DELAY = timedelta(seconds=1)
COMPLETE_BATCH = 500
# Seconds an outcome may wait for others to share its transaction. Also what
# a kill -9 re-sends: outcomes not yet written (about this long's worth of
# answers, tests/reliability/test_delivery_chaos.py), so kept short.
COMPLETE_LINGER = 0.01
FANOUT_EVERY = 1.0
# Shortest wait for the next due row: rows falling due a few milliseconds
# apart are claimed together, not one claim (and one probe) each.
MIN_DUE_WAIT = 0.02


@functools.lru_cache(maxsize=64)
def _attempts(channel: str, outcome: str) -> Any:
    """The labelled child of ATTEMPTS (a `labels()` call per row costs a lock and a lookup)."""
    return ATTEMPTS.labels(channel, outcome)


@functools.lru_cache(maxsize=16)
def _send_seconds(channel: str) -> Any:
    """The labelled child of SEND_SECONDS."""
    return SEND_SECONDS.labels(channel)


@dataclass
class Limits:
    """Knobs of the delivery loop (from `Settings`)."""

    batch: int = 200
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    max_inflight: int = 512
    drain_seconds: float = 20.0
    schedule: tuple[float, ...] = backoff.DEFAULT_SCHEDULE

    @classmethod
    def from_settings(cls, s: config.Settings) -> Limits:
        """The limits `s` asks for."""
        return cls(
            batch=s.delivery_batch,
            lease_seconds=s.delivery_lease_seconds,
            poll_seconds=s.delivery_poll_seconds,
            max_inflight=max_inflight(s),
            drain_seconds=s.delivery_timeout + 5,
            schedule=s.delivery_retry_schedule,
        )


def max_inflight(s: config.Settings) -> int:
    """Rows one process holds at most, sending or queued for a slot.

    Outcomes waiting for their batched write (at most `COMPLETE_LINGER`) are
    not counted: a kill -9 in that window re-sends them (same webhook-id).
    """
    return max(2 * s.delivery_concurrency, 2 * s.delivery_batch)


def triage(job: outbox.Job, now: datetime) -> outbox.Completion | None:
    """The outcome of a row that must not be sent at all, or None to send it."""
    if job.cancelled:
        return outbox.Completion(job, "cancelled", last_error="event cancelled", released=True)
    if job.channel == "webhook":
        if job.webhook_id is None or job.url is None:
            return outbox.Completion(job, "dead", last_error="webhook deleted", released=True)
        if not job.webhook_active:
            return outbox.Completion(job, "paused", last_error="webhook disabled", released=True)
    elif job.channel == "email" and not job.email:
        return outbox.Completion(
            job, "dead", last_error="no email address known for the user", released=True
        )
    return None


def completion(
    job: outbox.Job, sent: Sent, now: datetime, schedule: tuple[float, ...]
) -> outbox.Completion:
    """The row's next state after attempt `sent`."""
    if sent.deferred:
        delay = RELEASE_DELAY
        if sent.result.retry_after is not None:
            delay = timedelta(seconds=sent.result.retry_after)
        return outbox.Completion(job, "pending", next_attempt_at=now + delay, released=True)
    d = backoff.decide(sent.result, job.attempts, now, channel=job.channel, schedule=schedule)
    return outbox.Completion(
        job,
        d.status,
        next_attempt_at=d.next_attempt_at,
        last_error=_text(d.last_error),
        disable_reason=_text(d.disable_reason),
        attempted_at=sent.attempted_at,
        duration_ms=sent.duration_ms,
        status_code=sent.result.status_code,
        error=_text(sent.result.error),
        excerpt=sent.excerpt,
    )


def _text(value: str | None) -> str | None:
    """Error text fit for a text column: no NUL, bounded length."""
    return None if value is None else value.replace("\x00", "\ufffd")[:1000]


def _outcome(c: outbox.Completion) -> str:
    if c.released and c.status == "pending":
        return "deferred"
    return "retry" if c.status == "pending" else c.status


@dataclass
class Delivery:
    """The poller, senders and completer of one process."""

    pool: AsyncConnectionPool[Any]
    channels: Mapping[str, Channel]
    replica: str
    limits: Limits = field(default_factory=Limits)
    # Decrypts the webhook secrets (None: only clear rows, as before sql/014, are readable).
    keys: secretbox.Keyring | None = None

    def __post_init__(self) -> None:
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._deferred = 0
        # Set when rows in flight drop to `_wake_at` (or on stop): the poller
        # waits on it without being woken by every single finished row.
        self._room = asyncio.Event()
        self._wake_at = -1
        self._stop = asyncio.Event()
        self._done: asyncio.Queue[outbox.Completion] = asyncio.Queue()
        self.healthy = True

    @property
    def inflight(self) -> int:
        """Rows claimed by this process and not yet completed."""
        return len(self._inflight)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, then drain."""
        completer = asyncio.create_task(self._complete_loop(), name="completer")
        scheduler = asyncio.create_task(self._schedule_loop(stop), name="scheduler")
        digester = self._digests(stop)
        self._stop = stop
        stopper = asyncio.create_task(_set_when(stop, self._room), name="stopper")
        try:
            await self._poll_loop(stop)
        finally:
            stopper.cancel()
            scheduler.cancel()
            await self._drain()
            await self._done.put(_STOP)
            await completer
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler
            if digester is not None:  # ends after its batch in flight
                await digester

    def _digests(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """The cycles' email digests (digest_sender), when the email channel sends them."""
        mail = self.channels.get("email")
        if mail is None or not hasattr(mail, "send_digest"):
            return None
        loop = digest_sender.DigestLoop(
            self.pool, cast(digest_sender.DigestMailer, mail), self.replica,
            self.limits.lease_seconds, self.limits.poll_seconds, self.limits.schedule,
        )  # fmt: skip
        return asyncio.create_task(loop.run(stop), name="digests")

    async def _poll_loop(self, stop: asyncio.Event) -> None:
        limits = self.limits
        # Claim in sizeable batches: a claim per freed slot would cost a
        # round trip per row.
        least = max(min(limits.batch, limits.max_inflight) // 2, 1)
        while not stop.is_set():
            room = limits.max_inflight - len(self._inflight)
            if room < least:
                await self._wait_for_room(limits.max_inflight - least, limits.poll_seconds)
                continue
            limit = min(limits.batch, room)
            next_due: float | None = None
            waits: dict[int, float] = {}
            try:
                async with self.pool.connection() as conn:
                    jobs = await outbox.claim(
                        conn, limit=limit, lease_seconds=limits.lease_seconds,
                        replica=self.replica, keys=self.keys,
                    )  # fmt: skip
                    if any(job.rate_limit is not None for job in jobs):
                        waits = await outbox.pace(conn, jobs)
                    if len(jobs) < limit:
                        next_due = await outbox.seconds_to_next_due(conn)
                self.healthy = True
            except (psycopg.Error, OSError) as exc:
                DB_ERRORS.labels("claim").inc()
                self.healthy = False
                log.warning("claim failed", extra={"error": str(exc)})
                await self._wait_for_room(-1, max(limits.poll_seconds, 1.0))
                continue
            CLAIMED.inc(len(jobs))
            deferred_before = self._deferred
            if waits:
                jobs = self._hold_back(jobs, waits)
            for job in jobs:
                task = asyncio.create_task(self._handle(job))
                self._inflight[job.outbox_id] = task
            INFLIGHT.set(len(self._inflight))
            await asyncio.sleep(0)  # let the new tasks reach their endpoint queues
            if self._deferred - deferred_before > len(jobs) // 2:
                # Mostly released unsent (a saturated endpoint heads the due
                # queue): pause instead of claiming the same rows round and
                # round, until half the rows in flight are done (a fast
                # endpoint soon; a hanging one holds its rows: poll_seconds).
                await self._wait_for_room(len(self._inflight) // 2, limits.poll_seconds)
            elif len(jobs) < limit:
                # Caught up: sleep until the next row falls due (a scheduled
                # retry, or a burst made to start at one instant), at most
                # poll_seconds. Rows of an expired lease wait for that poll.
                wait = limits.poll_seconds
                if next_due is not None:
                    wait = min(wait, max(next_due, MIN_DUE_WAIT))
                await self._wait_for_room(-1, wait)

    def _hold_back(self, jobs: list[outbox.Job], waits: dict[int, float]) -> list[outbox.Job]:
        """Release the rows over their endpoint's rate limit, due when a token will be there."""
        now = datetime.now(UTC)
        send = []
        for job in jobs:
            wait = waits.get(job.outbox_id)
            if wait is None:
                send.append(job)
                continue
            at = now + timedelta(seconds=max(wait, MIN_DUE_WAIT))
            self._done.put_nowait(
                outbox.Completion(job, "pending", next_attempt_at=at, released=True)
            )
            _attempts(job.channel, "paced").inc()
        return send

    async def _wait_for_room(self, inflight: int, seconds: float) -> None:
        """Wait until rows in flight drop to `inflight`, stop is set, or `seconds` pass."""
        if len(self._inflight) <= inflight or self._stop.is_set():
            return
        self._wake_at = inflight
        self._room.clear()
        try:
            await _wait(self._room, seconds)
        finally:
            self._wake_at = -1

    async def _handle(self, job: outbox.Job) -> None:
        result: outbox.Completion | None = None
        try:
            now = datetime.now(UTC)
            result = triage(job, now)
            if result is None:
                channel = self.channels.get(job.channel)
                if channel is None:
                    result = outbox.Completion(
                        job, "dead", last_error=f"{job.channel} channel not configured",
                        released=True,
                    )  # fmt: skip
                else:
                    sent = await channel.send(job)
                    if not sent.deferred:
                        _send_seconds(job.channel).observe(sent.duration_ms / 1000)
                    result = completion(job, sent, datetime.now(UTC), self.limits.schedule)
        except asyncio.CancelledError:
            # Draining: give the row back unsent, due again at once.
            result = outbox.Completion(job, "pending", next_attempt_at=datetime.now(UTC),
                                       released=True)  # fmt: skip
        except Exception:  # a bug must not lose the row: it is retried on schedule
            log.exception("sending failed unexpectedly", extra={"outbox_id": job.outbox_id})
            result = completion(
                job, Sent(backoff.Result(error="internal_error"), datetime.now(UTC), 0),
                datetime.now(UTC), self.limits.schedule,
            )  # fmt: skip
        finally:
            if result is not None:
                outcome = _outcome(result)
                self._deferred += outcome == "deferred"
                _attempts(job.channel, outcome).inc()
                self._done.put_nowait(result)
            inflight = self._inflight
            inflight.pop(job.outbox_id, None)
            INFLIGHT.set(len(inflight))
            if len(inflight) <= self._wake_at:
                self._room.set()

    async def _complete_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._done.get()
            batch: list[outbox.Completion] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)
            # Linger briefly so that one transaction carries many outcomes
            # (not when nothing is in flight: no more are coming).
            deadline = asyncio.get_running_loop().time() + COMPLETE_LINGER
            while len(batch) < COMPLETE_BATCH and not stopping:
                if self._done.empty():
                    if not self._inflight:
                        break
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(left, 0.005))
                    continue
                item = self._done.get_nowait()
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
            await self._flush(batch, final=stopping)

    async def _flush(self, batch: list[outbox.Completion], *, final: bool) -> None:
        tries = 0
        while batch:
            try:
                async with self.pool.connection() as conn:
                    await outbox.complete(conn, batch, email="email" in self.channels)
                return
            except (psycopg.Error, OSError) as exc:
                DB_ERRORS.labels("complete").inc()
                tries += 1
                log.warning("completing failed", extra={"error": str(exc), "rows": len(batch)})
                if tries >= (3 if final else 10):
                    # Nothing is lost: the leases run out and the rows are sent again.
                    log.error("giving up on writing outcomes", extra={"rows": len(batch)})
                    return
                await asyncio.sleep(min(tries, 5))

    async def _schedule_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    n = await fanout.fan_out_due(conn, email="email" in self.channels)
                FANNED_OUT.inc(n)
            except (psycopg.Error, OSError) as exc:
                DB_ERRORS.labels("fanout").inc()
                log.warning("scheduled fan-out failed", extra={"error": str(exc)})
            except Exception:  # a bug there must not stop delivery
                DB_ERRORS.labels("fanout").inc()
                log.exception("scheduled fan-out failed unexpectedly")
            await _wait(stop, FANOUT_EVERY)

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        if not tasks:
            return
        log.info("draining", extra={"inflight": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=self.limits.drain_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


_STOP: Any = object()


async def _set_when(stop: asyncio.Event, event: asyncio.Event) -> None:
    """Set `event` once `stop` is set (wakes a poller waiting for room)."""
    await stop.wait()
    event.set()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def channels_for(s: config.Settings) -> dict[str, Channel]:
    """The channels `s` enables: webhook always, email when an SMTP host is set."""
    out: dict[str, Channel] = {
        "webhook": WebhookSender(
            WebhookOptions(
                concurrency=s.delivery_concurrency,
                per_endpoint=s.delivery_per_endpoint,
                connect_timeout=s.delivery_connect_timeout,
                read_timeout=s.delivery_read_timeout,
                total_timeout=s.delivery_timeout,
                allow_private=s.webhook_allow_private,
                max_wait=s.delivery_lease_seconds - 2 * s.delivery_timeout,
                max_queue=min(16 * s.delivery_per_endpoint, max_inflight(s) // 4),
                resolver=Resolver(threads=s.resolver_threads, timeout=s.resolver_timeout),
            )
        )
    }
    if s.smtp_enabled:
        from notifier.channels.email import EmailSender

        out["email"] = EmailSender.from_settings(s)
    return out


def health_probe(delivery: Delivery) -> lifecycle.Probe:
    """The delivery role's health: its database, and its loops still running."""

    async def probe() -> tuple[bool, dict[str, Any]]:
        try:
            async with delivery.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            ok = delivery.healthy
        except Exception:  # any failure to reach the database is "unhealthy"
            ok = False
        fields = {"role": "delivery", "replica": delivery.replica, "inflight": delivery.inflight}
        return ok, fields

    return probe


async def serve(settings: config.Settings, stop: asyncio.Event, *, serve_http: bool = True) -> None:
    """Run the delivery role until `stop` is set (then drain).

    `serve_http=False` (inside `notifier all`) leaves `/health` and `/metrics`
    to the process's API server; the metrics share the default registry.
    """
    channels = channels_for(settings)
    pool = db.pool(db.conninfo_for(settings, "delivery"), min_size=2, max_size=6)
    await pool.open()
    keys = secretbox.from_settings(settings.encryption_key, settings.encryption_key_previous)
    delivery = Delivery(pool, channels, settings.replica, Limits.from_settings(settings), keys)
    http = lifecycle.OpsServer(health_probe(delivery), settings.port) if serve_http else None
    if http is not None:
        http.start()
    log.info("delivery started", extra={"port": settings.port if serve_http else None})
    policy = retention.Policy.from_settings(settings)
    keeper = asyncio.create_task(
        retention.run_every(pool, policy, settings.retention_interval_seconds, stop),
        name="retention",
    )
    try:
        await delivery.run(stop)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if http is not None:
            await http.close()
        for channel in channels.values():
            await channel.aclose()
        await pool.close()
    log.info("delivery stopped")


def main(settings: config.Settings) -> int:
    """Entry point of `notifier delivery`: run until SIGTERM/SIGINT, then drain and exit 0."""
    return lifecycle.run("delivery", lambda stop: serve(settings, stop))
