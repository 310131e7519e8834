"""`uv run python -m bench [--scale tiny|small|full] [--json out.json] [--only NAME…]`.

Starts its own services through `notifier.services` (or uses the
NOTIFIER_TEST_* URLs), measures each figure beside its ceiling or peer in the
same run, and prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
from datetime import UTC, datetime

from bench.core import SCALES, Context, Figure, FigureFn, table
from bench.fanout import fanout_rate
from notifier import services

FIGURES: dict[str, FigureFn] = {
    "fanout": fanout_rate,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen figures; print the table; return 1 if a figure failed its target."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="run only these figures")
    args = p.parse_args(argv)

    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        ctx = Context(args.scale, SCALES[args.scale], pg, stack)
        for name in args.only or list(FIGURES):
            print(f"measuring {name} at scale {args.scale}…", file=sys.stderr, flush=True)
            figures.append(asyncio.run(FIGURES[name](ctx)))
    print(table(figures))
    if args.json:
        meta = {
            "scale": args.scale,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} python {platform.python_version()}",
        }
        with open(args.json, "w") as out:
            json.dump({**meta, "figures": [f.as_dict() for f in figures]}, out, indent=2)
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
