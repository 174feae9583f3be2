from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowai_harness import ApprovalOverrides, ApprovalPolicies, ApprovalPolicyPatch


def test_policies_defaults_and_equality() -> None:
    assert ApprovalPolicies().model_dump(by_alias=True, mode="json") == {
        "plans": {"kind": "always"},
        "tools": {"kind": "never"},
    }
    assert ApprovalPolicies(plans="always", tools="never") == ApprovalPolicies()  # type: ignore[arg-type]
    assert ApprovalPolicies(tools={"kind": "dynamic", "value": "p"}).tools == {"kind": "dynamic", "value": "p"}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (None, "approval rule must not be null"),
        ("sometimes", "approval rule must be 'never', 'always', or {'kind': 'dynamic'}"),
        ("default", "approval rule must be 'never', 'always', or {'kind': 'dynamic'}"),
        ({"kind": "other"}, "approval rule must be 'never', 'always', or {'kind': 'dynamic'}"),
        (7, "approval rule must be 'never', 'always', or {'kind': 'dynamic'}"),
        ({"kind": "dynamic"}, "dynamic approval rule requires a non-empty value"),
        ({"kind": "dynamic", "value": ""}, "dynamic approval rule requires a non-empty value"),
    ],
)
def test_rule_errors(rule: Any, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ApprovalPolicies(plans=rule)
    assert message in str(info.value)


def test_patch_omits_unset_channels() -> None:
    assert ApprovalPolicyPatch(tools="always").model_dump(by_alias=True, mode="json") == {"tools": {"kind": "always"}}  # type: ignore[arg-type]
    assert ApprovalPolicyPatch().model_dump(by_alias=True, mode="json") == {}
    patch = ApprovalPolicyPatch(plans={"kind": "never"}, tools="always")  # type: ignore[arg-type]
    assert patch.model_dump(by_alias=True, mode="json") == {"plans": {"kind": "never"}, "tools": {"kind": "always"}}
    with pytest.raises(ValidationError):
        ApprovalPolicyPatch(plans="default")  # type: ignore[arg-type]


def test_overrides_dump_and_normalization() -> None:
    overrides = ApprovalOverrides(
        agents={"reader": ApprovalPolicyPatch(tools="always")},  # type: ignore[arg-type]
        tools={"reader": {"search": "never", "refund": {"kind": "dynamic", "value": "r"}}},  # type: ignore[dict-item]
    )
    assert overrides.model_dump(by_alias=True, mode="json") == {
        "agents": {"reader": {"tools": {"kind": "always"}}},
        "tools": {"reader": {"search": {"kind": "never"}, "refund": {"kind": "dynamic", "value": "r"}}},
    }
    assert ApprovalOverrides().model_dump(by_alias=True, mode="json") == {"agents": {}, "tools": {}}
    validated = ApprovalOverrides.model_validate({"agents": {"a": {"plans": "never"}}})
    assert validated.agents["a"] == ApprovalPolicyPatch(plans="never")  # type: ignore[arg-type]


def test_overrides_tools_must_be_mapping() -> None:
    with pytest.raises(TypeError, match="approval override tools must be a mapping"):
        ApprovalOverrides(tools=["a"])  # type: ignore[arg-type]


def test_overrides_tool_entries_must_be_mappings() -> None:
    with pytest.raises(TypeError, match="approval override tool entries must be mappings"):
        ApprovalOverrides(tools={"a": "always"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ({"": {"t": "never"}}, "approval override agent names must be non-empty strings"),
        ({3: {"t": "never"}}, "approval override agent names must be non-empty strings"),
        ({"a": {"": "never"}}, "approval override tool names must be non-empty strings"),
        ({"a": {"t": "sometimes"}}, "approval rule must be"),
    ],
)
def test_overrides_value_errors(tools: Any, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ApprovalOverrides(tools=tools)
    assert message in str(info.value)


def test_rule_normalizer_under_its_contract_name() -> None:
    from flowai_harness.runtime import _approval_rule_to_wire

    assert _approval_rule_to_wire("always") == {"kind": "always"}
    assert _approval_rule_to_wire({"kind": "never", "x": 1}) == {"kind": "never"}
    assert _approval_rule_to_wire({"kind": "dynamic", "value": "p"}) == {"kind": "dynamic", "value": "p"}
    with pytest.raises(ValueError, match="approval rule must not be null"):
        _approval_rule_to_wire(None)
