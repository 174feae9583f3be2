//! Built-in toolkits: the tool catalog and per-agent tool composition.

mod builtin;
mod compose;

pub use builtin::{BuiltinTool, BuiltinToolkit, role_default_tools};
pub(crate) use compose::compose_agent_tools;
pub use compose::{
    HostToolDecl, ToolEntry, ToolKind, describe_role_default_tools, describe_toolkit_tools,
    toolkit_tools,
};
