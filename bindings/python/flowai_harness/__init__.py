"""flowai_harness: typed agent specs over a durable, journaled Rust runtime.

Describe tenant, agents, plans, references, tools and prompts with the ``define_*``
helpers, then ``create_runtime(spec, ...)`` to run them.
"""

from __future__ import annotations

from typing import Any

from ._native import native_attr
from ._schema import normalize_schema
from ._version import __version__
from .agents import define_coordinator, define_executor, define_planner, define_specialist
from .errors import FlowAIError, NonDeterminismError, SpecMismatchError, StoreLockedError
from .glimpse import glimpse
from .plans import PlanDisplayAlias, PlanSpec, define_plan
from .prompts import LayeredPrompt, layered_prompt
from .references import ReferenceSpec, define_reference
from .runtime import (
    AgentSpec,
    ApprovalOverrides,
    ApprovalPolicies,
    ApprovalPolicyPatch,
    DataEnvironmentConfig,
    ModelSpec,
    RuntimeSpec,
    StorageFactories,
    StorageFactorySpec,
    TestingConfig,
    ToolkitSpec,
    create_runtime,
    define_runtime,
    normalize_data_environment,
)
from .tenant import TenantIdentity, define_tenant
from .tools import ToolSpec, define_tool
from .unions import TaggedUnion

__all__ = [
    "AgentSpec",
    "ApprovalOverrides",
    "ApprovalPolicies",
    "ApprovalPolicyPatch",
    "DataEnvironmentConfig",
    "FlowAIError",
    "LayeredPrompt",
    "ModelSpec",
    "NonDeterminismError",
    "PlanDisplayAlias",
    "PlanSpec",
    "ReferenceSpec",
    "Runtime",
    "RuntimeSpec",
    "SpecMismatchError",
    "StorageFactories",
    "StorageFactorySpec",
    "Store",
    "StoreLockedError",
    "TaggedUnion",
    "TenantIdentity",
    "TestingConfig",
    "ToolSpec",
    "ToolkitSpec",
    "__version__",
    "create_runtime",
    "define_coordinator",
    "define_executor",
    "define_plan",
    "define_planner",
    "define_reference",
    "define_runtime",
    "define_specialist",
    "define_tenant",
    "define_tool",
    "glimpse",
    "layered_prompt",
    "normalize_data_environment",
    "normalize_schema",
    "open_store",
]

# Native exports (API.md §2.4, §9.1): bound eagerly when this build has them, so that
# `flowai_harness.Runtime is type(runtime)`; otherwise reported on access.
_NATIVE_EXPORTS = {"Runtime": "PyRuntime", "Store": "Store", "open_store": "open_store"}
for _public, _native_name in _NATIVE_EXPORTS.items():
    _value = native_attr(_native_name)
    if _value is not None:
        globals()[_public] = _value
del _public, _native_name, _value


def __getattr__(name: str) -> Any:
    native_name = _NATIVE_EXPORTS.get(name)
    if native_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise AttributeError(
        f"flowai_harness.{name} is native (flowai_harness._internal.{native_name}), "
        "and this build of flowai-harness does not provide it"
    )
