"""Per-step cost of the Python boundary: a scripted specialist run that calls one Python
tool per step.

    python bench/python_overhead.py [--steps 2000] [--repeat 3] [--write bench/BENCHMARKS-python.md]

Each configuration runs one scripted specialist whose script holds ``--steps`` calls of
a no-op tool (``{"tool": "noop", "args": {"i": n}}``), and drains the stream from
asyncio. A step is one tool call: the journal records (call, attempt, result, text),
the handler call through the Python host (tool context built by the facade, arguments
built as Python objects, the result read back into JSON), and three events delivered to
the consumer (call, result, text).

Reported per configuration (best of ``--repeat`` runs): µs per step in total, and µs per
step beyond the handler itself, i.e. minus the cost of calling the same no-op handler
directly from Python with a prebuilt context (measured separately; it is tiny).
Configurations: sync and async handlers, in-memory store and file store with
``durability="immediate"`` (every commit fsynced). File-store rows also give the raw
floor measured right before and after them (1 KB append + ``os.fdatasync``, as in
``bench/peers``) and the step's ratio to it: DESIGN.md §9's target for a durable step
with one sync Python tool is 1.3×.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from flowai_harness import (
    create_runtime,
    define_reference,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness.context import ToolContext

# The raw floor DESIGN.md §9 compares a durable step with: the peers benchmark's, so that
# both scripts measure the same thing (standard library only).
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import fsync_floor  # noqa: E402


def noop_sync(args: dict[str, Any], ctx: Any) -> int:
    return 1


async def noop_async(args: dict[str, Any], ctx: Any) -> int:
    return 1


def build_runtime(handler: Any, store: Any) -> Any:
    if handler is None:
        # Baseline: the built-in getPlan (Rust) instead of a Python tool.
        agent = define_specialist("bench", model="claude-sonnet-4-6", prompt="Benchmark.", toolkits=["plans"])
    else:
        tool = define_tool("noop", {"i": int}, description="Does nothing.")(handler)
        agent = define_specialist("bench", model="claude-sonnet-4-6", prompt="Benchmark.", tools=[tool])
    spec = define_runtime(define_tenant("bench", "v1"), agents=[agent], providers={"anthropic": {"apiKey": "unused"}})
    return create_runtime(spec, interpreter="scripted", store=store)


def step_call(handler: Any, n: int) -> dict[str, Any]:
    if handler is None:
        return {"tool": "getPlan", "args": {"planId": f"p-{n}"}}
    return {"tool": "noop", "args": {"i": n}}


def one_run(runtime: Any, steps: int, handler: Any) -> float:
    script = json.dumps({"script": [step_call(handler, n) for n in range(steps)]})

    async def drain() -> tuple[float, int]:
        stream = runtime.run_specialist("bench", script, "bench-thread")
        started = time.perf_counter()
        count = 0
        async for _ in stream:
            count += 1
        return time.perf_counter() - started, count

    elapsed, count = asyncio.run(drain())
    # tool-agent call, step-start, 3 per step, finish, tool-agent result
    if count != 3 * steps + 4:
        raise SystemExit(f"unexpected event count {count} for {steps} steps")
    return elapsed


def handler_cost(handler: Any, is_async: bool) -> float:
    """µs per direct call of the handler with a prebuilt context (the part not counted as overhead)."""
    ctx = ToolContext({"tool_use_id": "t", "services": {}, "run_id": "r", "idempotency_key": "k", "attempt": 1})
    args = {"i": 1}
    if is_async:

        async def calls(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                await handler(args, ctx)
            return time.perf_counter() - started

        n = 20000
        return min(asyncio.run(calls(n)) for _ in range(5)) / n * 1e6
    n = 200000
    return min(timeit.repeat(lambda: handler(args, ctx), number=n, repeat=5)) / n * 1e6


def commit_round_trip(store: Any, n: int = 1000) -> float:
    """µs of one store commit as the engine waits for it before each host call (estimate).

    ``create_reference`` is one commit behind an awaitable, ``resolve_reference`` the same
    awaitable without a commit; the difference is the commit round trip through the
    store's writer thread.
    """
    spec = define_runtime(
        define_tenant("bench", "v1"),
        agents=[define_specialist("bench", model="claude-sonnet-4-6", prompt="Benchmark.")],
        references=[define_reference("Blob", {"type": "object"})],
        providers={"anthropic": {"apiKey": "unused"}},
    )
    runtime = create_runtime(spec, store=store)

    async def timed() -> tuple[float, float]:
        started = time.perf_counter()
        for i in range(n):
            await runtime.create_reference("Blob", {"i": i})
        created = time.perf_counter() - started
        ref = await runtime.create_reference("Blob", {"i": 0})
        started = time.perf_counter()
        for _ in range(n):
            await runtime.resolve_reference(ref)
        return created, time.perf_counter() - started

    created, resolved = asyncio.run(timed())
    runtime.close()
    return (created - resolved) / n * 1e6


def measure(steps: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    commits: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store_name in ("memory", "file (immediate)"):
            modes: list[tuple[str, Any]] = [("sync", noop_sync), ("async", noop_async), ("none: built-in getPlan", None)]
            for mode, handler in modes:
                store = None if store_name == "memory" else str(Path(tmp) / f"bench-{mode}.redb")
                runtime = build_runtime(handler, store)
                one_run(runtime, min(steps, 200), handler)  # warm up
                # The floor right before and after, on the same disk: the load moves a lot here.
                # (Not for the built-in tool: a step with no side effect commits nothing
                # before it, so nothing of it waits for an fdatasync.)
                paired = store is not None and handler is not None
                floor_before = fsync_floor(tmp, ops=300) if paired else 0.0
                best = min(one_run(runtime, steps, handler) for _ in range(repeat))
                floor_us = (floor_before + fsync_floor(tmp, ops=300)) / 2 if paired else 0.0
                runtime.close()
                own = 0.0 if handler is None else handler_cost(handler, mode == "async")
                if handler is None:
                    commit_store = None if store is None else str(Path(tmp) / "bench-commit.redb")
                    commit = commit_round_trip(commit_store)
                    print(f"{store_name:<17} one store commit round trip (estimate): {commit:.1f} µs", flush=True)
                    commits[store_name] = commit
                per_step = best / steps * 1e6
                rows.append(
                    {
                        "store": store_name,
                        "handler": mode,
                        "steps": steps,
                        "total_s": best,
                        "us_per_step": per_step,
                        "handler_us": own,
                        "overhead_us": per_step - own,
                        "floor_us": floor_us,
                    }
                )
                versus_floor = f"  {per_step / floor_us:.2f}× the raw floor ({floor_us:.1f} µs)" if floor_us else ""
                print(
                    f"{store_name:<17} {mode:<22} {per_step:9.1f} µs/step  handler {own:6.2f} µs  beyond handler {per_step - own:9.1f} µs{versus_floor}",
                    flush=True,
                )
    for row in rows:
        row["commit_us"] = commits.get(row["store"], 0.0)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def build_profile() -> str:
    import flowai_harness._internal as internal

    path = Path(internal.__file__)
    return f"{path.name} ({path.stat().st_size // 1024} KiB)"


def write_markdown(path: Path, rows: list[dict[str, Any]], command: str) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    lines = [
        "# Python boundary overhead",
        "",
        "Per-step cost of a scripted specialist run that calls one Python tool per step",
        "(`bench/python_overhead.py`). A step = one tool call: its journal records, the",
        "handler call through the Python host (tool context from the facade, JSON both",
        "ways) and three stream events delivered to an `async for` consumer. \"Beyond",
        "handler\" subtracts the cost of calling the same no-op handler directly. The",
        "\"built-in getPlan\" rows run the same script shape against a Rust built-in tool:",
        "the engine, journal and event delivery without a Python handler. For the file",
        "store, \"raw floor\" is one 1 KB append + `os.fdatasync` on the same disk (mean of",
        "300, measured right before and after the row's runs), the floor DESIGN.md §9",
        "compares a durable step with.",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end",
        f"- native module: {build_profile()}",
        f"- commit: {commit}, {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "| store | handler | steps | total (s) | µs/step | handler µs | µs/step beyond handler | store commit µs (estimate) | raw floor µs | µs/step ÷ floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        floor = f"{row['floor_us']:.1f} | {row['us_per_step'] / row['floor_us']:.2f}" if row["floor_us"] else " | "
        lines.append(
            f"| {row['store']} | {row['handler']} | {row['steps']} | {row['total_s']:.3f} | "
            f"{row['us_per_step']:.1f} | {row['handler_us']:.2f} | {row['overhead_us']:.1f} | {row['commit_us']:.1f} | {floor} |"
        )
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="write the results as Markdown to this file")
    options = parser.parse_args()
    rows = measure(options.steps, options.repeat)
    if options.write is not None:
        write_markdown(options.write, rows, "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
