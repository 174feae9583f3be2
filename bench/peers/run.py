"""Driver of the peer benchmark (issue #9): flowai vs LangGraph vs DBOS on one workload.

    python bench/peers/run.py [--rounds 3] [--flowai-python PY] [--quick] [--report-only]

Creates ``bench/peers/.venv-peers`` (LangGraph + its SQLite checkpointer, DBOS) if it is
missing, then runs every measurement of every system as its own process, alternating
the systems inside each round (the order rotates from round to round), and writes
``bench/peers/RESULTS.md`` (median and range over the rounds) plus the raw results as
``bench/peers/.data/results.json``; the results and targets tables also replace the
peers-results block of ``BENCHMARKS.md`` (not for ``--quick`` runs, nor with
``--no-benchmarks``). flowai runs with ``--flowai-python`` (default: this
interpreter if it imports ``flowai_harness``, else ``/work/venvs/peers-flowai/bin/python``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

PEERS_VENV = HERE / ".venv-peers"
PEER_PACKAGES = ["langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2", "dbos==3.4.0"]
DATA = HERE / ".data"
SYSTEMS = ["flowai", "langgraph", "dbos"]
SCRIPTS = {"flowai": "flowai_bench.py", "langgraph": "langgraph_bench.py", "langgraph-delta": "langgraph_bench.py", "dbos": "dbos_bench.py"}
NAMES = {"flowai": "flowai", "langgraph": "LangGraph", "langgraph-delta": "LangGraph (DeltaChannel, beta)", "dbos": "DBOS"}


def peers_python() -> str:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEERS_VENV} and installing {' '.join(PEER_PACKAGES)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return str(python)


def default_flowai_python() -> str:
    probe = subprocess.run([sys.executable, "-c", "import flowai_harness"], capture_output=True, check=False)
    return sys.executable if probe.returncode == 0 else "/work/venvs/peers-flowai/bin/python"


class Bench:
    def __init__(self, flowai_python: str, peers: str) -> None:
        self.python = {"flowai": flowai_python, "langgraph": peers, "langgraph-delta": peers, "dbos": peers}
        self.results: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def call(self, system: str, *args: str, expect_kill: bool = False, spawned: bool = False, timeout: int = 600) -> dict[str, Any] | None:
        cmd = [self.python[system], str(HERE / SCRIPTS[system]), *args, "--dir", str(DATA / "work")]
        if system == "langgraph-delta":
            cmd += ["--variant", "delta"]
        if spawned:
            cmd += ["--spawned-at", repr(time.time())]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if expect_kill:
            if proc.returncode != -9:
                raise SystemExit(f"{system} {args}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}")
            return None
        lines = [line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            # Recorded and reported, and the run goes on with the next measurement.
            message = f"{system} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or proc.stdout[-300:]}"
            print(message, flush=True)
            self.failures.append(message)
            return None
        return json.loads(lines[-1])

    def record(self, round_no: int, result: dict[str, Any]) -> None:
        result["round"] = round_no
        self.results.append(result)
        shown = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}
        print(json.dumps(shown), flush=True)
        (DATA / "partial.json").write_text(json.dumps({"results": self.results, "failures": self.failures}))

    def resume(self, round_no: int, system: str, steps: int, kill_at: int) -> None:
        side = DATA / "work" / "side.log"
        side.unlink(missing_ok=True)
        self.call(system, "kill", "--steps", str(steps), "--kill-at", str(kill_at), expect_kill=True)
        before = common.count_executions(str(side))
        result = self.call(system, "resume", "--steps", str(steps), spawned=True)
        if result is None:
            return
        counts = common.count_executions(str(side))
        result.update(
            {
                "steps": steps,
                "kill_at": kill_at,
                "executed_before_kill": sum(before.values()),
                "all_steps_executed": sorted(counts) == list(range(steps)),
                "completed_steps_run_twice": sorted(s for s, n in counts.items() if n > 1 and s != kill_at),
                "in_flight_step_executions": counts.get(kill_at, 0),
            }
        )
        self.record(round_no, result)


def measure(options: argparse.Namespace, bench: Bench) -> None:
    (DATA / "work").mkdir(parents=True, exist_ok=True)
    long_steps = 200 if options.quick else 1000
    runs = 8 if options.quick else 64
    for round_no in range(1, options.rounds + 1):
        order = SYSTEMS[round_no - 1 :] + SYSTEMS[: round_no - 1]  # rotate who goes first
        print(f"--- round {round_no}: order {order}", flush=True)
        bench.record(round_no, {"system": "floor", "case": "fsync", "us_per_op": common.fsync_floor(str(DATA / "work"))})
        for steps in (100, long_steps):
            for store in ("file", "memory"):
                for system in order + (["langgraph-delta"] if store == "file" else []):
                    if system == "dbos" and store == "memory":
                        continue  # no in-memory mode (see README)
                    result = bench.call(system, "run", "--steps", str(steps), "--store", store)
                    if result is not None:
                        bench.record(round_no, result)
        for store in ("file", "memory"):
            for system in order:
                if system == "dbos" and store == "memory":
                    continue
                if system == "dbos" and round_no > options.dbos_concurrent_rounds:
                    continue
                result = bench.call(system, "concurrent", "--runs", str(runs), "--steps", "100", "--store", store)
                if result is not None:
                    bench.record(round_no, result)
        for system in order:
            bench.resume(round_no, system, long_steps, long_steps // 2)
        bench.record(round_no, {"system": "floor", "case": "fsync", "us_per_op": common.fsync_floor(str(DATA / "work"))})
    shutil.rmtree(DATA / "work", ignore_errors=True)


# --------------------------------------------------------------------------- report


def pick(results: list[dict[str, Any]], system: str, case: str, key: str, **match: Any) -> list[float]:
    out = []
    for r in results:
        if r["system"] == system and r["case"] == case and all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None:
            out.append(float(r[key]))
    return out


def pick_floor_ratio(results: list[dict[str, Any]], system: str, steps: int, key: str = "ms_per_step") -> list[float]:
    """Each durable run's ms per step (``key``) ÷ the raw floor measured right before and after it."""
    return [
        r[key] * 1e3 / r["floor_us"]
        for r in results
        if r["system"] == system
        and r["case"] == "run"
        and r.get("store") == "file"
        and r.get("steps") == steps
        and r.get("floor_us")
        and r.get(key) is not None
    ]


def summary(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values) * scale
    lo, hi = min(values) * scale, max(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def ratio(peer: list[float], flowai: list[float], higher_is_better: bool = False) -> str:
    if not peer or not flowai:
        return "n/a"
    p, f = statistics.median(peer), statistics.median(flowai)
    value = f / p if higher_is_better else p / f
    return f"{value:.1f}×"


def machine() -> list[str]:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip("\n")
    disk = subprocess.run(["df", "-h", str(HERE)], capture_output=True, text=True, check=False).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    return [
        f"- CPU: {cpu}; `nproc` = {nproc}; {platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"- load average at the end of the run: {' '.join(load)} (the sandbox is shared with other engineers' builds and tests)",
        "- `free -h`:",
        "",
        "```",
        free,
        "```",
        "",
        "- disk (`df -h bench/peers`):",
        "",
        "```",
        disk,
        "```",
    ]


def versions(bench_python: dict[str, str]) -> list[str]:
    def pkg(python: str, names: list[str]) -> str:
        code = "import importlib.metadata as m, sys\nfor n in sys.argv[1:]:\n    try: print(n, m.version(n))\n    except Exception: print(n, '?')"
        return subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=False).stdout.strip().replace("\n", ", ")

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    flowai_file = subprocess.run(
        [bench_python["flowai"], "-c", "import flowai_harness._internal as i; print(i.__file__)"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        f"- flowai: commit {commit} (`flowai_harness`, native module `{Path(flowai_file).name}`, built with `maturin develop --release`); {pkg(bench_python['flowai'], ['flowai-harness', 'pydantic'])}",
        f"- peers: {pkg(bench_python['langgraph'], ['langgraph', 'langgraph-checkpoint', 'langgraph-checkpoint-sqlite', 'dbos', 'SQLAlchemy'])}",
    ]


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], bench_python: dict[str, str]) -> tuple[str, list[str]]:
    """The whole report (RESULTS.md), and its header and results table alone (for BENCHMARKS.md)."""
    rounds = meta["rounds"]
    steps_long = meta["long_steps"]
    runs = meta["runs"]
    floor = pick(results, "floor", "fsync", "us_per_op")
    lines = [
        "# flowai vs LangGraph vs DBOS (issue #9)",
        "",
        "Same workload in each system (`bench/peers/README.md`): a deterministic \"model\" decides one tool",
        "call per step whose argument is the step's ~1 KB message; the tool writes one line per execution to",
        "a side file; the message is appended to the run's state. Each cell: median (min–max) over",
        f"{rounds} rounds, every measurement a fresh process, the systems alternating within each round.",
        "Ratios: how many times flowai is better (peer ÷ flowai for times and sizes, flowai ÷ peer for",
        "throughput), on medians.",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (wall time of the run: {meta['wall_s'] / 60:.1f} min)",
        # Captured when the run was measured: --report-only must not stamp today's commit
        # and load on figures taken earlier.
        *(meta["versions"] if "versions" in meta else versions(bench_python)),
        *(meta["machine"] if "machine" in meta else machine()),
        "",
        "## Results",
        "",
        "| measurement | flowai | LangGraph | DBOS | LangGraph ÷ flowai | DBOS ÷ flowai |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, case: str, key: str, scale: float, digits: int, higher: bool = False, **match: Any) -> None:
        f = pick(results, "flowai", case, key, **match)
        lg = pick(results, "langgraph", case, key, **match)
        db = pick(results, "dbos", case, key, **match)
        lines.append(
            f"| {label} | {summary(f, scale, digits)} | {summary(lg, scale, digits)} | {summary(db, scale, digits)} | "
            f"{ratio(lg, f, higher)} | {ratio(db, f, higher)} |"
        )

    row("durable, 100 steps: ms per step", "run", "ms_per_step", 1, 3, steps=100, store="file")
    row(f"durable, {steps_long} steps: ms per step", "run", "ms_per_step", 1, 3, steps=steps_long, store="file")
    def floor_row(label: str, steps: int, key: str = "ms_per_step") -> None:
        cells = [pick_floor_ratio(results, system, steps, key) for system in SYSTEMS]
        lines.append(
            f"| {label} ÷ raw floor measured next to the run | "
            + " | ".join(summary(c, 1, 2) for c in cells)
            + f" | {ratio(cells[1], cells[0])} | {ratio(cells[2], cells[0])} |"
        )

    for steps in (100, steps_long):
        floor_row(f"durable, {steps} steps: ms per step", steps)
    row(f"durable, {steps_long} steps: ms per step over steps 0–99", "run", "first100_ms_per_step", 1, 3, steps=steps_long, store="file")
    last100 = f"durable, {steps_long} steps: ms per step over steps {steps_long - 100}–{steps_long - 1}"
    row(last100, "run", "last100_ms_per_step", 1, 3, steps=steps_long, store="file")
    # One step without a run's start and end: the tool's clock between its executions.
    floor_row(last100, steps_long, "last100_ms_per_step")
    row(f"durable, {steps_long} steps: median step (one tool execution to the next), ms", "run", "median_step_ms", 1, 3, steps=steps_long, store="file")
    floor_row(f"durable, {steps_long} steps: median step", steps_long, "median_step_ms")
    row("in memory, 100 steps: ms per step", "run", "ms_per_step", 1, 3, steps=100, store="memory")
    row(f"in memory, {steps_long} steps: ms per step", "run", "ms_per_step", 1, 3, steps=steps_long, store="memory")
    row(f"durable: {runs} concurrent 100-step runs, steps/s", "concurrent", "steps_per_s", 1, 0, True, store="file")
    row(f"in memory: {runs} concurrent 100-step runs, steps/s", "concurrent", "steps_per_s", 1, 0, True, store="memory")
    row("history of the finished 100-step run: ms to list", "run", "history_s", 1e3, 2, steps=100, store="file")
    row(f"history of the finished {steps_long}-step run: ms to list", "run", "history_s", 1e3, 2, steps=steps_long, store="file")
    row("store size after the 100-step run: KB", "run", "store_bytes", 1 / 1024, 0, steps=100, store="file")
    row(f"store size after the {steps_long}-step run: KB", "run", "store_bytes", 1 / 1024, 0, steps=steps_long, store="file")
    row(f"store size after the {runs} concurrent 100-step runs (whole file): KB", "concurrent", "store_bytes_total", 1 / 1024, 0, store="file")
    row(f"resume after SIGKILL at step {steps_long // 2}: ms from process spawn to the next step", "resume", "spawn_to_next_step_s", 1e3, 1)
    row("resume: ms from store open (after imports) to the next step", "resume", "open_to_next_step_s", 1e3, 1)
    row("resume: ms of imports before the store is opened", "resume", "imports_s", 1e3, 1)
    lines.append(
        f"| raw floor: 1 KB append + `os.fdatasync`, µs per op (measured by the driver before and after each round) | {summary(floor, 1, 1)} | | | | |"
    )
    paired = [pick(results, system, "run", "floor_us", store="file") for system in SYSTEMS]
    lines.append(
        "| raw floor measured next to each durable run (200 ops before + 200 after, mean), µs per op | "
        + " | ".join(summary(p, 1, 1) for p in paired)
        + " | | |"
    )
    table = list(lines)
    lines += [
        "",
        "DBOS has no in-memory mode (its system database is Postgres or SQLite), hence n/a in the in-memory rows. An SQLite",
        "in-memory URL was tried: `DBOS.launch()` fails (SQLAlchemy picks its SingletonThreadPool for it, which rejects the",
        "`pool_timeout`/`max_overflow` arguments DBOS passes).",
        "",
    ]
    if meta.get("failures"):
        lines += ["Failed measurements (left out of the table):", "", *[f"- {f}" for f in meta["failures"]], ""]

    # DeltaChannel variant
    lines += [
        "### LangGraph with `DeltaChannel` (beta) for the message list",
        "",
        "The usual `Annotated[list, operator.add]` channel is checkpointed whole at every step, so LangGraph's",
        "store grows with the square of the steps. LangGraph 1.2 ships a beta `DeltaChannel` that checkpoints",
        "only the new writes (plus a snapshot every 100 updates); the same graph with it:",
        "",
        "| measurement | flowai | LangGraph (DeltaChannel) | ÷ flowai |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key, scale, digits, steps in (
        ("durable, 100 steps: ms per step", "ms_per_step", 1, 3, 100),
        (f"durable, {steps_long} steps: ms per step", "ms_per_step", 1, 3, steps_long),
        ("history of the 100-step run: ms", "history_s", 1e3, 2, 100),
        (f"history of the {steps_long}-step run: ms", "history_s", 1e3, 2, steps_long),
        ("store after 100 steps: KB", "store_bytes", 1 / 1024, 0, 100),
        (f"store after {steps_long} steps: KB", "store_bytes", 1 / 1024, 0, steps_long),
    ):
        f = pick(results, "flowai", "run", key, steps=steps, store="file")
        d = pick(results, "langgraph-delta", "run", key, steps=steps, store="file")
        lines.append(f"| {label} | {summary(f, scale, digits)} | {summary(d, scale, digits)} | {ratio(d, f)} |")

    # resume correctness
    lines += ["", "### Resume correctness (per round)", "", "| system | round | executions before the kill | resumed status | all steps executed | completed steps executed twice | executions of the in-flight step |", "| --- | ---: | ---: | --- | --- | --- | ---: |"]
    for r in results:
        if r["case"] == "resume":
            lines.append(
                f"| {NAMES[r['system']]} | {r['round']} | {r['executed_before_kill']} | {r['status']} | {r['all_steps_executed']} | "
                f"{r['completed_steps_run_twice'] or 'none'} | {r['in_flight_step_executions']} |"
            )
    sql = sorted({r["sqlite"] for r in results if r.get("sqlite")})
    if sql:
        lines += ["", f"LangGraph's SqliteSaver connection: {', '.join(sql)} (every checkpoint commit fsynced)."]
    lines.append("")
    return "\n".join(lines), table


def targets(results: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """The issue's targets against the medians; rows DESIGN.md §9 asks only to report say so."""
    steps_long = meta["long_steps"]
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    f100 = med(pick(results, "flowai", "run", "ms_per_step", steps=100, store="file"))
    f1k = med(pick(results, "flowai", "run", "ms_per_step", steps=steps_long, store="file"))
    out = ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]

    def add(name: str, value: float, fmt: str, ok: bool | None) -> None:
        verdict = "report (DESIGN.md §9)" if ok is None else "yes" if ok else "no"
        out.append(f"| {name} | {fmt.format(value)} | {verdict} |")

    for steps in (100, steps_long):
        r = med(pick_floor_ratio(results, "flowai", steps))
        add(f"durable flowai step ≤ 1.3× raw append+fdatasync measured next to it ({steps} steps, the run's start and end included)", r, "{:.2f}×", r <= 1.3)
    r = med(pick_floor_ratio(results, "flowai", steps_long, "last100_ms_per_step"))
    add(f"the same for a steady-state step (steps {steps_long - 100}–{steps_long - 1} of the {steps_long}-step run)", r, "{:.2f}×", r <= 1.3)
    r = med(pick_floor_ratio(results, "flowai", steps_long, "median_step_ms"))
    add(f"the same for the median step of the {steps_long}-step run", r, "{:.2f}×", r <= 1.3)
    for peer in ("langgraph", "dbos"):
        p100 = med(pick(results, peer, "run", "ms_per_step", steps=100, store="file"))
        p1k = med(pick(results, peer, "run", "ms_per_step", steps=steps_long, store="file"))
        add(f"≥ 7× faster per durable step than {NAMES[peer]} at 100 steps", p100 / f100, "{:.1f}×", p100 / f100 >= 7)
        if peer == "langgraph":
            add(f"≥ 10× faster per durable step than {NAMES[peer]} at {steps_long} steps", p1k / f1k, "{:.1f}×", p1k / f1k >= 10)
        else:
            add(f"faster per durable step than {NAMES[peer]} at {steps_long} steps (≈ 9× is the ceiling with one commit per step)", p1k / f1k, "{:.1f}×", None)
        fc = med(pick(results, "flowai", "concurrent", "steps_per_s", store="file"))
        pc = med(pick(results, peer, "concurrent", "steps_per_s", store="file"))
        add(f"{meta['runs']} concurrent durable runs against {NAMES[peer]}'s steps/s (the issue asked ≥ 50×)", fc / pc, "{:.1f}×", None)
    fs100 = med(pick(results, "flowai", "run", "store_bytes", steps=100, store="file"))
    fs1k = med(pick(results, "flowai", "run", "store_bytes", steps=steps_long, store="file"))
    lin = (fs1k / steps_long) / (fs100 / 100)
    marginal = (fs1k - fs100) / (steps_long - 100) / 1024
    out.append(
        f"| flowai store linear in steps | {fs100 / 100 / 1024:.1f} KB/step at 100 steps, {fs1k / steps_long / 1024:.1f} KB/step at {steps_long} "
        f"(marginal {marginal:.1f} KB/step) | {'yes' if 0.5 <= lin <= 1.5 else 'no'} |"
    )
    lg1k = med(pick(results, "langgraph", "run", "store_bytes", steps=steps_long, store="file"))
    add(f"store ≥ 25× smaller than LangGraph's at {steps_long} steps", lg1k / fs1k, "{:.0f}×", lg1k / fs1k >= 25)
    rs = med(pick(results, "flowai", "resume", "open_to_next_step_s")) * 1e3
    rsp = med(pick(results, "flowai", "resume", "spawn_to_next_step_s")) * 1e3
    add("resume to the next step < 100 ms (from store open)", rs, "{:.1f} ms", rs < 100)
    add("resume to the next step from process spawn (Python imports included)", rsp, "{:.1f} ms", None)
    dup = [r for r in results if r["case"] == "resume" and r["system"] == "flowai" and r["completed_steps_run_twice"]]
    add("flowai: no completed step executed twice (all rounds)", len(dup), "{:.0f} rounds with a duplicate", not dup)
    out.append("")
    return out


BEGIN_MARK = "<!-- peers-results:begin (written by bench/peers/run.py; edits here are overwritten) -->"
END_MARK = "<!-- peers-results:end -->"


def update_benchmarks(path: Path, table: list[str], target_lines: list[str], results_file: Path) -> bool:
    """Replaces the block between the markers in BENCHMARKS.md with this run's tables; False
    (and nothing written) when the file has no such block."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start < 0 or end < start:
        return False
    heading = next(i for i, line in enumerate(table) if line == "## Results")
    block = [
        BEGIN_MARK,
        "",
        f"The latest run of the driver ({os.path.relpath(results_file, path.parent)} holds it whole, with the resume",
        "correctness per round and LangGraph's `DeltaChannel` variant):",
        "",
        # The one-line facts; `free -h` and `df` are code blocks in RESULTS.md only.
        *[line for line in table[2:heading] if line.startswith("- ") and not line.endswith(":")],
        "",
        *table[heading + 2 :],
        "",
        *["#" + line if line.startswith("## ") else line for line in target_lines],
        END_MARK,
    ]
    path.write_text(text[:start] + "\n".join(block) + text[end + len(END_MARK) :], encoding="utf-8")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dbos-concurrent-rounds", type=int, default=99, help="rounds in which DBOS's concurrent row runs (it is slow)")
    parser.add_argument("--flowai-python", default=None)
    parser.add_argument("--quick", action="store_true", help="200 instead of 1,000 steps and 8 instead of 64 runs (development)")
    parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from .data/results.json")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=ROOT / "BENCHMARKS.md",
        help="file whose peers-results block gets the tables (not with --quick)",
    )
    parser.add_argument("--no-benchmarks", action="store_true", help="leave BENCHMARKS.md as it is")
    options = parser.parse_args()
    bench = Bench(options.flowai_python or default_flowai_python(), peers_python())
    raw = DATA / "results.json"
    if options.report_only:
        saved = json.loads(raw.read_text())
        bench.results, meta = saved["results"], saved["meta"]
    else:
        DATA.mkdir(exist_ok=True)
        started = time.time()
        measure(options, bench)
        meta = {
            "rounds": options.rounds,
            "long_steps": 200 if options.quick else 1000,
            "runs": 8 if options.quick else 64,
            "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": time.time() - started,
        }
        meta["failures"] = bench.failures
        meta["versions"] = versions(bench.python)
        meta["machine"] = machine()
        raw.write_text(json.dumps({"meta": meta, "results": bench.results}, indent=1))
    report, table = write_report(bench.results, meta, bench.python)
    target_lines = targets(bench.results, meta)
    report += "\n" + "\n".join(target_lines)
    options.out.write_text(report, encoding="utf-8")
    print(f"wrote {options.out}", flush=True)
    # A quick run's figures (200 steps, 8 runs) do not answer the targets' questions.
    if not (options.no_benchmarks or meta["long_steps"] != 1000):
        if update_benchmarks(options.benchmarks, table, target_lines, options.out):
            print(f"updated the peers-results block of {options.benchmarks}", flush=True)
        else:
            print(f"{options.benchmarks} has no peers-results block ({BEGIN_MARK!r}): not updated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
