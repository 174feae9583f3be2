"""Shared workload for the peer benchmark (issue #9): the same deterministic "agent"
in every system.

One step = the model (a deterministic function) decides one tool call whose argument
is the next ~1 KB message, the tool runs (it writes one line per execution to a side
file, then returns a small result), and the message is appended to the run's state
(the growing message list a real agent has). Every system runs exactly this logic;
only the way the step is made durable differs.

Imported by the per-system scripts, which run in different virtualenvs: standard
library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MESSAGE_BYTES = 1024


def make_message(step: int) -> str:
    """The deterministic "model": the ~1 KB message of step ``step`` (pure function)."""
    seed = hashlib.sha256(f"flowai-bench-step-{step}".encode()).hexdigest()  # 64 hex chars
    prefix = f"step {step:07d} assistant: "
    return prefix + (seed * (MESSAGE_BYTES // len(seed) + 1))[: MESSAGE_BYTES - len(prefix)]


class SideFile:
    """The tool's side effect: one line per execution, appended (and flushed) before the
    tool returns, so a killed process leaves an exact count of executions."""

    def __init__(self, path: str | None, kill_at: int | None = None) -> None:
        self.path = path
        self.kill_at = kill_at
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None
        self.first_call_at: float | None = None  # time.time() of this process's first execution
        self.times: list[float] = []  # perf_counter() at each execution (how the step cost evolves)

    def tool(self, step: int, message: str, attempt: Any = "") -> dict[str, Any]:
        """The tool: checks its argument, records the execution, returns a small result."""
        if self.first_call_at is None:
            self.first_call_at = time.time()
        self.times.append(time.perf_counter())
        if message != make_message(step):
            raise ValueError(f"step {step}: unexpected message")
        if self.fd is not None:
            os.write(self.fd, f"{step} {os.getpid()} {attempt}\n".encode())
        if self.kill_at is not None and step == self.kill_at:
            os.kill(os.getpid(), 9)  # SIGKILL: the process dies inside the tool, step unrecorded
        return {"step": step, "digest": hashlib.sha256(message.encode()).hexdigest()[:16]}


def count_executions(path: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            step = int(line.split()[0])
            counts[step] = counts.get(step, 0) + 1
    return counts


def step_profile(times: list[float], steps: int) -> dict[str, float]:
    """ms per step over the first and the last 100 steps of a run, and the median step (from
    the tool's clock: one execution to the next). The median is the typical step, which a
    stall of the machine, or of the system's own housekeeping, moves less than a mean."""
    run = times[-steps:]
    if len(run) < 200:
        return {}
    gaps = sorted(later - earlier for earlier, later in zip(run, run[1:]))
    return {
        "first100_ms_per_step": (run[100] - run[0]) / 100 * 1e3,
        "last100_ms_per_step": (run[-1] - run[-101]) / 100 * 1e3,
        "median_step_ms": gaps[len(gaps) // 2] * 1e3,
    }


def paired_floor(directory: str) -> float:
    """The raw floor measured right next to a durable run (the load moves a lot here)."""
    return fsync_floor(directory, ops=200)


def files_size(*paths: str | Path) -> int:
    """Bytes on disk of a store: the file(s) and any SQLite -wal / -shm / -journal sidecars."""
    total = 0
    for path in paths:
        for suffix in ("", "-wal", "-journal"):
            candidate = Path(str(path) + suffix)
            if candidate.exists():
                total += candidate.stat().st_size
    return total


def fresh(path: str | Path) -> str:
    """Remove a store file and its sidecars (a fresh store for each measured run)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return str(path)


def emit(result: dict[str, Any]) -> None:
    """Hand a result to the driver: one JSON line on stdout, marked."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def fsync_floor(directory: str, ops: int = 2000) -> float:
    """µs per op of the raw floor: append 1 KB to a file + os.fdatasync."""
    path = os.path.join(directory, "fsync-floor.bin")
    record = b"x" * MESSAGE_BYTES
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(50):
            os.write(fd, record)
            os.fdatasync(fd)
        started = time.perf_counter()
        for _ in range(ops):
            os.write(fd, record)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return elapsed / ops * 1e6


if __name__ == "__main__":
    assert len(make_message(0)) == MESSAGE_BYTES and len(make_message(999_999)) == MESSAGE_BYTES
    print(f"fsync floor: {fsync_floor(sys.argv[1] if len(sys.argv) > 1 else '.'):.1f} µs/op")
