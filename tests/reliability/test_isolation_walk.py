"""Driven by /openapi.json: every /api route with a path parameter answers 404 for another user."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.api.conftest import Api, bearer, seed_feed


@dataclass(frozen=True)
class Seeded:
    """A resource of user A: its id and strings that only A's data contains."""

    id: str
    markers: tuple[str, ...]


Recipe = Callable[[Api, uuid.UUID, str], Awaitable[Seeded]]


async def _watch(api: Api, a: uuid.UUID, tag: str) -> Seeded:
    body = {"entity_type": "search", "entity_id": "", "options": {"q": f"isolation {tag}"}}
    r = await api.client.post("/api/watchlist", json=body, headers=bearer(a))
    assert r.status_code == 201, r.text
    return Seeded(str(r.json()["id"]), (tag,))


async def _notification(api: Api, a: uuid.UUID, tag: str) -> Seeded:
    seed_feed(api.pg_url, a, 3)
    r = await api.client.get("/api/notifications", headers=bearer(a))
    assert r.status_code == 200, r.text
    first = r.json()["items"][0]
    return Seeded(str(first["id"]), (first["entity_name"], "release_ids"))


async def _delivery(api: Api, a: uuid.UUID, tag: str) -> Seeded:
    url = f"http://127.0.0.1:9/hook-{tag}"
    r = await api.client.post("/api/webhook", json={"url": url}, headers=bearer(a))
    assert r.status_code == 201, r.text
    ping = await api.client.post("/api/webhook/test", headers=bearer(a))
    assert ping.status_code == 202, ping.text
    return Seeded(str(ping.json()["delivery_id"]), (tag, str(ping.json()["event_id"])))


async def _endpoint(api: Api, a: uuid.UUID, tag: str) -> Seeded:
    url = f"http://127.0.0.1:9/hook-{tag}"
    body = {"url": url, "description": f"desc-{tag}"}
    r = await api.client.post("/api/webhooks", json=body, headers=bearer(a))
    assert r.status_code == 201, r.text
    ping = await api.client.post(f"/api/webhooks/{r.json()['id']}/test", headers=bearer(a))
    assert ping.status_code == 202, ping.text
    return Seeded(str(r.json()["id"]), (tag, str(ping.json()["event_id"])))


# One seeding recipe per parameterised path: a new route without one fails the walk.
RECIPES: dict[str, Recipe] = {
    "/api/watchlist/{id}": _watch,
    "/api/notifications/{id}": _notification,
    "/api/notifications/{id}/read": _notification,
    "/api/webhook/deliveries/{id}/redeliver": _delivery,
    "/api/webhooks/{id}": _endpoint,
    "/api/webhooks/{id}/rotate-secret": _endpoint,
    "/api/webhooks/{id}/test": _endpoint,
    "/api/webhooks/{id}/deliveries": _endpoint,
    "/api/webhooks/{id}/recover": _endpoint,
}


def _template(path: str) -> str:
    """`/x/{id:int}` and `/x/{id}` alike."""
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)


async def test_other_users_ids_answer_404_on_every_route(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    walked: list[tuple[str, str]] = []
    for raw, item in doc["paths"].items():
        path = _template(raw)
        if not path.startswith("/api/") or "{" not in path:
            continue
        for method in item:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            assert path in RECIPES, f"no seeding recipe for {method.upper()} {path}"
            walked.append((method.upper(), path))
    assert walked, "no /api route with a path parameter in /openapi.json"

    b = uuid.uuid4()
    # B has a webhook of its own, so B's 404s are about ownership, not a missing webhook.
    own = await api.client.post(
        "/api/webhook", json={"url": "http://127.0.0.1:9/hook-b"}, headers=bearer(b)
    )
    assert own.status_code == 201, own.text
    markers: list[str] = []
    for method, path in walked:
        a = uuid.uuid4()
        tag = f"a{uuid.uuid4().hex}"
        seeded = await RECIPES[path](api, a, tag)
        markers.extend(seeded.markers)
        concrete = path.replace("{id}", seeded.id)
        r = await api.client.request(method, concrete, headers=bearer(b))
        assert r.status_code == 404, (method, concrete, r.status_code, r.text)
        envelope = r.json()
        assert set(envelope) == {"error"} and envelope["error"]["code"] == "not_found", envelope
        for m in seeded.markers:
            assert m not in r.text, (method, path, m, r.text)
        # A's resource is untouched by B's call.
        again = await api.client.get(path.split("/{id}")[0], headers=bearer(a))
        assert again.status_code == 200 and seeded.id in again.text, (path, again.text)
        if path.startswith("/api/notifications/"):
            unread = await api.client.get("/api/notifications/unread-count", headers=bearer(a))
            assert unread.json() == {"count": 3}, (path, unread.text)

    lists = [
        "/api/notifications",
        "/api/notifications?unread=true",
        "/api/watchlist",
        "/api/webhook/deliveries",
    ]
    for path in lists:
        r = await api.client.get(path, headers=bearer(b))
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [], (path, r.text)
        for m in markers:
            assert m not in r.text, (path, m)
    endpoints = await api.client.get("/api/webhooks", headers=bearer(b))
    assert [e["url"] for e in endpoints.json()["items"]] == ["http://127.0.0.1:9/hook-b"]
    for m in markers:
        assert m not in endpoints.text, ("/api/webhooks", m)
    count = await api.client.get("/api/notifications/unread-count", headers=bearer(b))
    assert count.json() == {"count": 0}, count.text
    mine = await api.client.get("/api/webhook", headers=bearer(b))
    assert mine.json()["url"] == "http://127.0.0.1:9/hook-b", mine.text
    print(
        f"isolation walk: {len(walked)} parameterised routes from /openapi.json "
        f"({', '.join(f'{m} {p}' for m, p in walked)}), all 404 for user B; "
        f"{len(lists) + 3} list/count routes of B show none of {len(markers)} markers of A"
    )
