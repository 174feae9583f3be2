"""The durable store (API.md §9.1): ``open_store`` and ``Store`` are native.

They are resolved lazily so that the facade imports in a build whose native module
does not provide them yet; using them there raises ``AttributeError`` naming what is
missing.
"""

from __future__ import annotations

from typing import Any

from ._native import native_attr

__all__ = ["Store", "open_store"]

_NATIVE_NAMES = {"Store": "Store", "open_store": "open_store"}


def __getattr__(name: str) -> Any:
    native_name = _NATIVE_NAMES.get(name)
    if native_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = native_attr(native_name)
    if value is None:
        raise AttributeError(
            f"flowai_harness.{name} is native (flowai_harness._internal.{native_name}), "
            "and this build of flowai-harness does not provide it"
        )
    return value
