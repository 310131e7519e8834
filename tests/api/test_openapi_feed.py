"""/openapi.json documents issue 19's routes: polling headers and 304, the Atom feed, import."""

from __future__ import annotations

from tests.api.conftest import Api


async def test_new_routes_are_documented(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    for path in ("/api/notifications", "/api/notifications/unread-count"):
        op = paths[path]["get"]
        assert {"name": "If-None-Match", "in": "header"}.items() <= op["parameters"][-1].items()
        ok, not_modified = op["responses"]["200"], op["responses"]["304"]
        assert set(ok["headers"]) == {"ETag", "Cache-Control", "X-Poll-Interval"}
        assert not_modified["headers"] == ok["headers"] and "content" not in not_modified
    token = paths["/api/feed-token"]["post"]
    assert token["security"] == [{"bearerAuth": []}]
    assert token["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FeedUrl"
    }
    assert schemas["FeedUrl"]["required"] == ["url"]
    atom = paths["/feeds/{token}.atom"]["get"]
    assert atom["security"] == [] and "401" not in atom["responses"]
    assert set(atom["responses"]) == {"200", "304", "404", "429"}
    assert "application/atom+xml" in atom["responses"]["200"]["content"]
    assert set(atom["responses"]["200"]["headers"]) == {"ETag", "Cache-Control"}
    assert [p["name"] for p in atom["parameters"]] == ["token", "If-None-Match"]
    imp = paths["/api/watchlist/import"]["post"]
    assert list(paths["/api/watchlist/import"]) == ["post"]
    assert imp["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WatchImport"
    }
    body = schemas["WatchImport"]
    assert sorted(body["required"]) == ["entity_types", "source"]
    assert body["properties"]["source"]["enum"] == ["collection", "wantlist"]
    assert body["properties"]["min_releases"]["minimum"] == 1
    assert set(schemas["WatchImported"]["properties"]) == {"created", "existing", "skipped"}
    assert {"200", "401", "422", "503"} <= set(imp["responses"])


async def test_watch_filters_and_watch_ids_are_documented(api: Api) -> None:
    schemas = (await api.client.get("/openapi.json")).json()["components"]["schemas"]
    notification = schemas["Notification"]
    assert "watch_ids" in notification["required"]
    assert notification["properties"]["watch_ids"]["items"] == {"type": "string", "format": "uuid"}
    filters = schemas["ReleaseFilterOptions"]
    assert set(filters["properties"]) == {"formats", "year_from", "year_to"}
    assert filters["additionalProperties"] is False
