"""The graph latch (contract §3a): which import version is complete in the graph.

Discogsography's graphinator keeps, per import version, the data types it has
flushed in `(:ExtractionCompletion {version, signals})`. This module reads
those nodes and picks the version a router should fire; recording and firing
it happen in PostgreSQL (`cycles.record_latch`). The router writes nothing to
the graph.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from neo4j import AsyncDriver

from notifier.cycles import VERSION_PATTERN

# ExtractionCompletion has no index in the platform's schema; there is one node
# a month, so the label scan reads a few hundred nodes at most.
LATCHES = (
    "MATCH (m:ExtractionCompletion) "
    "RETURN m.version AS version, m.signals AS signals, m.updated_at AS updated_at"
)

# graphinator writes this version when an extraction_complete message has none
# (graphinator.EXTRACTION_LATCH_UNKNOWN_VERSION); it names no dump and, sorting
# after every digit, would hold back every later version: never fired.
UNKNOWN_VERSION = "unknown"
_VERSION = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class Latch:
    """One ExtractionCompletion node as read: its version, signals and last update."""

    version: str
    signals: frozenset[str]
    updated_at: datetime | None


def parse(records: Iterable[Mapping[str, Any]]) -> tuple[list[Latch], int]:
    """Latches from LATCHES rows, and how many rows were unusable (wrong types, bad version)."""
    latches: list[Latch] = []
    bad = 0
    for r in records:
        version, signals, updated = r.get("version"), r.get("signals"), r.get("updated_at")
        if (
            not isinstance(version, str)
            or len(version) > 128
            or not _VERSION.match(version)
            or version == UNKNOWN_VERSION
            or not isinstance(signals, list)
            or not all(isinstance(x, str) for x in signals)
        ):
            bad += 1
            continue
        to_native = getattr(updated, "to_native", None)  # neo4j.time.DateTime
        native = to_native() if callable(to_native) else updated
        latches.append(
            Latch(version, frozenset(signals), native if isinstance(native, datetime) else None)
        )
    return latches, bad


def newest_complete(latches: Iterable[Latch], required: Iterable[str]) -> Latch | None:
    """The latch of the newest version (byte order) whose signals hold every required type.

    Only the newest is ever fired: an older complete version is either already
    fired or, on a first start or after a gap, older than the graph it would
    describe (the graph holds the newest import already).
    """
    need = frozenset(required)
    complete = [latch for latch in latches if need <= latch.signals]
    return max(complete, key=lambda latch: latch.version.encode(), default=None)


async def read(driver: AsyncDriver, database: str) -> tuple[list[Latch], int]:
    """Every ExtractionCompletion node of `database`, parsed (see `parse`)."""
    async with driver.session(database=database) as session:
        result = await session.run(LATCHES)
        return parse([record.data() async for record in result])
