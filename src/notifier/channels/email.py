"""The email channel (contract §2): off unless `NOTIFIER_SMTP_HOST` is set.

Sends one plain-text message per outbox row (events from /internal/events and
system notices), and one digest per user and cycle (`send_digest`, see
channels/digest.py), to the address the API recorded for the user
(`notifier.user_emails`), through the configured SMTP relay, with STARTTLS
when the server offers it. The `Message-ID` is the row's message id, so a
retried message can be recognised as the same one. smtplib blocks, so each
send runs in a worker thread, a few at a time.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

from notifier import backoff, config
from notifier.channels import Sent, digest, excerpt
from notifier.digests import DigestEvent, DigestJob
from notifier.outbox import Job

SMTP_TIMEOUT = 20.0
MAX_PARALLEL = 4


def message(job: Job, sender: str) -> EmailMessage:
    """The email of one event (pure)."""
    name = job.entity_name or job.entity_id or ""
    msg = EmailMessage()
    msg["Subject"] = f"[Discogsography] {job.event.replace('_', ' ')}" + (
        f": {name}" if name else ""
    )
    msg["From"] = sender
    msg["To"] = job.email or ""
    msg["Message-ID"] = f"<{job.message_id}@notifier.discogsography>"
    detail = json.dumps(json.loads(job.detail_json), indent=2, ensure_ascii=False)
    lines = [
        f"Event: {job.event}",
        f"Entity: {job.entity_type or '-'} {job.entity_id or ''} {job.entity_name or ''}".rstrip(),
        f"Version: {job.version or '-'}",
        "",
        detail,
        "",
        f"Event id: {job.event_id}",
    ]
    msg.set_content("\n".join(lines))
    return msg


@dataclass
class EmailSender:
    """Sends event emails through one SMTP relay."""

    host: str
    port: int
    sender: str
    public_url: str | None = None  # digests link back to the feed under it

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(MAX_PARALLEL)

    @classmethod
    def from_settings(cls, s: config.Settings) -> EmailSender:
        """The sender `s` configures (`smtp_host` must be set)."""
        assert s.smtp_host and s.smtp_from
        return cls(s.smtp_host, s.smtp_port, s.smtp_from, s.public_url)

    def _send_blocking(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            smtp.send_message(msg)

    async def send(self, job: Job) -> Sent:
        """Send the event's email once; SMTP errors become a failed attempt."""
        return await self._attempt(lambda: message(job, self.sender))

    async def send_digest(self, job: DigestJob, events: Sequence[DigestEvent]) -> Sent:
        """Send a user's digest of one cycle once; SMTP errors become a failed attempt."""
        return await self._attempt(
            lambda: digest.message(
                job, events, sender=self.sender, public_url=self.public_url,
                now=datetime.now(UTC),
            )
        )  # fmt: skip

    async def _attempt(self, build: Callable[[], EmailMessage]) -> Sent:
        """Build and send one mail; a bad header or an SMTP error is a failed attempt."""
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()
        detail: str | None = None
        try:
            msg = build()
            async with self._slots:
                await asyncio.to_thread(self._send_blocking, msg)
            result = backoff.Result(status_code=250, ok=True)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            result = backoff.Result(status_code=code, error="recipient_refused", ok=False)
            detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        except smtplib.SMTPResponseException as exc:
            result = backoff.Result(status_code=exc.smtp_code, error="smtp_error", ok=False)
            raw = exc.smtp_error
            detail = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            result = backoff.Result(error=f"smtp_error: {type(exc).__name__}", ok=False)
        duration_ms = int((time.perf_counter() - started) * 1000)
        return Sent(result, attempted_at, duration_ms, excerpt((detail or "").encode()))

    async def aclose(self) -> None:
        """Nothing to close: one SMTP connection per message."""
