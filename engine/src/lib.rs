//! The flowai runtime: the spec model, the run driver with its live, resume and verify
//! modes, the deterministic interpreters, tools, plans and approvals, live providers
//! and the event stream. Every step of a run is journaled in a `flowai-storage` store
//! before the engine acts on it (DESIGN.md §3).

mod driver;
mod error;
mod events;
mod host;
mod ids;
mod interpret;
mod journal;
mod live;
mod logging;
mod plans;
mod policy;
pub mod providers;
mod runtime;
mod spec;
mod toolkits;

pub use driver::{Decision, RunEnd};
pub use error::EngineError;
pub use events::{Event, Projector};
pub use host::{
    CreatedReference, DispatchContext, Host, HostToolCall, HostToolOutcome, NoHost,
    PredicateContext, ToolCallContext,
};
pub use ids::{IdSource, RandomIds, SequentialIds, rfc3339_ms};
pub use journal::DriveMode;
pub use logging::init_logging_from_env;
pub use plans::{check_dispatch_envelope, check_transition, flatten_body};
pub use runtime::{
    CreatedRef, EnvLookup, JournalEntry, RunStream, Runtime, RuntimeOptions, journal_entries,
    replay_events,
};
pub use spec::{
    AgentPolicy, AgentRole, AgentSpec, AgentSpecError, ApprovalOverrides, ApprovalPolicies,
    ApprovalPolicyPatch, ApprovalRule, BuiltinTool, BuiltinToolkit, CompiledAgent,
    CompiledPlanSpec, CompiledReference, CompiledSpec, HostToolDecl, InterpreterChoice,
    InterpreterError, ModelSpec, PlanDisplayAlias, PlanDisplayStatus, PlanRegistry,
    PlanRegistryError, PlanSpec, PolicyError, REDACTED, ReferenceRegistry, ReferenceRegistryError,
    ReferenceSpec, RuntimeSpec, SpecError, StorageFactories, StorageFactorySpec, TenantIdentity,
    ToolEntry, ToolKind, ToolkitError, ToolkitSpec, compile_spec, describe_role_default_tools,
    describe_toolkit_tools, first_difference, recorded_spec, redact_secrets, role_default_tools,
    select_provider_key, spec_hash, toolkit_tools,
};
