//! The spec layer: the RuntimeSpec wire model, its validation and compilation
//! (toolkit composition, approval policies, provider routing, schema registries),
//! and spec hashing.

mod compile;
mod error;
mod fingerprint;
mod registry;
mod routing;
pub(crate) mod schema;
mod wire;

pub use compile::{CompiledAgent, CompiledSpec, compile_spec};
pub use error::{
    AgentSpecError, InterpreterError, PlanRegistryError, PolicyError, ReferenceRegistryError,
    SpecError, ToolkitError,
};
pub use fingerprint::{REDACTED, first_difference, recorded_spec, redact_secrets, spec_hash};
pub use registry::{CompiledPlanSpec, CompiledReference, PlanRegistry, ReferenceRegistry};
pub use routing::{InterpreterChoice, select_provider_key};
pub use wire::{
    AgentRole, AgentSpec, ApprovalOverrides, ApprovalPolicies, ApprovalPolicyPatch, ApprovalRule,
    ModelSpec, PlanDisplayAlias, PlanDisplayStatus, PlanSpec, ReferenceSpec, RuntimeSpec,
    StorageFactories, StorageFactorySpec, TenantIdentity, ToolkitSpec,
};

pub use crate::policy::AgentPolicy;
pub use crate::toolkits::{
    BuiltinTool, BuiltinToolkit, HostToolDecl, ToolEntry, ToolKind, describe_role_default_tools,
    describe_toolkit_tools, role_default_tools, toolkit_tools,
};
