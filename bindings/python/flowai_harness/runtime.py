"""Runtime spec models, ``define_runtime`` and ``create_runtime`` (API.md §1.9–§1.14, §2)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypedDict

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, ValidationError

from ._approvals import approval_rule_to_wire
from ._augment import augment_agent
from ._model import SPEC_CONFIG, SpecModel
from ._native import native_attr
from .context import RESERVED_CONTEXT_KEYS, DispatchContext, ToolContext
from .errors import FlowAIError
from .plans import PlanSpec
from .references import ReferenceSpec
from .tenant import TenantIdentity
from .tools import ToolSpec

__all__ = [
    "AgentRole",
    "AgentSpec",
    "ApprovalOverrides",
    "ApprovalPolicies",
    "ApprovalPolicyPatch",
    "DataEnvironmentConfig",
    "ModelSpec",
    "Runtime",
    "RuntimeSpec",
    "StorageFactories",
    "StorageFactorySpec",
    "TestingConfig",
    "ToolkitSpec",
    "create_runtime",
    "define_runtime",
    "normalize_data_environment",
]

AgentRole = Literal["coordinator", "planner", "executor", "specialist"]

# The contract names the rule normalizer `_approval_rule_to_wire` (API.md §1.9).
_approval_rule_to_wire = approval_rule_to_wire

# Roles whose agents keep thread memory unless told otherwise.
_STATEFUL_ROLES = frozenset({"coordinator", "planner"})
_ROLES = frozenset({"coordinator", "planner", "executor", "specialist"})


# --------------------------------------------------------------------------- approvals


class ApprovalPolicies(SpecModel):
    """The runtime floor: plans need approval, tools do not, unless said otherwise."""

    plans: dict[str, Any] = Field(default_factory=lambda: {"kind": "always"})
    tools: dict[str, Any] = Field(default_factory=lambda: {"kind": "never"})

    @field_validator("plans", "tools", mode="before")
    @classmethod
    def _normalize_rule(cls, value: Any) -> dict[str, Any]:
        return approval_rule_to_wire(value)


class ApprovalPolicyPatch(SpecModel):
    """An agent's override of the floor; an unset channel inherits it."""

    plans: dict[str, Any] | None = None
    tools: dict[str, Any] | None = None

    @field_validator("plans", "tools", mode="before")
    @classmethod
    def _normalize_rule(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else approval_rule_to_wire(value)

    @model_serializer(mode="wrap")
    def _omit_unset_channels(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if value is not None}


class ApprovalOverrides(SpecModel):
    """Per-agent policy patches and per-agent, per-tool rules (keyed by binding key)."""

    agents: dict[str, ApprovalPolicyPatch] = Field(default_factory=dict)
    tools: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    @field_validator("tools", mode="before")
    @classmethod
    def _normalize_tools(cls, value: Any) -> dict[str, dict[str, dict[str, Any]]]:
        if not isinstance(value, Mapping):
            raise TypeError("approval override tools must be a mapping")
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for agent, entries in value.items():
            if not isinstance(agent, str) or not agent:
                raise ValueError("approval override agent names must be non-empty strings")
            if not isinstance(entries, Mapping):
                raise TypeError("approval override tool entries must be mappings")
            rules: dict[str, dict[str, Any]] = {}
            for tool, rule in entries.items():
                if not isinstance(tool, str) or not tool:
                    raise ValueError("approval override tool names must be non-empty strings")
                rules[tool] = approval_rule_to_wire(rule)
            result[agent] = rules
        return result

    def is_empty(self) -> bool:
        """True when nothing is overridden (the wire then omits ``approvalOverrides``)."""
        return not self.agents and not self.tools


# --------------------------------------------------------------------------- agents


class ModelSpec(SpecModel):
    """The model an agent talks to; ``provider`` overrides routing by model id (API.md §8)."""

    id: str
    provider: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_bare_id(cls, data: Any) -> Any:
        return {"id": data} if isinstance(data, str) else data


class AgentSpec(SpecModel):
    """One agent of the topology. Tools, plan, approvals and cache key stay Python-side."""

    model_config = ConfigDict(**SPEC_CONFIG, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    role: AgentRole
    stateful: bool = False
    model: ModelSpec
    system_prompt: str
    routes: list[str] = Field(default_factory=list)
    toolkits: list[str] = Field(default_factory=list)
    max_turns: int | None = Field(default=None, ge=1)
    plan: PlanSpec | None = Field(default=None, exclude=True)
    tools: tuple[ToolSpec, ...] = Field(default=(), exclude=True)
    approval_policies: ApprovalPolicyPatch | None = Field(default=None, exclude=True)
    tool_approval_policies: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    prompt_cache_key: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_stateful_by_role(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("stateful") is not None:
            return data
        data = dict(data)
        data.pop("stateful", None)
        role = data.get("role")
        if role in _ROLES:
            data["stateful"] = role in _STATEFUL_ROLES
        return data

    @field_validator("tool_approval_policies", mode="before")
    @classmethod
    def _normalize_tool_rules(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return {tool: approval_rule_to_wire(rule) for tool, rule in value.items()}

    @model_validator(mode="after")
    def _coordinator_needs_routes(self) -> AgentSpec:
        if self.role == "coordinator" and not self.routes:
            raise ValueError("coordinator agents require at least one route")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_max_turns(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        for key in ("maxTurns", "max_turns"):
            if key in dumped and dumped[key] is None:
                del dumped[key]
        return dumped


# --------------------------------------------------------------------------- runtime spec


class ToolkitSpec(SpecModel):
    """A built-in toolkit by id; ``config={"tools": [...]}`` narrows it."""

    id: str = Field(min_length=1)
    config: Any | None = None


class StorageFactorySpec(SpecModel):
    """Storage factory metadata, carried on the wire for compatibility only."""

    kind: str
    config: Any | None = None


class StorageFactories(SpecModel):
    """Storage factory metadata; the engine journals everything in its own store instead."""

    kv: StorageFactorySpec | None = None
    plans: StorageFactorySpec | None = None
    memory: StorageFactorySpec | None = None


class RuntimeSpec(SpecModel):
    """The whole topology of one tenant, as exchanged with the Rust runtime."""

    model_config = ConfigDict(**SPEC_CONFIG, arbitrary_types_allowed=True)

    tenant: TenantIdentity
    agents: list[AgentSpec] = Field(default_factory=list)
    references: list[ReferenceSpec] = Field(default_factory=list)
    plans: list[PlanSpec] = Field(default_factory=list)
    toolkits: list[ToolkitSpec] = Field(default_factory=list)
    approval_policies: ApprovalPolicies = Field(default_factory=ApprovalPolicies)
    approval_overrides: ApprovalOverrides = Field(default_factory=ApprovalOverrides)
    storage_factories: StorageFactories = Field(default_factory=StorageFactories)
    providers: dict[str, Any] = Field(default_factory=dict)
    tool_bindings: tuple[ToolSpec, ...] = Field(default=(), exclude=True)

    @model_validator(mode="after")
    def _check_topology(self) -> RuntimeSpec:
        names: set[str] = set()
        for agent in self.agents:
            if agent.name in names:
                raise ValueError(f"duplicate agent name '{agent.name}'")
            names.add(agent.name)
        if sum(1 for agent in self.agents if agent.role == "coordinator") > 1:
            raise ValueError("multiple coordinator agents are not supported")
        for agent in self.agents:
            seen: set[str] = set()
            for route in agent.routes:
                if route == agent.name:
                    raise ValueError(f"agent '{agent.name}' cannot route to itself")
                if route in seen:
                    raise ValueError(f"agent '{agent.name}' declares duplicate route '{route}'")
                seen.add(route)
                if route not in names:
                    raise ValueError(f"agent '{agent.name}' declares unknown route target '{route}'")
        _check_override_agents(self.approval_overrides, names)
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_overrides(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        for key in ("approvalOverrides", "approval_overrides"):
            if dumped.get(key) == {"agents": {}, "tools": {}}:
                del dumped[key]
        return dumped


def _check_override_agents(overrides: ApprovalOverrides, names: set[str]) -> None:
    unknown = sorted((set(overrides.agents) | set(overrides.tools)) - names)
    if unknown:
        raise ValueError(f"approval_overrides references unknown agent(s): {unknown}")


# --------------------------------------------------------------------------- typed dicts


class TestingConfig(TypedDict):
    """``create_runtime(testing=...)``: every agent answers with ``mock_response``."""

    mock_response: str


# Its name starts with "Test": without this, pytest would try to collect it from any
# test module that imports it, and warn.
TestingConfig.__test__ = False  # type: ignore[attr-defined]


class DataEnvironmentConfig(TypedDict, total=False):
    """Kept importable for source compatibility; data environments are not supported yet."""


def normalize_data_environment(data_environment: Any = None, target_database_url: str | None = None) -> None:
    """Data environments (catalog, target databases) are outside this project's scope."""
    if data_environment is not None or target_database_url is not None:
        raise NotImplementedError("data environments are not supported")


# --------------------------------------------------------------------------- define_runtime


def _validation_error(loc: str, message: str, value: Any) -> ValidationError:
    """A ValidationError located at ``loc``, as if a RuntimeSpec field validator had raised."""
    details: list[InitErrorDetails] = [
        {"type": "value_error", "loc": (loc,), "input": value, "ctx": {"error": ValueError(message)}}
    ]
    return ValidationError.from_exception_data(RuntimeSpec.__name__, details)


def _as_list(value: Iterable[Any] | None) -> list[Any]:
    return [] if value is None else list(value)


def define_runtime(
    tenant: Any,
    *,
    agents: Iterable[Any] | None = None,
    references: Iterable[Any] | None = None,
    plans: Iterable[Any] | None = None,
    toolkits: Iterable[Any] | None = None,
    approval_policies: Any = None,
    approval_overrides: Any = None,
    storage_factories: Any = None,
    providers: Mapping[str, Any] | None = None,
    tool_bindings: Iterable[Any] | None = None,
) -> RuntimeSpec:
    """Assemble a :class:`RuntimeSpec` from agents and their Python-side approvals, tools and plans.

    Approval floor and overrides are derived from the agents unless given; toolkits,
    plans and tool bindings the agents use are collected; every agent's system prompt
    gets its "# Tools" table.
    """
    agent_specs = [AgentSpec.model_validate(agent) for agent in _as_list(agents)]

    explicit_floor = approval_policies is not None
    if explicit_floor:
        floor = ApprovalPolicies.model_validate(approval_policies)
    else:
        patches = [
            agent.approval_policies
            for agent in agent_specs
            if agent.role == "coordinator" and agent.approval_policies is not None
        ]
        if len(patches) > 1:
            raise _validation_error(
                "approval_policies",
                "only one coordinator can provide approval_policies; pass approval_policies explicitly",
                None,
            )
        floor = ApprovalPolicies()
        if patches:
            patch = patches[0]
            floor = ApprovalPolicies(
                plans=patch.plans if patch.plans is not None else floor.plans,
                tools=patch.tools if patch.tools is not None else floor.tools,
            )

    agent_names = {agent.name for agent in agent_specs}
    if approval_overrides is not None:
        overrides = ApprovalOverrides.model_validate(approval_overrides)
    else:
        overrides = ApprovalOverrides(
            agents={
                agent.name: agent.approval_policies
                for agent in agent_specs
                if agent.approval_policies is not None and (agent.role != "coordinator" or explicit_floor)
            },
            tools={
                agent.name: rules
                for agent in agent_specs
                if (rules := {tool.binding_key: tool.approval for tool in agent.tools} | agent.tool_approval_policies)
            },
        )
    try:
        _check_override_agents(overrides, agent_names)
    except ValueError as exc:
        raise _validation_error("approval_overrides", str(exc), overrides.model_dump(by_alias=True)) from None

    toolkit_specs = [ToolkitSpec.model_validate(toolkit) for toolkit in _as_list(toolkits)]
    toolkit_ids = {toolkit.id for toolkit in toolkit_specs}
    for agent in agent_specs:
        for toolkit_id in agent.toolkits:
            if toolkit_id not in toolkit_ids:
                toolkit_ids.add(toolkit_id)
                toolkit_specs.append(ToolkitSpec(id=toolkit_id))

    agent_specs = [augment_agent(agent, toolkit_specs) for agent in agent_specs]

    plan_specs = [PlanSpec.model_validate(plan) for plan in _as_list(plans)]
    plan_names = {plan.name for plan in plan_specs}
    for agent in agent_specs:
        if agent.plan is not None and agent.plan.name not in plan_names:
            plan_names.add(agent.plan.name)
            plan_specs.append(agent.plan)

    bindings = [ToolSpec.model_validate(tool) for tool in _as_list(tool_bindings)]
    binding_keys = {tool.binding_key for tool in bindings}
    for agent in agent_specs:
        for tool in agent.tools:
            if tool.binding_key not in binding_keys:
                binding_keys.add(tool.binding_key)
                bindings.append(tool)

    # Built last so that the approval errors above win over graph errors (API.md §1.13 step 8).
    return RuntimeSpec(
        tenant=tenant,
        agents=agent_specs,
        references=_as_list(references),
        plans=plan_specs,
        toolkits=toolkit_specs,
        approval_policies=floor,
        approval_overrides=overrides,
        storage_factories=storage_factories if storage_factories is not None else StorageFactories(),
        providers=dict(providers) if providers is not None else {},
        tool_bindings=tuple(bindings),
    )


# --------------------------------------------------------------------------- create_runtime

HostTool = tuple[str, str, str, str, str, str, Callable[..., Any]]
_TESTING_KEYS = ["mock_response"]


def create_runtime(
    spec: RuntimeSpec | Mapping[str, Any],
    *,
    tool_bindings: Iterable[ToolSpec] | None = None,
    services: Mapping[str, Any] | None = None,
    approval_predicates: Mapping[str, Callable[[Any, dict[str, Any]], Any]] | None = None,
    action_dispatcher: Callable[..., Any] | None = None,
    event_hooks: Iterable[Callable[[dict[str, Any]], Any]] | None = None,
    data_environment: Any = None,
    target_database_url: str | None = None,
    testing: TestingConfig | Mapping[str, Any] | None = None,
    interpreter: Literal["noop", "scripted", "anthropic", "openai-compatible", "live"] = "noop",
    store: Any = None,
    durability: str = "immediate",
) -> Any:
    """Validate everything Python-side, then build the native runtime (a ``PyRuntime``).

    The native constructor receives, all as keyword arguments::

        PyRuntime._create(
            spec_json: str,                  # augmented RuntimeSpec, wire JSON (by alias)
            host_tools: list[tuple[str, str, str, str, str, str, Callable]],
                # one per (agent, bound tool), in agent order then tool order:
                # (agent, binding_key, name, description, input_schema_json, approval_json, handler)
            predicates: dict[str, Callable[[Any, dict], Any]],   # dynamic approval id -> predicate
            action_dispatcher: Callable[[list[dict], DispatchContext], Any] | None,
            event_hooks: list[Callable[[dict], Any]],
            services: dict[str, Any],
            tool_context_factory: Callable[..., ToolContext],
                # called as factory(runtime=, tool_use_id=, run_id=, idempotency_key=, attempt=)
            dispatch_context_factory: Callable[..., DispatchContext],
                # called as factory(resolved_refs, run_id=, plan_id=, idempotency_key=, attempt=)
            interpreter: str,                # as given; validated natively (API.md §2.3)
            mock_response: str | None,       # testing["mock_response"]; interpreter is "noop" then
            store: None | str | os.PathLike | Store,
            durability: str,                 # validated natively (API.md §9.1)
        ) -> PyRuntime
    """
    # 1. spec
    runtime_spec = spec if isinstance(spec, RuntimeSpec) else RuntimeSpec.model_validate(spec)
    # 2. prompts (idempotent for define_runtime output: rows already present win)
    runtime_spec = runtime_spec.model_copy(
        update={"agents": [augment_agent(agent, runtime_spec.toolkits) for agent in runtime_spec.agents]}
    )
    # 3. data environments
    normalize_data_environment(data_environment, target_database_url)
    # 4. services
    service_map = _normalize_services(services)
    # 5. tools: the explicit bindings first, so they supply handlers for agent tools with the same key
    registry: dict[str, ToolSpec] = {}
    for tool in _as_list(tool_bindings):
        registry.setdefault(tool.binding_key, tool)
    for agent in runtime_spec.agents:
        for tool in agent.tools:
            registry.setdefault(tool.binding_key, tool)
    # 6. dynamic approvals
    predicates = _normalize_predicates(approval_predicates)
    for tool in registry.values():
        if tool.approval.get("kind") != "dynamic":
            continue
        predicate_id = tool.approval["value"]
        if tool.approval_handler is not None:
            predicates[predicate_id] = tool.approval_handler
        elif predicate_id not in predicates:
            raise ValueError(f"dynamic approval predicate '{predicate_id}' is not registered")
    # 7. handlers
    host_tools: list[HostTool] = []
    for agent in runtime_spec.agents:
        for tool in agent.tools:
            key = tool.binding_key
            handler = registry[key].handler or tool.handler
            if handler is None:
                raise ValueError(f"tool binding '{key}' for agent '{agent.name}' has no Python handler")
            host_tools.append(
                (
                    agent.name,
                    key,
                    tool.name,
                    tool.description,
                    json.dumps(tool.input_schema),
                    json.dumps(tool.approval),
                    handler,
                )
            )
    # 8. interpreter
    mock_response = _mock_response(testing, interpreter)

    py_runtime = native_attr("PyRuntime")
    if py_runtime is None:
        raise FlowAIError(
            "create_runtime needs the native runtime (flowai_harness._internal.PyRuntime), "
            "which this build of flowai-harness does not provide"
        )
    return py_runtime._create(
        spec_json=runtime_spec.model_dump_json(by_alias=True),
        host_tools=host_tools,
        predicates=predicates,
        action_dispatcher=action_dispatcher,
        event_hooks=_as_list(event_hooks),
        services=service_map,
        tool_context_factory=ToolContext.factory(service_map),
        dispatch_context_factory=DispatchContext,
        interpreter=interpreter,
        mock_response=mock_response,
        store=store,
        durability=durability,
    )


def _normalize_services(services: Mapping[str, Any] | None) -> dict[str, Any]:
    if services is None:
        return {}
    if not isinstance(services, Mapping):
        raise TypeError("services must be a mapping from service name to Python object")
    result: dict[str, Any] = {}
    for key, value in services.items():
        if not isinstance(key, str) or not key:
            raise TypeError("services keys must be non-empty strings")
        if key in RESERVED_CONTEXT_KEYS:
            raise ValueError(f"services key '{key}' is reserved by the runtime tool context")
        result[key] = value
    return result


def _normalize_predicates(
    approval_predicates: Mapping[str, Callable[..., Any]] | None,
) -> dict[str, Callable[..., Any]]:
    if approval_predicates is None:
        return {}
    if not isinstance(approval_predicates, Mapping):
        raise TypeError("approval_predicates must be a mapping from predicate id to callable")
    result: dict[str, Callable[..., Any]] = {}
    for key, predicate in approval_predicates.items():
        if not isinstance(key, str) or not key:
            raise TypeError("approval_predicates keys must be non-empty strings")
        if not callable(predicate):
            raise TypeError(f"approval predicate '{key}' must be callable")
        result[key] = predicate
    return result


def _mock_response(testing: Mapping[str, Any] | None, interpreter: str) -> str | None:
    if testing is None:
        return None
    if interpreter != "noop":
        raise ValueError("create_runtime accepts either testing or a non-default interpreter, not both")
    unknown = sorted(key for key in testing if key not in _TESTING_KEYS)
    if unknown:
        raise ValueError(f"unsupported testing config keys: {unknown}; expected {_TESTING_KEYS}")
    if "mock_response" not in testing:
        raise ValueError("testing config requires 'mock_response'")
    mock = testing["mock_response"]
    if not isinstance(mock, str):
        raise TypeError("testing['mock_response'] must be a string")
    return mock


def __getattr__(name: str) -> Any:
    # `Runtime` is the native class itself (API.md §2.4), resolved lazily so that the
    # facade imports in a build that does not provide it yet.
    if name == "Runtime":
        runtime_class = native_attr("PyRuntime")
        if runtime_class is not None:
            return runtime_class
        raise AttributeError(
            "flowai_harness.Runtime is the native class flowai_harness._internal.PyRuntime, "
            "which this build of flowai-harness does not provide"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
