"""Build Discogsography-shaped graph data (contract §4) and write it over Bolt.

Used by the tests and by `notifier dev` to seed a sample graph. The notifier
itself never writes to the graph; only this builder does, for fixtures.

    g = GraphBuilder()
    g.artist("1", "John Coltrane")
    g.release("10", "Giant Steps", year=1960, artists=["1"], labels=["5"], genres=["Jazz"])
    await g.write(driver, database)

Writes are idempotent (MERGE on the node key), so a second `write` with more
releases models the next monthly import.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neo4j import AsyncDriver

# Node labels and the property that identifies each (Genre and Style by name).
NODE_KEYS: dict[str, str] = {
    "Release": "id",
    "Artist": "id",
    "Label": "id",
    "Master": "id",
    "Genre": "name",
    "Style": "name",
}

BATCH = 1000


@dataclass
class GraphBuilder:
    """Collects nodes and relationships in memory; `write` sends them in batches."""

    nodes: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    rels: dict[tuple[str, str, str], set[tuple[Any, Any]]] = field(
        default_factory=lambda: defaultdict(set)
    )
    # Nodes only referenced (by a release): created when missing, never overwritten.
    refs: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))

    def node(self, label: str, props: dict[str, Any]) -> GraphBuilder:
        """Any node, with any properties (odd types and nulls included, for bad-data tests)."""
        if label not in NODE_KEYS:
            raise ValueError(f"unknown label {label!r}")
        key = props.get(NODE_KEYS[label])
        self.refs[label].pop(key, None)
        self.nodes[label].setdefault(key, {}).update(props)
        return self

    def _ref(self, label: str, key: str, props: dict[str, Any]) -> None:
        if key not in self.nodes[label]:
            self.refs[label].setdefault(key, props)

    def rel(
        self, src_label: str, src: Any, rel_type: str, dst_label: str, dst: Any
    ) -> GraphBuilder:
        """A relationship between two nodes given by label and key."""
        self.rels[(src_label, rel_type, dst_label)].add((src, dst))
        return self

    def artist(self, id: str, name: str | None) -> GraphBuilder:
        """(:Artist {id, name})."""
        return self.node("Artist", {"id": id, "name": name})

    def label(self, id: str, name: str | None, parent: str | None = None) -> GraphBuilder:
        """(:Label {id, name}), optionally (label)-[:SUBLABEL_OF]->(parent)."""
        self.node("Label", {"id": id, "name": name})
        if parent is not None:
            self.rel("Label", id, "SUBLABEL_OF", "Label", parent)
        return self

    def genre(self, name: str) -> GraphBuilder:
        """(:Genre {name})."""
        return self.node("Genre", {"name": name})

    def style(self, name: str, genre: str | None = None) -> GraphBuilder:
        """(:Style {name}), optionally (style)-[:PART_OF]->(genre)."""
        self.node("Style", {"name": name})
        if genre is not None:
            self.genre(genre).rel("Style", name, "PART_OF", "Genre", genre)
        return self

    def member(self, member: str, group: str) -> GraphBuilder:
        """(member:Artist)-[:MEMBER_OF]->(group:Artist)."""
        return self.rel("Artist", member, "MEMBER_OF", "Artist", group)

    def alias(self, alias: str, artist: str) -> GraphBuilder:
        """(alias:Artist)-[:ALIAS_OF]->(artist:Artist)."""
        return self.rel("Artist", alias, "ALIAS_OF", "Artist", artist)

    def release(
        self,
        id: str,
        title: str | None = None,
        *,
        year: int | None = None,
        formats: list[str] | None = None,
        artists: Sequence[str] = (),
        labels: Sequence[str] = (),
        genres: Sequence[str] = (),
        styles: Sequence[str] = (),
        master: str | None = None,
    ) -> GraphBuilder:
        """(:Release) with its BY, ON, IS and DERIVED_FROM relationships.

        Artists, labels, styles and masters named here are created when
        missing (artists and labels then get a name derived from their id);
        existing ones keep their properties.
        """
        self.node("Release", {"id": id, "title": title or f"Release {id}", "year": year,
                              "formats": formats or ["Vinyl"]})  # fmt: skip
        for a in artists:
            self._ref("Artist", a, {"id": a, "name": f"Artist {a}"})
            self.rel("Release", id, "BY", "Artist", a)
        for lb in labels:
            self._ref("Label", lb, {"id": lb, "name": f"Label {lb}"})
            self.rel("Release", id, "ON", "Label", lb)
        for gn in genres:
            self.genre(gn).rel("Release", id, "IS", "Genre", gn)
        for st in styles:
            self._ref("Style", st, {"name": st})
            self.rel("Release", id, "IS", "Style", st)
        if master is not None:
            self._ref("Master", master, {"id": master, "title": title, "year": year})
            self.rel("Release", id, "DERIVED_FROM", "Master", master)
        return self

    def clear(self) -> GraphBuilder:
        """Forget what was collected (after a write, to model the next import)."""
        self.nodes.clear()
        self.rels.clear()
        self.refs.clear()
        return self

    async def write(self, driver: AsyncDriver, database: str) -> None:
        """MERGE everything collected into `database`, in batches of UNWIND rows.

        Labels and relationship types are interpolated from the fixed names
        above, never from input; every value is a bound parameter. The Cypher
        stays inside what both Neo4j and ArcadeDB's OpenCypher accept.
        """
        async with driver.session(database=database) as session:
            for nodes, action in ((self.nodes, "SET"), (self.refs, "ON CREATE SET")):
                for label, by_key in nodes.items():
                    key = NODE_KEYS[label]
                    rows = [{"key": k, "props": p} for k, p in by_key.items()]
                    for i in range(0, len(rows), BATCH):
                        await session.run(
                            f"UNWIND $rows AS row MERGE (n:{label} {{{key}: row.key}}) "
                            f"{action} n += row.props",
                            rows=rows[i : i + BATCH],
                        )
            for (src_label, rel_type, dst_label), pairs in self.rels.items():
                src_key, dst_key = NODE_KEYS[src_label], NODE_KEYS[dst_label]
                rows = [{"src": s, "dst": d} for s, d in pairs]
                for i in range(0, len(rows), BATCH):
                    await session.run(
                        f"UNWIND $rows AS row "
                        f"MATCH (a:{src_label} {{{src_key}: row.src}}) "
                        f"MATCH (b:{dst_label} {{{dst_key}: row.dst}}) "
                        f"MERGE (a)-[:{rel_type}]->(b)",
                        rows=rows[i : i + BATCH],
                    )
