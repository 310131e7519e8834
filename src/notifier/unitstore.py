"""A diff unit's snapshots in PostgreSQL: reading them, comparing, writing the unit.

A unit's snapshots are read (LOAD_UNIT_SNAPSHOTS; artists: COMPARE_ARTISTS,
which leaves out those whose graph row did not change) and, once the diff
is done, written with its events in one statement (FINISH_UNIT) whose
snapshot parameters `changed_snapshots` and `snapshot_params` build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from psycopg import AsyncConnection

from notifier import cycles, diff, queries

# A claimed unit's snapshots, its ids taken from its row (diff_units primary
# key) rather than sent again as a 500-element parameter; then the
# entity_snapshots primary key (entity_type, entity_id), probed once per id
# (a nested loop over the unnested ids; `entity_id = ANY(...)` was planned as a
# scan of the type's rows, each checked against the whole array).
# Read without locks, before the unit's write: only the router that holds a
# unit's claim writes its entities' snapshots (an entity is in one unit per
# cycle, and a cycle's units are claimable only once the previous cycle is
# done), and FINISH_UNIT writes nothing unless the claim is still its own, so
# what a router read can only be stale if its write is refused.
# A snapshot's version as the diff sees it (sql/008_unit_continuity.sql): the
# previous cycle's when the entity was in one of its units (not in the unit's
# fresh_ids) and the snapshot was not written since, else the cycle that
# wrote it. Used by LOAD_UNIT_SNAPSHOTS and COMPARE_ARTISTS, where `x.id` is
# the unit's id, `s` its snapshot and `fresh_ids` the unit's.
_SEEN_VERSION = """
       CASE WHEN fresh_ids IS NULL OR s.version = %(version)s OR x.id = ANY (fresh_ids)
            THEN s.version ELSE %(previous)s END"""
_LOAD_HEAD = """
SELECT s.entity_id,"""
_LOAD_TAIL = """,
       s.entity_name, s.release_ids, s.alias_ids, s.member_ids, s.release_count,
       s.tree_digest, s.edge_count, s.master_mark, s.alias_edges, s.member_edges
FROM notifier.diff_units d
CROSS JOIN LATERAL unnest(d.entity_ids) AS x (id)
JOIN notifier.entity_snapshots s ON s.entity_type = d.entity_type AND s.entity_id = x.id
WHERE d.id = %(unit)s
"""
LOAD_UNIT_SNAPSHOTS = _LOAD_HEAD + _SEEN_VERSION + _LOAD_TAIL  # constants only, no input
# An artist unit's compare, in the database (sql/007_snapshot_digest.sql):
# an artist whose graph row (graph.ARTIST_MARKS: its name and degrees) hashes
# to the digest its snapshot of the previous cycle was derived from would
# find nothing new (unless as many edges left as came: README), so it is left
# as it is and its arrays never travel to the router. `digests` holds the
# unit's row digests (row_digests: DIGEST_SIZE bytes per id, in unit order).
# The statement returns the unit's other ids, in unit order, with their
# snapshots (LOAD_UNIT_SNAPSHOTS' columns, NULL when there is none), the
# stored digest and their row's, and whether a filtered watch watches them,
# for the Python diff. Only a unit still
# pending and claimed by `me` is read (without locks, as LOAD_UNIT_SNAPSHOTS).
# Indexes: diff_units primary key; entity_snapshots
# primary key, one range scan from the unit's smallest id to its largest,
# hashed against the unit's ids (half the time of a probe per id). A cycle's
# units of one type hold consecutive runs of the sorted watched ids, so the
# range holds no other watched entity; snapshots of entities no longer
# watched are deleted when a cycle finishes (cycles.FINISH_CYCLE), so few
# others either. OFFSET 0 keeps the scan whole: joined freely, the planner
# probes per id.
_COMPARE_HEAD = """
WITH x AS (
    SELECT x.id, x.n, d.fresh_ids
    FROM notifier.diff_units d
    CROSS JOIN LATERAL unnest(d.entity_ids) WITH ORDINALITY AS x (id, n)
    WHERE d.id = %(unit)s AND d.status = 'pending' AND d.claimed_by = %(me)s
)
SELECT id, version, entity_name, release_ids, alias_ids, member_ids, release_count,
       tree_digest, edge_count, master_mark, alias_edges, member_edges, graph_digest, h,
       -- Has it a filtered watcher (watchlists_filtered_idx)? Asked only of
       -- the artists returned, so the unit needs no query of its own when
       -- none has (strategies.FILTERED_WATCHES).
       EXISTS (SELECT 1 FROM notifier.watchlists w
               WHERE w.entity_type = 'artist' AND w.entity_id = j.id
                 AND w.created_at < %(before)s AND w.options <> '{}'::jsonb) AS filtered
FROM (
    SELECT x.id, x.n,
           substring(%(digests)s::bytea
                     FROM (x.n::int - 1) * %(size)s::int + 1 FOR %(size)s::int) AS h,"""
_COMPARE_TAIL = """ AS version,
           s.entity_name, s.release_ids, s.alias_ids,
           s.member_ids, s.release_count, s.tree_digest, s.edge_count, s.master_mark,
           s.alias_edges, s.member_edges, s.graph_digest
    FROM x
    LEFT JOIN (
        SELECT * FROM notifier.entity_snapshots s
        WHERE s.entity_type = 'artist'
          AND s.entity_id BETWEEN (SELECT min(id) FROM x) AND (SELECT max(id) FROM x)
        OFFSET 0
    ) AS s ON s.entity_id = x.id
) AS j
WHERE (version = %(previous)s AND graph_digest = h) IS NOT TRUE
ORDER BY n
"""
COMPARE_ARTISTS = _COMPARE_HEAD + _SEEN_VERSION + _COMPARE_TAIL  # constants only, no input
# The unit's write, one statement, whole in queries/finish_unit.sql (its
# header names each parameter and what each CTE gives); snapshot_params and
# fanout.draft_params build its parameters.
FINISH_UNIT = queries.load("finish_unit")


class ComparedRow(NamedTuple):
    """One row of COMPARE_ARTISTS: an artist left to diff in Python."""

    entity_id: str
    # Snapshot's fields, all None when the artist has no snapshot.
    version: str | None
    entity_name: str | None
    release_ids: Sequence[int] | None
    alias_ids: Sequence[int] | None
    member_ids: Sequence[int] | None
    release_count: int | None
    tree_digest: bytes | None  # a label's: None for an artist
    edge_count: int | None
    master_mark: int | None  # a genre's or style's: None for an artist
    alias_edges: int | None
    member_edges: int | None
    stored_digest: bytes | None  # the snapshot's graph digest
    row_digest: bytes  # the graph row's now (NO_DIGEST: none)
    filtered: bool  # a filtered watch watches it


class Finished(NamedTuple):
    """FINISH_UNIT's counts, for a unit that was still ours."""

    events: int
    feed_rows: int
    outbox_rows: int
    announced: int


async def load_snapshots(conn: AsyncConnection[Any], unit: cycles.Unit) -> dict[str, diff.Snapshot]:
    """The unit's snapshots by entity id (LOAD_UNIT_SNAPSHOTS)."""
    params = {"unit": unit.id, "version": unit.version, "previous": unit.previous_version}
    cur = await conn.execute(LOAD_UNIT_SNAPSHOTS, params, binary=True)
    return snapshots_of(await cur.fetchall())


async def compare_artists(
    conn: AsyncConnection[Any], unit: cycles.Unit, me: str, digests: bytes
) -> list[ComparedRow]:
    """The artists of `unit` whose graph row changed, with their snapshots (COMPARE_ARTISTS).

    `digests` holds their row digests (`row_digests`, in unit order). No
    row when the unit is no longer pending and claimed by `me`.
    """
    params = {"unit": unit.id, "me": me, "digests": digests, "size": DIGEST_SIZE,
              "version": unit.version, "previous": unit.previous_version,
              "before": unit.started_at}  # fmt: skip
    cur = await conn.execute(COMPARE_ARTISTS, params, binary=True)
    return [ComparedRow._make(r) for r in await cur.fetchall()]


async def finish_unit(conn: AsyncConnection[Any], params: dict[str, Any]) -> Finished | None:
    """Run FINISH_UNIT; its row, or None when the unit was no longer ours."""
    row = await (await conn.execute(FINISH_UNIT, params)).fetchone()
    if row is None or not row[0]:
        return None
    return Finished._make(int(n) for n in row[1:])


def snapshots_of(rows: Sequence[Sequence[Any]]) -> dict[str, diff.Snapshot]:
    """Snapshots by entity id, from LOAD_UNIT_SNAPSHOTS or COMPARE_ARTISTS rows.

    A row is the id, then Snapshot's fields (all NULL: no snapshot), then
    COMPARE_ARTISTS' digests.
    """
    make = diff.Snapshot._make
    return {r[0]: make(r[1:12]) for r in rows if r[1] is not None}


# Graph rows are hashed as JSON. A row JSON has no form for (the driver's
# temporal and spatial values, nodes) gets NO_DIGEST, which no snapshot
# stores: it is diffed in Python. Bolt bytes become base64 text, which only a
# row that held bytes where a clean row held that very text could be
# mistaken for.
JSON = msgspec.json.Encoder()
DIGEST_SIZE = 32  # SHA-256
NO_DIGEST = bytes(DIGEST_SIZE)


def row_digests(ids: Sequence[str], rows: Sequence[Any]) -> bytes:
    """The SHA-256 of each of `ids`' graph row as JSON, concatenated in `ids` order.

    An id without a row (or with one JSON cannot hold) gets NO_DIGEST; an id
    read twice, its last row (as graph.artist_marks keeps).
    """
    encode, sha256 = JSON.encode, hashlib.sha256
    if [r[0] for r in rows] == ids:  # the usual case: one row per id, in unit order
        try:
            return b"".join([sha256(encode(r)).digest() for r in rows])
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            pass  # some row JSON cannot hold: each on its own below
    by_id = {r[0]: r for r in rows if type(r[0]) is str}
    out: list[bytes] = []
    for i in ids:
        row = by_id.get(i)
        try:
            out.append(NO_DIGEST if row is None else sha256(encode(row)).digest())
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
            out.append(NO_DIGEST)
    return b"".join(out)


def changed_snapshots(
    ids: Sequence[str],
    results: Sequence[diff.DiffResult],
    old: dict[str, diff.Snapshot],
    version: str,
    digests: Mapping[str, tuple[bytes | None, bytes | None]] | None = None,
) -> list[tuple[str, diff.Snapshot, bytes | None]]:
    """The snapshots of `ids` to write, with their digests: those that changed.

    An unchanged snapshot is left as it is (sql/008_unit_continuity.sql), and
    one already at `version` too. `digests` (artists compared by
    COMPARE_ARTISTS) gives, per id, the stored graph digest and the one to
    store (None: the row was not clean); an unchanged snapshot whose digest
    must change is rewritten.
    """
    rows: list[tuple[str, diff.Snapshot, bytes | None]] = []
    for i, r in zip(ids, results, strict=True):
        before = old.get(i)
        stored, digest = digests.get(i, (None, None)) if digests else (None, None)
        if r is diff.UNCHANGED:
            if digest is not None and digest != stored and before is not None:
                rows.append((i, before._replace(version=version), digest))
            continue
        if (new := r.snapshot) is None:
            continue
        if before is None:
            rows.append((i, new, digest))
        elif before.version == version:
            continue  # already written by this cycle (see "already_diffed")
        elif not unchanged(before, new) or (digest is not None and digest != stored):
            rows.append((i, new, digest))
    return rows


def unchanged(before: diff.Snapshot, after: diff.Snapshot) -> bool:
    """True when two snapshots differ at most by their version."""
    return (
        before.entity_name == after.entity_name
        and before.release_count == after.release_count
        and _same(before.release_ids, after.release_ids)
        and _same(before.alias_ids, after.alias_ids)
        and _same(before.member_ids, after.member_ids)
        and before.tree_digest == after.tree_digest
        and before.edge_count == after.edge_count
        and before.master_mark == after.master_mark
        and before.alias_edges == after.alias_edges
        and before.member_edges == after.member_edges
    )


def _same(a: Sequence[int] | None, b: Sequence[int] | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a) == list(b)


def snapshot_params(
    entity_type: str, rows: Sequence[tuple[str, diff.Snapshot, bytes | None]]
) -> dict[str, object]:
    """FINISH_UNIT's snapshot parameters for (entity id, snapshot, graph digest) rows."""
    doc = [
        {
            "i": i,
            "n": s.entity_name,
            "v": s.version,
            "r": s.release_ids,
            "a": s.alias_ids,
            "m": s.member_ids,
            "c": s.release_count,
            "h": None if h is None else h.hex(),
            "t": None if s.tree_digest is None else s.tree_digest.hex(),
            "e": s.edge_count,
            "k": s.master_mark,
            "ae": s.alias_edges,
            "me": s.member_edges,
        }
        for i, s, h in rows
    ]
    return {"type": entity_type, "rows": JSON.encode(doc).decode()}
