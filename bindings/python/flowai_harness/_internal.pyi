"""Type stub of the private native module (what exists in this build)."""

import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, final

__all__ = [
    "PyRuntime",
    "PyRuntimeEventStream",
    "ReplayStream",
    "Store",
    "ToolCallRuntime",
    "describe_role_default_tools",
    "cli_main",
    "describe_toolkit_tools",
    "open_store",
]

def describe_toolkit_tools(toolkit_json: str, agent_json: str) -> str:
    """JSON list of ``{name, description, input_schema}``: one toolkit's tools for one agent."""

def describe_role_default_tools(agent_json: str) -> str:
    """JSON list of ``{name, description, input_schema}``: the agent's role-default built-ins."""

def cli_main(args: list[str]) -> int:
    """Run the ``flowai`` command (arguments without the program name); returns the exit code."""

def open_store(path: str | os.PathLike[str], *, durability: str = "immediate", shared_reads: bool = False) -> Store:
    """Open (or join, if this process holds it) a durable store file (API.md §9.1)."""

@final
class Store:
    """A durable store file that several runtimes of this process may share."""

    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(
        self, *_exc: type[BaseException] | BaseException | TracebackType | None
    ) -> bool: ...

@final
class PyRuntimeEventStream:
    """The async iterator of a run's event dicts; the run starts on the first ``__anext__``."""

    @property
    def run_id(self) -> str: ...
    def __aiter__(self) -> PyRuntimeEventStream: ...
    def __anext__(self) -> Awaitable[dict[str, Any]]: ...
    def cancel(self) -> None: ...
    def _wait_next(self) -> Awaitable[Any]:
        """The next event (a dict), or async tool calls handed over (``_stream.next_event``)."""

@final
class ReplayStream:
    """The async iterator ``PyRuntime.replay`` returns."""

    @property
    def run_id(self) -> str: ...
    def __aiter__(self) -> ReplayStream: ...
    def __anext__(self) -> Awaitable[dict[str, Any]]: ...

@final
class ToolCallRuntime:
    """The runtime a tool context's ReferenceClient uses during one call."""

    @property
    def resource_id(self) -> str: ...
    def create_reference(self, reference: Any, value: Any, glimpse: Any = None) -> Awaitable[dict[str, Any]]: ...
    def resolve_reference(self, reference: Any) -> Awaitable[Any]: ...
    def reference_glimpse(self, reference: Any) -> Awaitable[Any]: ...

@final
class PyRuntime:
    """The native runtime handle (``flowai_harness.Runtime``)."""

    @staticmethod
    def _create(
        *,
        spec_json: str,
        host_tools: list[tuple[str, str, str, str, str, str, Callable[..., Any]]],
        predicates: dict[str, Callable[..., Any]],
        action_dispatcher: Callable[..., Any] | None,
        event_hooks: list[Callable[[dict[str, Any]], Any]],
        services: dict[str, Any],
        tool_context_factory: Callable[..., Any],
        dispatch_context_factory: Callable[..., Any],
        interpreter: str,
        mock_response: str | None,
        store: Any,
        durability: str,
    ) -> PyRuntime: ...
    @property
    def resource_id(self) -> str: ...
    def query(
        self, prompt: str, thread_id: str, resume: Any = None, *, run_id: str | None = None
    ) -> PyRuntimeEventStream: ...
    def run_specialist(self, specialist: str, prompt: str, thread_id: str | None = None) -> PyRuntimeEventStream: ...
    def respond_to_approval(
        self, approval_id: str, outcome: str, feedback: str | None = None, partial: Any = None
    ) -> Awaitable[None]: ...
    def create_reference(self, reference: Any, value: Any, glimpse: Any = None) -> Awaitable[dict[str, Any]]: ...
    def resolve_reference(self, reference: Any) -> Awaitable[Any]: ...
    def reference_glimpse(self, reference: Any) -> Awaitable[Any]: ...
    def runs(
        self, *, thread_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...
    def run(self, run_id: str) -> dict[str, Any]: ...
    def journal(self, run_id: str, *, since: int = 0) -> list[dict[str, Any]]: ...
    def pending(self) -> list[dict[str, Any]]: ...
    def resume(self, run_id: str, *, allow_spec_change: bool = False) -> PyRuntimeEventStream: ...
    def replay(self, run_id: str, *, verify: bool = True) -> ReplayStream: ...
    def fork(self, run_id: str, *, at_seq: int, prompt: str | None = None) -> str: ...
    def cancel(self, run_id: str) -> None:
        """Cancels a run durably. A run waiting at a gate is cancelled by the time this
        returns. A run taking a step stops at its next one; its cancellation is on record
        when this returns, so if the process stops first, the next runtime on the store
        (or a resume) ends the run cancelled."""
    def gc(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> PyRuntime: ...
    def __exit__(
        self, *_exc: type[BaseException] | BaseException | TracebackType | None
    ) -> bool: ...
