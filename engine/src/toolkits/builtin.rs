//! The built-in tool catalog, written once: names, descriptions and input schemas of
//! the tools of the `agents`, `plans` and `references` toolkits (API.md §5.1, §5.2,
//! §5.7). Descriptions never name another built-in tool: the facade renders them into
//! prompts and tests look for tool names there (API.md §1.14 point 3).

use std::fmt;

use serde_json::{Value, json};

use crate::spec::AgentRole;

/// A built-in tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuiltinTool {
    CallAgent,
    StorePlan,
    GetPlan,
    ExecutePlan,
    ResolveRef,
    GlimpseRef,
}

impl BuiltinTool {
    pub const ALL: [BuiltinTool; 6] = [
        BuiltinTool::CallAgent,
        BuiltinTool::StorePlan,
        BuiltinTool::GetPlan,
        BuiltinTool::ExecutePlan,
        BuiltinTool::ResolveRef,
        BuiltinTool::GlimpseRef,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTool::CallAgent => "call_agent",
            BuiltinTool::StorePlan => "storePlan",
            BuiltinTool::GetPlan => "getPlan",
            BuiltinTool::ExecutePlan => "executePlan",
            BuiltinTool::ResolveRef => "resolveRef",
            BuiltinTool::GlimpseRef => "glimpseRef",
        }
    }

    pub fn from_name(name: &str) -> Option<BuiltinTool> {
        BuiltinTool::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            BuiltinTool::CallAgent => {
                "Delegate a task to one of the agents this agent may route to and return that agent's response."
            }
            BuiltinTool::StorePlan => {
                "Store a plan body under a plan id after validating it against the named plan spec; the stored plan starts as a draft."
            }
            BuiltinTool::GetPlan => {
                "Fetch a stored plan, with its status and actions, by plan id; returns null when no such plan exists."
            }
            BuiltinTool::ExecutePlan => {
                "Execute a stored plan by plan id, waiting for approval first when policy requires it, and return the dispatch outcome."
            }
            BuiltinTool::ResolveRef => {
                "Resolve a reference handle (kind and id) to its full stored value and its glimpse."
            }
            BuiltinTool::GlimpseRef => {
                "Return only the compact glimpse (summary) of a reference handle (kind and id), not its full value."
            }
        }
    }

    pub fn input_schema(self) -> Value {
        match self {
            BuiltinTool::CallAgent => json!({
                "type": "object",
                "properties": {
                    "agent": {
                        "type": "string",
                        "description": "Name of the agent to call; must be one of this agent's routes."
                    },
                    "prompt": {
                        "type": "string",
                        "description": "The task or question for that agent."
                    }
                },
                "required": ["agent", "prompt"]
            }),
            BuiltinTool::StorePlan => json!({
                "type": "object",
                "properties": {
                    "specName": {
                        "type": "string",
                        "description": "Name of the plan spec the body must satisfy."
                    },
                    "planId": {
                        "type": "string",
                        "description": "Plan id chosen by the caller; storing an existing id stores a new draft version."
                    },
                    "body": {
                        "description": "The plan body: an object with a non-empty `actions` array (each action an object with a string `kind`) plus optional context fields."
                    }
                },
                "required": ["specName", "planId", "body"]
            }),
            BuiltinTool::GetPlan | BuiltinTool::ExecutePlan => json!({
                "type": "object",
                "properties": {
                    "planId": {"type": "string", "description": "Id of the stored plan."}
                },
                "required": ["planId"]
            }),
            BuiltinTool::ResolveRef | BuiltinTool::GlimpseRef => json!({
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "description": "Reference kind."},
                    "id": {"type": "string", "description": "Reference id."}
                },
                "required": ["kind", "id"]
            }),
        }
    }

    pub fn toolkit(self) -> BuiltinToolkit {
        match self {
            BuiltinTool::CallAgent => BuiltinToolkit::Agents,
            BuiltinTool::StorePlan | BuiltinTool::GetPlan | BuiltinTool::ExecutePlan => {
                BuiltinToolkit::Plans
            }
            BuiltinTool::ResolveRef | BuiltinTool::GlimpseRef => BuiltinToolkit::References,
        }
    }

    /// `{"name", "description", "input_schema"}`, the row shape of
    /// `describe_toolkit_tools`.
    pub fn describe(self) -> Value {
        json!({
            "name": self.name(),
            "description": self.description(),
            "input_schema": self.input_schema(),
        })
    }
}

impl fmt::Display for BuiltinTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The built-in toolkits this project implements. (`catalog` is not one of them.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuiltinToolkit {
    Agents,
    Plans,
    References,
}

impl BuiltinToolkit {
    pub fn id(self) -> &'static str {
        match self {
            BuiltinToolkit::Agents => "agents",
            BuiltinToolkit::Plans => "plans",
            BuiltinToolkit::References => "references",
        }
    }

    pub fn from_id(id: &str) -> Option<BuiltinToolkit> {
        match id {
            "agents" => Some(BuiltinToolkit::Agents),
            "plans" => Some(BuiltinToolkit::Plans),
            "references" => Some(BuiltinToolkit::References),
            _ => None,
        }
    }

    /// Every tool of the toolkit, in catalog order.
    pub fn tools(self) -> &'static [BuiltinTool] {
        match self {
            BuiltinToolkit::Agents => &[BuiltinTool::CallAgent],
            BuiltinToolkit::Plans => &[
                BuiltinTool::StorePlan,
                BuiltinTool::GetPlan,
                BuiltinTool::ExecutePlan,
            ],
            BuiltinToolkit::References => &[BuiltinTool::ResolveRef, BuiltinTool::GlimpseRef],
        }
    }

    /// The tools an agent of `role` may take from this toolkit: the plans toolkit is
    /// scoped by role (only planners store, only executors execute); the others are not.
    pub fn tools_for(self, role: AgentRole) -> &'static [BuiltinTool] {
        match (self, role) {
            (BuiltinToolkit::Plans, AgentRole::Planner) => {
                &[BuiltinTool::StorePlan, BuiltinTool::GetPlan]
            }
            (BuiltinToolkit::Plans, AgentRole::Executor) => {
                &[BuiltinTool::GetPlan, BuiltinTool::ExecutePlan]
            }
            (BuiltinToolkit::Plans, AgentRole::Coordinator | AgentRole::Specialist) => {
                &[BuiltinTool::GetPlan]
            }
            (BuiltinToolkit::Agents | BuiltinToolkit::References, _) => self.tools(),
        }
    }
}

impl fmt::Display for BuiltinToolkit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The built-ins an agent gets from its role alone (API.md §1.11 table), before any
/// explicit toolkit. A coordinator gets `call_agent` only when it has routes.
pub fn role_default_tools(role: AgentRole, has_routes: bool) -> &'static [BuiltinTool] {
    match role {
        AgentRole::Coordinator if has_routes => &[BuiltinTool::CallAgent],
        AgentRole::Coordinator | AgentRole::Specialist => &[],
        AgentRole::Planner => &[BuiltinTool::StorePlan, BuiltinTool::GetPlan],
        AgentRole::Executor => &[
            BuiltinTool::GetPlan,
            BuiltinTool::ExecutePlan,
            BuiltinTool::ResolveRef,
            BuiltinTool::GlimpseRef,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_belong_to_one_toolkit() {
        for tool in BuiltinTool::ALL {
            assert_eq!(BuiltinTool::from_name(tool.name()), Some(tool));
            assert!(tool.toolkit().tools().contains(&tool));
        }
        assert_eq!(BuiltinTool::from_name("catalog_search"), None);
    }

    #[test]
    fn descriptions_are_one_line_and_name_no_other_builtin() {
        for tool in BuiltinTool::ALL {
            let d = tool.description();
            assert!(!d.contains('\n'), "{tool}");
            for other in BuiltinTool::ALL {
                assert!(!d.contains(other.name()), "{tool} mentions {other}");
            }
        }
    }

    #[test]
    fn schemas_compile() {
        for tool in BuiltinTool::ALL {
            assert!(
                crate::spec::schema::compile(&tool.input_schema()).is_ok(),
                "{tool}"
            );
        }
    }
}
