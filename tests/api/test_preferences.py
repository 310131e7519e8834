"""Preferences: defaults, partial updates, per user."""

from __future__ import annotations

import uuid

from tests.api.conftest import Api, bearer

ON = {"feed": True, "webhook": True, "email": False}


async def test_defaults_and_partial_update(api: Api, user: uuid.UUID) -> None:
    h = bearer(user)
    r = await api.client.get("/api/preferences", headers=h)
    assert r.status_code == 200
    prefs = r.json()
    assert prefs["new_releases"] == ON and prefs["search_match"] == ON
    assert set(prefs) >= {
        "new_releases",
        "new_aliases",
        "new_members",
        "release_count_threshold",
        "notable_releases",
        "search_match",
    }
    r = await api.client.put(
        "/api/preferences", headers=h, json={"new_releases": {"webhook": False}}
    )
    assert r.status_code == 200
    assert r.json()["new_releases"] == {"feed": True, "webhook": False, "email": False}
    r = await api.client.put(
        "/api/preferences",
        headers=h,
        json={"new_releases": {"email": True}, "price_drop": {"feed": False}},
    )
    after = r.json()
    assert after["new_releases"] == {"feed": True, "webhook": False, "email": True}
    assert after["price_drop"] == {"feed": False, "webhook": True, "email": False}
    assert after["new_aliases"] == ON
    assert (await api.client.get("/api/preferences", headers=h)).json() == after
    # Another user still has the defaults.
    theirs = (await api.client.get("/api/preferences", headers=bearer(uuid.uuid4()))).json()
    assert theirs["new_releases"] == ON and "price_drop" not in theirs
    for bad in ({"Bad Event": {"feed": True}}, {"new_releases": {"sms": True}}, [1]):
        r = await api.client.put("/api/preferences", headers=h, json=bad)
        assert r.status_code == 422, bad
