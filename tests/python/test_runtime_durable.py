"""Durable runs through the native runtime (API.md §9): file stores, inspection,
resume after a crash, approvals across processes, replay, cancel, spec changes."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flowai_harness import (
    FlowAIError,
    NonDeterminismError,
    SpecMismatchError,
    Store,
    StoreLockedError,
    create_runtime,
    open_store,
)
from flowai_harness.errors import FlowAIValueError

# One module, used by the child processes and (imported) by the tests, so that both
# sides build the very same spec.
FLOW = textwrap.dedent(
    '''
    import asyncio
    import json
    import os
    import sys
    import threading

    from flowai_harness import (
        create_runtime, define_coordinator, define_runtime, define_specialist, define_tenant, define_tool,
    )

    CALLS = []
    RUNTIME = []  # the child's runtime, for a handler that cancels its own run

    @define_tool("lookup", {"sku": str})
    def lookup(args, ctx):
        CALLS.append(("lookup", args, ctx.idempotency_key, ctx.attempt))
        if os.environ.get("FLOW_CANCEL_IN_LOOKUP"):
            RUNTIME[0].cancel(ctx.run_id)
            print("cancelled-in-handler", ctx.run_id, flush=True)
            threading.Event().wait()
        hang = os.environ.get("FLOW_HANG_IN_LOOKUP")
        if hang:
            if hang != "quietly":
                print("in-handler", ctx.run_id, ctx.idempotency_key, ctx.attempt, flush=True)
            threading.Event().wait()
        return {"sku": args["sku"], "price": 12.5}

    @define_tool("apply", {"sku": str}, approval="always")
    def apply(args, ctx):
        CALLS.append(("apply", args, ctx.idempotency_key, ctx.attempt))
        return {"applied": args["sku"]}

    def spec(prompt="You coordinate."):
        return define_runtime(
            define_tenant("acme", "v1"),
            agents=[
                define_coordinator("coordinator", model="claude-sonnet-4-6", prompt=prompt, routes=["helper"], tools=[lookup, apply]),
                define_specialist("helper", model="claude-sonnet-4-6", prompt="You help."),
            ],
            providers={"anthropic": {"apiKey": "unused"}},
        )

    SCRIPT = json.dumps({"script": [
        {"tool": "lookup", "args": {"sku": "s-1"}},
        {"tool": "apply", "args": {"sku": "s-1"}},
    ]})

    def runtime(store, prompt="You coordinate."):
        return create_runtime(spec(prompt), interpreter="scripted", store=store)

    async def run_until_gate(rt):
        stream = rt.query(SCRIPT, "thread-1")
        async for event in stream:
            if event["type"] == "approval-required":
                print(json.dumps({"run": stream.run_id, "approval": event["data"]["id"]}), flush=True)
                os._exit(0)  # a crash: nothing is closed

    async def cancel_at_call(rt):
        # The consumer cancels between two events while the handler runs (and hangs).
        stream = rt.query(SCRIPT, "thread-1")
        async for event in stream:
            if event.get("toolName") == "lookup" and event.get("state") == "call":
                stream.cancel()
                print("cancelled-in-handler", stream.run_id, flush=True)
                threading.Event().wait()

    async def answer(rt, approval_id):
        await rt.respond_to_approval(approval_id, "approve")

    if __name__ == "__main__":
        mode, store = sys.argv[1], sys.argv[2]
        if mode == "gate":
            RUNTIME.append(runtime(store))
            asyncio.run(run_until_gate(RUNTIME[0]))
        elif mode == "cancel-at-call":
            asyncio.run(cancel_at_call(runtime(store)))
        elif mode == "answer":
            rt = runtime(store)
            asyncio.run(answer(rt, sys.argv[3]))
            rt.close()
            print("answered", flush=True)
        elif mode == "open":
            from flowai_harness import StoreLockedError, open_store
            try:
                open_store(store)
            except StoreLockedError as error:
                print("StoreLockedError", error, flush=True)
            else:
                print("opened", flush=True)
    '''
)


def write_module(path: Path, source: str, name: str) -> ModuleType:
    """`source` written at `path` (for child processes to run) and imported as `name`."""
    path.write_text(source, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture
def flow(tmp_path: Path) -> ModuleType:
    return write_module(tmp_path / "flow.py", FLOW, "durable_flow")


def child(flow: ModuleType, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(flow.__file__), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def drain(stream: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in stream]

    return asyncio.run(collect())


def answer_all(runtime: Any, stream: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        events = []
        async for event in stream:
            events.append(event)
            if event["type"] == "approval-required":
                await runtime.respond_to_approval(event["data"]["id"], "approve")
        return events

    return asyncio.run(collect())


def test_inspection_on_a_file_store(flow: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "runs.redb"
    runtime = flow.runtime(str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = runtime.query(flow.SCRIPT, "thread-1")
    answer_all(runtime, first)
    second = runtime.run_specialist("helper", "hello", "thread-2")
    drain(second)
    runs = runtime.runs()
    assert [r["runId"] for r in runs] == [second.run_id, first.run_id]
    info = runtime.run(first.run_id)
    assert set(info) == {"runId", "threadId", "agent", "status", "createdAt", "updatedAt", "pendingApprovals", "records"}
    assert (info["threadId"], info["agent"], info["status"], info["pendingApprovals"]) == ("thread-1", "coordinator", "completed", [])
    assert info["createdAt"].endswith("Z") and len(info["createdAt"]) == len("2026-01-01T00:00:00.000Z")
    assert [r["runId"] for r in runtime.runs(thread_id="thread-2")] == [second.run_id]
    assert [r["runId"] for r in runtime.runs(status="completed", limit=1)] == [second.run_id]
    with pytest.raises(ValueError, match="unknown run status"):
        runtime.runs(status="sleeping")
    journal = runtime.journal(first.run_id)
    assert len(journal) == info["records"]
    assert [j["seq"] for j in journal] == list(range(1, len(journal) + 1))
    assert journal[0]["kind"] == "RunStarted" and journal[-1]["kind"] == "RunCompleted"
    assert journal[0]["data"]["thread"] == "thread-1"
    assert set(journal[0]) == {"seq", "kind", "at", "data"}
    assert runtime.journal(first.run_id, since=len(journal) - 1) == journal[-1:]
    assert runtime.pending() == []
    missing = "01JD3M0000000000000000000A"
    for call in (runtime.run, runtime.journal, runtime.resume, runtime.cancel):
        with pytest.raises(FlowAIValueError, match=f"run not found: {missing}"):
            call(missing)
    with pytest.raises(ValueError, match=f"run {first.run_id} is completed"):
        runtime.resume(first.run_id)
    runtime.close()
    runtime.close()


def test_other_tenants_runs_are_not_found(flow: ModuleType, tmp_path: Path) -> None:
    from flowai_harness import define_runtime, define_specialist, define_tenant

    with open_store(tmp_path / "shared.redb") as store:
        acme = flow.runtime(store)
        stream = acme.run_specialist("helper", "hi")
        drain(stream)
        other_spec = define_runtime(
            define_tenant("globex", "v1"),
            agents=[define_specialist("helper", model="claude-sonnet-4-6", prompt="h")],
            providers={"anthropic": {"apiKey": "unused"}},
        )
        globex = create_runtime(other_spec, store=store)
        assert globex.runs() == []
        with pytest.raises(FlowAIValueError, match="run not found"):
            globex.run(stream.run_id)
        with pytest.raises(FlowAIValueError, match="run not found"):
            globex.replay(stream.run_id, verify=False)
        acme.close()
        globex.close()


def test_store_options_and_closing(flow: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        flow.create_runtime(flow.spec(), store=str(tmp_path / "a.redb"), durability="sometimes")
    with pytest.raises(ValueError, match="durability"):
        open_store(tmp_path / "a.redb", durability="later")
    store = open_store(tmp_path / "b.redb", durability="eventual")
    assert isinstance(store, Store)
    assert store.path == str((tmp_path / "b.redb").resolve())
    with pytest.raises(ValueError, match="durability"):
        create_runtime(flow.spec(), store=store, durability="eventual")
    # The same path, named another way, is the same store.
    runtime = create_runtime(flow.spec(), store=tmp_path / "." / "b.redb", durability="eventual")
    drain(runtime.run_specialist("helper", "hi"))
    runtime.close()
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(FlowAIError, match=f"store is closed: {store.path}"):
        create_runtime(flow.spec(), store=store)


def test_close_releases_the_store_files(flow: ModuleType, tmp_path: Path) -> None:
    """A closed runtime holds no file of its store, while the object lives on (read from
    /proc, as the crash tests' SIGKILL and ulimit are Linux's: the suite runs on Linux)."""

    def held() -> list[str]:
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # the listing's own descriptor, closed already
                pass
        return sorted(t for t in targets if "held.redb" in t)

    runtime = flow.create_runtime(flow.spec(), store=tmp_path / "held.redb")
    stream = runtime.run_specialist("helper", "hi")
    drain(stream)
    assert held(), "the store's files are open while the runtime is"
    runtime.close()
    assert held() == []
    assert stream.run_id


def test_store_locked_by_another_process(flow: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "locked.redb"
    with open_store(path) as store:
        result = child(flow, "open", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("StoreLockedError")
        assert store.path in result.stdout
    # Released: now the other process gets it.
    result = child(flow, "open", str(path))
    assert result.stdout.strip() == "opened", result.stderr


def test_a_crashed_stores_log_next_to_another_store_file_is_refused(flow: ModuleType, tmp_path: Path) -> None:
    # The log a crash would leave (it exists while the store is open), then a clean close.
    crashed = tmp_path / "crashed.redb"
    runtime = flow.runtime(str(crashed))
    drain(runtime.run_specialist("helper", "hi"))
    leftover = Path(f"{crashed}-wal").read_bytes()
    runtime.close()
    # Another store file, with that log put next to it.
    other = tmp_path / "other.redb"
    open_store(other).close()
    Path(f"{other}-wal").write_bytes(leftover)
    with pytest.raises(FlowAIError, match="written over another store file") as raised:
        open_store(other)
    assert f"{other.resolve()}-wal" in str(raised.value)
    assert Path(f"{other}-wal").read_bytes() == leftover, "the log is left as it was"
    Path(f"{other}-wal").rename(tmp_path / "moved-wal")
    open_store(other).close()


def test_store_locked_error_class(flow: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "held.redb"
    with subprocess.Popen(
        [sys.executable, "-c", f"import sys; from flowai_harness import open_store; s = open_store({str(path)!r}); print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(StoreLockedError, match=str(path.resolve())):
                open_store(path)
            with pytest.raises(StoreLockedError):
                flow.runtime(str(path))
            assert issubclass(StoreLockedError, FlowAIError)
        finally:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=30)


def test_approval_answered_after_a_crash(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "gate.redb")
    result = child(flow, "gate", path)
    assert result.returncode == 0, result.stderr
    gate = json.loads(result.stdout.strip().splitlines()[-1])
    runtime = flow.runtime(path)
    [suspended] = runtime.runs(status="suspended")
    assert suspended["runId"] == gate["run"] and suspended["pendingApprovals"] == [gate["approval"]]
    assert runtime.pending() == []  # waiting for a decision, nothing to do yet
    asyncio.run(flow.answer(runtime, gate["approval"]))
    assert [r["runId"] for r in runtime.pending()] == [gate["run"]]
    flow.CALLS.clear()
    events = drain(runtime.resume(gate["run"]))
    # First the decision recorded while nobody drove the run, then what is new.
    assert events[0] == {"type": "approval-decision", "data": {"id": gate["approval"], "outcome": {"outcome": "approve"}}}
    assert [e["type"] for e in events if e["type"] == "tool-invocation"] == ["tool-invocation"]
    assert events[1]["type"] == "tool-invocation" and events[1]["state"] == "result"
    assert events[1]["result"] == {"applied": "s-1"}
    # Only the gated handler ran here; the lookup recorded by the first process did not run again.
    assert [call[0] for call in flow.CALLS] == ["apply"]
    assert runtime.run(gate["run"])["status"] == "completed"
    assert runtime.pending() == []
    runtime.close()


def test_approval_answered_from_a_second_process(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "two.redb")
    gate = json.loads(child(flow, "gate", path).stdout.strip().splitlines()[-1])
    answered = child(flow, "answer", path, gate["approval"])
    assert answered.stdout.strip() == "answered", answered.stderr
    runtime = flow.runtime(path)
    assert [r["runId"] for r in runtime.pending()] == [gate["run"]]
    events = drain(runtime.resume(gate["run"]))
    assert events[0]["type"] == "approval-decision"
    assert runtime.run(gate["run"])["status"] == "completed"

    async def again() -> None:
        await runtime.respond_to_approval(gate["approval"], "approve")

    with pytest.raises(ValueError, match=f"approval already resolved: {gate['approval']}"):
        asyncio.run(again())
    runtime.close()


def kill_in_handler(flow: ModuleType, path: str) -> tuple[str, str]:
    """Runs the flow in a child process that is SIGKILLed inside its first handler, whose
    attempt is durable and has no outcome; returns the run id and the idempotency key."""
    with subprocess.Popen(
        [sys.executable, str(flow.__file__), "gate", path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FLOW_HANG_IN_LOOKUP": "1"},
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "in-handler", line
        _, run_id, key, attempt = line
        assert attempt == "1"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return run_id, key


def test_resume_after_sigkill_in_a_handler(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "killed.redb")
    run_id, key = kill_in_handler(flow, path)
    runtime = flow.runtime(path)
    assert runtime.run(run_id)["status"] == "interrupted"
    assert [r["runId"] for r in runtime.pending()] == [run_id]
    flow.CALLS.clear()
    events = answer_all(runtime, runtime.resume(run_id))
    # The handler that was running is invoked again: same key, next attempt.
    assert flow.CALLS[0] == ("lookup", {"sku": "s-1"}, key, 2)
    assert [c[0] for c in flow.CALLS] == ["lookup", "apply"]
    lookups = [(e["state"]) for e in events if e.get("toolName") == "lookup"]
    assert lookups == ["result"]  # no second call event for the re-run attempt
    assert runtime.run(run_id)["status"] == "completed"
    runtime.close()


def test_a_run_cancelled_after_sigkill_in_a_handler_verifies(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "killed.redb")
    run_id, _ = kill_in_handler(flow, path)
    runtime = flow.runtime(path)
    runtime.cancel(run_id)
    assert runtime.run(run_id)["status"] == "cancelled"
    assert_cancelled_in_lookup_verifies(flow, runtime, run_id)
    runtime.close()


def assert_cancelled_in_lookup_verifies(flow: ModuleType, runtime: Any, run_id: str) -> None:
    """Re-driven, the journal of a run cancelled while `lookup` ran ends at the
    cancellation: nothing recorded differs, and verifying invokes no handler."""

    async def replayed() -> list[dict[str, Any]]:
        return [e async for e in runtime.replay(run_id, verify=True)]

    flow.CALLS.clear()
    events = asyncio.run(replayed())
    assert [e["state"] for e in events if e.get("toolName") == "lookup"] == ["call"]
    assert flow.CALLS == []


@pytest.mark.parametrize("canceller", ["runtime", "stream"])
def test_a_run_cancelled_during_a_step_stays_cancelled_after_sigkill(
    flow: ModuleType, tmp_path: Path, canceller: str
) -> None:
    # `runtime.cancel` or `stream.cancel` returns while the run's handler still runs (the
    # driver records the cancellation after it); the process dies first. The request was
    # durable: the next runtime on the store ends the run cancelled, nothing runs again.
    path = str(tmp_path / "killed.redb")
    mode, env = {
        "runtime": ("gate", {"FLOW_CANCEL_IN_LOOKUP": "1"}),
        "stream": ("cancel-at-call", {"FLOW_HANG_IN_LOOKUP": "quietly"}),
    }[canceller]
    with subprocess.Popen(
        [sys.executable, str(flow.__file__), mode, path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert line[0] == "cancelled-in-handler", line
    run_id = line[1]
    runtime = flow.runtime(path)
    assert runtime.run(run_id)["status"] == "cancelled"
    assert runtime.pending() == []
    with pytest.raises(ValueError, match=f"run {run_id} is cancelled"):
        runtime.resume(run_id)
    assert_cancelled_in_lookup_verifies(flow, runtime, run_id)
    runtime.close()


def test_replay_equals_the_original_stream(flow: ModuleType) -> None:
    runtime = flow.runtime(None)
    stream = runtime.query(flow.SCRIPT, "thread-1")
    original = answer_all(runtime, stream)

    async def replayed(verify: bool) -> list[dict[str, Any]]:
        return [e async for e in runtime.replay(stream.run_id, verify=verify)]

    assert asyncio.run(replayed(True)) == original
    assert asyncio.run(replayed(False)) == original
    runtime.close()


def test_replay_verify_detects_a_changed_spec(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "verify.redb")
    runtime = flow.runtime(path)
    stream = runtime.query(flow.SCRIPT, "thread-1")
    answer_all(runtime, stream)
    runtime.close()
    changed = flow.runtime(path, prompt="You coordinate differently.")
    with pytest.raises(SpecMismatchError, match=stream.run_id):
        changed.replay(stream.run_id)

    async def unverified() -> int:
        return len([e async for e in changed.replay(stream.run_id, verify=False)])

    assert asyncio.run(unverified()) > 0
    assert issubclass(NonDeterminismError, FlowAIError)
    changed.close()


def test_resume_under_a_changed_spec(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "spec.redb")
    gate = json.loads(child(flow, "gate", path).stdout.strip().splitlines()[-1])
    changed = flow.runtime(path, prompt="You coordinate differently.")
    with pytest.raises(SpecMismatchError) as caught:
        changed.resume(gate["run"])
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert gate["run"] in message and "allow_spec_change" in message
    # The gate's request was delivered by the crashed process: answer it, then resume.
    asyncio.run(flow.answer(changed, gate["approval"]))
    events = drain(changed.resume(gate["run"], allow_spec_change=True))
    assert events[0]["type"] == "approval-decision"
    assert changed.run(gate["run"])["status"] == "completed"
    changed.close()


def test_cancel_a_suspended_run(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "cancel.redb")
    gate = json.loads(child(flow, "gate", path).stdout.strip().splitlines()[-1])
    runtime = flow.runtime(path)
    runtime.cancel(gate["run"])
    info = runtime.run(gate["run"])
    assert info["status"] == "cancelled" and info["pendingApprovals"] == []

    async def replayed() -> list[dict[str, Any]]:
        return [event async for event in runtime.replay(gate["run"])]

    # The gated call gets its result, as when the run is cancelled while driven.
    last = asyncio.run(replayed())[-1]
    assert (last["toolName"], last["state"], last["result"]) == (
        "apply",
        "result",
        {"error": "Cancelled while awaiting approval"},
    )

    async def late() -> None:
        await runtime.respond_to_approval(gate["approval"], "approve")

    with pytest.raises(ValueError, match=f"approval already resolved: {gate['approval']}"):
        asyncio.run(late())
    with pytest.raises(ValueError, match="is cancelled"):
        runtime.resume(gate["run"])
    runtime.close()


def test_closing_a_runtime_interrupts_its_runs_and_keeps_gated_ones_suspended(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "close.redb")
    runtime = flow.runtime(path)
    stream = runtime.query(flow.SCRIPT, "thread-1")

    async def until_gate() -> None:
        async for event in stream:
            if event["type"] == "approval-required":
                return

    asyncio.run(until_gate())
    runtime.close()
    reopened = flow.runtime(path)
    assert reopened.run(stream.run_id)["status"] == "suspended"
    reopened.close()


def test_fork_asks_the_gate_again_and_leaves_the_original(flow: ModuleType, tmp_path: Path) -> None:
    runtime = flow.runtime(str(tmp_path / "fork.redb"))
    stream = runtime.query(flow.SCRIPT, "thread-1")
    original = answer_all(runtime, stream)
    journal = runtime.journal(stream.run_id)
    decided = next(j["seq"] for j in journal if j["kind"] == "ApprovalDecided")
    forked = runtime.fork(stream.run_id, at_seq=decided - 1)
    assert forked != stream.run_id
    assert runtime.run(forked)["status"] == "interrupted"
    assert forked in [r["runId"] for r in runtime.pending()]
    first = runtime.journal(forked)[0]
    assert first["kind"] == "RunStarted" and first["data"]["parent"]["seq"] == decided - 1
    flow.CALLS.clear()
    events = answer_all(runtime, runtime.resume(forked))
    asked = [e["data"]["id"] for e in events if e["type"] == "approval-required"]
    old = next(e["data"]["id"] for e in original if e["type"] == "approval-required")
    assert len(asked) == 1 and asked != [old]
    assert [c[0] for c in flow.CALLS] == ["apply"]
    assert runtime.run(forked)["status"] == "completed"
    assert runtime.journal(stream.run_id) == journal

    with pytest.raises(ValueError, match="at_seq must be between 1 and"):
        runtime.fork(stream.run_id, at_seq=len(journal) + 1)
    model_request = next(j["seq"] for j in journal if j["kind"] == "ModelResponded")
    with pytest.raises(ValueError, match="fork with a new prompt must cut before seq"):
        runtime.fork(stream.run_id, at_seq=model_request, prompt="{}")
    with_prompt = runtime.fork(stream.run_id, at_seq=1, prompt="plain text")
    events = drain(runtime.resume(with_prompt))
    assert {"type": "text", "text": "plain text"} in events
    runtime.close()


def test_flowai_command_from_python(flow: ModuleType, tmp_path: Path) -> None:
    path = str(tmp_path / "cli.redb")
    runtime = flow.runtime(path)
    stream = runtime.query(flow.SCRIPT, "thread-1")
    answer_all(runtime, stream)
    # Held for writing by this process without shared_reads: a read-only tool is refused.
    held = subprocess.run(
        [sys.executable, "-m", "flowai_harness._cli", "runs", path], capture_output=True, text=True, check=False, timeout=60
    )
    assert held.returncode == 3, held.stderr
    runtime.close()
    shown = subprocess.run(
        [sys.executable, "-m", "flowai_harness._cli", "show", path, stream.run_id],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert stream.run_id in shown.stdout
    exported = subprocess.run(
        [sys.executable, "-m", "flowai_harness._cli", "export", path, stream.run_id],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    with flow.runtime(path) as reopened:
        assert records == reopened.journal(stream.run_id)


FILL = textwrap.dedent(
    '''
    import asyncio
    import json
    import sys

    from flowai_harness import create_runtime, define_runtime, define_specialist, define_tenant, define_tool

    @define_tool("note", {"n": int})
    def note(args, ctx):
        return {"n": args["n"], "text": "x" * 2000}

    SPEC = define_runtime(
        define_tenant("acme", "v1"),
        agents=[define_specialist("writer", model="claude-sonnet-4-6", prompt="You write.", tools=[note])],
        providers={"anthropic": {"apiKey": "unused"}},
    )
    SCRIPT = json.dumps({"script": [{"tool": "note", "args": {"n": n}} for n in range(50)]})

    async def one(rt, i):
        stream = rt.run_specialist("writer", SCRIPT, f"thread-{i}")
        try:
            async for _ in stream:
                pass
        except Exception as error:
            return stream.run_id, f"{type(error).__name__}: {error}"
        return stream.run_id, None

    if __name__ == "__main__":
        rt = create_runtime(SPEC, interpreter="scripted", store=sys.argv[1])
        for i in range(10_000):
            run_id, error = asyncio.run(one(rt, i))
            if error is None:
                print("completed", run_id, flush=True)
            else:
                print("failed", run_id, error, flush=True)
                break
        try:
            rt.close()
        except Exception as error:
            print("close", f"{type(error).__name__}: {error}", flush=True)
    '''
)


def test_a_full_disk_fails_the_run_clearly_and_it_resumes_once_there_is_room(tmp_path: Path) -> None:
    """Runs go on until the store's files cannot grow (`ulimit -f`, as a full disk or a
    quota would stop them); the run that hit it fails with the store's error, and once the
    store can grow again every completed run is intact and the failed one resumes."""
    script = tmp_path / "fill.py"
    fill = write_module(script, FILL, "fill_flow")
    path = str(tmp_path / "full.redb")
    # SIGXFSZ ignored (kept across exec): the write fails with EFBIG instead of killing.
    shell = "trap '' XFSZ; ulimit -f 16384 && exec \"$0\" \"$1\" \"$2\""
    done = subprocess.run(
        ["sh", "-c", shell, sys.executable, str(script), path],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    completed = [line.split()[1] for line in lines if line.startswith("completed ")]
    [failed] = [line.split(maxsplit=2)[1:] for line in lines if line.startswith("failed ")]
    failed_run, error = failed
    assert len(completed) >= 2, done.stdout
    assert "full.redb" in error and "File too large" in error, error

    runtime = create_runtime(fill.SPEC, interpreter="scripted", store=path)
    for run_id in completed:
        assert runtime.run(run_id)["status"] == "completed"
    pending = [r["runId"] for r in runtime.pending()]
    if failed_run in pending:
        assert runtime.run(failed_run)["status"] == "interrupted"
        events = drain(runtime.resume(failed_run))
        results = [e for e in events if e["type"] == "tool-invocation" and e.get("state") == "result"]
        assert results, events
        assert runtime.run(failed_run)["status"] == "completed"
    else:
        # The limit was hit by the run's first commit: nothing of it was written.
        with pytest.raises(FlowAIValueError, match="run not found"):
            runtime.run(failed_run)
    runtime.close()


def test_a_damaged_store_file_raises_flowai_errors_not_panics(flow: ModuleType, tmp_path: Path) -> None:
    """Bytes flipped over two pages, at every fourth page of a store: opening it and reading
    its runs either works or raises FlowAIError, never pyo3's PanicException (a
    BaseException that `except Exception` does not catch)."""
    pristine = tmp_path / "pristine.redb"
    runtime = flow.runtime(str(pristine))
    run_ids = []
    for n in range(3):
        stream = runtime.query(flow.SCRIPT, f"thread-{n}")
        answer_all(runtime, stream)
        run_ids.append(stream.run_id)
    runtime.close()
    data = pristine.read_bytes()
    corrupt = 0
    for first in range(1, len(data) // 4096, 4):
        damaged = bytearray(data)
        for at in range(first * 4096, min((first + 2) * 4096, len(damaged)), 7):
            damaged[at] ^= 0xA5
        path = tmp_path / f"damaged-{first}.redb"
        path.write_bytes(bytes(damaged))
        try:
            opened = flow.runtime(str(path))
            try:
                for run_id in run_ids:
                    opened.journal(run_id)
            finally:
                try:
                    opened.close()
                except FlowAIError:
                    pass
        except FlowAIError as error:
            if "corrupt data" in str(error):
                assert str(path) in str(error)
                corrupt += 1
    assert corrupt > 0
