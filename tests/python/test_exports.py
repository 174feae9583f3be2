from __future__ import annotations

import importlib

import pytest

import flowai_harness
from flowai_harness import errors
from flowai_harness.errors import FlowAIError, FlowAIValueError

EXPECTED_ALL = {
    "TenantIdentity", "define_tenant",
    "PlanSpec", "PlanDisplayAlias", "define_plan",
    "ReferenceSpec", "define_reference",
    "glimpse",
    "ToolSpec", "define_tool",
    "LayeredPrompt", "layered_prompt",
    "TaggedUnion",
    "normalize_schema",
    "define_coordinator", "define_planner", "define_executor", "define_specialist",
    "AgentSpec", "ModelSpec", "ToolkitSpec", "ApprovalPolicies", "ApprovalPolicyPatch",
    "ApprovalOverrides", "StorageFactorySpec", "StorageFactories", "RuntimeSpec",
    "TestingConfig", "DataEnvironmentConfig",
    "Runtime",
    "define_runtime", "create_runtime", "normalize_data_environment",
    "__version__",
    "open_store", "Store", "FlowAIError", "StoreLockedError", "NonDeterminismError", "SpecMismatchError",
}


def test_all_is_exactly_the_contract() -> None:
    assert set(flowai_harness.__all__) == EXPECTED_ALL
    assert len(flowai_harness.__all__) == len(EXPECTED_ALL)


def test_every_python_export_exists() -> None:
    native = {"Runtime", "Store", "open_store"}
    for name in EXPECTED_ALL - native:
        assert hasattr(flowai_harness, name), name


def test_native_exports_resolve_to_native_objects_or_explain_absence() -> None:
    internal = importlib.import_module("flowai_harness._internal")
    for public, native_name in {"Runtime": "PyRuntime", "Store": "Store", "open_store": "open_store"}.items():
        if hasattr(internal, native_name):
            assert getattr(flowai_harness, public) is getattr(internal, native_name)
        else:
            with pytest.raises(AttributeError, match=native_name):
                getattr(flowai_harness, public)


def test_module_layout_matches_contract_table() -> None:
    layout = {
        "tenant": ["TenantIdentity", "define_tenant"],
        "plans": ["PlanSpec", "PlanDisplayAlias", "define_plan"],
        "references": ["ReferenceSpec", "define_reference"],
        "glimpse": ["glimpse"],
        "tools": ["ToolSpec", "define_tool"],
        "prompts": ["LayeredPrompt", "layered_prompt", "augment_prompt_tools"],
        "unions": ["TaggedUnion"],
        "_schema": ["normalize_schema"],
        "agents": ["define_coordinator", "define_planner", "define_executor", "define_specialist"],
        "runtime": [
            "AgentSpec", "ModelSpec", "ToolkitSpec", "ApprovalPolicies", "ApprovalPolicyPatch",
            "ApprovalOverrides", "StorageFactorySpec", "StorageFactories", "RuntimeSpec",
            "TestingConfig", "DataEnvironmentConfig", "define_runtime", "create_runtime",
            "normalize_data_environment",
        ],
        "_version": ["__version__"],
    }
    for module_name, names in layout.items():
        module = importlib.import_module(f"flowai_harness.{module_name}")
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_version_is_a_string() -> None:
    assert isinstance(flowai_harness.__version__, str)
    assert flowai_harness.__version__


def test_exception_tree() -> None:
    assert issubclass(flowai_harness.FlowAIError, Exception)
    assert issubclass(flowai_harness.StoreLockedError, FlowAIError)
    assert issubclass(flowai_harness.NonDeterminismError, FlowAIError)
    assert issubclass(flowai_harness.SpecMismatchError, FlowAIError)
    assert issubclass(flowai_harness.SpecMismatchError, ValueError)
    assert issubclass(FlowAIValueError, FlowAIError)
    assert issubclass(FlowAIValueError, ValueError)
    assert not issubclass(flowai_harness.StoreLockedError, ValueError)
    assert flowai_harness.FlowAIError is errors.FlowAIError


def test_testing_config_is_not_collected_as_a_test_class() -> None:
    assert flowai_harness.TestingConfig.__test__ is False  # type: ignore[attr-defined]


def test_native_names_in_their_modules() -> None:
    from flowai_harness import runtime, store

    internal = importlib.import_module("flowai_harness._internal")
    for module, public, native_name in [
        (runtime, "Runtime", "PyRuntime"),
        (store, "Store", "Store"),
        (store, "open_store", "open_store"),
    ]:
        if hasattr(internal, native_name):
            assert getattr(module, public) is getattr(internal, native_name)
        else:
            with pytest.raises(AttributeError, match=f"_internal.{native_name}"):
                getattr(module, public)
    with pytest.raises(AttributeError):
        runtime.NotAThing  # noqa: B018
    with pytest.raises(AttributeError):
        store.NotAThing  # noqa: B018
