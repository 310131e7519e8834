"""CPU per delivery of `notifier delivery` from several source trees, rounds alternated.

    git archive <commit> src | tar -x -C /tmp/before
    uv run python -m bench.delivery_cpu --rows 20000 --rounds 3 \\
        before=/tmp/before/src now=src

Each variant is a `src` directory put first on the delivery process's
PYTHONPATH (`name=` with nothing after it: the installed package); the
variants take turns, the order reversed every other round, so each meets the
same load on a shared machine. One round of a variant is one
`bench.delivery_rate` run of ours alone (fresh database, `--rows` outbox rows,
one receiver for the whole run). Prints each run and the medians: CPU ms per
delivery (the process's CPU from the instant the rows fall due to the last
`delivered`) and deliveries/s. Ratios of CPU per delivery between variants
hold up under load far better than rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
from typing import Any

from bench import delivery_rate
from bench.core import Context
from notifier.devkit import services


def main() -> int:
    """Run the rounds and print the medians."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("variants", nargs="+", help="name=SRC_DIR (or name= for the installed code)")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variants]
    if any(len(v) != 2 for v in variants):
        p.error("each variant is name=SRC_DIR")
    path: dict[str, str] = {}
    popen: Any = subprocess.Popen

    def delivery_popen(cmd: Any, *a: Any, env: dict[str, str] | None = None, **kw: Any) -> Any:
        if "notifier.cli" in cmd and env is not None and path:
            env = {**env, "PYTHONPATH": os.pathsep.join([path["src"], env.get("PYTHONPATH", "")])}
        return popen(cmd, *a, env=env, **kw)

    # bench.delivery_rate starts the delivery process with subprocess.Popen.
    subprocess.Popen = delivery_popen  # type: ignore[misc, assignment]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    with contextlib.ExitStack() as stack:
        ctx = Context("custom", {}, stack.enter_context(services.postgres()), stack)
        hook = stack.enter_context(delivery_rate.receiver())
        for r in range(args.rounds):
            for name, src in variants if r % 2 == 0 else variants[::-1]:
                path.clear()
                if src:
                    path["src"] = os.path.abspath(src)
                load = os.getloadavg()[0]
                rate, rss, cpu = asyncio.run(
                    delivery_rate._ours(ctx, ctx.fresh_database(), hook, args.rows,
                                        args.concurrency)
                )  # fmt: skip
                runs[name].append((cpu, rate))
                print(f"round {r} {name}: {cpu:.3f} ms CPU a delivery, {rate:,.0f}/s, "
                      f"RSS {rss:.1f} MB, load {load:.1f}", flush=True)  # fmt: skip
    first = statistics.median(c for c, _ in runs[variants[0][0]])
    for name, got in runs.items():
        cpu = statistics.median(c for c, _ in got)
        rate = statistics.median(r for _, r in got)
        print(f"{name}: median {cpu:.3f} ms CPU a delivery ({first / cpu:.2f}x less than "
              f"{variants[0][0]}), {rate:,.0f} deliveries/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
