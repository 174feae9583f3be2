"""flowai side of the peer benchmark (issue #9). Run by ``run.py`` with the flowai venv.

    python flowai_bench.py run --steps N --store file|memory --dir DIR
    python flowai_bench.py concurrent --runs 64 --steps 100 --store file|memory --dir DIR
    python flowai_bench.py kill --steps 1000 --kill-at 500 --dir DIR      (dies by SIGKILL)
    python flowai_bench.py resume --dir DIR --spawned-at T

The agent is a scripted specialist: its prompt is the JSON script of its tool calls (the
deterministic "model": one call of ``step`` per step, whose ``message`` argument is the
step's ~1 KB message from ``common.make_message``). The tool handler does what the
peers' tool does (``common.SideFile.tool``). The growing message list is the run's
journal: every call, with its 1 KB argument, its attempt and its result, is appended
and (``durability="immediate"``) fsynced before the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STARTED = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from flowai_harness import create_runtime, define_runtime, define_specialist, define_tenant, define_tool  # noqa: E402

SIDE = common.SideFile(None)


def step_handler(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return SIDE.tool(args["step"], args["message"], ctx.attempt)


def build_runtime(store: str | None) -> Any:
    tool = define_tool("step", {"step": int, "message": str}, description="One agent step.")(step_handler)
    spec = define_runtime(
        define_tenant("bench", "v1"),
        agents=[define_specialist("agent", model="claude-sonnet-4-6", prompt="Benchmark agent.", tools=[tool])],
        providers={"anthropic": {"apiKey": "unused"}},
    )
    return create_runtime(spec, interpreter="scripted", store=store, durability="immediate")


def script(steps: int, start: int = 0) -> str:
    """The deterministic model's decisions: one tool call per step, carrying the message."""
    return json.dumps({"script": [{"tool": "step", "args": {"step": i, "message": common.make_message(i)}} for i in range(start, start + steps)]})


async def drive(stream: Any) -> int:
    calls = 0
    async for event in stream:
        if event["type"] == "tool-invocation" and event.get("state") == "result":
            calls += 1
        elif event["type"] == "error":
            raise RuntimeError(f"run failed: {event}")
    return calls


def store_path(options: argparse.Namespace, name: str) -> str | None:
    return None if options.store == "memory" else common.fresh(Path(options.dir) / f"{name}.redb")


def cmd_run(options: argparse.Namespace) -> None:
    warm = build_runtime(None if options.store == "memory" else common.fresh(Path(options.dir) / "warmup.redb"))
    asyncio.run(drive(warm.run_specialist("agent", script(20), "warm")))
    warm.close()

    path = store_path(options, "flowai")
    runtime = build_runtime(path)
    # The store file alone: the write-ahead log beside it exists only while the store is
    # open (a clean close folds it into the file and removes it).
    base = Path(path).stat().st_size if path else 0
    floor_before = common.paired_floor(options.dir) if path else None
    started = time.perf_counter()
    stream = runtime.run_specialist("agent", script(options.steps), "t1")
    calls = asyncio.run(drive(stream))
    elapsed = time.perf_counter() - started
    floor_after = common.paired_floor(options.dir) if path else None
    assert calls == options.steps, calls
    run_id = stream.run_id
    hist_started = time.perf_counter()
    journal = runtime.journal(run_id)
    history_s = time.perf_counter() - hist_started
    records = len(journal)
    runtime.close()
    common.emit(
        {
            "system": "flowai",
            "case": "run",
            "store": options.store,
            "steps": options.steps,
            "total_s": elapsed,
            "ms_per_step": elapsed / options.steps * 1e3,
            "history_s": history_s,
            "history_items": records,
            "store_bytes": (common.files_size(path) - base) if path else None,
            "store_bytes_total": common.files_size(path) if path else None,
            "floor_us": (floor_before + floor_after) / 2 if path else None,
            **common.step_profile(SIDE.times, options.steps),
        }
    )


def cmd_concurrent(options: argparse.Namespace) -> None:
    warm = build_runtime(None if options.store == "memory" else common.fresh(Path(options.dir) / "warmup.redb"))
    asyncio.run(drive(warm.run_specialist("agent", script(20), "warm")))
    warm.close()

    path = store_path(options, "flowai-concurrent")
    runtime = build_runtime(path)

    async def all_runs() -> list[int]:
        streams = [runtime.run_specialist("agent", script(options.steps), f"t{n}") for n in range(options.runs)]
        return await asyncio.gather(*(drive(s) for s in streams))

    started = time.perf_counter()
    counts = asyncio.run(all_runs())
    elapsed = time.perf_counter() - started
    assert counts == [options.steps] * options.runs, counts
    runtime.close()
    total = options.runs * options.steps
    common.emit(
        {
            "system": "flowai",
            "case": "concurrent",
            "store": options.store,
            "runs": options.runs,
            "steps": options.steps,
            "total_s": elapsed,
            "steps_per_s": total / elapsed,
            # Closed: the write-ahead log is folded into the file and removed.
            "store_bytes_total": common.files_size(path) if path else None,
        }
    )


def cmd_kill(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"), kill_at=options.kill_at)
    runtime = build_runtime(common.fresh(Path(options.dir) / "flowai-resume.redb"))
    asyncio.run(drive(runtime.run_specialist("agent", script(options.steps), "killed")))
    raise SystemExit("the run finished without being killed")


def cmd_resume(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"))
    opened = time.time()
    runtime = build_runtime(str(Path(options.dir) / "flowai-resume.redb"))
    [pending] = runtime.pending()
    run_id = pending["runId"]
    stream = runtime.resume(run_id)
    calls = asyncio.run(drive(stream))
    status = runtime.run(run_id)["status"]
    runtime.close()
    assert SIDE.first_call_at is not None
    common.emit(
        {
            "system": "flowai",
            "case": "resume",
            "status": status,
            "resumed_calls": calls,
            "spawn_to_next_step_s": SIDE.first_call_at - options.spawned_at,
            "imports_s": opened - STARTED,
            "open_to_next_step_s": SIDE.first_call_at - opened,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["run", "concurrent", "kill", "resume"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--store", choices=["file", "memory"], default="file")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--kill-at", type=int, default=500)
    parser.add_argument("--spawned-at", type=float, default=STARTED)
    options = parser.parse_args()
    {"run": cmd_run, "concurrent": cmd_concurrent, "kill": cmd_kill, "resume": cmd_resume}[options.case](options)


if __name__ == "__main__":
    main()
