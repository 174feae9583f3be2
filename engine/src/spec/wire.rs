//! The camelCase wire shape of a RuntimeSpec (API.md §1), exactly as the Python facade
//! dumps it. Deserializing and serializing back gives the same document.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The tenant a runtime serves; its `resourceId` scopes all runtime state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantIdentity {
    pub resource_id: String,
    pub version: String,
}

/// A model id and an optional explicit provider key. A bare string on the wire is
/// shorthand for `{"id": <string>}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    pub id: String,
    pub provider: Option<String>,
}

impl ModelSpec {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            provider: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModelSpecObject {
    id: String,
    #[serde(default)]
    provider: Option<String>,
}

impl<'de> Deserialize<'de> for ModelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A hand-written visitor rather than an untagged enum, so that a malformed
        // object reports its real problem instead of "did not match any variant".
        struct ModelVisitor;
        impl<'de> Visitor<'de> for ModelVisitor {
            type Value = ModelSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model id string or an object {\"id\", \"provider\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ModelSpec, E> {
                Ok(ModelSpec::new(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ModelSpec, A::Error> {
                let obj = ModelSpecObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ModelSpec {
                    id: obj.id,
                    provider: obj.provider,
                })
            }
        }
        deserializer.deserialize_any(ModelVisitor)
    }
}

/// The four agent roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentRole {
    Coordinator,
    Planner,
    Executor,
    Specialist,
}

impl AgentRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRole::Coordinator => "coordinator",
            AgentRole::Planner => "planner",
            AgentRole::Executor => "executor",
            AgentRole::Specialist => "specialist",
        }
    }

    /// Whether an agent of this role keeps thread memory when `stateful` is not given.
    pub fn default_stateful(self) -> bool {
        matches!(self, AgentRole::Coordinator | AgentRole::Planner)
    }

    /// A suggested turn budget; informational only, never applied automatically
    /// (API.md §1.11).
    pub fn suggested_max_turns(self) -> u32 {
        match self {
            AgentRole::Coordinator | AgentRole::Specialist => 12,
            AgentRole::Planner => 8,
            AgentRole::Executor => 4,
        }
    }
}

impl fmt::Display for AgentRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent as it appears on the wire. Python-only fields (plan, tools, prompt cache
/// key, approval patches) are excluded from the dump and so never reach Rust here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "AgentSpecWire")]
pub struct AgentSpec {
    pub name: String,
    pub role: AgentRole,
    pub stateful: bool,
    pub model: ModelSpec,
    pub system_prompt: String,
    pub routes: Vec<String>,
    pub toolkits: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentSpecWire {
    name: String,
    role: AgentRole,
    #[serde(default)]
    stateful: Option<bool>,
    model: ModelSpec,
    system_prompt: String,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    toolkits: Vec<String>,
    #[serde(default)]
    max_turns: Option<u32>,
}

/// The reason a wire agent is rejected while deserializing.
#[derive(Debug)]
pub(crate) struct AgentWireError(&'static str);

impl fmt::Display for AgentWireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl TryFrom<AgentSpecWire> for AgentSpec {
    type Error = AgentWireError;
    fn try_from(w: AgentSpecWire) -> Result<Self, Self::Error> {
        if w.max_turns == Some(0) {
            return Err(AgentWireError("agent maxTurns must be at least 1"));
        }
        Ok(AgentSpec {
            stateful: w.stateful.unwrap_or_else(|| w.role.default_stateful()),
            name: w.name,
            role: w.role,
            model: w.model,
            system_prompt: w.system_prompt,
            routes: w.routes,
            toolkits: w.toolkits,
            max_turns: w.max_turns,
        })
    }
}

/// Plan statuses a display alias may rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanDisplayStatus {
    Draft,
    Approved,
    Executing,
    Executed,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanDisplayAlias {
    pub status: PlanDisplayStatus,
    pub alias: String,
}

/// A named plan-body schema (the whole planner body is validated against it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    pub name: String,
    pub schema: Value,
    #[serde(default)]
    pub display_aliases: Vec<PlanDisplayAlias>,
}

/// A reference kind: its value schema and optional time to live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceSpec {
    pub name: String,
    pub schema: Value,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// A built-in toolkit an agent may list, with its optional narrowing config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolkitSpec {
    pub id: String,
    #[serde(default)]
    pub config: Option<Value>,
}

/// One approval rule: `{"kind":"never"}`, `{"kind":"always"}` or
/// `{"kind":"dynamic","value":"<predicate id>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    content = "value",
    rename_all = "lowercase",
    deny_unknown_fields
)]
pub enum ApprovalRule {
    Never,
    Always,
    Dynamic(String),
}

impl ApprovalRule {
    /// The predicate id of a dynamic rule.
    pub fn predicate_id(&self) -> Option<&str> {
        match self {
            ApprovalRule::Dynamic(id) => Some(id),
            ApprovalRule::Never | ApprovalRule::Always => None,
        }
    }
}

fn rule_always() -> ApprovalRule {
    ApprovalRule::Always
}

fn rule_never() -> ApprovalRule {
    ApprovalRule::Never
}

/// The runtime floor: plan and tool channel defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalPolicies {
    #[serde(default = "rule_always")]
    pub plans: ApprovalRule,
    #[serde(default = "rule_never")]
    pub tools: ApprovalRule,
}

impl Default for ApprovalPolicies {
    fn default() -> Self {
        Self {
            plans: ApprovalRule::Always,
            tools: ApprovalRule::Never,
        }
    }
}

/// An agent-level patch over the runtime floor; a missing channel inherits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalPolicyPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plans: Option<ApprovalRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ApprovalRule>,
}

/// Per-agent patches and per-agent, per-tool rules (agent → tool key → rule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalOverrides {
    #[serde(default)]
    pub agents: BTreeMap<String, ApprovalPolicyPatch>,
    #[serde(default)]
    pub tools: BTreeMap<String, BTreeMap<String, ApprovalRule>>,
}

impl ApprovalOverrides {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.tools.is_empty()
    }
}

/// Carried on the wire for compatibility; the engine never reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageFactorySpec {
    pub kind: String,
    #[serde(default)]
    pub config: Option<Value>,
}

/// Carried on the wire for compatibility; the engine never reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageFactories {
    #[serde(default)]
    pub kv: Option<StorageFactorySpec>,
    #[serde(default)]
    pub plans: Option<StorageFactorySpec>,
    #[serde(default)]
    pub memory: Option<StorageFactorySpec>,
}

/// The whole runtime description as the Python facade sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpec {
    pub tenant: TenantIdentity,
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
    #[serde(default)]
    pub references: Vec<ReferenceSpec>,
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    #[serde(default)]
    pub toolkits: Vec<ToolkitSpec>,
    #[serde(default)]
    pub approval_policies: ApprovalPolicies,
    #[serde(default, skip_serializing_if = "ApprovalOverrides::is_empty")]
    pub approval_overrides: ApprovalOverrides,
    #[serde(default)]
    pub storage_factories: StorageFactories,
    /// Provider key → opaque config; read by the providers layer only.
    #[serde(default)]
    pub providers: BTreeMap<String, Value>,
}

impl RuntimeSpec {
    /// Parses a wire document; serde's message (with line and column) is kept.
    pub fn from_json(text: &str) -> Result<Self, crate::spec::SpecError> {
        serde_json::from_str(text).map_err(|e| crate::spec::SpecError::InvalidJson {
            what: "runtime spec",
            message: e.to_string(),
        })
    }

    /// Same as [`RuntimeSpec::from_json`] for an already parsed value.
    pub fn from_value(value: Value) -> Result<Self, crate::spec::SpecError> {
        serde_json::from_value(value).map_err(|e| crate::spec::SpecError::InvalidJson {
            what: "runtime spec",
            message: e.to_string(),
        })
    }

    /// The wire document (what the facade would dump).
    pub fn to_value(&self) -> Value {
        // Serializing these plain data types into a Value cannot fail: every map key
        // is a string and no float is non-finite.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn agent(&self, name: &str) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.name == name)
    }
}
