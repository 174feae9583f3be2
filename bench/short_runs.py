"""Short durable runs back to back: what a run's start and end cost on a file store.

    python bench/short_runs.py [--runs 300] [--steps 1 5] [--repeat 3]

Uses the peer benchmark's workload (``bench/peers/flowai_bench.py``: a scripted specialist,
one sync Python tool call per step with its ~1 KB message, ``durability="immediate"``).
For each step count, one runtime on a fresh store runs ``--runs`` runs one after another
from one asyncio loop. Printed per step count and repeat: the median and p99 of a run's
time from ``run_specialist`` to the end of its stream, the total for all runs, and the
store's ``close()`` (whose durable commit covers the journal frames left outstanding).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import flowai_bench  # noqa: E402


async def back_to_back(runtime: Any, script: str, runs: int) -> list[float]:
    times = []
    for n in range(runs):
        started = time.perf_counter()
        await flowai_bench.drive(runtime.run_specialist("agent", script, f"t{n}"))
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as directory:
        for repeat in range(options.repeat):
            for steps in options.steps:
                runtime = flowai_bench.build_runtime(str(Path(directory) / f"short-{repeat}-{steps}.redb"))
                started = time.perf_counter()
                times = asyncio.run(back_to_back(runtime, flowai_bench.script(steps), options.runs))
                total = time.perf_counter() - started
                closing = time.perf_counter()
                runtime.close()
                closed = time.perf_counter() - closing
                ordered = sorted(times)
                p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
                print(
                    f"{steps}-step runs x {options.runs}: median {1e3 * statistics.median(times):.2f} ms, "
                    f"p99 {1e3 * p99:.2f} ms, all {total:.2f} s, close {1e3 * closed:.1f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
