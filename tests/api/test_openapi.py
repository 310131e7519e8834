"""/openapi.json: generated from the structs, valid OpenAPI 3.1, and fuzzed by schemathesis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema_rs

from notifier.api.app import endpoints
from tests.api.conftest import SERVICE_TOKEN, Api, token

DIALECT = "https://json-schema.org/draft/2020-12/schema"


async def test_document_lists_every_route(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    # The document itself against the OpenAPI 3.1 meta-schema (the copy schemathesis ships).
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    errors = [e.message for e in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert errors == []
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    expected = {(e.method, e.path.replace(":int", "")) for e in endpoints()}
    assert routes == expected
    contract = {
        ("GET", "/api/watchlist"), ("POST", "/api/watchlist"), ("DELETE", "/api/watchlist/{id}"),
        ("GET", "/api/notifications"), ("GET", "/api/notifications/{id}"),
        ("GET", "/api/notifications/unread-count"), ("POST", "/api/notifications/{id}/read"),
        ("POST", "/api/notifications/read-all"), ("GET", "/api/notifications/stream"),
        ("GET", "/api/preferences"), ("PUT", "/api/preferences"), ("POST", "/api/webhook"),
        ("GET", "/api/webhook"), ("DELETE", "/api/webhook"),
        ("POST", "/api/webhook/rotate-secret"), ("POST", "/api/webhook/test"),
        ("GET", "/api/webhook/deliveries"), ("POST", "/api/webhook/deliveries/{id}/redeliver"),
        ("POST", "/internal/events"), ("DELETE", "/internal/events/{id}"), ("GET", "/health"),
        ("GET", "/metrics"), ("GET", "/api/webhooks"), ("POST", "/api/webhooks"),
        ("GET", "/api/webhooks/{id}"), ("PATCH", "/api/webhooks/{id}"),
        ("DELETE", "/api/webhooks/{id}"), ("POST", "/api/webhooks/{id}/rotate-secret"),
        ("POST", "/api/webhooks/{id}/test"), ("GET", "/api/webhooks/{id}/deliveries"),
        ("POST", "/api/webhooks/{id}/recover"),
    }  # fmt: skip
    assert contract <= routes
    schemas = doc["components"]["schemas"]
    assert set(schemas["Notification"]["required"]) == {
        "id", "event", "entity_type", "entity_id", "entity_name", "detail", "version",
        "created_at", "read_at", "watch_ids",
    }  # fmt: skip
    assert "SearchOptions" in schemas and "ErrorEnvelope" in schemas
    # Every component is a valid JSON Schema 2020-12 (the dialect of OpenAPI 3.1).
    for name, schema in schemas.items():
        assert jsonschema_rs.meta.is_valid(schema | {"$schema": DIALECT}), name
        jsonschema_rs.validator_for(
            {"$schema": DIALECT, "$ref": f"#/components/schemas/{name}",
             "components": doc["components"]}
        )  # fmt: skip
    # A sample answer validates against its component.
    page = await api.client.get(
        "/api/notifications", headers={"Authorization": f"Bearer {token(uuid.uuid4())}"}
    )
    validator = jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/NotificationPage", "components": doc["components"]}
    )
    assert validator.is_valid(page.json())


def test_schemathesis_finds_no_server_error(
    api_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    from tests.api.conftest import serve

    server, url, _ = serve(api_env)
    try:
        user_token = token(uuid.uuid4(), exp_in=3600)
        common = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
                  "--checks", "all",
                  # Schema-valid input may still be refused on meaning (an SSRF-unsafe URL,
                  # options that do not fit the entity type, a forged cursor): 4xx, not 5xx.
                  "--exclude-checks", "positive_data_acceptance",
                  "--max-examples", "25", "--seed", "1", "--request-timeout", "10",
                  "--exclude-path", "/api/notifications/stream",
                  "--generation-allow-x00", "true", "--warnings", "off"]  # fmt: skip
        runs = [
            [*common, "--exclude-path-regex", "^/internal/",
             "-H", f"Authorization: Bearer {user_token}"],
            [*common, "--include-path-regex", "^/internal/",
             "-H", f"Authorization: Bearer {SERVICE_TOKEN}"],
        ]  # fmt: skip
        for cmd in runs:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            out = done.stdout + done.stderr
            assert done.returncode == 0, out[-6000:]
            assert "500" not in [w for w in out.split() if w.isdigit()], out[-6000:]
    finally:
        server.stop()
