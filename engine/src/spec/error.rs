//! Errors of spec compilation. Their Display texts are the contract of API.md §1.13,
//! §2.3, §7 and §8: the Python facade raises them verbatim as `ValueError`s.

use crate::spec::wire::AgentRole;

/// Why a RuntimeSpec could not be turned into a runtime.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A JSON document did not have the wire shape (serde's message kept).
    #[error("invalid {what} JSON: {message}")]
    InvalidJson { what: &'static str, message: String },
    /// The agent graph breaks an invariant.
    #[error("agent spec invalid: {0}")]
    AgentSpec(#[from] AgentSpecError),
    #[error("reference registry error: {0}")]
    ReferenceRegistry(#[from] ReferenceRegistryError),
    #[error("plan registry error: {0}")]
    PlanRegistry(#[from] PlanRegistryError),
    /// Toolkit composition failed for one agent.
    #[error("toolkit composition error: {source} (agent '{agent}')")]
    ToolkitComposition { agent: String, source: ToolkitError },
    /// An agent's routed provider key is not in `RuntimeSpec.providers` (API.md §8).
    #[error(
        "agent '{agent}' references provider '{provider}' for model '{model}', but no such provider is declared in RuntimeSpec.providers"
    )]
    ProviderNotDeclared {
        agent: String,
        provider: String,
        model: String,
    },
    /// The provider is declared but no interpreter can serve it (API.md §8).
    #[error(
        "agent '{agent}' references provider '{provider}' for model '{model}', but no ChatInterpreter is registered for that provider"
    )]
    ProviderNotRegistered {
        agent: String,
        provider: String,
        model: String,
    },
    #[error("approval policy error: {0}")]
    ApprovalPolicy(#[from] PolicyError),
    #[error(transparent)]
    Interpreter(#[from] InterpreterError),
}

/// Graph invariants of the agent list (API.md §1.13), without the
/// `"agent spec invalid: "` prefix.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentSpecError {
    #[error("agent name must not be empty")]
    EmptyName,
    #[error("tenant resourceId and version must not be empty")]
    EmptyTenant,
    #[error("coordinator agent '{0}' requires at least one route")]
    CoordinatorWithoutRoutes(String),
    #[error("duplicate agent name '{0}'")]
    DuplicateName(String),
    #[error("multiple coordinator agents are not supported")]
    MultipleCoordinators,
    #[error("agent '{0}' cannot route to itself")]
    SelfRoute(String),
    #[error("agent '{agent}' declares duplicate route '{route}'")]
    DuplicateRoute { agent: String, route: String },
    #[error("agent '{agent}' declares unknown route target '{route}'")]
    UnknownRouteTarget { agent: String, route: String },
    /// Sorted names.
    #[error("approvalOverrides.agents references unknown agent(s): {0:?}")]
    UnknownOverrideAgents(Vec<String>),
    /// Sorted names.
    #[error("approvalOverrides.tools references unknown agent(s): {0:?}")]
    UnknownOverrideToolAgents(Vec<String>),
    #[error("host tool binding '{binding_key}' is declared for unknown agent '{agent}'")]
    HostToolUnknownAgent { agent: String, binding_key: String },
}

#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceRegistryError {
    #[error("duplicate reference spec name '{0}'")]
    DuplicateName(String),
    #[error("schema compilation failed for kind '{kind}': {message}")]
    SchemaCompilation { kind: String, message: String },
}

#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanRegistryError {
    #[error("duplicate plan spec name '{0}'")]
    DuplicateName(String),
    #[error("schema compilation failed for spec '{spec}': {message}")]
    SchemaCompilation { spec: String, message: String },
}

/// Why the tools of one agent could not be composed (API.md §1.11).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolkitError {
    #[error("unknown toolkit id: {0}")]
    UnknownToolkit(String),
    #[error("toolkit '{toolkit}' has no tool named '{tool}'")]
    UnknownTool { toolkit: String, tool: String },
    #[error("toolkit '{toolkit}' config is malformed: {reason}")]
    MalformedConfig { toolkit: String, reason: String },
    #[error("tool '{tool}' from toolkit 'plans' is not available for {role} agents")]
    PlanToolOutOfScope { tool: String, role: AgentRole },
    /// Tool names offered twice to one agent, in the order they were found.
    #[error("dispatcher collisions: {0:?}")]
    Collisions(Vec<String>),
    #[error("tool '{tool}' has an input schema that does not compile: {message}")]
    ToolSchema { tool: String, message: String },
}

/// Approval policy compilation errors (API.md §7).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("dynamic approval predicate '{0}' is not registered")]
    UnregisteredPredicate(String),
}

/// Interpreter selection errors (API.md §2.3).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpreterError {
    #[error("mock_response requires interpreter='noop'")]
    MockRequiresNoop,
    #[error(
        "unknown interpreter '{0}'; expected noop, scripted, anthropic, openai-compatible, or live"
    )]
    Unknown(String),
    /// `interpreter='anthropic'` or `'openai-compatible'` without that provider key.
    #[error("interpreter='{0}' requires an {0} provider")]
    ProviderMissing(String),
}
