"""LangGraph side of the peer benchmark (issue #9). Run by ``run.py`` with the peers venv.

    python langgraph_bench.py run --steps N --store file|memory --dir DIR [--variant list|delta]
    python langgraph_bench.py concurrent --runs 64 --steps 100 --store file|memory --dir DIR
    python langgraph_bench.py kill --steps 1000 --kill-at 500 --dir DIR      (dies by SIGKILL)
    python langgraph_bench.py resume --dir DIR --spawned-at T

The agent is a one-node graph looping on itself: each superstep the deterministic
"model" (``common.make_message``) produces the step's ~1 KB message, the tool
(``common.SideFile.tool``) runs with it, and the node returns the message, appended to
``messages`` (``Annotated[list, operator.add]``, the usual reducer; ``--variant delta``
uses the beta ``DeltaChannel`` instead), and the tool's small result. One superstep per
step (a real ReAct graph has two, model and tools; one is the cheaper choice for
LangGraph). File store: ``SqliteSaver`` (WAL) with ``durability="sync"``, i.e. each
checkpoint is written before the next step starts; memory: ``InMemorySaver``.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

STARTED = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from langgraph.channels import DeltaChannel  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.checkpoint.sqlite import SqliteSaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

SIDE = common.SideFile(None)


def concat(state: list[str], writes: Any) -> list[str]:
    out = list(state)
    for write in writes:
        out.extend(write)
    return out


class State(TypedDict):
    messages: Annotated[list[str], operator.add]
    step: int
    steps: int
    last_result: dict[str, Any]


class DeltaState(TypedDict):
    messages: Annotated[list[str], DeltaChannel(concat)]
    step: int
    steps: int
    last_result: dict[str, Any]


def make_state(variant: str) -> type:
    return DeltaState if variant == "delta" else State


def agent(state: dict[str, Any]) -> dict[str, Any]:
    step = state["step"]
    message = common.make_message(step)  # the model's decision
    result = SIDE.tool(step, message)  # the tool call
    return {"messages": [message], "step": step + 1, "last_result": result}


async def agent_async(state: dict[str, Any]) -> dict[str, Any]:
    return agent(state)


def route(state: dict[str, Any]) -> str:
    return "agent" if state["step"] < state["steps"] else END


def build(checkpointer: Any, variant: str = "list", is_async: bool = False) -> Any:
    graph = StateGraph(make_state(variant))
    graph.add_node("agent", agent_async if is_async else agent)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["agent", END])
    return graph.compile(checkpointer=checkpointer)


def config(thread: str, steps: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}


def first_input(steps: int) -> dict[str, Any]:
    return {"messages": [], "step": 0, "steps": steps, "last_result": {}}


def run_once(app: Any, thread: str, steps: int) -> float:
    started = time.perf_counter()
    final = app.invoke(first_input(steps), config(thread, steps), durability="sync")
    elapsed = time.perf_counter() - started
    assert final["step"] == steps and len(final["messages"]) == steps, (final["step"], len(final["messages"]))
    return elapsed


def sqlite_synchronous(conn: sqlite3.Connection) -> str:
    mode = conn.execute("PRAGMA synchronous").fetchone()[0]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return f"journal_mode={journal}, synchronous={ {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}.get(mode, mode)}"


def cmd_run(options: argparse.Namespace) -> None:
    with SqliteSaver.from_conn_string(common.fresh(Path(options.dir) / "warmup.sqlite")) as saver:
        run_once(build(saver, options.variant), "warm", 20)
    path = common.fresh(Path(options.dir) / "langgraph.sqlite")
    pragmas = None
    if options.store == "memory":
        saver_cm: Any = None
        saver = InMemorySaver()
    else:
        saver_cm = SqliteSaver.from_conn_string(path)
        saver = saver_cm.__enter__()
        saver.setup()
        pragmas = sqlite_synchronous(saver.conn)
    app = build(saver, options.variant)
    floor_before = common.paired_floor(options.dir) if options.store == "file" else None
    elapsed = run_once(app, "t1", options.steps)
    floor_after = common.paired_floor(options.dir) if options.store == "file" else None
    hist_started = time.perf_counter()
    history = list(app.get_state_history({"configurable": {"thread_id": "t1"}}))
    history_s = time.perf_counter() - hist_started
    assert len(history[0].values["messages"]) == options.steps
    if saver_cm is not None:
        saver_cm.__exit__(None, None, None)
    common.emit(
        {
            "system": "langgraph" if options.variant == "list" else "langgraph-delta",
            "case": "run",
            "store": options.store,
            "steps": options.steps,
            "total_s": elapsed,
            "ms_per_step": elapsed / options.steps * 1e3,
            "history_s": history_s,
            "history_items": len(history),
            "store_bytes": common.files_size(path) if options.store == "file" else None,
            "sqlite": pragmas,
            "floor_us": (floor_before + floor_after) / 2 if floor_before is not None and floor_after is not None else None,
            **common.step_profile(SIDE.times, options.steps),
        }
    )


def cmd_concurrent(options: argparse.Namespace) -> None:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(options.dir) / "langgraph-concurrent.sqlite"

    async def main() -> float:
        async with AsyncSqliteSaver.from_conn_string(common.fresh(Path(options.dir) / "warmup.sqlite")) as warm:
            await build(warm, is_async=True).ainvoke(first_input(20), config("warm", 20), durability="sync")

        async def go(saver: Any) -> float:
            app = build(saver, is_async=True)
            started = time.perf_counter()
            finals = await asyncio.gather(
                *(app.ainvoke(first_input(options.steps), config(f"t{n}", options.steps), durability="sync") for n in range(options.runs))
            )
            elapsed = time.perf_counter() - started
            assert all(f["step"] == options.steps for f in finals)
            return elapsed

        if options.store == "memory":
            return await go(InMemorySaver())
        async with AsyncSqliteSaver.from_conn_string(common.fresh(path)) as saver:
            return await go(saver)

    elapsed = asyncio.run(main())
    total = options.runs * options.steps
    common.emit(
        {
            "system": "langgraph",
            "case": "concurrent",
            "store": options.store,
            "runs": options.runs,
            "steps": options.steps,
            "total_s": elapsed,
            "steps_per_s": total / elapsed,
            "store_bytes_total": common.files_size(path) if options.store == "file" else None,
        }
    )


def cmd_kill(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"), kill_at=options.kill_at)
    with SqliteSaver.from_conn_string(common.fresh(Path(options.dir) / "langgraph-resume.sqlite")) as saver:
        build(saver).invoke(first_input(options.steps), config("killed", options.steps), durability="sync")
    raise SystemExit("the run finished without being killed")


def cmd_resume(options: argparse.Namespace) -> None:
    global SIDE
    SIDE = common.SideFile(str(Path(options.dir) / "side.log"))
    opened = time.time()
    with SqliteSaver.from_conn_string(str(Path(options.dir) / "langgraph-resume.sqlite")) as saver:
        app = build(saver)
        cfg = config("killed", options.steps)
        final = app.invoke(None, cfg, durability="sync")  # continue from the last checkpoint
    assert SIDE.first_call_at is not None
    common.emit(
        {
            "system": "langgraph",
            "case": "resume",
            "status": "completed" if final["step"] == options.steps and len(final["messages"]) == options.steps else f"step {final['step']}",
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
    parser.add_argument("--variant", choices=["list", "delta"], default="list")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--kill-at", type=int, default=500)
    parser.add_argument("--spawned-at", type=float, default=STARTED)
    options = parser.parse_args()
    {"run": cmd_run, "concurrent": cmd_concurrent, "kill": cmd_kill, "resume": cmd_resume}[options.case](options)


if __name__ == "__main__":
    main()
