"""Native construction of the runtime (API.md §2.3, §8, §9.1)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from flowai_harness import (
    FlowAIError,
    RuntimeSpec,
    create_runtime,
    define_coordinator,
    define_reference,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness.errors import FlowAIValueError


def spec(providers: dict[str, Any] | None = None, **kwargs: Any) -> RuntimeSpec:
    return define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="c", routes=["helper"]),
            define_specialist("helper", model="gpt-4o-mini", prompt="h"),
        ],
        providers=providers if providers is not None else {"anthropic": {"apiKeyEnv": "FLOWAI_TEST_UNSET_KEY"}, "openai-compatible": {}},
        **kwargs,
    )


def test_interpreter_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWAI_TEST_UNSET_KEY", raising=False)
    # Deterministic interpreters resolve no key: an unset apiKeyEnv is fine.
    for interpreter in ("noop", "scripted"):
        create_runtime(spec(), interpreter=interpreter).close()
    with pytest.raises(FlowAIValueError, match="unknown interpreter 'magic'; expected noop, scripted, anthropic, openai-compatible, or live"):
        create_runtime(spec(), interpreter="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="anthropic"):
        create_runtime(spec({"openai-compatible": {}}), interpreter="anthropic")
    with pytest.raises(ValueError, match="apiKey"):
        create_runtime(spec(), interpreter="anthropic")


def test_routed_provider_must_be_declared() -> None:
    with pytest.raises(ValueError, match="references provider 'openai-compatible' for model 'gpt-4o-mini', but no such provider is declared"):
        create_runtime(spec({"anthropic": {"apiKey": "unused"}}))


def test_registry_errors_are_value_errors() -> None:
    bad = define_reference("Broken", {"type": "object", "properties": {"x": {"type": "nonsense"}}})
    with pytest.raises(FlowAIValueError, match="reference registry error"):
        create_runtime(spec(references=[bad]))


def test_mock_response_with_noop() -> None:
    runtime = create_runtime(spec(), testing={"mock_response": "hi"})

    async def texts() -> list[str]:
        return [e["text"] async for e in runtime.query("q", "t") if e["type"] == "text"]

    assert asyncio.run(texts()) == ["hi"]
    runtime.close()


def test_store_argument_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="store must be None, a path"):
        create_runtime(spec(), store=42)
    runtime = create_runtime(spec(), store=tmp_path / "as-pathlike.redb")
    assert (tmp_path / "as-pathlike.redb").exists()
    runtime.close()


def test_close_interrupts_a_running_run(tmp_path: Path) -> None:
    entered = threading.Event()
    release = threading.Event()

    @define_tool("slow", {})
    def slow(args: dict[str, Any], ctx: Any) -> str:
        entered.set()
        release.wait(timeout=30)
        return "late"

    runtime_spec = define_runtime(
        define_tenant("acme", "v1"),
        agents=[define_specialist("helper", model="claude-sonnet-4-6", prompt="h", tools=[slow])],
        providers={"anthropic": {"apiKey": "unused"}},
    )
    path = tmp_path / "close.redb"
    runtime = create_runtime(runtime_spec, interpreter="scripted", store=path)
    stream = runtime.run_specialist("helper", json.dumps({"tool": "slow", "args": {}}))

    async def until_call() -> None:
        async for event in stream:
            if event["type"] == "tool-invocation":
                return

    asyncio.run(until_call())
    assert entered.wait(timeout=30)
    runtime.close()
    release.set()
    with pytest.raises(FlowAIError, match="closed"):
        runtime.runs()
    with pytest.raises(FlowAIError, match="runtime is closed"):
        runtime.query("q", "t")
    reopened = create_runtime(runtime_spec, interpreter="scripted", store=path)
    info = reopened.run(stream.run_id)
    assert info["status"] == "interrupted"
    assert [r["runId"] for r in reopened.pending()] == [stream.run_id]
    reopened.close()
