"""Named SQL statements, one `.sql` file each, packed with the package.

A statement too long to read as spliced Python strings lives here whole, top
to bottom, with a header that names its parameters and what each CTE gives.
The text is sent as it is, comments included, so a comment never holds a
percent sign (psycopg would read it as a placeholder).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> str:
    """The text of `<name>.sql` beside this module, read once."""
    return (files(__name__) / f"{name}.sql").read_text(encoding="utf-8")
