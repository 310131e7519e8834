"""Opaque cursors (pure functions)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from notifier.api import cursor
from notifier.api.errors import ApiError


def test_round_trips() -> None:
    assert cursor.decode_id(cursor.encode("n", 42), "n") == 42
    at, wid = datetime(2026, 2, 1, 1, 2, 3, 456789, tzinfo=UTC), uuid.uuid4()
    token = cursor.encode("w", at.isoformat(), str(wid))
    assert cursor.decode_time_uuid(token, "w") == (at, wid)
    assert "=" not in token and "/" not in token and "+" not in token


@pytest.mark.parametrize(
    "token",
    ["", "!!!", "bnVsbA", cursor.encode("w", 1), cursor.encode("n", -1),
     cursor.encode("n", 2**63), cursor.encode("n", True), cursor.encode("n", "1"),
     cursor.encode("n", 1, 2)],
)  # fmt: skip
def test_bad_id_cursors_are_400(token: str) -> None:
    with pytest.raises(ApiError) as exc:
        cursor.decode_id(token, "n")
    assert exc.value.status == 400 and exc.value.code == "invalid_cursor"


@pytest.mark.parametrize(
    "token",
    [cursor.encode("w", "2026-01-01T00:00:00", str(uuid.uuid4())),  # no timezone
     cursor.encode("w", "yesterday", str(uuid.uuid4())),
     cursor.encode("w", "2026-01-01T00:00:00+00:00", "not-a-uuid"),
     cursor.encode("w", 5, 6)],
)  # fmt: skip
def test_bad_time_cursors_are_400(token: str) -> None:
    with pytest.raises(ApiError) as exc:
        cursor.decode_time_uuid(token, "w")
    assert exc.value.status == 400
