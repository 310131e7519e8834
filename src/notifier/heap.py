"""Garbage-collector settings of a long-running Notifier process."""

from __future__ import annotations

import gc

# Container allocations between two young-generation collections (CPython: 700).
GEN0_THRESHOLD = 10_000


def settle() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    Called once, when a role has imported its libraries. Frozen objects are
    never walked by the cyclic collector again (the full collections of a
    router decoding graph rows walked every object of neo4j, psycopg and
    Starlette), and a young generation of 10,000 objects lets most of a
    unit's rows die by reference count before a collection promotes them
    (bench/RESULTS.md, "Figures from code comments"). Garbage in
    reference cycles still goes, a little later.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
