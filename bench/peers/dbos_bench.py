"""DBOS side of the peer benchmark (issue #9). Run by ``run.py`` with the peers venv.

    python dbos_bench.py run --steps N --store file|memory --dir DIR
    python dbos_bench.py concurrent --runs 64 --steps 100 --store file --dir DIR
    python dbos_bench.py kill --steps 1000 --kill-at 500 --dir DIR      (dies by SIGKILL)
    python dbos_bench.py resume --dir DIR --spawned-at T

The agent is a DBOS workflow looping over its steps; each step is one ``@DBOS.step``
that asks the deterministic "model" (``common.make_message``) for the step's ~1 KB
message, runs the tool (``common.SideFile.tool``) with it and returns both, so the
step's checkpointed output carries the message; the workflow appends it to its
message list (rebuilt from the step outputs on recovery). The system database is a
local SQLite file (``system_database_url="sqlite:///..."``; DBOS's defaults: rollback
journal, synchronous=FULL, each step's output committed before the step returns).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

STARTED = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from dbos import DBOS, SetWorkflowID  # noqa: E402

SIDE = common.SideFile(None)


@DBOS.step()
def agent_step(step: int) -> dict[str, Any]:
    message = common.make_message(step)  # the model's decision
    result = SIDE.tool(step, message)  # the tool call
    return {"message": message, "result": result}


@DBOS.workflow()
def agent(steps: int) -> int:
    messages: list[str] = []
    for step in range(steps):
        out = agent_step(step)
        messages.append(out["message"])
    return len(messages)


def launch(url: str) -> None:
    DBOS(config={"name": "flowai-bench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)


def url_for(options: argparse.Namespace, name: str) -> tuple[str, str | None]:
    if options.store == "memory":
        # Not a DBOS mode: SQLite's shared in-memory database, tried as the nearest thing.
        return "sqlite:///file:flowai-bench?mode=memory&cache=shared&uri=true", None
    path = common.fresh(Path(options.dir) / f"{name}.sqlite")
    return f"sqlite:///{path}", path


def run_workflow(steps: int, workflow_id: str) -> float:
    started = time.perf_counter()
    with SetWorkflowID(workflow_id):
        count = agent(steps)
    elapsed = time.perf_counter() - started
    assert count == steps, count
    return elapsed


def cmd_run(options: argparse.Namespace) -> None:
    url, path = url_for(options, "dbos")
    launch(url)
    run_workflow(20, "warm")
    base = common.files_size(path) if path else 0
    floor_before = common.paired_floor(options.dir)
    elapsed = run_workflow(options.steps, "measured")
    floor_after = common.paired_floor(options.dir)
    hist_started = time.perf_counter()
    steps = DBOS.list_workflow_steps("measured")
    history_s = time.perf_counter() - hist_started
    assert len(steps) == options.steps, len(steps)
    DBOS.destroy()
    common.emit(
        {
            "system": "dbos",
            "case": "run",
            "store": options.store,
            "steps": options.steps,
            "total_s": elapsed,
            "ms_per_step": elapsed / options.steps * 1e3,
            "history_s": history_s,
            "history_items": len(steps),
            "store_bytes": (common.files_size(path) - base) if path else None,
            "store_bytes_total": common.files_size(path) if path else None,
            "floor_us": (floor_before + floor_after) / 2,
            **common.step_profile(SIDE.times, options.steps),
        }
    )


def cmd_concurrent(options: argparse.Namespace) -> None:
    url, path = url_for(options, "dbos-concurrent")
    launch(url)
    run_workflow(20, "warm")
    started = time.perf_counter()
    handles = []
    for n in range(options.runs):
        with SetWorkflowID(f"c{n}"):
            handles.append(DBOS.start_workflow(agent, options.steps))
    counts = [h.get_result() for h in handles]
    elapsed = time.perf_counter() - started
    assert counts == [options.steps] * options.runs, counts
    DBOS.destroy()
    total = options.runs * options.steps
    common.emit(
        {
            "system": "dbos",
            "case": "concurrent",
            "store": options.store,
            "runs": options.runs,
            "steps": options.steps,
            "total_s": elapsed,
            "steps_per_s": total / elapsed,
            # Its system database, with the 20-step warm-up workflow in it too.
            "store_bytes_total": common.files_size(path) if path else None,
        }
    )


def cmd_kill(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"), kill_at=options.kill_at)
    path = common.fresh(Path(options.dir) / "dbos-resume.sqlite")
    launch(f"sqlite:///{path}")
    run_workflow(options.steps, "killed")
    raise SystemExit("the run finished without being killed")


def cmd_resume(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"))
    opened = time.time()
    # DBOS.launch() recovers this executor's pending workflows by itself (re-enqueued on
    # its internal queue, picked up by the queue's poller).
    launch(f"sqlite:///{Path(options.dir) / 'dbos-resume.sqlite'}")
    count = DBOS.retrieve_workflow("killed").get_result()
    status = DBOS.get_workflow_status("killed")
    DBOS.destroy()
    assert SIDE.first_call_at is not None
    common.emit(
        {
            "system": "dbos",
            "case": "resume",
            "status": (status.status if status else "?") + f" ({count} messages)",
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
