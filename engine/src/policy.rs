//! The approval policy compiler (API.md §7): per agent, channel defaults from the
//! agent's patch or the runtime floor, then per-tool rules from host tool bindings,
//! then `approvalOverrides.tools[agent]`, most specific winning in both directions.

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::{ApprovalRule, PolicyError, RuntimeSpec};
use crate::toolkits::HostToolDecl;

/// The effective approval policy of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPolicy {
    tool_default: ApprovalRule,
    plan_default: ApprovalRule,
    tools: BTreeMap<String, ApprovalRule>,
}

impl AgentPolicy {
    /// The rule gating a call of `tool_name` (built-in or host tool).
    pub fn tool_rule(&self, tool_name: &str) -> &ApprovalRule {
        self.tools.get(tool_name).unwrap_or(&self.tool_default)
    }

    /// The rule gating the execution of a draft plan.
    pub fn plan_rule(&self) -> &ApprovalRule {
        &self.plan_default
    }

    /// The agent's tool channel default (before per-tool rules).
    pub fn tool_default(&self) -> &ApprovalRule {
        &self.tool_default
    }

    /// The per-tool rules, keyed as declared.
    pub fn tool_rules(&self) -> &BTreeMap<String, ApprovalRule> {
        &self.tools
    }
}

fn check(rule: &ApprovalRule, predicates: &BTreeSet<String>) -> Result<(), PolicyError> {
    match rule.predicate_id() {
        Some(id) if !predicates.contains(id) => {
            Err(PolicyError::UnregisteredPredicate(id.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Fails on the first dynamic rule, anywhere, whose predicate is not registered:
/// the floor, agent patches, tool overrides, then host tool rules.
pub(crate) fn check_predicates(
    spec: &RuntimeSpec,
    host_tools: &[HostToolDecl],
    predicates: &BTreeSet<String>,
) -> Result<(), PolicyError> {
    check(&spec.approval_policies.plans, predicates)?;
    check(&spec.approval_policies.tools, predicates)?;
    for patch in spec.approval_overrides.agents.values() {
        for rule in patch.plans.iter().chain(patch.tools.iter()) {
            check(rule, predicates)?;
        }
    }
    for rules in spec.approval_overrides.tools.values() {
        for rule in rules.values() {
            check(rule, predicates)?;
        }
    }
    for decl in host_tools {
        check(&decl.approval, predicates)?;
    }
    Ok(())
}

/// Compiles the policy of agent `agent`; assumes [`check_predicates`] passed.
pub(crate) fn compile_agent_policy(
    spec: &RuntimeSpec,
    agent: &str,
    host_tools: &[HostToolDecl],
) -> AgentPolicy {
    let patch = spec.approval_overrides.agents.get(agent);
    let floor = &spec.approval_policies;
    let tool_default = patch
        .and_then(|p| p.tools.clone())
        .unwrap_or_else(|| floor.tools.clone());
    let plan_default = patch
        .and_then(|p| p.plans.clone())
        .unwrap_or_else(|| floor.plans.clone());

    let mut tools = BTreeMap::new();
    for decl in host_tools.iter().filter(|d| d.agent == agent) {
        tools.insert(decl.name.clone(), decl.approval.clone());
    }
    // Overrides are keyed by the facade's binding key and applied as given, after the
    // tools' own rules, so an agent's tool_approvals win over define_tool(approval=).
    if let Some(overrides) = spec.approval_overrides.tools.get(agent) {
        for (key, rule) in overrides {
            tools.insert(key.clone(), rule.clone());
        }
    }
    AgentPolicy {
        tool_default,
        plan_default,
        tools,
    }
}
