"""The diff: pure functions from (graph state, last snapshot) to events.

No I/O here. The router reads the graph (notifier.graph) and the snapshots
(PostgreSQL), calls these functions, and writes what they return.

Rules shared by every entity type (contract §6):
- Baseline: an entity without a snapshot, or whose snapshot is not from the
  previous cycle (it was unwatched for a while), yields no event; its state is
  only recorded.
- Ids in the graph are strings; the snapshots keep sorted bigint arrays, so a
  non-numeric id (or a non-canonical one such as "007") is skipped and counted.
- `detail` lists are capped (see the *_CAP constants) with the full count
  beside them, and `fit_detail` shrinks lists further if needed, so a webhook
  body always stays under 64 KiB.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

# Detail caps (documented in the README): a capped list keeps its first items
# in ascending id order; the full count is always beside it.
RELEASE_ID_CAP = 500
NAMED_CAP = 100
NOTABLE_CAP = 10
SEARCH_MATCH_CAP = 100
NAME_MAX = 200
ENTITY_NAME_MAX = 512
# Room left for the envelope (id, event, entity, version, timestamp) of a body.
DETAIL_MAX_BYTES = 60_000

BIGINT_MAX = 2**63 - 1
_JSON = msgspec.json.Encoder()


@dataclass
class Counters:
    """What a diff skipped or noticed, summed into diff_units.stats."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        """Add `n` to counter `key` (zero is not recorded)."""
        if n:
            self.values[key] = self.values.get(key, 0) + n

    def merge(self, other: Counters) -> None:
        """Add every counter of `other`."""
        for k, v in other.values.items():
            self.add(k, v)


def parse_id(raw: object) -> int | None:
    """A Discogs id as an int, or None if it is not a canonical non-negative integer."""
    if isinstance(raw, str):  # the usual case: graph ids are strings
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
            return None
        if raw[0] == "0" and len(raw) > 1:  # not canonical ("007")
            return None
        value = int(raw)
        return value if value <= BIGINT_MAX else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if 0 <= raw <= BIGINT_MAX else None
    return None


def parse_ids(raws: Iterable[object], counters: Counters, what: str) -> list[int]:
    """Sorted distinct ints of `raws`; bad ones counted as `non_numeric_<what>`."""
    out: set[int] = set()
    bad = 0
    for raw in raws:
        # Fast path (almost every id): a canonical ASCII digit string too short to overflow.
        if type(raw) is str and raw.isdigit() and raw.isascii() and len(raw) < 19:
            if raw[0] != "0" or len(raw) == 1:
                out.add(int(raw))
            else:
                bad += 1
            continue
        if raw is None:
            continue
        value = parse_id(raw)
        if value is None:
            bad += 1
        else:
            out.add(value)
    if bad:
        counters.add("non_numeric_" + what, bad)
    return sorted(out)


def clip_name(name: object, limit: int = NAME_MAX) -> str | None:
    """A display name as text of at most `limit` characters (None stays None)."""
    if name is None:
        return None
    text = name if isinstance(name, str) else str(name)
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dedup_key(version: str, entity_type: str, entity_id: str, event: str, *extra: object) -> str:
    """The unique key of a router event: version:entity_type:entity_id:event[:extra]."""
    return ":".join([version, entity_type, entity_id, event, *(str(e) for e in extra)])


class Snapshot(NamedTuple):
    """The last recorded state of one watched entity (notifier.entity_snapshots).

    A named tuple (fields in unitstore.LOAD_UNIT_SNAPSHOTS' column order): a unit
    loads hundreds of them, and a tuple is several times cheaper to build than
    a frozen dataclass.
    """

    version: str
    entity_name: str | None = None
    release_ids: Sequence[int] | None = None
    alias_ids: Sequence[int] | None = None
    member_ids: Sequence[int] | None = None
    release_count: int | None = None
    # Labels (sql/017_label_marks.sql): the digest of the sublabel tree and
    # the ON edges into it when release_ids were recorded (LabelTree).
    tree_digest: bytes | None = None
    edge_count: int | None = None
    # Genres and styles (sql/018_tag_marks.sql): edge_count is the tag's IS
    # degree when release_count was recorded. master_mark is no longer written
    # (the cycle's new masters are in cycle_masters, sql/019): None.
    master_mark: int | None = None
    # Artists (sql/020_artist_marks.sql): the ALIAS_OF and MEMBER_OF degrees
    # when alias_ids and member_ids were recorded (edge_count: the BY degree).
    alias_edges: int | None = None
    member_edges: int | None = None


@dataclass(frozen=True)
class EventDraft:
    """An event to insert: `extra` goes into the dedup key after the event name."""

    event: str
    entity_type: str
    entity_id: str
    entity_name: str | None
    detail: dict[str, Any]
    extra: tuple[object, ...] = ()
    # new_releases: every new release id (detail's list is capped), for filters.
    new_ids: Sequence[int] = ()
    # The watch options this event is for (see `filter_new_releases`); None: every watcher.
    audience: tuple[Any, ...] | None = None

    def key(self, version: str) -> str:
        """The dedup key of this event in cycle `version`."""
        return dedup_key(version, self.entity_type, self.entity_id, self.event, *self.extra)


@dataclass
class DiffResult:
    """Events and the new snapshot (None when nothing must be written)."""

    events: list[EventDraft]
    snapshot: Snapshot | None
    counters: Counters


# What `diff_artist` (and the like) amounts to for an entity found exactly as
# its snapshot recorded it: no event, no counter, the snapshot left as it is.
# Shared and never mutated; compare with `is`.
UNCHANGED = DiffResult([], None, Counters())


def is_baseline(snapshot: Snapshot | None, previous_version: str | None) -> bool:
    """True when the entity's first (or first-after-a-gap) cycle only records a baseline."""
    if snapshot is None:
        return True
    return previous_version is not None and snapshot.version != previous_version


def added(current: Sequence[int], before: Sequence[int] | None) -> list[int]:
    """Ids of sorted `current` absent from `before` (sorted)."""
    if not before:
        return list(current)
    old = set(before)
    return [i for i in current if i not in old]


def any_recorded(fresh: Sequence[int], recorded: Sequence[int]) -> bool:
    """Whether any of `fresh` is among the sorted `recorded` ids: found by
    bisection, so a hub's recorded ids are never hashed."""
    for i in fresh:
        at = bisect.bisect_left(recorded, i)
        if at < len(recorded) and recorded[at] == i:
            return True
    return False


def fit_detail(detail: dict[str, Any], max_bytes: int = DETAIL_MAX_BYTES) -> dict[str, Any]:
    """Halve the lists in `detail` until its JSON is under `max_bytes`."""
    out = dict(detail)
    # Most details are far under the limit: compact JSON (msgspec, in C) at
    # most halves the length json.dumps measures, so under half of it is enough.
    with contextlib.suppress(TypeError, ValueError):  # json.dumps below says what is wrong
        if 2 * len(_JSON.encode(out)) < max_bytes:
            return out
    while len(json.dumps(out, ensure_ascii=False).encode()) >= max_bytes:
        lists = [k for k, v in out.items() if isinstance(v, list) and v]
        if not lists:
            break
        for k in lists:
            out[k] = out[k][: len(out[k]) // 2]
    return out


def _named(items: Mapping[int, str | None], ids: Sequence[int]) -> list[dict[str, Any]]:
    return [{"id": str(i), "name": clip_name(items.get(i))} for i in ids[:NAMED_CAP]]


class ArtistState(NamedTuple):
    """An artist as read from the graph (raw ids, as the graph gives them).

    A named tuple: a unit builds hundreds of them per graph read, and a tuple
    is several times cheaper to build than a frozen dataclass.
    """

    name: object
    release_ids: Sequence[object]
    aliases: Sequence[tuple[object, object]]
    members: Sequence[tuple[object, object]]


def _names(pairs: Sequence[tuple[object, object]], counters: Counters, what: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    if not pairs:
        return out
    bad = 0
    for raw, name in pairs:
        value = parse_id(raw)
        if value is None:
            bad += 1 if raw is not None else 0
            continue
        out[value] = name
    counters.add(f"non_numeric_{what}", bad)
    return out


class ArtistMarks(NamedTuple):
    """An artist as its cheap read gives it (graph.ARTIST_MARKS), without release ids.

    Its name and degrees, raw: BY edges into it (its releases and its
    masters), ALIAS_OF edges either way, MEMBER_OF edges into it.
    """

    name: object
    by_edges: object
    alias_edges: object
    member_edges: object

    @property
    def degrees(self) -> tuple[int, int, int] | None:
        """(BY, ALIAS_OF, MEMBER_OF) degrees; None if one is not a non-negative int."""
        out = (self.by_edges, self.alias_edges, self.member_edges)
        if all(type(n) is int and n >= 0 for n in out):
            return out  # type: ignore[return-value]
        return None


def diff_artist(
    version: str,
    previous_version: str | None,
    entity_id: str,
    state: ArtistState | None,
    snapshot: Snapshot | None,
    marks: ArtistMarks | None = None,
) -> DiffResult:
    """new_releases, new_aliases and new_members of one artist, from its full read.

    With `marks` (read with the state), the new snapshot also records its
    degrees, for `artist_news` next cycle.
    """
    counters = Counters()
    if state is None:
        return _vanished(snapshot, version, counters)
    name, releases = _name_and_releases(state.name, state.release_ids, counters)
    aliases = _names(state.aliases, counters, "alias_ids")
    members = _names(state.members, counters, "member_ids")
    degrees = None if marks is None else marks.degrees
    new = Snapshot(
        version=version,
        entity_name=name,
        release_ids=releases,
        alias_ids=sorted(aliases),
        member_ids=sorted(members),
        release_count=len(releases),
        edge_count=None if degrees is None else degrees[0],
        alias_edges=None if degrees is None else degrees[1],
        member_edges=None if degrees is None else degrees[2],
    )
    if is_baseline(snapshot, previous_version):
        counters.add("baseline")
        return DiffResult([], new, counters)
    assert snapshot is not None
    new_releases = added(releases, snapshot.release_ids)
    return DiffResult(
        _artist_events(entity_id, name, new_releases, aliases, members, snapshot), new, counters
    )


def _artist_events(
    entity_id: str,
    name: str | None,
    new_releases: Sequence[int],
    aliases: Mapping[int, Any],
    members: Mapping[int, Any],
    snapshot: Snapshot,
) -> list[EventDraft]:
    """new_releases, new_aliases, new_members of an artist, in that order (those with news)."""
    events: list[EventDraft] = []
    if new_releases:
        events.append(_new_releases("artist", entity_id, name, new_releases))
    new_aliases = added(sorted(aliases), snapshot.alias_ids)
    if new_aliases:
        detail = {"aliases": _named(aliases, new_aliases), "alias_count": len(new_aliases)}
        events.append(EventDraft("new_aliases", "artist", entity_id, name, fit_detail(detail)))
    new_members = added(sorted(members), snapshot.member_ids)
    if new_members:
        detail = {"members": _named(members, new_members), "member_count": len(new_members)}
        events.append(EventDraft("new_members", "artist", entity_id, name, fit_detail(detail)))
    return events


class ArtistPeople(NamedTuple):
    """An artist's aliases and members alone (graph.ARTIST_PEOPLE), raw (id, name) pairs."""

    aliases: Sequence[tuple[object, object]]
    members: Sequence[tuple[object, object]]


def people_changed(marks: ArtistMarks, snapshot: Snapshot) -> bool:
    """Whether the artist's ALIAS_OF or MEMBER_OF degree differs from the recorded one.

    Then `artist_news` needs its aliases and members read (`ArtistPeople`).
    """
    degrees = marks.degrees
    return degrees is None or degrees[1:] != (snapshot.alias_edges, snapshot.member_edges)


def artist_news(
    version: str,
    previous_version: str | None,
    entity_id: str,
    marks: ArtistMarks,
    snapshot: Snapshot | None,
    release_edges: Sequence[int],
    master_edges: int,
    people: ArtistPeople | None,
) -> DiffResult | None:
    """An artist's diff from the cycle's new releases and masters alone, or None: read it in full.

    `release_edges` holds the release id of each BY edge into the artist
    from a new release of the cycle (cycle_releases), `master_edges` the
    number of BY edges into it from the cycle's new masters (cycle_masters):
    all new edges. Only releases and masters are BY an artist. So when the
    snapshot is the previous cycle's (not a baseline) and the BY degree grew
    by exactly these, no other edge came or went (unless as many went as
    came: README), and the artist's releases are the recorded ones plus these
    new ones. Its aliases and members are the recorded ones while both their
    degrees are the recorded ones (same caveat), else `people` (read alone)
    says them. Then the result is what `diff_artist` gives on a full read of
    an artist whose last recording counted nothing odd (the caller's to
    know); every doubt (an odd degree, a new release already recorded,
    counts that do not add up, `people` needed but not read) answers None.
    """
    if snapshot is None or previous_version is None or snapshot.version != previous_version:
        return None
    degrees = marks.degrees
    old, edges = snapshot.release_ids, snapshot.edge_count
    if degrees is None or old is None or edges is None:
        return None
    if snapshot.alias_ids is None or snapshot.member_ids is None:
        return None
    if snapshot.alias_edges is None or snapshot.member_edges is None:
        return None
    if degrees[0] - edges != len(release_edges) + master_edges:
        return None
    fresh, recorded = sorted(set(release_edges)), list(old)
    if any_recorded(fresh, recorded):
        return None
    counters = Counters()
    if marks.name is None:
        counters.add("missing_name")
    name = clip_name(marks.name, ENTITY_NAME_MAX)
    if not people_changed(marks, snapshot):
        aliases: dict[int, Any] = dict.fromkeys(snapshot.alias_ids)
        members: dict[int, Any] = dict.fromkeys(snapshot.member_ids)
    elif people is None:
        return None
    else:
        aliases = _names([p for p in people.aliases if p[0] != entity_id], counters, "alias_ids")
        members = _names(people.members, counters, "member_ids")
    releases = sorted(recorded + fresh) if fresh else recorded  # two sorted runs: linear
    new = Snapshot(
        version=version,
        entity_name=name,
        release_ids=releases,
        alias_ids=sorted(aliases),
        member_ids=sorted(members),
        release_count=len(releases),
        edge_count=degrees[0],
        alias_edges=degrees[1],
        member_edges=degrees[2],
    )
    return DiffResult(
        _artist_events(entity_id, name, fresh, aliases, members, snapshot), new, counters
    )


def artist_unchanged(state: ArtistState, snapshot: Snapshot) -> bool:
    """True when `state` is exactly what `snapshot` recorded (its version aside).

    The fast path of an unchanged artist (most of them each cycle): when True,
    `diff_artist` against a non-baseline `snapshot` would return no event, no
    counter and a snapshot that `unchanged` finds equal to it. False is always
    safe (the caller then runs `diff_artist`): every odd input (a missing name,
    an id that does not parse) answers False.
    """
    name = state.name
    if type(name) is not str or len(name) > ENTITY_NAME_MAX or "\x00" in name:
        return False
    if name != snapshot.entity_name or snapshot.alias_ids != [] or snapshot.member_ids != []:
        return False
    if state.aliases or state.members:
        return False
    ids: list[int] = []
    for raw in state.release_ids:
        if type(raw) is not str or not (raw.isdigit() and raw.isascii()) or len(raw) >= 19:
            return False
        if raw[0] == "0" and len(raw) > 1:
            return False
        ids.append(int(raw))
    ids.sort()
    old = snapshot.release_ids
    return (
        old is not None
        and len(ids) == snapshot.release_count
        and list(old) == ids
        and len(set(ids)) == len(ids)
    )


def _new_releases(
    entity_type: str, entity_id: str, name: str | None, ids: Sequence[int]
) -> EventDraft:
    detail = {
        "new_release_count": len(ids),
        "release_ids": [str(i) for i in ids[:RELEASE_ID_CAP]],
    }
    return EventDraft("new_releases", entity_type, entity_id, name, fit_detail(detail), new_ids=ids)


@dataclass(frozen=True)
class ReleaseFilter:
    """The release filter of an artist or label watch (its `options`, contract §5).

    A release passes when it has one of `formats` (compared case-insensitively
    with the graph's `formats` list, repeats and all; a release without one
    fails) and its year lies within the inclusive bounds (a release without a
    year, or with year 0, Discogs' "unknown", fails any bound).
    """

    formats: frozenset[str] | None = None
    year_from: int | None = None
    year_to: int | None = None

    def passes(self, year: object, formats: object) -> bool:
        """Whether a release with these raw graph values passes."""
        if self.formats is not None and not _has_format(formats, self.formats):
            return False
        if self.year_from is not None or self.year_to is not None:
            y = year if isinstance(year, int) and not isinstance(year, bool) and year > 0 else None
            if y is None:
                return False
            if self.year_from is not None and y < self.year_from:
                return False
            if self.year_to is not None and y > self.year_to:
                return False
        return True


def _has_format(formats: object, wanted: frozenset[str]) -> bool:
    """Whether the graph's `formats` (a list, repeats and all) hold one of `wanted` (folded)."""
    if not isinstance(formats, list):
        return False
    return any(isinstance(f, str) and f.casefold() in wanted for f in formats)


def _bound(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -100_000 <= value <= 100_000:
        return value
    raise ValueError(value)


def parse_filter(options: object) -> ReleaseFilter | None:
    """The filter of an artist or label watch's stored options; None when they are unusable.

    `{}` is the filter that passes everything (`ReleaseFilter()`).
    """
    if not isinstance(options, Mapping) or options.keys() - {"formats", "year_from", "year_to"}:
        return None
    formats = options.get("formats")
    if formats is not None and (
        not isinstance(formats, list) or not formats
        or not all(isinstance(f, str) for f in formats)
    ):  # fmt: skip
        return None
    try:
        year_from = None if options.get("year_from") is None else _bound(options["year_from"])
        year_to = None if options.get("year_to") is None else _bound(options["year_to"])
    except ValueError:
        return None
    folded = None if formats is None else frozenset(f.casefold() for f in formats)
    return ReleaseFilter(folded, year_from, year_to)


# Facets of a release for the filters: (year, formats) as the graph stores them.
Facets = tuple[object, object]
_NO_FACETS: Facets = (None, None)


def filter_new_releases(
    event: EventDraft,
    audiences: Sequence[tuple[Any, ReleaseFilter]],
    facets: Mapping[int, Facets],
) -> list[EventDraft]:
    """One new_releases event per distinct outcome of the watchers' filters.

    `audiences` are the distinct stored options of the entity's watchers with
    their filters (`{}` with `ReleaseFilter()` for unfiltered watches);
    `facets` the (year, formats) of the new releases (a release missing there
    fails every filter but the empty one). Options whose filters let the same
    releases through share one event, whose `audience` lists them; options
    that let none through get none. The outcome of every release keeps the
    event's own dedup key; a narrower one adds `only:<digest of its ids>`, so
    the key names the outcome, not the users, and a re-run makes nothing new.
    """
    everything = tuple(event.new_ids)
    outcomes: dict[tuple[int, ...], list[Any]] = {}
    for options, rule in audiences:
        if rule == ReleaseFilter():
            passing = everything
        else:
            passing = tuple(i for i in everything if rule.passes(*facets.get(i, _NO_FACETS)))
        if passing:
            outcomes.setdefault(passing, []).append(options)
    out: list[EventDraft] = []
    for passing, options_list in sorted(outcomes.items()):
        audience = tuple(sorted(options_list, key=lambda o: msgspec.json.encode(o, order="sorted")))
        if passing == everything:
            out.append(dataclasses.replace(event, audience=audience))
            continue
        digest = hashlib.sha256(",".join(map(str, passing)).encode()).hexdigest()[:20]
        narrowed = _new_releases(event.entity_type, event.entity_id, event.entity_name, passing)
        out.append(dataclasses.replace(narrowed, extra=("only", digest), audience=audience))
    return out


def _vanished(snapshot: Snapshot | None, version: str, counters: Counters) -> DiffResult:
    counters.add("vanished")
    return DiffResult([], _keep(snapshot, version), counters)


def _name_and_releases(
    raw_name: object, raw_ids: Sequence[object], counters: Counters
) -> tuple[str | None, list[int]]:
    """The clipped name and the parsed release ids, counting what was missing or odd."""
    if raw_name is None:
        counters.add("missing_name")
    return clip_name(raw_name, ENTITY_NAME_MAX), parse_ids(raw_ids, counters, "release_ids")


def _keep(snapshot: Snapshot | None, version: str) -> Snapshot | None:
    """A vanished entity keeps its last known state (written only if it was a baseline)."""
    return None if snapshot is None else snapshot._replace(version=version)


@dataclass(frozen=True)
class LabelState:
    """A label as read from the graph: its releases include its sublabels'."""

    name: object
    release_ids: Sequence[object]


@dataclass(frozen=True)
class LabelTree:
    """A label as its cheap read gives it (graph.LABEL_TREES), without release ids.

    `labels`: [id, ON degree] of the label and each of its sublabels
    (graph.SUBLABEL_DEPTH deep), raw, as the graph gives them.
    """

    name: object
    labels: Sequence[Sequence[object]]

    @property
    def label_ids(self) -> list[object]:
        """The ids of the label and its sublabels."""
        return [pair[0] for pair in self.labels]

    @functools.cached_property
    def degrees(self) -> dict[str, int] | None:
        """ON degree by label id; None if an id is not a string or a degree not an int."""
        out: dict[str, int] = {}
        for pair in self.labels:
            if len(pair) != 2:
                return None
            key, n = pair
            if type(key) is not str or type(n) is not int or n < 0:
                return None
            out[key] = n
        return out

    @property
    def edges(self) -> int | None:
        """The ON edges into the tree (None when `degrees` is)."""
        degrees = self.degrees
        return None if degrees is None else sum(degrees.values())

    @functools.cached_property
    def digest(self) -> bytes | None:
        """What a snapshot records of the tree: `tree_digest` of its labels holding releases."""
        degrees = self.degrees
        return None if degrees is None else tree_digest(i for i, n in degrees.items() if n)


def tree_digest(label_ids: Iterable[object]) -> bytes | None:
    """SHA-256 of a sublabel tree's distinct ids, sorted; None if one is not a string."""
    ids = list(label_ids)
    if not all(type(i) is str for i in ids):
        return None
    try:  # as a JSON list: no id can pass for two
        return hashlib.sha256(_JSON.encode(sorted(set(ids)))).digest()
    except (msgspec.EncodeError, UnicodeEncodeError):
        return None


def diff_label(
    version: str,
    previous_version: str | None,
    entity_id: str,
    state: LabelState | None,
    snapshot: Snapshot | None,
    tree: LabelTree | None = None,
) -> DiffResult:
    """new_releases of one label (sublabels included), by comparing every release id.

    With `tree` (read with the releases), the new snapshot also records its
    digest and edge count, for `label_news` next cycle.
    """
    counters = Counters()
    if state is None:
        return _vanished(snapshot, version, counters)
    name, releases = _name_and_releases(state.name, state.release_ids, counters)
    new = Snapshot(
        version=version,
        entity_name=name,
        release_ids=releases,
        release_count=len(releases),
        tree_digest=None if tree is None else tree.digest,
        edge_count=None if tree is None else tree.edges,
    )
    if is_baseline(snapshot, previous_version):
        counters.add("baseline")
        return DiffResult([], new, counters)
    assert snapshot is not None
    fresh = added(releases, snapshot.release_ids)
    events = [_new_releases("label", entity_id, name, fresh)] if fresh else []
    return DiffResult(events, new, counters)


def label_news(
    version: str,
    previous_version: str | None,
    entity_id: str,
    tree: LabelTree,
    snapshot: Snapshot | None,
    pairs: Mapping[str, Sequence[int]],
) -> DiffResult | None:
    """A label's diff from the cycle's new releases alone, or None: read it in full.

    `pairs` maps a label id to the release id of each of its ON edges from a
    new release of the cycle (cycle_releases). The edges of the cycle's new
    releases are all new. So when the snapshot is the previous cycle's (not
    a baseline), the tree's labels holding older edges are those the
    snapshot recorded as holding releases (`LabelTree.digest`: a sublabel
    attached with only new releases is fine, one with old releases is not)
    and the tree's ON edges grew by exactly its pairs, no other edge came or
    went (unless as many went as came: README), and the label's releases are
    the recorded ones plus these. Then the result is what `diff_label` gives
    on a full read; every doubt (an odd id, a release already recorded,
    counts that do not add up) answers None.
    """
    if snapshot is None or previous_version is None or snapshot.version != previous_version:
        return None
    old, degrees = snapshot.release_ids, tree.degrees
    if old is None or degrees is None or snapshot.edge_count is None:
        return None
    on_tree: list[int] = []
    older: list[str] = []  # the labels holding an edge from before this cycle
    for label_id, n in degrees.items():
        mine = pairs.get(label_id, ())
        if n < len(mine):
            return None  # not the graph the releases unit read
        if n > len(mine):
            older.append(label_id)
        on_tree.extend(mine)
    if tree_digest(older) != snapshot.tree_digest:
        return None
    edges = sum(degrees.values())
    if edges - snapshot.edge_count != len(on_tree):
        return None
    fresh, recorded = sorted(set(on_tree)), list(old)
    if any_recorded(fresh, recorded):
        return None
    counters = Counters()
    if tree.name is None:
        counters.add("missing_name")
    name = clip_name(tree.name, ENTITY_NAME_MAX)
    releases = sorted(recorded + fresh) if fresh else recorded  # two sorted runs: linear
    new = Snapshot(
        version=version,
        entity_name=name,
        release_ids=releases,
        release_count=len(releases),
        tree_digest=tree.digest,
        edge_count=edges,
    )
    events = [_new_releases("label", entity_id, name, fresh)] if fresh else []
    return DiffResult(events, new, counters)


def crossed(previous: int, current: int, thresholds: Iterable[int]) -> list[int]:
    """The thresholds t with previous < t <= current, ascending."""
    return sorted({t for t in thresholds if previous < t <= current})


@dataclass(frozen=True)
class NotableRelease:
    """A new release of the cycle with its ranking key (its biggest artist's size)."""

    release_id: int
    title: str | None
    rank: int


def rank_notable(releases: Iterable[NotableRelease]) -> list[NotableRelease]:
    """Documented ranking: biggest artist first (release count in the graph), then lowest id."""
    return sorted(releases, key=lambda r: (-r.rank, r.release_id))


@dataclass(frozen=True)
class TagState:
    """A genre or style as read from the graph.

    `edge_count` (its IS degree) is recorded with the count, for `tag_count`
    next cycle (None: not).
    """

    release_count: int
    edge_count: int | None = None


def tag_count(
    snapshot: Snapshot | None,
    previous_version: str | None,
    degree: int,
    release_edges: int,
    master_edges: int,
) -> int | None:
    """A tag's release count from what is new alone, or None: count it in full.

    `degree` is the tag's IS degree now, `release_edges` the IS edges on it of
    the cycle's new releases, `master_edges` those of the cycle's new masters
    (cycle_masters). Only releases and masters are IS a tag, so when
    the snapshot is the previous cycle's and the degree grew by exactly these
    new edges, no other edge came or went (unless as many went as came:
    README) and the count is the recorded one plus the new releases' edges.
    """
    if snapshot is None or previous_version is None or snapshot.version != previous_version:
        return None
    count, edges = snapshot.release_count, snapshot.edge_count
    if count is None or edges is None:
        return None
    if degree - edges != release_edges + master_edges:
        return None
    return count + release_edges


def diff_tag(
    version: str,
    previous_version: str | None,
    entity_type: str,
    entity_id: str,
    state: TagState | None,
    snapshot: Snapshot | None,
    thresholds: Iterable[int],
    new_releases: Sequence[NotableRelease],
) -> DiffResult:
    """release_count_threshold (one event per crossed threshold) and notable_releases.

    `thresholds` are the distinct threshold values the watchers use: their
    explicit `threshold` options, plus the default milestones
    (fanout.THRESHOLD_MILESTONES) when some watcher set none. One event per
    value crossed (previous < t <= current); fan-out gives each watcher the
    events of its own threshold. `new_releases` are the cycle's new releases
    carrying this genre/style (ranked by `rank_notable`).
    """
    counters = Counters()
    if state is None:
        counters.add("vanished")
        return DiffResult([], _keep(snapshot, version), counters)
    new = Snapshot(
        version=version,
        entity_name=entity_id,
        release_count=state.release_count,
        edge_count=state.edge_count,
    )
    if is_baseline(snapshot, previous_version) or snapshot is None:
        counters.add("baseline")
        return DiffResult([], new, counters)
    previous = snapshot.release_count or 0
    events: list[EventDraft] = []
    for t in crossed(previous, state.release_count, thresholds):
        counts = {"threshold": t, "previous_count": previous, "release_count": state.release_count}
        events.append(
            EventDraft("release_count_threshold", entity_type, entity_id, entity_id, counts, (t,))
        )
    if new_releases:
        top = rank_notable(new_releases)[:NOTABLE_CAP]
        detail: dict[str, Any] = {
            "release_ids": [str(r.release_id) for r in top],
            "new_release_count": len(new_releases),
        }
        events.append(EventDraft("notable_releases", entity_type, entity_id, entity_id, detail))
    return DiffResult(events, new, counters)


@dataclass(frozen=True)
class SearchMatch:
    """A new release matching a saved search."""

    release_id: int
    name: str | None


def diff_search(
    version: str,
    previous_version: str | None,
    entity_id: str,
    entity_name: str | None,
    matches: Sequence[SearchMatch] | None,
    match_count: int,
    snapshot: Snapshot | None,
) -> DiffResult:
    """search_match of one saved search; `matches` None means the search is invalid."""
    counters = Counters()
    if matches is None:
        counters.add("invalid_search")
        return DiffResult([], None, counters)
    new = Snapshot(version=version, entity_name=entity_name, release_count=match_count)
    if is_baseline(snapshot, previous_version):
        counters.add("baseline")
        return DiffResult([], new, counters)
    if match_count == 0:
        return DiffResult([], new, counters)
    detail = {
        "match_count": match_count,
        "matches": [
            {"entity_type": "release", "id": str(m.release_id), "name": clip_name(m.name)}
            for m in matches[:SEARCH_MATCH_CAP]
        ],
    }
    name = clip_name(entity_name, ENTITY_NAME_MAX)
    return DiffResult(
        [EventDraft("search_match", "search", entity_id, name, fit_detail(detail))], new, counters
    )


@dataclass(frozen=True)
class SearchQuery:
    """A saved search's options (contract §5), normalised for percolation.

    Matching (documented): every whitespace-separated term of `q` must occur,
    case-insensitively, in the release's title, artist names or label names;
    `genre`, `style`, `format` match one of the release's values
    case-insensitively; `artist` and `label` match an id or a name
    (case-insensitive); `year_from`/`year_to` are inclusive and exclude
    releases without a year. Only `entity_type` "release" (the default) is
    percolated.
    """

    terms: tuple[str, ...] = ()
    genre: str | None = None
    style: str | None = None
    label: str | None = None
    artist: str | None = None
    format: str | None = None
    year_from: int | None = None
    year_to: int | None = None


_TEXT_OPTIONS = ("genre", "style", "label", "artist", "format")


def parse_search(options: object) -> SearchQuery | None:
    """The query of a search watch's options, or None when they are unusable."""
    if not isinstance(options, Mapping):
        return None
    kind = options.get("entity_type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() != "release"):
        return None
    texts: dict[str, str | None] = {}
    for key in _TEXT_OPTIONS:
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            return None
        texts[key] = value.strip().lower() or None if isinstance(value, str) else None
    years: dict[str, int | None] = {}
    for key in ("year_from", "year_to"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return None
        if value is not None and not -100_000 <= value <= 100_000:
            return None
        years[key] = value
    q = options.get("q")
    if q is not None and not isinstance(q, str):
        return None
    terms = tuple(t for t in (q or "").lower().split() if t)[:32]
    query = SearchQuery(
        terms=terms, year_from=years["year_from"], year_to=years["year_to"], **texts
    )
    if query == SearchQuery():
        return None
    return query
