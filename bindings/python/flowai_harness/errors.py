"""The exception tree of flowai_harness.

Native errors are raised as these classes: the Rust side imports them from this
module (one mapping, the ``errors`` module of ``bindings/src/lib.rs``), so Python and Rust agree on a
single tree rooted at :class:`FlowAIError`. Where the contract says ``ValueError``,
the class also derives from ``ValueError`` so callers written for the existing
package keep catching what they caught before.
"""

from __future__ import annotations

__all__ = [
    "FlowAIError",
    "FlowAIValueError",
    "NonDeterminismError",
    "SpecMismatchError",
    "StoreLockedError",
]


class FlowAIError(Exception):
    """Base class of every error raised by the native runtime."""


class FlowAIValueError(FlowAIError, ValueError):
    """A native error the contract reports as ``ValueError``.

    Spec, toolkit, registry, approval and run-lookup errors of the runtime carry the
    Rust message unchanged (e.g. ``"unknown toolkit id: <id>"``).
    """


class StoreLockedError(FlowAIError):
    """The store file is held for writing by another process; the message names the path."""


class NonDeterminismError(FlowAIError):
    """Replay in verify mode met a command that differs from the recorded one."""


class SpecMismatchError(FlowAIError, ValueError):
    """A run is resumed or verified under a spec other than the one it started with."""
