"""Opaque keyset cursors: `base64url(JSON [kind, key...])`.

The kind tag stops a cursor of one list being replayed on another. Anything
that does not decode to the expected shape is a 400 `invalid_cursor`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

import msgspec

from notifier.api.errors import ApiError

MAX_BIGINT = 2**63 - 1


def encode(kind: str, *key: Any) -> str:
    """A cursor for the row whose sort key is `key`."""
    raw = msgspec.json.encode([kind, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(cursor: str, kind: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ApiError(400, "cursor is not valid", code="invalid_cursor") from None
    if not isinstance(value, list) or not value or value[0] != kind:
        raise ApiError(400, "cursor is not valid for this list", code="invalid_cursor")
    return value[1:]


def decode_id(cursor: str, kind: str) -> int:
    """The bigint id inside a cursor made by `encode(kind, id)`."""
    key = _decode(cursor, kind)
    if len(key) != 1 or type(key[0]) is not int or not 0 <= key[0] <= MAX_BIGINT:
        raise ApiError(400, "cursor is not valid", code="invalid_cursor")
    return key[0]


def decode_time_uuid(cursor: str, kind: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) inside a cursor made by `encode(kind, iso, uuid)`."""
    key = _decode(cursor, kind)
    try:
        if len(key) != 2 or not isinstance(key[0], str) or not isinstance(key[1], str):
            raise ValueError
        at = datetime.fromisoformat(key[0])
        if at.tzinfo is None:
            raise ValueError
        return at, uuid.UUID(key[1])
    except ValueError:
        raise ApiError(400, "cursor is not valid", code="invalid_cursor") from None
