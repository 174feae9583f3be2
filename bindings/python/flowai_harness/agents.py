"""Role helpers that build :class:`AgentSpec` objects (API.md §1.11)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._approvals import approval_rule_to_wire
from .plans import PlanSpec
from .prompts import LayeredPrompt
from .runtime import AgentRole, AgentSpec, ApprovalPolicyPatch, ModelSpec
from .tools import ToolSpec

__all__ = ["define_coordinator", "define_executor", "define_planner", "define_specialist"]

# In an agent's `approval=` mapping this channel value means "inherit the floor".
_INHERIT = "default"


def define_coordinator(
    name: str,
    *,
    model: str | ModelSpec | Mapping[str, Any],
    prompt: str | LayeredPrompt,
    routes: Iterable[str] = (),
    tools: Iterable[ToolSpec] = (),
    stateful: bool | None = None,
    max_turns: int | None = None,
    approval: ApprovalPolicyPatch | Mapping[str, Any] | None = None,
    tool_approvals: Mapping[str, Any] | None = None,
    toolkits: Iterable[str] | None = None,
) -> AgentSpec:
    """The entry agent: delegates to the agents in ``routes`` through ``call_agent``."""
    route_list = list(routes)
    if not route_list:
        raise ValueError("define_coordinator requires at least one route")
    return _agent(
        name, "coordinator", model, prompt, tools, stateful, max_turns, approval, tool_approvals,
        _dedupe(toolkits), routes=route_list,
    )


def define_planner(
    name: str,
    *,
    model: str | ModelSpec | Mapping[str, Any],
    prompt: str | LayeredPrompt,
    plan: PlanSpec | Mapping[str, Any],
    tools: Iterable[ToolSpec] = (),
    stateful: bool | None = None,
    max_turns: int | None = None,
    approval: ApprovalPolicyPatch | Mapping[str, Any] | None = None,
    tool_approvals: Mapping[str, Any] | None = None,
    toolkits: Iterable[str] | None = None,
) -> AgentSpec:
    """An agent that stores typed plans of ``plan``'s kind."""
    return _agent(
        name, "planner", model, prompt, tools, stateful, max_turns, approval, tool_approvals,
        _dedupe(toolkits), plan=plan,
    )


def define_executor(
    name: str,
    *,
    model: str | ModelSpec | Mapping[str, Any],
    prompt: str | LayeredPrompt,
    plan: PlanSpec | Mapping[str, Any],
    tools: Iterable[ToolSpec] = (),
    stateful: bool | None = None,
    max_turns: int | None = None,
    approval: ApprovalPolicyPatch | Mapping[str, Any] | None = None,
    tool_approvals: Mapping[str, Any] | None = None,
    toolkits: Iterable[str] | None = None,
) -> AgentSpec:
    """An agent that executes approved plans of ``plan``'s kind."""
    return _agent(
        name, "executor", model, prompt, tools, stateful, max_turns, approval, tool_approvals,
        _dedupe(toolkits), plan=plan,
    )


def define_specialist(
    name: str,
    *,
    model: str | ModelSpec | Mapping[str, Any],
    prompt: str | LayeredPrompt,
    tools: Iterable[ToolSpec] = (),
    stateful: bool | None = None,
    max_turns: int | None = None,
    approval: ApprovalPolicyPatch | Mapping[str, Any] | None = None,
    tool_approvals: Mapping[str, Any] | None = None,
    toolkits: Iterable[str] | None = None,
) -> AgentSpec:
    """A focused agent, reachable by routes or directly through ``run_specialist``."""
    return _agent(
        name, "specialist", model, prompt, tools, stateful, max_turns, approval, tool_approvals,
        [] if toolkits is None else list(toolkits),
    )


def _agent(
    name: str,
    role: AgentRole,
    model: Any,
    prompt: Any,
    tools: Iterable[ToolSpec],
    stateful: bool | None,
    max_turns: int | None,
    approval: Any,
    tool_approvals: Mapping[str, Any] | None,
    toolkits: list[str],
    *,
    routes: list[str] | None = None,
    plan: Any = None,
) -> AgentSpec:
    if isinstance(prompt, LayeredPrompt):
        system_prompt, cache_key = prompt.text, prompt.cache_key
    elif isinstance(prompt, str):
        system_prompt, cache_key = prompt, None
    else:
        raise TypeError("prompt must be a string or LayeredPrompt")
    return AgentSpec(
        name=name,
        role=role,
        stateful=stateful,  # type: ignore[arg-type]  # None: the model fills the role default
        model=model,
        system_prompt=system_prompt,
        routes=routes or [],
        toolkits=toolkits,
        max_turns=max_turns,
        plan=None if plan is None else PlanSpec.model_validate(plan),
        tools=tuple(tools),
        approval_policies=_approval_patch(approval),
        tool_approval_policies=_tool_approvals(tool_approvals),
        prompt_cache_key=cache_key,
    )


def _dedupe(toolkits: Iterable[str] | None) -> list[str]:
    return [] if toolkits is None else list(dict.fromkeys(toolkits))


def _approval_patch(approval: Any) -> ApprovalPolicyPatch | None:
    if approval is None or isinstance(approval, ApprovalPolicyPatch):
        return approval
    if isinstance(approval, Mapping):
        return ApprovalPolicyPatch.model_validate(
            {channel: rule for channel, rule in approval.items() if rule != _INHERIT}
        )
    return ApprovalPolicyPatch.model_validate(approval)


def _tool_approvals(tool_approvals: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    if tool_approvals is None:
        return {}
    rules: dict[str, dict[str, Any]] = {}
    for tool, rule in tool_approvals.items():
        if not isinstance(tool, str) or not tool:
            raise ValueError("tool_approvals keys must be non-empty tool names")
        rules[tool] = approval_rule_to_wire(rule)
    return rules
