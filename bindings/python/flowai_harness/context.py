"""What host callbacks receive from the runtime (API.md §2.6, §5.6, §9.3).

The native runtime builds one :class:`ToolContext` per tool call and one
:class:`DispatchContext` per plan dispatch through the factories that
``create_runtime`` hands it, so the Python shape of both lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, KeysView, Mapping
from typing import Any

__all__ = ["DispatchContext", "ReferenceClient", "ToolContext"]

# Keys the runtime puts into every tool context; a service may not take these names.
RESERVED_CONTEXT_KEYS: frozenset[str] = frozenset(
    {"tool_use_id", "services", "references", "run_id", "idempotency_key", "attempt"}
)


class ReferenceClient:
    """Reference operations of the runtime, scoped to its tenant."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    async def create(self, reference: Any, value: Any, glimpse: Any = None) -> dict[str, Any]:
        """Store ``value`` under a reference kind; returns ``{"kind", "id", "glimpse"}``."""
        result: dict[str, Any] = await self._runtime.create_reference(reference, value, glimpse)
        return result

    async def resolve(self, reference: Any) -> Any:
        """The value stored for ``{"kind", "id"}``."""
        return await self._runtime.resolve_reference(reference)

    async def glimpse(self, reference: Any) -> Any:
        """The glimpse stored for ``{"kind", "id"}``."""
        return await self._runtime.reference_glimpse(reference)

    def __repr__(self) -> str:
        return f"ReferenceClient({self._runtime!r})"


class ToolContext:
    """Read-only, dict-backed context of one tool call.

    Items are reachable as ``ctx[key]``, ``ctx.key`` and ``ctx.get(key)``; services
    are the very objects passed to ``create_runtime``, not copies.
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    @classmethod
    def for_call(
        cls,
        *,
        runtime: Any,
        services: Mapping[str, Any],
        tool_use_id: str,
        run_id: str,
        idempotency_key: str,
        attempt: int,
    ) -> ToolContext:
        """The context of one attempt of one tool call."""
        return cls.factory(services)(runtime, tool_use_id, run_id, idempotency_key, attempt)

    @classmethod
    def factory(cls, services: Mapping[str, Any]) -> Callable[[Any, str, str, str, int], ToolContext]:
        """:meth:`for_call` with ``services`` bound and the rest taken by position: what
        the native runtime calls for every tool call, so it does no more than it must."""
        new = object.__new__
        set_attribute = object.__setattr__

        def make(runtime: Any, tool_use_id: str, run_id: str, idempotency_key: str, attempt: int) -> ToolContext:
            data: dict[str, Any] = {
                "tool_use_id": tool_use_id,
                "services": services,
                "references": ReferenceClient(runtime),
                "run_id": run_id,
                "idempotency_key": idempotency_key,
                "attempt": attempt,
            }
            data.update(services)
            # A fresh dict nobody else holds: no copy, unlike ``ToolContext(data)``.
            context: ToolContext = new(cls)
            set_attribute(context, "_data", data)
            return context

        return make

    def __getitem__(self, key: str) -> Any:
        data: dict[str, Any] = object.__getattribute__(self, "_data")
        return data[key]

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not real attributes, i.e. context items.
        if name == "_data":
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"tool context has no item {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ToolContext is read-only")

    def get(self, key: str, default: Any = None) -> Any:
        """``ctx[key]`` or ``default``."""
        return self._data.get(key, default)

    def keys(self) -> KeysView[str]:
        """The context's item names."""
        return self._data.keys()

    def as_dict(self) -> dict[str, Any]:
        """A shallow copy of the context's items."""
        return dict(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ToolContext({sorted(self._data)!r})"


class DispatchContext(dict[str, Any]):
    """The action dispatcher's context.

    As a mapping it equals ``{"resolved_refs": {...}}`` (what dispatchers written for the
    existing package compare against); the run coordinates are attributes, not items.
    """

    run_id: str
    plan_id: str
    idempotency_key: str
    attempt: int

    def __init__(
        self,
        resolved_refs: Mapping[str, Any],
        *,
        run_id: str,
        plan_id: str,
        idempotency_key: str,
        attempt: int,
    ) -> None:
        super().__init__(resolved_refs=resolved_refs)
        self.run_id = run_id
        self.plan_id = plan_id
        self.idempotency_key = idempotency_key
        self.attempt = attempt
