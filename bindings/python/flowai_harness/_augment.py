"""Prompt augmentation at assembly: the "# Tools" rows of each agent (API.md §1.14).

The built-in tool catalog (names, descriptions, schemas) lives in Rust; rows for
toolkits come from the native ``describe_toolkit_tools``. Python only knows which
toolkits a role gets by default and how the plans toolkit is scoped by role, since
both shape what is asked of the native side and the Python-side error of §1.11.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._native import require_native
from .prompts import augment_prompt_tools

if TYPE_CHECKING:
    from .runtime import AgentSpec, ToolkitSpec

# Toolkits whose tools a role gets without listing them (API.md §1.11 role defaults).
_ROLE_DEFAULT_TOOLKITS: dict[str, tuple[str, ...]] = {
    "coordinator": ("agents",),
    "planner": ("plans",),
    "executor": ("plans", "references"),
    "specialist": (),
}
_PLAN_TOOLS = ("storePlan", "getPlan", "executePlan")
_PLAN_TOOLS_BY_ROLE: dict[str, list[str]] = {
    "planner": ["storePlan", "getPlan"],
    "executor": ["getPlan", "executePlan"],
    "coordinator": ["getPlan"],
    "specialist": ["getPlan"],
}
# Toolkit rows are enforced by the runtime's policy, not by a per-tool rule of the host.
_TOOLKIT_APPROVAL_LABEL = "runtime"


def augment_agent(agent: AgentSpec, toolkits: Iterable[ToolkitSpec]) -> AgentSpec:
    """The agent with its tool rows merged into its system prompt (unchanged if it has none)."""
    declared = {toolkit.id: toolkit for toolkit in toolkits}
    agent_json = agent.model_dump_json(by_alias=True)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(name: str, description: str, approval: str) -> None:
        if name not in seen:
            seen.add(name)
            rows.append({"name": name, "description": description, "approval": approval})

    for toolkit_id in _role_default_toolkits(agent):
        for row in _describe(toolkit_id, None, agent, agent_json):
            add(row["name"], row["description"], _TOOLKIT_APPROVAL_LABEL)
    for toolkit_id in agent.toolkits:
        toolkit = declared.get(toolkit_id)
        config = toolkit.config if toolkit is not None else None
        for row in _describe(toolkit_id, config, agent, agent_json):
            add(row["name"], row["description"], _TOOLKIT_APPROVAL_LABEL)
    for tool in agent.tools:
        add(tool.name, tool.description, str(tool.approval.get("kind", "")))

    if not rows:
        return agent
    prompt = augment_prompt_tools(agent.system_prompt, rows)
    return agent.model_copy(update={"system_prompt": prompt.text, "prompt_cache_key": prompt.cache_key})


def _role_default_toolkits(agent: AgentSpec) -> tuple[str, ...]:
    if agent.role == "coordinator" and not agent.routes:
        return ()
    return _ROLE_DEFAULT_TOOLKITS[agent.role]


def _describe(toolkit_id: str, config: Any, agent: AgentSpec, agent_json: str) -> list[dict[str, str]]:
    if toolkit_id == "plans":
        config = _scoped_plans_config(config, agent.role)
    describe = require_native("describe_toolkit_tools")
    described = json.loads(describe(json.dumps({"id": toolkit_id, "config": config}), agent_json))
    return [
        {"name": str(row["name"]), "description": str(row.get("description", ""))}
        for row in described
    ]


def _scoped_plans_config(config: Any, role: str) -> Any:
    allowed = _PLAN_TOOLS_BY_ROLE[role]
    if config is None:
        return {"tools": list(allowed)}
    requested = config.get("tools") if isinstance(config, Mapping) else None
    if isinstance(requested, list):
        outside = [name for name in requested if name in _PLAN_TOOLS and name not in allowed]
        if outside:
            raise ValueError(
                f"toolkit 'plans' tools are scoped by agent role; {role} agents cannot use {outside}"
            )
    # Malformed configs and unknown names are reported by the native toolkit composer.
    return config
