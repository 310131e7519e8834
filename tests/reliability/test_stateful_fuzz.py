"""Stateful schemathesis over a real `notifier api` process: zero 5xx, zero schema violations.

tests/api/test_openapi.py fuzzes each operation on its own. Here schemathesis
chains them: its state machine links operations through the ids they answer
(inferred from `/openapi.json`: a listed notification is read and marked
read, a listed or created watch is deleted, a delivery made by
`/api/webhook/test` is redelivered, an internal event is cancelled), so calls
reach real rows instead of random ids. The user has a seeded feed, watches
and a webhook so that the chains start from data. Every answer goes through
schemathesis's checks (server errors, status code, content type, headers and
body against the schema, use after free, resource availability, ignored
auth); only `positive_data_acceptance` is left out, as in the stateless run,
because schema-valid input may still be refused on meaning (a forged cursor,
an SSRF-unsafe URL): 4xx, never 5xx.
"""

from __future__ import annotations

import collections
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import schemathesis
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, rule
from schemathesis.generation import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput
from schemathesis.specs.openapi import checks as openapi_checks

from notifier.devkit import services
from tests.api.conftest import SERVICE_TOKEN, seed_feed, token
from tests.reliability.conftest import start_role, wait_healthy

SCENARIOS = 30
STEPS = 10
WATCHES = 40
SEED_WATCHES = """
INSERT INTO notifier.watchlists (user_id, entity_type, entity_id, entity_name, options)
SELECT %s, 'artist', g::text, 'Artist ' || g, '{}'::jsonb FROM generate_series(1, %s) AS g
"""
SEED_WEBHOOK = "INSERT INTO notifier.webhook_configs (user_id, url, secret) VALUES (%s, %s, %s)"


def test_stateful_schemathesis_finds_no_server_error_or_schema_violation(
    api_env: dict[str, str], pg_url: str, role_procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    user = uuid.uuid4()
    seed_feed(pg_url, user, 30)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SEED_WATCHES, (user, WATCHES))
        # Ten endpoints, the most a user may have: the set the chains' links
        # read from stays the same from one scenario to the next (see below).
        for i in range(10):
            conn.execute(SEED_WEBHOOK, (user, f"http://127.0.0.1:9/hook{i}", "whsec_" + "A" * 32))
    port = services.free_port()
    role_procs.append(start_role("api", api_env, tmp_path / "api.log", NOTIFIER_PORT=str(port)))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, role_procs[-1])

    user_auth = {"Authorization": f"Bearer {token(user, exp_in=3600)}"}
    service_auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    # Positive input only: negative cases would mostly drop the token and end the chain at 401
    # (the stateless run and the JWT matrix cover refused input).
    schema.config.generation.update(modes=[GenerationMode.POSITIVE])
    schema = schema.exclude(path="/api/notifications/stream")  # endless by design
    # Deleting an endpoint by id changes which ids later scenarios' links find,
    # and hypothesis then replays a scenario with other draws (a flaky strategy):
    # DELETE /api/webhooks/{id} is fuzzed statelessly (tests/api/test_openapi.py)
    # and tested in tests/api/test_webhooks.py.
    schema = schema.exclude(method="DELETE", path="/api/webhooks/{id}")
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    excluded = [openapi_checks.positive_data_acceptance]

    # Creating a watch or an internal event needs input that schemathesis does not treat as
    # a likely success, so it never starts a chain there; this rule does, and what they
    # answer feeds the inferred links (delete the watch, cancel the event) like any other.
    creators = st.one_of(
        schema["/api/watchlist"]["POST"].as_strategy(),
        schema["/internal/events"]["POST"].as_strategy(),
    )

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        @rule(target=Bundle("created"), case=creators)
        def create(self, case: Any) -> Any:
            self.recorder.record_case(case=case)
            return self._step(StepInput.initial(case))

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            auth = service_auth if case.path.startswith("/internal/") else user_auth
            return {"headers": auth, "timeout": 30}

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            statuses[(f"{case.method} {case.path}", response.status_code)] += 1

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response, excluded_checks=excluded, transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )  # fmt: skip

    transitions = schema.statistic.transitions.total
    started = time.monotonic()
    try:
        Workflow.run(
            settings=hypothesis.settings(
                max_examples=SCENARIOS, stateful_step_count=STEPS, deadline=None,
                derandomize=True, database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
        )  # fmt: skip
    finally:
        calls = sum(statuses.values())
        by_status: collections.Counter[int] = collections.Counter()
        for (_, status), n in statuses.items():
            by_status[status] += n
        linked_ok = sorted({op for (op, s), _ in statuses.items() if "{" in op and 200 <= s < 300})
        print(
            f"\nstateful fuzz: {calls} calls in {time.monotonic() - started:.1f}s over "
            f"{SCENARIOS} scenarios of up to {STEPS} steps, {transitions} inferred links; "
            f"answers by status {dict(sorted(by_status.items()))}; 5xx "
            f"{sum(n for s, n in by_status.items() if s >= 500)}; operations on linked ids "
            f"that succeeded: {linked_ok}; per operation and status: "
            f"{dict(sorted(statuses.items()))}"
        )
    assert transitions > 0
    assert not [s for s in by_status if s >= 500]
    # The chains reached real rows: ids taken from answers were found and acted on.
    # The /api/webhooks/{id} chains are not required to succeed: whether they do
    # depends on what earlier steps did to the endpoint (a PATCH may disable it,
    # and recover then answers 409), which varied between identical runs; they
    # are fuzzed for 5xx here and tested for success in tests/api/test_webhooks.py.
    assert {
        "GET /api/notifications/{id}", "POST /api/notifications/{id}/read",
        "DELETE /api/watchlist/{id}", "POST /api/webhook/deliveries/{id}/redeliver",
        "DELETE /internal/events/{id}",
    } <= set(linked_ok)  # fmt: skip
