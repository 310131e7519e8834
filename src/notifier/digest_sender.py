"""The delivery role's digest loop: claim due digests, mail them, write outcomes.

Runs beside the outbox poller in every delivery process when the email
channel is on. A batch is claimed (a lease, `digests.claim`), its events read
in the same connection, each digest mailed (a few at a time: the email
channel's own slots), and the outcomes written in one statement. A digest
that fails is retried on the delivery schedule (`backoff.decide`, channel
email: dead after the last attempt); one whose user has no recorded address
is dead at once (nothing sent, no attempt). Stopping lets the batch in
flight finish (SMTP calls time out), writes its outcomes and returns; a
process killed meanwhile leaves leases that run out, and another replica
sends those digests again with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import prometheus_client
import psycopg
from psycopg_pool import AsyncConnectionPool

from notifier import backoff, digests
from notifier.channels import Sent

log = logging.getLogger(__name__)

DIGESTS = prometheus_client.Counter(
    "notifier_email_digests",
    "Email digests by outcome (delivered, retry, dead, no_address, error).",
    ["outcome"],
)
BATCH = 20


class DigestMailer(Protocol):
    """What the loop needs from the email channel."""

    async def send_digest(
        self, job: digests.DigestJob, events: Sequence[digests.DigestEvent]
    ) -> Sent:
        """Mail one digest once; never raises for a failed send."""
        ...


@dataclass
class DigestLoop:
    """Sends the due digests of every cycle, as one delivery replica."""

    pool: AsyncConnectionPool[Any]
    mailer: DigestMailer
    replica: str
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    schedule: tuple[float, ...] = backoff.DEFAULT_SCHEDULE

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send digests until `stop` is set."""
        while not stop.is_set():
            try:
                async with self.pool.connection() as conn:
                    jobs = await digests.claim(
                        conn, limit=BATCH, lease_seconds=self.lease_seconds, replica=self.replica
                    )
                    events = await digests.items(conn, jobs)
            except (psycopg.Error, OSError) as exc:
                log.warning("digest claim failed", extra={"error": str(exc)})
                await _wait(stop, max(self.poll_seconds, 1.0))
                continue
            if not jobs:
                await _wait(stop, self.poll_seconds)
                continue
            outcomes = await asyncio.gather(*(self.send(j, events[j.digest_id]) for j in jobs))
            await self._write(list(outcomes))

    async def send(
        self, job: digests.DigestJob, events: Sequence[digests.DigestEvent]
    ) -> digests.DigestOutcome:
        """Mail one claimed digest; its outcome."""
        now = datetime.now(UTC)
        if not job.email:
            DIGESTS.labels("no_address").inc()
            return digests.DigestOutcome(
                job, "dead", last_error="no email address known for the user", released=True
            )
        if not events:  # every event of it was cancelled
            return digests.DigestOutcome(job, "dead", last_error="nothing left to send",
                                         released=True)  # fmt: skip
        try:
            sent = await self.mailer.send_digest(job, events)
        except Exception:  # a bug must not lose the digest: retried on schedule
            log.exception("sending a digest failed unexpectedly", extra={"digest": job.digest_id})
            sent = Sent(backoff.Result(error="internal_error"), now, 0)
        d = backoff.decide(sent.result, job.attempts, datetime.now(UTC), channel="email",
                           schedule=self.schedule)  # fmt: skip
        DIGESTS.labels("retry" if d.status == "pending" else d.status).inc()
        return digests.DigestOutcome(
            job, d.status, next_attempt_at=d.next_attempt_at, last_error=d.last_error,
            attempted_at=sent.attempted_at, duration_ms=sent.duration_ms,
            status_code=sent.result.status_code, error=sent.result.error, excerpt=sent.excerpt,
        )  # fmt: skip

    async def _write(self, outcomes: list[digests.DigestOutcome]) -> None:
        for tries in range(1, 6):
            try:
                async with self.pool.connection() as conn:
                    await digests.complete(conn, outcomes)
                return
            except (psycopg.Error, OSError) as exc:
                log.warning("writing digest outcomes failed", extra={"error": str(exc)})
                await asyncio.sleep(min(tries, 5))
        # Nothing is lost: the leases run out and the digests are sent again.
        log.error("giving up on writing digest outcomes", extra={"rows": len(outcomes)})


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
