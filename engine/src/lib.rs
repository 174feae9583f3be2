//! The flowai runtime.

mod policy;
mod spec;
mod toolkits;

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
