"""The SSRF list of issue 8, checked again at delivery time by a real process.

tests/unit/test_ssrf.py refuses every item at registration. Here the URLs
are written straight into `webhook_configs` (as if a name had been re-pointed
after registration, or a row predates the guard) and a `notifier delivery`
process without `NOTIFIER_WEBHOOK_ALLOW_PRIVATE` must refuse each one on the
address it would connect to: an attempt row with a `blocked_address` error,
and not one TCP connection to the loopback receiver the loopback spellings
point at. (A redirect to a private address is never followed: see
test_receivers_fail_every_way.py, which needs private addresses allowed to
reach a loopback receiver at all.)
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from notifier.devkit import services
from tests.delivery.conftest import delivery_env, rows, wait_until
from tests.delivery.receiver import receiver
from tests.reliability.conftest import add_one_row, start_role, stop_procs

# Host (with the port of a live loopback receiver where it could reach it) ->
# the reason in the `blocked_address` error, or the whole error's start.
MATRIX = {
    "127.0.0.1:{port}": "loopback address",
    "0.0.0.0:{port}": "unspecified address",
    "10.1.2.3": "private address",
    "172.16.0.1": "private address",
    "172.31.255.254": "private address",
    "192.168.1.1": "private address",
    "169.254.169.254": "cloud metadata address",
    "100.64.0.1": "carrier-grade NAT (shared) address",
    "[::1]:{port}": "loopback address",
    "[fc00::1]": "private address",
    "[fd12:3456::1]": "private address",
    "[::ffff:127.0.0.1]:{port}": "IPv6 address embedding a loopback address",
    "2130706433:{port}": "loopback address",  # decimal 127.0.0.1
    # Octal: httpx refuses to parse the URL at all (the guard would decode it
    # as inet_aton does, to 127.0.0.1, and refuse it too).
    "0177.0.0.1:{port}": "bad_url: Invalid IPv4 address",
    "localhost:{port}": "loopback address",  # a DNS name resolving to one
}

# Attempt rows joined to their webhook URL (delivery_attempts_outbox_idx, outbox and
# webhook_configs primary keys).
ATTEMPTS_SQL = """
SELECT w.url, a.status_code, a.error, o.status
FROM notifier.delivery_attempts a
JOIN notifier.outbox o ON o.id = a.outbox_id
JOIN notifier.webhook_configs w ON w.id = o.webhook_id
"""


async def test_every_private_target_is_refused_at_delivery(
    pg_server: services.PostgresService, pg_url: str, tmp_path: Path
) -> None:
    with receiver() as r:
        urls = {f"https://{host.format(port=r.port)}/hook": why for host, why in MATRIX.items()}
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            for url in urls:
                await add_one_row(conn, url)
        env = delivery_env(
            pg_server, pg_url, NOTIFIER_WEBHOOK_ALLOW_PRIVATE="false",
            NOTIFIER_DELIVERY_RETRY_SCHEDULE="3600", NOTIFIER_DELIVERY_TIMEOUT=2,
            NOTIFIER_DELIVERY_LEASE_SECONDS=6, NOTIFIER_DELIVERY_POLL_SECONDS=0.1,
        )  # fmt: skip
        proc = start_role("delivery", env, tmp_path / "delivery.log")
        try:
            await wait_until(
                lambda: rows(pg_url, "SELECT 1 FROM notifier.outbox WHERE claim_token IS NULL "
                             "AND attempts = 1 HAVING count(*) = %s", len(urls)),
                "an attempt for every URL", limit=60, every=0.2,
            )  # fmt: skip
        finally:
            stop_procs([proc])  # SIGTERM: a clean drain exits 0
        code = proc.returncode
        attempts = {url: rest for url, *rest in await rows(pg_url, ATTEMPTS_SQL)}
        connections = r.connections

    for url, (_, error, _) in sorted(attempts.items()):
        print(f"{url:45} {error}")
    assert code == 0
    assert connections == 0 and r.requests == []  # refused before connecting
    assert set(attempts) == set(urls)
    for url, why in urls.items():
        status_code, error, status = attempts[url]
        assert status_code is None and status == "pending", url
        if why.startswith("bad_url"):
            assert error.startswith(why), (url, error)
        else:
            assert error.startswith("blocked_address: ") and error.endswith(why), (url, error)
