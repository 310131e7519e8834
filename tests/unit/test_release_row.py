"""releases.release_row on values a Bolt server may hand back but a Neo4j graph cannot hold."""

from __future__ import annotations

from notifier import diff, releases
from notifier.graph import ReleaseInfo


def test_null_format_elements_are_dropped_and_others_kept_as_text() -> None:
    counters = diff.Counters()
    # Null and non-string elements (ArcadeDB stores such a list; Neo4j refuses it).
    info = ReleaseInfo("102", 42, "x", [None, 1, "LP", True], artists=[("1", None)])
    row = releases.release_row("v2", info, counters)
    assert row is not None
    assert row[1:4] == (102, "42", None)  # id, title, year
    assert row[4] == ["1", "LP", "True"]
    assert counters.values == {"bad_release_year": 1}


def test_formats_that_are_not_a_list_are_counted() -> None:
    counters = diff.Counters()
    row = releases.release_row("v2", ReleaseInfo("103", "T", 1999, "LP"), counters)
    assert row is not None and row[4] == [] and row[3] == 1999
    assert counters.values == {"bad_release_formats": 1}
