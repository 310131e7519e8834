"""`uv run python -m bench [--scale tiny|small|full] [--json out.json] [--only NAME…]`.

`--scale discogs` and `--scale discogs-small` run one month on a Discogs-shaped
graph instead (`bench.discogs`, which takes more options of its own).

Starts its own services through `notifier.devkit.services` (or uses the
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

from bench import discogs
from bench.claim_rate import claim_rate
from bench.core import SCALES, Context, Figure, FigureFn, table, timer
from bench.cycle import cycle
from bench.delivery_rate import delivery_rate
from bench.diff_rate import diff_rate
from bench.fanout import fanout_rate
from bench.feed_latency import feed_latency
from notifier.devkit import services

# In the priority order; each may yield several rows (e.g. a peak RSS).
FIGURES: dict[str, FigureFn] = {
    "delivery": delivery_rate,
    "feed": feed_latency,
    "claim": claim_rate,
    "diff": diff_rate,
    "fanout": fanout_rate,
    "cycle": cycle,
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen figures; print the table; return 1 if a figure failed its target."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    month_scales = [name for name in sorted(discogs.SCALES) if name not in SCALES]
    p.add_argument("--scale", choices=sorted(SCALES) + month_scales, default="small")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="run only these figures")
    args = p.parse_args(argv)
    if args.scale not in SCALES:  # a Discogs-shaped month: its own harness
        if args.only:
            p.error("--only applies to the stage figures, not to a Discogs-shaped month")
        return discogs.main(["--scale", args.scale] + (["--json", args.json] if args.json else []))

    figures: list[Figure] = []
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(services.postgres())
        ctx = Context(args.scale, SCALES[args.scale], pg, stack)
        for name in args.only or list(FIGURES):
            print(f"measuring {name} at scale {args.scale}…", file=sys.stderr, flush=True)
            with timer() as took:
                got = asyncio.run(FIGURES[name](ctx))
            ctx.drop_databases()
            print(f"  {name}: {took():.1f} s", file=sys.stderr, flush=True)
            figures.extend(got if isinstance(got, list) else [got])
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
