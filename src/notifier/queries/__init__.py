"""Named SQL statements, one `.sql` file each, packed with the package.

A statement too long to read as spliced Python strings lives here whole, top
to bottom, with a header that names its parameters and what each CTE gives.
The text is sent as it is, comments included, so a comment never holds a
percent sign (psycopg would read it as a placeholder).

CTEs that several statements share are written once, in a file whose name
starts with `_` (its header says what it reads and gives): a statement's
line `-- include: _name` is replaced by that file's CTEs when the statement
is loaded, followed by a comma when the line ends with one (more CTEs follow).
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_INCLUDE = re.compile(r"^-- include: (_\w+)(,?)$", re.M)


def _read(name: str) -> str:
    return (files(__name__) / f"{name}.sql").read_text(encoding="utf-8")


def _ctes(name: str) -> str:
    """The CTEs of shared file `name`, without its header comment."""
    lines = _read(name).splitlines()
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


@cache
def load(name: str) -> str:
    """The text of `<name>.sql` beside this module, its includes put in, read once."""
    return _INCLUDE.sub(lambda m: _ctes(m.group(1)) + m.group(2), _read(name))
