"""The named statements of notifier/queries: what runs, what their headers promise, shared CTEs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notifier import fanout, queries, unitstore

QUERY_DIR = Path(__file__).resolve().parents[2] / "src" / "notifier" / "queries"
NAMES = sorted(p.stem for p in QUERY_DIR.glob("*.sql") if not p.stem.startswith("_"))
SHARED_FILES = sorted(p.stem for p in QUERY_DIR.glob("_*.sql"))

# The fan-out CTEs each statement holds (from _watchers.sql, _fan_out.sql): the same text.
SHARED = {
    "recipients": ("finish_unit", "fan_out_events"),
    "targets": ("finish_unit", "fan_out_events", "fan_out_to_users"),
    "feed": ("finish_unit", "fan_out_events", "fan_out_to_users"),
    "hooks": ("finish_unit", "fan_out_events", "fan_out_to_users"),
    "mails": ("finish_unit", "fan_out_events", "fan_out_to_users"),
}


def _ctes(text: str) -> dict[str, str]:
    """Each CTE's name and whole text (its opening line at column 0, its closing `)` too)."""
    found = re.findall(r"^(?:WITH )?(\w+) AS \(\n(.*?)^\)", text, re.M | re.S)
    return dict(found)


def _header(text: str, section: str) -> list[str]:
    """The names a header section lists, one a line (`--   name   what it is`)."""
    lines = text.split("\n")
    start = lines.index(f"-- {section}") + 1
    names = []
    for line in lines[start:]:
        if not line.startswith("--   "):
            break
        if m := re.match(r"--   (\w+) ", line):
            names.append(m.group(1))
    return names


def test_the_modules_run_the_files_text() -> None:
    assert NAMES == ["fan_out_events", "fan_out_to_users", "finish_unit"]
    executed = {
        "finish_unit": unitstore.FINISH_UNIT,
        "fan_out_events": fanout.FAN_OUT_EVENTS,
        "fan_out_to_users": fanout.FAN_OUT_TO_USERS,
    }
    for name, text in executed.items():
        written = (QUERY_DIR / f"{name}.sql").read_text(encoding="utf-8")
        # The file's text, each `-- include: _x` line replaced by _x.sql's CTEs.
        parts = re.split(r"^-- include: (_\w+)(,?)\n", written, flags=re.M)
        assert len(parts) > 1, f"{name} includes nothing"
        expected = parts[0]
        for i in range(1, len(parts), 3):
            shared = (QUERY_DIR / f"{parts[i]}.sql").read_text(encoding="utf-8")
            ctes = shared[shared.index("\n", shared.rindex("\n-- ") + 1) + 1 :].strip()
            expected += ctes + parts[i + 1] + "\n" + parts[i + 2]
        assert text == expected
        assert not re.search(r"^-- include:", text, re.M)
        assert text is queries.load(name)  # read once


def test_every_shared_file_is_included() -> None:
    assert SHARED_FILES == ["_fan_out", "_watchers"]
    written = "".join((QUERY_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in NAMES)
    for shared in SHARED_FILES:
        assert f"-- include: {shared}" in written


@pytest.mark.parametrize("name", NAMES)
def test_the_header_names_every_parameter_and_cte(name: str) -> None:
    text = queries.load(name)
    placeholders = re.findall(r"%\((\w+)\)s", text)
    assert sorted(_header(text, "Parameters:")) == sorted(set(placeholders))
    assert _header(text, "CTEs, top to bottom (each reads only those above it):") == list(
        _ctes(text)
    )
    # psycopg reads every percent sign of the text, comments included.
    comments = "".join(re.findall(r"--[^\n]*", text))
    assert "%" not in comments


@pytest.mark.parametrize("cte", sorted(SHARED))
def test_shared_ctes_are_the_same_text_in_every_statement(cte: str) -> None:
    bodies = {name: _ctes(queries.load(name)).get(cte) for name in SHARED[cte]}
    assert None not in bodies.values(), bodies
    assert len(set(bodies.values())) == 1, f"{cte} differs between {sorted(bodies)}"
