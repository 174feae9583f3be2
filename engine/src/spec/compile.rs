//! `compile_spec`: validates a RuntimeSpec and builds everything the driver needs,
//! failing with the first error in the order of API.md §2.3.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::{AgentPolicy, check_predicates, compile_agent_policy};
use crate::spec::error::{AgentSpecError, InterpreterError, SpecError};
use crate::spec::registry::{PlanRegistry, ReferenceRegistry};
use crate::spec::routing::{InterpreterChoice, select_provider_key};
use crate::spec::wire::{AgentRole, RuntimeSpec};
use crate::toolkits::{HostToolDecl, ToolEntry, compose_agent_tools};

/// A validated spec, compiled.
#[derive(Clone, Debug)]
pub struct CompiledSpec {
    pub spec: RuntimeSpec,
    /// The tenant resource id.
    pub tenant: String,
    /// In spec order.
    pub agents: Vec<CompiledAgent>,
    pub references: ReferenceRegistry,
    pub plans: PlanRegistry,
}

impl CompiledSpec {
    pub fn agent(&self, name: &str) -> Option<&CompiledAgent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The entry agent of `query` (at most one exists).
    pub fn coordinator(&self) -> Option<&CompiledAgent> {
        self.agents
            .iter()
            .find(|a| a.role == AgentRole::Coordinator)
    }

    /// Checks that an interpreter exists for every agent's provider, for the live
    /// choices whose transports the caller knows (API.md §8, second clause).
    pub fn check_providers_registered(
        &self,
        is_registered: &dyn Fn(&str) -> bool,
    ) -> Result<(), SpecError> {
        for agent in &self.agents {
            if !is_registered(&agent.provider_key) {
                return Err(SpecError::ProviderNotRegistered {
                    agent: agent.name.clone(),
                    provider: agent.provider_key.clone(),
                    model: agent.model_id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// One agent, compiled.
#[derive(Clone, Debug)]
pub struct CompiledAgent {
    pub name: String,
    pub role: AgentRole,
    pub stateful: bool,
    pub model_id: String,
    /// The routed provider key (API.md §8); always declared in `spec.providers`.
    pub provider_key: String,
    pub system_prompt: String,
    pub routes: Vec<String>,
    pub max_turns: Option<u32>,
    /// Role defaults → toolkits → host tools; names are unique.
    pub tools: Vec<ToolEntry>,
    pub policy: AgentPolicy,
}

impl CompiledAgent {
    pub fn tool(&self, name: &str) -> Option<&ToolEntry> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// The graph invariants, in the order the facade checks them, so that both sides
/// report the same first failure.
fn validate_graph(spec: &RuntimeSpec, host_tools: &[HostToolDecl]) -> Result<(), AgentSpecError> {
    if spec.tenant.resource_id.is_empty() || spec.tenant.version.is_empty() {
        return Err(AgentSpecError::EmptyTenant);
    }
    // Per-agent rules come first: the facade checks them when each agent is built.
    for agent in &spec.agents {
        if agent.name.is_empty() {
            return Err(AgentSpecError::EmptyName);
        }
        if agent.role == AgentRole::Coordinator && agent.routes.is_empty() {
            return Err(AgentSpecError::CoordinatorWithoutRoutes(agent.name.clone()));
        }
    }
    let mut names = BTreeSet::new();
    for agent in &spec.agents {
        if !names.insert(agent.name.as_str()) {
            return Err(AgentSpecError::DuplicateName(agent.name.clone()));
        }
    }
    if spec
        .agents
        .iter()
        .filter(|a| a.role == AgentRole::Coordinator)
        .count()
        > 1
    {
        return Err(AgentSpecError::MultipleCoordinators);
    }
    for agent in &spec.agents {
        let mut seen = BTreeSet::new();
        for route in &agent.routes {
            if *route == agent.name {
                return Err(AgentSpecError::SelfRoute(agent.name.clone()));
            }
            if !seen.insert(route.as_str()) {
                return Err(AgentSpecError::DuplicateRoute {
                    agent: agent.name.clone(),
                    route: route.clone(),
                });
            }
            if !names.contains(route.as_str()) {
                return Err(AgentSpecError::UnknownRouteTarget {
                    agent: agent.name.clone(),
                    route: route.clone(),
                });
            }
        }
    }
    let unknown = |keys: Vec<&String>| -> Vec<String> {
        // BTreeMap keys arrive sorted.
        keys.into_iter()
            .filter(|k| !names.contains(k.as_str()))
            .cloned()
            .collect()
    };
    let bad = unknown(spec.approval_overrides.agents.keys().collect());
    if !bad.is_empty() {
        return Err(AgentSpecError::UnknownOverrideAgents(bad));
    }
    let bad = unknown(spec.approval_overrides.tools.keys().collect());
    if !bad.is_empty() {
        return Err(AgentSpecError::UnknownOverrideToolAgents(bad));
    }
    if let Some(decl) = host_tools
        .iter()
        .find(|d| !names.contains(d.agent.as_str()))
    {
        return Err(AgentSpecError::HostToolUnknownAgent {
            agent: decl.agent.clone(),
            binding_key: decl.binding_key.clone(),
        });
    }
    Ok(())
}

/// Validates `spec` and compiles it for a runtime (API.md §1.13, §2.3, §7, §8).
///
/// Checks, first failure wins: graph invariants; reference registry; plan registry;
/// toolkit composition per agent; provider routing (every routed key declared, and the
/// provider a single-provider interpreter needs); approval predicates. Tenant checks
/// against a store and API key resolution are the caller's.
///
/// ```
/// use std::collections::BTreeSet;
/// use flowai_runtime::{ApprovalRule, InterpreterChoice, RuntimeSpec, compile_spec};
///
/// let spec = RuntimeSpec::from_json(r#"{
///     "tenant": {"resourceId": "acme", "version": "v1"},
///     "agents": [
///         {"name": "lead", "role": "coordinator", "model": "claude-sonnet-4-6",
///          "systemPrompt": "You coordinate.", "routes": ["planner"]},
///         {"name": "planner", "role": "planner", "model": "claude-sonnet-4-6",
///          "systemPrompt": "You plan."}
///     ],
///     "providers": {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}}
/// }"#)?;
/// let compiled = compile_spec(spec, &[], &BTreeSet::new(), &InterpreterChoice::Noop)?;
/// let planner = compiled.agent("planner").expect("declared above");
/// let tools: Vec<&str> = planner.tools.iter().map(|t| t.name.as_str()).collect();
/// assert_eq!(tools, ["storePlan", "getPlan"]);
/// assert_eq!(planner.policy.plan_rule(), &ApprovalRule::Always);
/// # Ok::<(), flowai_runtime::SpecError>(())
/// ```
pub fn compile_spec(
    spec: RuntimeSpec,
    host_tools: &[HostToolDecl],
    predicates: &BTreeSet<String>,
    interpreter: &InterpreterChoice,
) -> Result<CompiledSpec, SpecError> {
    validate_graph(&spec, host_tools)?;
    let references = ReferenceRegistry::build(&spec.references)?;
    let plans = PlanRegistry::build(&spec.plans)?;

    let mut tools: BTreeMap<&str, Vec<ToolEntry>> = BTreeMap::new();
    for agent in &spec.agents {
        let composed =
            compose_agent_tools(agent, &spec.toolkits, host_tools).map_err(|source| {
                SpecError::ToolkitComposition {
                    agent: agent.name.clone(),
                    source,
                }
            })?;
        tools.insert(agent.name.as_str(), composed);
    }

    for agent in &spec.agents {
        let provider = select_provider_key(&agent.model);
        if !spec.providers.contains_key(&provider) {
            return Err(SpecError::ProviderNotDeclared {
                agent: agent.name.clone(),
                provider,
                model: agent.model.id.clone(),
            });
        }
    }
    if let Some(forced) = interpreter.forced_provider()
        && !spec.providers.contains_key(forced)
    {
        return Err(InterpreterError::ProviderMissing(forced.to_owned()).into());
    }

    check_predicates(&spec, host_tools, predicates)?;

    let mut agents = Vec::with_capacity(spec.agents.len());
    for agent in &spec.agents {
        agents.push(CompiledAgent {
            name: agent.name.clone(),
            role: agent.role,
            stateful: agent.stateful,
            model_id: agent.model.id.clone(),
            provider_key: select_provider_key(&agent.model),
            system_prompt: agent.system_prompt.clone(),
            routes: agent.routes.clone(),
            max_turns: agent.max_turns,
            tools: tools.remove(agent.name.as_str()).unwrap_or_default(),
            policy: compile_agent_policy(&spec, &agent.name, host_tools),
        });
    }
    Ok(CompiledSpec {
        tenant: spec.tenant.resource_id.clone(),
        spec,
        agents,
        references,
        plans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_spec_is_shareable_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<CompiledSpec>();
        shareable::<SpecError>();
    }
}
