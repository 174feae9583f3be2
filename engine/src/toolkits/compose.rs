//! Composition of one agent's tools: role defaults, then its toolkits, then its host
//! tools (API.md §1.11), each with a compiled input-schema validator.

use std::collections::BTreeSet;
use std::fmt;

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::schema;
use crate::spec::{AgentRole, AgentSpec, ApprovalRule, SpecError, ToolkitError, ToolkitSpec};
use crate::toolkits::builtin::{BuiltinTool, BuiltinToolkit, role_default_tools};

/// A host tool (Python handler) bound to one agent, as the facade declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostToolDecl {
    pub agent: String,
    /// `binding_id or name`: the key the host dispatches on.
    pub binding_key: String,
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub approval: ApprovalRule,
}

/// Where a call to a tool goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolKind {
    Builtin(BuiltinTool),
    Host { binding_key: String },
}

/// One tool as offered to an agent's model, with its compiled input schema.
#[derive(Clone)]
pub struct ToolEntry {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub kind: ToolKind,
    validator: Validator,
}

impl ToolEntry {
    fn new(
        name: String,
        description: String,
        input_schema: Value,
        kind: ToolKind,
    ) -> Result<Self, ToolkitError> {
        let validator =
            schema::compile(&input_schema).map_err(|message| ToolkitError::ToolSchema {
                tool: name.clone(),
                message,
            })?;
        Ok(Self {
            name,
            description,
            input_schema,
            kind,
            validator,
        })
    }

    fn builtin(tool: BuiltinTool) -> Result<Self, ToolkitError> {
        Self::new(
            tool.name().to_owned(),
            tool.description().to_owned(),
            tool.input_schema(),
            ToolKind::Builtin(tool),
        )
    }

    /// Checks call arguments against the input schema. The error is the text that
    /// follows `"Invalid input: "` in the tool's error result: the first violation,
    /// prefixed by its JSON pointer when it is below the root.
    pub fn validate_args(&self, args: &Value) -> Result<(), String> {
        schema::first_error(&self.validator, args)
    }

    pub fn builtin_tool(&self) -> Option<BuiltinTool> {
        match self.kind {
            ToolKind::Builtin(tool) => Some(tool),
            ToolKind::Host { .. } => None,
        }
    }
}

impl fmt::Debug for ToolEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolEntry")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("input_schema", &self.input_schema)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Reads the narrowing config `{"tools": [names]}`; `None` means "no narrowing".
fn narrowing(toolkit: &str, config: Option<&Value>) -> Result<Option<Vec<String>>, ToolkitError> {
    let malformed = |reason: String| ToolkitError::MalformedConfig {
        toolkit: toolkit.to_owned(),
        reason,
    };
    let map = match config {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(malformed(format!(
                "expected null or an object {{\"tools\": [tool names]}}, got {other}"
            )));
        }
    };
    if let Some(key) = map.keys().find(|k| k.as_str() != "tools") {
        return Err(malformed(format!(
            "unknown key '{key}'; expected {{\"tools\": [tool names]}}"
        )));
    }
    match map.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(name) => Ok(name.clone()),
                other => Err(malformed(format!(
                    "`tools` entries must be strings, got {other}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(malformed(format!(
            "`tools` must be a list of tool names, got {other}"
        ))),
    }
}

/// The built-ins toolkit `id` (with `config`) contributes to an agent of `role`, in
/// catalog order: role scoping applied, then narrowing.
pub fn toolkit_tools(
    id: &str,
    config: Option<&Value>,
    role: AgentRole,
) -> Result<Vec<BuiltinTool>, ToolkitError> {
    let toolkit =
        BuiltinToolkit::from_id(id).ok_or_else(|| ToolkitError::UnknownToolkit(id.to_owned()))?;
    let allowed = toolkit.tools_for(role);
    let Some(names) = narrowing(id, config)? else {
        return Ok(allowed.to_vec());
    };
    let mut chosen = BTreeSet::new();
    for name in &names {
        let tool = toolkit
            .tools()
            .iter()
            .copied()
            .find(|t| t.name() == name)
            .ok_or_else(|| ToolkitError::UnknownTool {
                toolkit: id.to_owned(),
                tool: name.clone(),
            })?;
        if !allowed.contains(&tool) {
            return Err(ToolkitError::PlanToolOutOfScope {
                tool: name.clone(),
                role,
            });
        }
        chosen.insert(tool);
    }
    Ok(allowed
        .iter()
        .copied()
        .filter(|t| chosen.contains(t))
        .collect())
}

/// Composes an agent's tools: role defaults → its toolkits (in its list order, config
/// from `toolkits` by id) → its host tools. A built-in already offered is skipped; a
/// host tool whose name is already taken is a collision.
pub(crate) fn compose_agent_tools(
    agent: &AgentSpec,
    toolkits: &[ToolkitSpec],
    host_tools: &[HostToolDecl],
) -> Result<Vec<ToolEntry>, ToolkitError> {
    let mut entries: Vec<ToolEntry> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();

    let mut builtins: Vec<BuiltinTool> =
        role_default_tools(agent.role, !agent.routes.is_empty()).to_vec();
    for id in &agent.toolkits {
        // An id the agent lists but the spec does not declare is composed with no
        // config, as the facade's define_runtime would have declared it.
        let config = toolkits
            .iter()
            .find(|t| &t.id == id)
            .and_then(|t| t.config.as_ref());
        builtins.extend(toolkit_tools(id, config, agent.role)?);
    }
    for tool in builtins {
        if taken.insert(tool.name().to_owned()) {
            entries.push(ToolEntry::builtin(tool)?);
        }
    }

    let mut collisions: Vec<String> = Vec::new();
    for decl in host_tools.iter().filter(|d| d.agent == agent.name) {
        if !taken.insert(decl.name.clone()) {
            if !collisions.contains(&decl.name) {
                collisions.push(decl.name.clone());
            }
            continue;
        }
        entries.push(ToolEntry::new(
            decl.name.clone(),
            decl.description.clone(),
            decl.input_schema.clone(),
            ToolKind::Host {
                binding_key: decl.binding_key.clone(),
            },
        )?);
    }
    if !collisions.is_empty() {
        return Err(ToolkitError::Collisions(collisions));
    }
    Ok(entries)
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, SpecError> {
    serde_json::from_str(text).map_err(|e| SpecError::InvalidJson {
        what,
        message: e.to_string(),
    })
}

fn describe(tools: &[BuiltinTool]) -> String {
    Value::Array(tools.iter().map(|t| t.describe()).collect()).to_string()
}

/// The tools one toolkit contributes to one agent, as a JSON list of
/// `{"name", "description", "input_schema"}` (API.md §1.14). Both arguments are wire
/// JSON (`ToolkitSpec`, `AgentSpec`). Role scoping and narrowing apply; a plans
/// toolkit with `config: null` gives the role-allowed list.
pub fn describe_toolkit_tools(toolkit_json: &str, agent_json: &str) -> Result<String, SpecError> {
    let toolkit: ToolkitSpec = parse("toolkit spec", toolkit_json)?;
    let agent: AgentSpec = parse("agent spec", agent_json)?;
    let tools =
        toolkit_tools(&toolkit.id, toolkit.config.as_ref(), agent.role).map_err(|source| {
            SpecError::ToolkitComposition {
                agent: agent.name.clone(),
                source,
            }
        })?;
    Ok(describe(&tools))
}

/// The role-default built-ins of one agent (wire `AgentSpec` JSON), in the same row
/// shape as [`describe_toolkit_tools`]; the facade renders them first.
pub fn describe_role_default_tools(agent_json: &str) -> Result<String, SpecError> {
    let agent: AgentSpec = parse("agent spec", agent_json)?;
    Ok(describe(role_default_tools(
        agent.role,
        !agent.routes.is_empty(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn narrowing_config_shapes() {
        assert_eq!(narrowing("plans", None), Ok(None));
        assert_eq!(narrowing("plans", Some(&json!(null))), Ok(None));
        assert_eq!(narrowing("plans", Some(&json!({}))), Ok(None));
        assert_eq!(
            narrowing("plans", Some(&json!({"tools": ["getPlan"]}))),
            Ok(Some(vec!["getPlan".to_owned()]))
        );
        for bad in [
            json!([]),
            json!({"tools": "getPlan"}),
            json!({"tools": [1]}),
            json!({"x": 1}),
        ] {
            let err = narrowing("plans", Some(&bad)).expect_err("malformed");
            assert!(
                err.to_string()
                    .starts_with("toolkit 'plans' config is malformed: "),
                "{err}"
            );
        }
    }

    #[test]
    fn narrowing_keeps_catalog_order() {
        let tools = toolkit_tools(
            "references",
            Some(&json!({"tools": ["glimpseRef", "resolveRef"]})),
            AgentRole::Specialist,
        )
        .expect("valid");
        assert_eq!(
            tools,
            vec![BuiltinTool::ResolveRef, BuiltinTool::GlimpseRef]
        );
    }
}
