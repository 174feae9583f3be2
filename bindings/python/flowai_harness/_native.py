"""Access to the private native module ``flowai_harness._internal``.

The pure-Python facade must import (and validate specs) even in a build whose
native module lacks later additions, so native names are looked up here, once, and
a missing one is reported as a :class:`FlowAIError` at the point of use instead of
an ``ImportError`` at package import.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .errors import FlowAIError

_internal: ModuleType | None
_import_error: ImportError | None
try:
    from . import _internal
except ImportError as exc:  # the extension was not built into this installation
    _internal = None
    _import_error = exc
else:
    _import_error = None


def native_attr(name: str) -> Any | None:
    """The native object ``name``, or None when this build does not provide it."""
    if _internal is None:
        return None
    return getattr(_internal, name, None)


def require_native(name: str) -> Any:
    """The native object ``name``; a FlowAIError says what is missing otherwise."""
    if _internal is None:
        raise FlowAIError(
            f"the native module flowai_harness._internal could not be imported ({_import_error}); "
            "reinstall the package (pip install / maturin develop)"
        )
    value = getattr(_internal, name, None)
    if value is None:
        raise FlowAIError(
            f"flowai_harness._internal.{name} is not available in this build of flowai-harness"
        )
    return value
