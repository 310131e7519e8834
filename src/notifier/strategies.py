"""What differs between the entity types of diff units, one strategy per type.

A unit runs the same steps whatever its type (`units.UnitRunner`): the graph
read (`read`), then on one PostgreSQL connection (`Writing`) its snapshots
(`load`), the other rows its type needs (`lookup`), the diff in Python
(`diff`), the events' split by their watchers' filters (`audience`) and the
graph digests to store (`digests`), then its write (unitstore.FINISH_UNIT). A `Strategy` says how
each step goes for one type; the releases unit, which diffs no snapshot,
has its own module (releases.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from psycopg import AsyncConnection

from notifier import cycles, diff, fanout, unitstore
from notifier.diff import (
    ArtistMarks,
    ArtistState,
    Counters,
    DiffResult,
    EventDraft,
    LabelState,
    LabelTree,
    NotableRelease,
    ReleaseFilter,
    SearchMatch,
    Snapshot,
    TagState,
)
from notifier.graph import Graph, artist_marks, artist_states
from notifier.releases import NEW_MASTERS_KNOWN

log = logging.getLogger(__name__)

# The filtered watchers of some artists or labels (watchlists_filtered_idx,
# whose predicate the fixed type proves): each entity's distinct filters, and
# whether it also has an unfiltered watcher (watchlists_entity_idx, stopping
# at the first). The type is fixed per query, never from input.
_FILTERED_WATCHES = """
SELECT f.entity_id, f.filters,
       EXISTS (SELECT 1 FROM notifier.watchlists p
               WHERE p.entity_type = '{type}' AND p.entity_id = f.entity_id
                 AND p.created_at < %(before)s AND p.options = '{{}}'::jsonb) AS plain
FROM (
    SELECT entity_id, jsonb_agg(DISTINCT options) AS filters
    FROM notifier.watchlists
    WHERE entity_type = '{type}' AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
      AND options <> '{{}}'::jsonb
    GROUP BY entity_id
) AS f
"""
FILTERED_WATCHES = {t: _FILTERED_WATCHES.format(type=t) for t in ("artist", "label")}
# Genre/style watchers' thresholds (watchlists_entity_idx). A usable threshold
# is a positive integer JSON number; other values match no event (fan-out
# compares the JSON values) and are counted.
THRESHOLDS = """
SELECT entity_id,
       array_agg(DISTINCT (options ->> 'threshold')::bigint) FILTER (
           WHERE jsonb_typeof(options -> 'threshold') = 'number'
             AND options ->> 'threshold' ~ '^[1-9][0-9]{0,17}$'),
       bool_or(NOT options ? 'threshold'),
       count(*) FILTER (
           WHERE options ? 'threshold' AND NOT (jsonb_typeof(options -> 'threshold') = 'number'
             AND options ->> 'threshold' ~ '^[1-9][0-9]{0,17}$'))
FROM notifier.watchlists
WHERE entity_type = %(type)s AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
GROUP BY entity_id
"""
# The cycle's (new release, label) ON pairs on some labels, one per ON edge
# (releases.edge_rows): a range scan of cycle_release_edges' primary key per id
# rather than an unnest of every new release.
NEW_ON_LABELS = """
SELECT entity_id, release_id
FROM notifier.cycle_release_edges
WHERE version = %(version)s AND kind = 'on' AND entity_id = ANY(%(ids)s)
"""
# The cycle's (new release, artist) BY pairs on some artists, one per BY edge
# (releases.edge_rows; cycle_release_edges primary key).
NEW_BY_ARTISTS = """
SELECT entity_id, release_id
FROM notifier.cycle_release_edges
WHERE version = %(version)s AND kind = 'by' AND entity_id = ANY(%(ids)s)
"""
# The BY edges of the cycle's new masters on some artists, counted (one row
# per edge, releases.master_edge_rows; cycle_master_edges primary key). No row
# when the releases unit could not tell the new masters: then an artist with
# one is read in full.
NEW_MASTERS_BY_ARTISTS = """
SELECT artist_id, count(*)
FROM notifier.cycle_master_edges
WHERE version = %(version)s AND artist_id = ANY(%(ids)s)
GROUP BY artist_id
"""
# Only a releases unit that is done has written all of its cycle's new
# releases (diff_units_version_type_seq_key); one that failed for good may
# have written some: then every label is read in full.
RELEASES_DONE = """
SELECT EXISTS (SELECT 1 FROM notifier.diff_units
               WHERE version = %(version)s AND entity_type = 'releases' AND status = 'done')
"""
# The cycle's new releases of some genres or styles (cycle_releases primary
# key prefix: version). The column is fixed by the caller, never from input.
NEW_IN_GENRES = """
SELECT t.tag, r.release_id, r.title, r.rank
FROM notifier.cycle_releases r, unnest(r.genres) AS t (tag)
WHERE r.version = %(version)s AND t.tag = ANY(%(ids)s)
"""
NEW_IN_STYLES = NEW_IN_GENRES.replace("r.genres", "r.styles")
# The IS edges of the cycle's new masters on some genres or styles (one entry
# per edge, releases.master_rows; cycle_masters primary key prefix: version).
# The column is fixed by the caller, never from input.
NEW_MASTERS_IN_GENRES = """
SELECT t.tag, count(*)
FROM notifier.cycle_masters m, unnest(m.genres) AS t (tag)
WHERE m.version = %(version)s AND t.tag = ANY(%(ids)s)
GROUP BY t.tag
"""
NEW_MASTERS_IN_STYLES = NEW_MASTERS_IN_GENRES.replace("m.genres", "m.styles")
# One row per saved search among the unit's ids (watchlists_entity_idx); all
# watches of one search share its options (the id is a hash of them).
SEARCHES = """
SELECT DISTINCT ON (entity_id) entity_id, entity_name, options
FROM notifier.watchlists
WHERE entity_type = 'search' AND entity_id = ANY(%(ids)s) AND created_at < %(before)s
ORDER BY entity_id, created_at
"""
# The matches of the unit's searches, found by the cycle's releases unit
# (cycle_search_matches primary key).
SEARCH_MATCHES = """
SELECT search_id, match_count, matches
FROM notifier.cycle_search_matches
WHERE version = %(version)s AND search_id = ANY(%(ids)s)
"""


Data = TypeVar("Data")
Extra = TypeVar("Extra")
# Per id: the stored graph digest, and the one to store (None: none).
Digests = Mapping[str, tuple[bytes | None, bytes | None]]


@dataclass(frozen=True)
class Writing:
    """A unit's write step under way: its connection, this router's id, the unit's counters."""

    unit: cycles.Unit
    conn: AsyncConnection[Any]
    me: str
    counters: Counters


@dataclass(frozen=True)
class Loaded:
    """A unit's snapshots as read for its diff."""

    ids: list[str]  # the ids to diff, in unit order
    snapshots: dict[str, Snapshot]
    # Artists: the COMPARE_ARTISTS rows, one per id.
    compared: Sequence[unitstore.ComparedRow] = ()


class Strategy(Protocol[Data, Extra]):
    """How a unit of one entity type is read and diffed (see the module's docstring).

    `Data` is what its graph read gives, `Extra` what it reads from
    PostgreSQL beside the snapshots. The defaults (for a class that names
    Strategy as its base): every snapshot of the unit, events as the diff
    made them, no graph digest.
    """

    async def read(self, unit: cycles.Unit) -> Data:
        """The unit's graph read, before its transaction."""
        ...

    async def lookup(self, w: Writing) -> Extra:
        """What the diff needs from PostgreSQL beside the snapshots."""
        ...

    def diff(self, unit: cycles.Unit, data: Data, loaded: Loaded, extra: Extra) -> list[DiffResult]:
        """One result per id of `loaded.ids`, in order (`diff.UNCHANGED`: found as recorded)."""
        ...

    async def load(self, w: Writing, data: Data) -> Loaded:
        """The unit's snapshots, and which of its ids to diff."""
        return Loaded(w.unit.entity_ids, await unitstore.load_snapshots(w.conn, w.unit))

    async def audience(
        self, w: Writing, events: list[EventDraft], loaded: Loaded
    ) -> list[EventDraft]:
        """`events` as they go to the watchers (split by their filters, for some types)."""
        return events

    def digests(self, data: Data, loaded: Loaded, results: Sequence[DiffResult]) -> Digests:
        """The graph digests to store with the changed snapshots (unitstore.changed_snapshots)."""
        return {}


@dataclass
class ArtistRead:
    """An artist unit's cheap graph read (graph.ARTIST_MARKS), then what its `load` found."""

    rows: list[Any]
    marks: dict[str, ArtistMarks] = field(default_factory=dict)
    # The artists found from the cycle's new releases and masters (diff.artist_news)...
    fast: dict[str, DiffResult] = field(default_factory=dict)
    # ...and the others' full read (graph.ARTIST_STATES).
    states: dict[str, ArtistState] = field(default_factory=dict)


class ArtistStrategy(Strategy[ArtistRead, None]):
    """Artists: compared in PostgreSQL by graph-row digest first, only the changed diffed.

    The graph read gives each artist's name and BY, ALIAS_OF and MEMBER_OF
    degrees, not its releases; an artist whose row hashes as recorded is
    left as it is (COMPARE_ARTISTS). Of the others, one recorded cleanly by
    the previous cycle whose BY degree grew by exactly the BY edges of the
    cycle's new releases and masters takes those releases as its new ones,
    its aliases and members read alone if their degrees changed
    (`diff.artist_news`, counted `artist_fast_path`); the rest are read in
    full (`artist_full_read`).
    """

    def __init__(self, graph: Graph, batch: int) -> None:
        self.graph, self.batch = graph, batch

    async def read(self, unit: cycles.Unit) -> ArtistRead:
        """graph.Graph.artist_marks of the unit."""
        rows = await self.graph.artist_marks(unit.entity_ids)
        return ArtistRead(rows, artist_marks(rows))

    async def load(self, w: Writing, data: ArtistRead) -> Loaded:
        """COMPARE_ARTISTS; then each artist whose row changed from what is new, or in full."""
        unit = w.unit
        digests = unitstore.row_digests(unit.entity_ids, data.rows)
        rows = await unitstore.compare_artists(w.conn, unit, w.me, digests)
        w.counters.add("unchanged_in_db", len(unit.entity_ids) - len(rows))
        snapshots = unitstore.snapshots_of(rows)
        previous = unit.previous_version
        # Only an artist the previous cycle recorded with its marks, and cleanly
        # (it stored a digest: nothing odd counted, so neither path counts more).
        hopeful = {
            r.entity_id: (marks, s)
            for r in rows
            if r.stored_digest is not None
            and (marks := data.marks.get(r.entity_id)) is not None
            and (s := snapshots.get(r.entity_id)) is not None
            and s.version == previous
            and s.edge_count is not None
        }
        news = await _new_by_artists(w, list(hopeful)) if hopeful else None
        if news is not None:
            releases, masters = news
            changed = [i for i, (m, s) in hopeful.items() if diff.people_changed(m, s)]
            people = await self.graph.artist_people(changed) if changed else {}
            for i, (marks, s) in hopeful.items():
                found = diff.artist_news(
                    unit.version, previous, i, marks, s,
                    releases.get(i, ()), masters.get(i, 0), people.get(i),
                )  # fmt: skip
                if found is not None:
                    data.fast[i] = found
        full = [
            r.entity_id for r in rows if r.entity_id in data.marks and r.entity_id not in data.fast
        ]
        if full:
            data.states = artist_states(await self.graph.artist_rows(full))
        w.counters.add("artist_fast_path", len(data.fast))
        w.counters.add("artist_full_read", len(full))
        return Loaded([r.entity_id for r in rows], snapshots, rows)

    async def lookup(self, w: Writing) -> None:
        """Nothing: COMPARE_ARTISTS also said which artists have a filtered watcher."""
        return None

    def diff(
        self, unit: cycles.Unit, data: ArtistRead, loaded: Loaded, extra: None
    ) -> list[DiffResult]:
        """The fast path's result, else `diff_artists` of the full read."""
        slow = [i for i in loaded.ids if i not in data.fast]
        results = iter(diff_artists(unit, slow, data.states, loaded.snapshots, data.marks))
        return [data.fast.get(i) or next(results) for i in loaded.ids]

    async def audience(
        self, w: Writing, events: list[EventDraft], loaded: Loaded
    ) -> list[EventDraft]:
        """`filter_releases`, asked only of the artists COMPARE_ARTISTS found filtered."""
        filtered = {r.entity_id for r in loaded.compared if r.filtered}
        return await filter_releases(w, self.graph, self.batch, events, filtered)

    def digests(self, data: ArtistRead, loaded: Loaded, results: Sequence[DiffResult]) -> Digests:
        """Each diffed artist's stored digest, and its row's when that row was clean."""
        return {
            r.entity_id: (
                r.stored_digest,
                r.row_digest
                if r.row_digest != unitstore.NO_DIGEST and _clean(data, r.entity_id, result)
                else None,
            )
            for r, result in zip(loaded.compared, results, strict=True)
        }


async def _new_by_artists(
    w: Writing, ids: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, int]] | None:
    """The cycle's new releases BY each of `ids` (once per edge), and its new masters'
    BY edges on each; None when the cycle's releases unit is not done."""
    if not await _releases_done(w):
        return None
    params = {"version": w.unit.version, "ids": list(ids)}
    releases: dict[str, list[int]] = defaultdict(list)
    for artist_id, release_id in await (await w.conn.execute(NEW_BY_ARTISTS, params)).fetchall():
        releases[artist_id].append(release_id)
    cur = await w.conn.execute(NEW_MASTERS_BY_ARTISTS, params)
    masters = {artist_id: int(n) for artist_id, n in await cur.fetchall()}
    return releases, masters


def _clean(data: ArtistRead, entity_id: str, result: DiffResult) -> bool:
    # A digest stands for its row only if JSON told the row apart from any
    # other that diffs differently: a string name (a NaN name and a missing
    # one are both null), int degrees, nothing odd counted.
    marks = data.marks.get(entity_id)
    return (
        marks is not None
        and type(marks.name) is str
        and marks.degrees is not None
        and result.counters.values.keys() <= {"baseline"}
    )


@dataclass
class LabelRead:
    """A label unit's cheap graph read (graph.LABEL_TREES), then what its `load` found."""

    trees: dict[str, LabelTree]
    # The labels found from the cycle's new releases (diff.label_news)...
    fast: dict[str, DiffResult] = field(default_factory=dict)
    # ...and the others' full read (graph.LABEL_STATES).
    states: dict[str, LabelState] = field(default_factory=dict)


class LabelStrategy(Strategy[LabelRead, None]):
    """Labels: each label's releases (its sublabels' included) against its snapshot.

    The graph read gives each label's sublabel tree and each tree label's ON
    degree, not its releases. A label whose tree holds older releases on the
    labels its snapshot recorded and whose edges grew by exactly the ON pairs
    of the cycle's new releases on that tree takes those as its new releases
    (`diff.label_news`, counted `label_fast_path`); the others are read in
    full (`label_full_read`).
    """

    def __init__(self, graph: Graph, batch: int) -> None:
        self.graph, self.batch = graph, batch

    async def read(self, unit: cycles.Unit) -> LabelRead:
        """graph.Graph.label_trees of the unit."""
        return LabelRead(await self.graph.label_trees(unit.entity_ids))

    async def load(self, w: Writing, data: LabelRead) -> Loaded:
        """The snapshots; then each label from the cycle's new releases, or read in full."""
        unit = w.unit
        snapshots = await unitstore.load_snapshots(w.conn, unit)
        previous = unit.previous_version
        # Only a label recorded by the previous cycle with its tree may take the fast path.
        hopeful = {
            i: tree
            for i, tree in data.trees.items()
            if (s := snapshots.get(i)) is not None
            and s.version == previous
            and s.tree_digest is not None
            and s.edge_count is not None
        }
        pairs = await _new_on_labels(w, hopeful) if hopeful else None
        if pairs is not None:
            for i, tree in hopeful.items():
                found = diff.label_news(unit.version, previous, i, tree, snapshots[i], pairs)
                if found is not None:
                    data.fast[i] = found
        full = [i for i in unit.entity_ids if i in data.trees and i not in data.fast]
        if full:
            data.states = await self.graph.labels(full)
        w.counters.add("label_fast_path", len(data.fast))
        w.counters.add("label_full_read", len(full))
        return Loaded(unit.entity_ids, snapshots)

    async def lookup(self, w: Writing) -> None:
        """Nothing more: `load` read the cycle's new releases."""
        return None

    def diff(
        self, unit: cycles.Unit, data: LabelRead, loaded: Loaded, extra: None
    ) -> list[DiffResult]:
        """The fast path's result, else `diff.diff_label` of the full read."""
        old, version, previous = loaded.snapshots, unit.version, unit.previous_version
        out: list[DiffResult] = []
        for i in loaded.ids:
            if (found := data.fast.get(i)) is not None:
                out.append(found)
                continue
            state, tree = data.states.get(i), data.trees.get(i)
            out.append(diff.diff_label(version, previous, i, state, old.get(i), tree))
        return out

    async def audience(
        self, w: Writing, events: list[EventDraft], loaded: Loaded
    ) -> list[EventDraft]:
        """`filter_releases` (which labels have a filtered watcher is asked there)."""
        return await filter_releases(w, self.graph, self.batch, events)


async def _new_on_labels(w: Writing, trees: Mapping[str, LabelTree]) -> dict[str, list[int]] | None:
    """The cycle's new releases ON each label of `trees` (once per edge), by label id.

    None when the cycle's releases unit is not done (its rows may be missing).
    """
    version = w.unit.version
    row = await (await w.conn.execute(RELEASES_DONE, {"version": version})).fetchone()
    if row is None or not row[0]:
        return None
    ids = sorted({t for tree in trees.values() for t in tree.label_ids if type(t) is str})
    cur = await w.conn.execute(NEW_ON_LABELS, {"version": version, "ids": ids})
    out: dict[str, list[int]] = defaultdict(list)
    for label_id, release_id in await cur.fetchall():
        out[label_id].append(release_id)
    return out


class TagExtra(NamedTuple):
    """What a genre or style unit reads beside its snapshots."""

    thresholds: dict[str, list[int]]  # each tag's watchers' release-count thresholds


@dataclass
class TagRead:
    """A tag unit's graph read (its IS degrees), then what its `load` found."""

    degrees: dict[str, int]
    # Each tag's new releases of the cycle (NEW_IN_*)...
    notable: dict[str, list[NotableRelease]] = field(default_factory=dict)
    # ...and its state: counted from them (diff.tag_count) or in full.
    states: dict[str, TagState] = field(default_factory=dict)


class TagStrategy(Strategy[TagRead, TagExtra]):
    """Genres and styles: release counts crossing the watchers' thresholds.

    The graph read gives each tag's IS degree. A tag whose snapshot is the
    previous cycle's and whose degree grew by exactly the IS edges of the
    cycle's new releases and new masters (both recorded by the releases
    unit: cycle_releases, cycle_masters) counts the recorded releases plus
    those (`diff.tag_count`, counted `tag_fast_path`); the others subtract
    every master's IS edges as before (graph.TAG_MASTERS, `tag_full_count`).
    The unit reads no master from the graph unless it counts in full.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    @staticmethod
    def _tag(unit: cycles.Unit) -> Literal["Genre", "Style"]:
        return "Genre" if unit.entity_type == "genre" else "Style"

    async def read(self, unit: cycles.Unit) -> TagRead:
        """graph.Graph.tag_degrees of the unit."""
        return TagRead(await self.graph.tag_degrees(self._tag(unit), unit.entity_ids))

    async def load(self, w: Writing, data: TagRead) -> Loaded:
        """The snapshots and the cycle's new releases; each tag's count, fast or in full."""
        unit, tag = w.unit, self._tag(w.unit)
        snapshots = await unitstore.load_snapshots(w.conn, unit)
        query = NEW_IN_GENRES if unit.entity_type == "genre" else NEW_IN_STYLES
        cur = await w.conn.execute(query, {"version": unit.version, "ids": unit.entity_ids})
        notable: dict[str, list[NotableRelease]] = defaultdict(list)
        for name, rid, title, rank in await cur.fetchall():
            notable[name].append(NotableRelease(rid, title, rank))
        data.notable = notable
        previous = unit.previous_version
        # Without the cycle's new masters (the first cycle, a releases unit not
        # done or that scanned in full) every tag is counted in full.
        cur = await w.conn.execute(
            NEW_MASTERS_KNOWN, {"version": unit.version, "previous": previous}
        )
        fast = bool((row := await cur.fetchone()) and row[0])
        master_edges: dict[str, int] = {}
        if fast:
            query = NEW_MASTERS_IN_GENRES if unit.entity_type == "genre" else NEW_MASTERS_IN_STYLES
            cur = await w.conn.execute(query, {"version": unit.version, "ids": list(data.degrees)})
            master_edges = {name: int(n) for name, n in await cur.fetchall()}
        full: list[str] = []
        for i, degree in data.degrees.items():
            count = None
            if fast:
                new_edges = len(notable.get(i, ()))  # one per IS edge (releases.release_row)
                count = diff.tag_count(
                    snapshots.get(i), previous, degree, new_edges, master_edges.get(i, 0)
                )
            if count is None:
                full.append(i)
            else:
                data.states[i] = TagState(count, degree)
        if full:
            masters = await self.graph.tag_masters(tag, full)
            for i in full:
                degree = data.degrees[i]
                data.states[i] = TagState(degree - masters.get(i, 0), degree)
        w.counters.add("tag_fast_path", len(data.degrees) - len(full))
        w.counters.add("tag_full_count", len(full))
        return Loaded(unit.entity_ids, snapshots)

    async def lookup(self, w: Writing) -> TagExtra:
        """The watchers' thresholds (THRESHOLDS)."""
        unit = w.unit
        thresholds: dict[str, list[int]] = {}
        params = {"type": unit.entity_type, "ids": unit.entity_ids, "before": unit.started_at}
        cur = await w.conn.execute(THRESHOLDS, params)
        for entity_id, explicit, any_default, bad in await cur.fetchall():
            values = list(explicit or [])
            if any_default:
                values.extend(fanout.THRESHOLD_MILESTONES)
            thresholds[entity_id] = values
            w.counters.add("bad_threshold_option", int(bad))
        return TagExtra(thresholds)

    def diff(
        self, unit: cycles.Unit, data: TagRead, loaded: Loaded, extra: TagExtra
    ) -> list[DiffResult]:
        """`diff.diff_tag` of each genre or style."""
        return [
            diff.diff_tag(
                unit.version,
                unit.previous_version,
                unit.entity_type,
                i,
                data.states.get(i),
                loaded.snapshots.get(i),
                extra.thresholds.get(i, ()),
                data.notable.get(i, []),
            )
            for i in loaded.ids
        ]


async def _releases_done(w: Writing) -> bool:
    """Whether the cycle's releases unit is done: only then are its new releases all written."""
    cur = await w.conn.execute(RELEASES_DONE, {"version": w.unit.version})
    row = await cur.fetchone()
    return row is not None and bool(row[0])


class FoundSearch(NamedTuple):
    """A saved search of a search unit, and what the releases unit found for it."""

    name: str | None
    matches: list[SearchMatch] | None  # None: its options are not a search
    match_count: int


class SearchStrategy(Strategy[None, dict[str, FoundSearch]]):
    """Saved searches: the matches the cycle's releases unit found (no graph read)."""

    async def read(self, unit: cycles.Unit) -> None:
        """Nothing: the releases unit read the graph."""
        return None

    async def lookup(self, w: Writing) -> dict[str, FoundSearch]:
        """The unit's searches (SEARCHES) and their matches (SEARCH_MATCHES)."""
        unit, found = w.unit, {}
        cur = await w.conn.execute(SEARCHES, {"ids": unit.entity_ids, "before": unit.started_at})
        searches = await cur.fetchall()
        params = {"version": unit.version, "ids": [entity_id for entity_id, _, _ in searches]}
        cur = await w.conn.execute(SEARCH_MATCHES, params)
        matched = {i: (int(count), pairs) for i, count, pairs in await cur.fetchall()}
        for entity_id, name, options in searches:
            if diff.parse_search(options) is None:
                found[entity_id] = FoundSearch(name, None, 0)
                continue
            count, pairs = matched.get(entity_id, (0, []))
            found[entity_id] = FoundSearch(name, [SearchMatch(i, t) for i, t in pairs], count)
        return found

    def diff(
        self, unit: cycles.Unit, data: None, loaded: Loaded, extra: dict[str, FoundSearch]
    ) -> list[DiffResult]:
        """`diff.diff_search` of each saved search."""
        version, previous, out = unit.version, unit.previous_version, []
        for i in loaded.ids:
            name, matches, count = extra.get(i, FoundSearch(None, None, 0))
            old = loaded.snapshots.get(i)
            out.append(diff.diff_search(version, previous, i, name, matches, count, old))
        return out


class UnknownStrategy(Strategy[None, None]):
    """A type this router does not know: no event, counted and logged, the unit done."""

    async def read(self, unit: cycles.Unit) -> None:
        """Nothing."""
        return None

    async def lookup(self, w: Writing) -> None:
        """Nothing read: the unit is counted and logged."""
        w.counters.add("unknown_entity_type", len(w.unit.entity_ids))
        log.warning(
            "unknown entity type in a diff unit",
            extra={"unit": w.unit.id, "entity_type": w.unit.entity_type},
        )

    def diff(self, unit: cycles.Unit, data: None, loaded: Loaded, extra: None) -> list[DiffResult]:
        """An empty result per id."""
        return [DiffResult([], None, Counters()) for _ in loaded.ids]


def by_type(graph: Graph, batch: int) -> dict[str, Strategy[Any, Any]]:
    """The strategy of each known entity type (UnknownStrategy for the others)."""
    tags = TagStrategy(graph)
    return {
        "artist": ArtistStrategy(graph, batch),
        "label": LabelStrategy(graph, batch),
        "genre": tags,
        "style": tags,
        "search": SearchStrategy(),
    }


async def filter_releases(
    w: Writing,
    graph: Graph,
    batch: int,
    events: list[EventDraft],
    filtered: set[str] | None = None,
) -> list[EventDraft]:
    """`events` with each filtered entity's new_releases split by its watchers' filters.

    `filtered`, when known, holds the entities with a filtered watcher:
    without new releases of one of them, nothing is asked. Otherwise one
    query (an index probe per entity with new releases), then their new
    releases' year and formats from the graph in batches (see
    `diff.filter_new_releases`).
    """
    news = {
        e.entity_id: e
        for e in events
        if e.event == "new_releases" and (filtered is None or e.entity_id in filtered)
    }
    if not news:
        return events
    params = {"ids": list(news), "before": w.unit.started_at}
    rows = await (await w.conn.execute(FILTERED_WATCHES[w.unit.entity_type], params)).fetchall()
    if not rows:
        return events
    wanted = sorted({i for entity_id, _, _ in rows for i in news[entity_id].new_ids})
    facets = await graph.release_facets(wanted, batch)
    split: dict[str, list[EventDraft]] = {}
    for entity_id, filters, plain in rows:
        audiences: list[tuple[Any, ReleaseFilter]] = []
        if plain:
            audiences.append(({}, ReleaseFilter()))
        for options in filters:
            rule = diff.parse_filter(options)
            if rule is None:  # not written by the API: let everything through
                w.counters.add("bad_filter_option")
                rule = ReleaseFilter()
            audiences.append((options, rule))
        split[entity_id] = diff.filter_new_releases(news[entity_id], audiences, facets)
    w.counters.add("filtered_entities", len(split))
    w.counters.add("filtered_releases_read", len(wanted))
    out: list[EventDraft] = []
    for e in events:
        if e.event == "new_releases" and e.entity_id in split:
            out.extend(split[e.entity_id])
        else:
            out.append(e)
    return out


def diff_artists(
    unit: cycles.Unit,
    ids: Sequence[str],
    artists: dict[str, ArtistState],
    snapshots: dict[str, Snapshot],
    marks: Mapping[str, ArtistMarks] | None = None,
) -> list[DiffResult]:
    """`diff.diff_artist` of each of `ids`; `diff.UNCHANGED` for an artist found as recorded.

    `marks` (the unit's cheap read) are recorded with the snapshots; an
    artist is found as recorded only with its marks recorded too.
    """
    out: list[DiffResult] = []
    previous = unit.previous_version
    for i in ids:
        state, old = artists.get(i), snapshots.get(i)
        mark = None if marks is None else marks.get(i)
        if (
            state is not None
            and old is not None
            and old.version == previous  # not a baseline, not already diffed
            and diff.artist_unchanged(state, old)
            and (mark is None or _marks_recorded(mark, old))
        ):
            out.append(diff.UNCHANGED)
        else:
            out.append(diff.diff_artist(unit.version, previous, i, state, old, mark))
    return out


def _marks_recorded(marks: ArtistMarks, snapshot: Snapshot) -> bool:
    """Whether `snapshot` records the degrees of `marks` (None when they are odd)."""
    degrees = marks.degrees
    recorded = (snapshot.edge_count, snapshot.alias_edges, snapshot.member_edges)
    return recorded == (degrees if degrees is not None else (None, None, None))
