"""Webhook secrets and tokens: shown once, never again, never logged (a real `notifier api`)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.api.conftest import JWT_KEY, SERVICE_TOKEN, token
from tests.reliability.conftest import wait_healthy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _needles(secret: str) -> list[str]:
    """The secret, and its key material without the `whsec_` prefix."""
    return [secret, secret.removeprefix("whsec_")]


def test_secrets_shown_once_and_never_logged(notifier_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    env = dict(notifier_env)
    env.update(
        NOTIFIER_PORT=str(port),
        NOTIFIER_SERVICE_TOKEN=SERVICE_TOKEN,
        NOTIFIER_API_RATE_LIMIT="0",
        LOG_LEVEL="DEBUG",
    )
    base = f"http://127.0.0.1:{port}"
    user = uuid.uuid4()
    user_token = token(user)
    h = {"Authorization": f"Bearer {user_token}"}
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    log = tmp_path / "api.log"
    answers: list[tuple[str, str]] = []  # (what, body) of every answer after the rotation
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier.cli", "api"], env=env, stdout=out, stderr=out
        )
        try:
            wait_healthy(base, proc, limit=60)
            with httpx.Client(base_url=base, timeout=30) as c:
                created = c.post("/api/webhook", json={"url": "http://127.0.0.1:9/h"}, headers=h)
                assert created.status_code == 201, created.text
                first = created.json()["secret"]
                rotated = c.post("/api/webhook/rotate-secret", headers=h)
                assert rotated.status_code == 200, rotated.text
                second = rotated.json()["secret"]
                assert first != second and first.startswith("whsec_")

                event = {
                    "user_ids": [str(user)],
                    "event": "price_drop",
                    "entity_type": "release",
                    "entity_id": "42",
                    "entity_name": "Giant Steps",
                    "detail": {"price": 1},
                    "idempotency_key": uuid.uuid4().hex,
                }
                r = c.post("/internal/events", json=event, headers=service)
                assert r.status_code == 202, r.text
                answers.append(("POST /internal/events", r.text))
                ping = c.post("/api/webhook/test", headers=h)
                assert ping.status_code == 202, ping.text
                answers.append(("POST /api/webhook/test", ping.text))
                redo = c.post(
                    f"/api/webhook/deliveries/{ping.json()['delivery_id']}/redeliver", headers=h
                )
                answers.append(("POST redeliver", redo.text))
                notes = c.get("/api/notifications", headers=h).json()["items"]
                feed = c.post("/api/feed-token", headers=h)
                assert feed.status_code == 201, feed.text
                feed_token = feed.json()["url"].rsplit("/", 1)[1].removesuffix(".atom")
                # The walk reads the Atom feed with its real token: a credential too.
                ids = {"id": str(notes[0]["id"]), "token": feed_token}
                # Refused calls too: an error must not echo what was sent.
                bad = {"Authorization": f"Bearer {user_token}x"}
                answers.append(("bad token", c.get("/api/webhook", headers=bad).text))

                doc = c.get("/openapi.json").json()
                walked = 0
                for path, item in doc["paths"].items():
                    if "get" not in item or path.endswith("/stream"):
                        continue
                    concrete = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: ids[m.group(1)], path)
                    headers = service if path.startswith("/internal/") else h
                    got = c.get(concrete, headers=headers)
                    assert got.status_code < 500, (path, got.text)
                    answers.append((f"GET {concrete}", got.text))
                    walked += 1
        finally:
            proc.terminate()
            proc.wait(20)
    text = log.read_text(errors="replace")
    assert text, "the API logged nothing at DEBUG"
    for what, body in answers:
        for needle in _needles(first) + _needles(second):
            assert needle not in body, (what, "webhook secret echoed")
    forbidden = {
        "first secret": first,
        "rotated secret": second,
        "bearer token": user_token,
        "service token": SERVICE_TOKEN,
        "jwt key": JWT_KEY,
        "feed token": feed_token,
    }
    for name, value in forbidden.items():
        assert value not in text, f"{name} in the API log"
    assert first.removeprefix("whsec_") not in text and second.removeprefix("whsec_") not in text
    print(
        f"secrets: {len(answers)} answers ({walked} GET routes from /openapi.json) and "
        f"{len(text.splitlines())} DEBUG log lines ({len(text)} bytes) hold none of "
        f"{len(forbidden)} secrets"
    )
