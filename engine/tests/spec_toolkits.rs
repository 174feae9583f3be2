//! Built-in tools, toolkit composition per role, narrowing, collisions, argument
//! validation and `describe_toolkit_tools` (API.md §1.11, §1.14, §5).

use std::collections::BTreeSet;

use flowai_runtime::{
    AgentRole, ApprovalRule, BuiltinTool, CompiledSpec, HostToolDecl, InterpreterChoice,
    RuntimeSpec, ToolKind, compile_spec, describe_role_default_tools, describe_toolkit_tools,
    role_default_tools,
};
use serde_json::{Value, json};

fn agent(name: &str, role: &str, routes: &[&str], toolkits: &[&str]) -> Value {
    json!({"name": name, "role": role, "model": "claude-sonnet-4-6",
           "systemPrompt": "p", "routes": routes, "toolkits": toolkits})
}

fn compile(
    agents: Vec<Value>,
    toolkits: Value,
    host: &[HostToolDecl],
) -> Result<CompiledSpec, String> {
    let spec = RuntimeSpec::from_value(json!({
        "tenant": {"resourceId": "acme", "version": "v1"},
        "agents": agents,
        "toolkits": toolkits,
        "providers": {"anthropic": {}}
    }))
    .expect("wire-valid");
    compile_spec(spec, host, &BTreeSet::new(), &InterpreterChoice::Scripted)
        .map_err(|e| e.to_string())
}

fn tool_names(c: &CompiledSpec, agent: &str) -> Vec<String> {
    c.agent(agent)
        .expect("agent")
        .tools
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

fn host(agent: &str, name: &str) -> HostToolDecl {
    HostToolDecl {
        agent: agent.into(),
        binding_key: format!("{name}_binding"),
        name: name.into(),
        description: "Search products by query.".into(),
        input_schema: json!({"type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query", "limit"]}),
        approval: ApprovalRule::Never,
    }
}

fn team(extra_toolkits: &[&str]) -> Vec<Value> {
    vec![
        agent(
            "coordinator",
            "coordinator",
            &["planner", "executor"],
            extra_toolkits,
        ),
        agent("planner", "planner", &[], extra_toolkits),
        agent("executor", "executor", &[], extra_toolkits),
        agent("specialist", "specialist", &[], extra_toolkits),
    ]
}

#[test]
fn role_defaults() {
    let c = compile(team(&[]), json!([]), &[]).expect("compiles");
    assert_eq!(tool_names(&c, "coordinator"), ["call_agent"]);
    assert_eq!(tool_names(&c, "planner"), ["storePlan", "getPlan"]);
    assert_eq!(
        tool_names(&c, "executor"),
        ["getPlan", "executePlan", "resolveRef", "glimpseRef"]
    );
    assert!(tool_names(&c, "specialist").is_empty());

    let exec = c.agent("executor").expect("executor");
    assert_eq!(
        exec.tools[1].kind,
        ToolKind::Builtin(BuiltinTool::ExecutePlan)
    );
    assert_eq!(exec.tools[1].builtin_tool(), Some(BuiltinTool::ExecutePlan));

    assert_eq!(role_default_tools(AgentRole::Coordinator, false), &[]);
    assert_eq!(
        role_default_tools(AgentRole::Coordinator, true),
        &[BuiltinTool::CallAgent]
    );
}

#[test]
fn explicit_toolkits_add_role_scoped_tools() {
    let c = compile(team(&["plans", "references"]), json!([]), &[]).expect("compiles");
    assert_eq!(
        tool_names(&c, "coordinator"),
        ["call_agent", "getPlan", "resolveRef", "glimpseRef"]
    );
    assert_eq!(
        tool_names(&c, "planner"),
        ["storePlan", "getPlan", "resolveRef", "glimpseRef"]
    );
    assert_eq!(
        tool_names(&c, "executor"),
        ["getPlan", "executePlan", "resolveRef", "glimpseRef"]
    );
    assert_eq!(
        tool_names(&c, "specialist"),
        ["getPlan", "resolveRef", "glimpseRef"]
    );
    let planner = tool_names(&c, "planner");
    assert!(!planner.contains(&"executePlan".to_owned()));
    assert!(!tool_names(&c, "executor").contains(&"storePlan".to_owned()));
}

#[test]
fn agents_toolkit_on_a_specialist() {
    let agents = vec![
        agent("c", "coordinator", &["s"], &[]),
        agent("s", "specialist", &["t"], &["agents"]),
        agent("t", "specialist", &[], &[]),
    ];
    let c = compile(agents, json!([]), &[]).expect("compiles");
    assert_eq!(tool_names(&c, "s"), ["call_agent"]);
}

#[test]
fn narrowing_and_config_errors() {
    let c = compile(
        team(&["references"]),
        json!([{"id": "references", "config": {"tools": ["glimpseRef"]}}]),
        &[],
    )
    .expect("compiles");
    assert_eq!(tool_names(&c, "specialist"), ["glimpseRef"]);
    // Role defaults are never narrowed away by an explicit toolkit config.
    assert_eq!(
        tool_names(&c, "executor"),
        ["getPlan", "executePlan", "resolveRef", "glimpseRef"]
    );

    let e = compile(
        vec![agent("s", "specialist", &[], &["references"])],
        json!([{"id": "references", "config": {"tools": ["fetchRef"]}}]),
        &[],
    )
    .expect_err("unknown tool");
    assert_eq!(
        e,
        "toolkit composition error: toolkit 'references' has no tool named 'fetchRef' (agent 's')"
    );

    let e = compile(
        vec![agent("p", "planner", &[], &["plans"])],
        json!([{"id": "plans", "config": {"tools": ["executePlan"]}}]),
        &[],
    )
    .expect_err("out of scope");
    assert_eq!(
        e,
        "toolkit composition error: tool 'executePlan' from toolkit 'plans' is not available for planner agents (agent 'p')"
    );

    let e = compile(
        vec![agent("s", "specialist", &[], &["plans"])],
        json!([{"id": "plans", "config": "all"}]),
        &[],
    )
    .expect_err("malformed");
    assert!(
        e.starts_with("toolkit composition error: toolkit 'plans' config is malformed: "),
        "{e}"
    );

    let e = compile(
        vec![agent("s", "specialist", &[], &["sql"])],
        json!([]),
        &[],
    )
    .expect_err("unknown toolkit");
    assert_eq!(
        e,
        "toolkit composition error: unknown toolkit id: sql (agent 's')"
    );
}

#[test]
fn host_tools_come_last_and_collide_with_builtins() {
    let c =
        compile(team(&[]), json!([]), &[host("executor", "search_products")]).expect("compiles");
    let exec = c.agent("executor").expect("executor");
    assert_eq!(
        exec.tools.last().map(|t| t.name.as_str()),
        Some("search_products")
    );
    assert_eq!(
        exec.tools.last().map(|t| &t.kind),
        Some(&ToolKind::Host {
            binding_key: "search_products_binding".into()
        })
    );

    let e = compile(team(&[]), json!([]), &[host("executor", "getPlan")]).expect_err("collision");
    assert_eq!(
        e,
        "toolkit composition error: dispatcher collisions: [\"getPlan\"] (agent 'executor')"
    );

    let e = compile(
        team(&[]),
        json!([]),
        &[host("specialist", "search"), host("specialist", "search")],
    )
    .expect_err("two host tools with one name");
    assert!(e.contains("dispatcher collisions: [\"search\"]"), "{e}");

    // The same name on two different agents is fine.
    compile(
        team(&[]),
        json!([]),
        &[host("planner", "search"), host("specialist", "search")],
    )
    .expect("separate agents");
}

#[test]
fn bad_host_schema_is_a_composition_error() {
    let mut decl = host("specialist", "search");
    decl.input_schema = json!({"type": "objekt"});
    let e = compile(team(&[]), json!([]), &[decl]).expect_err("bad schema");
    assert!(
        e.starts_with(
            "toolkit composition error: tool 'search' has an input schema that does not compile: "
        ),
        "{e}"
    );
}

#[test]
fn tool_arguments_are_validated() {
    let c = compile(
        team(&[]),
        json!([]),
        &[host("specialist", "search_products")],
    )
    .expect("compiles");
    let tool = c
        .agent("specialist")
        .expect("specialist")
        .tool("search_products")
        .expect("tool");
    assert_eq!(
        tool.validate_args(&json!({"query": "shoes", "limit": 3})),
        Ok(())
    );
    assert_eq!(
        tool.validate_args(&json!({"query": "shoes"})),
        Err("\"limit\" is a required property".to_owned())
    );
    assert_eq!(
        tool.validate_args(&json!({"query": "shoes", "limit": "3"})),
        Err("/limit: \"3\" is not of type \"integer\"".to_owned())
    );

    let planner = c.agent("planner").expect("planner");
    let store = planner.tool("storePlan").expect("storePlan");
    assert_eq!(
        store.validate_args(&json!({"specName": "S", "planId": "p1", "body": {"actions": []}})),
        Ok(())
    );
    assert_eq!(
        store.validate_args(&json!({"specName": "S", "body": {}})),
        Err("\"planId\" is a required property".to_owned())
    );
    let call = c
        .agent("coordinator")
        .expect("coordinator")
        .tool("call_agent")
        .expect("call_agent");
    assert!(
        call.validate_args(&json!({"agent": "planner", "prompt": "go"}))
            .is_ok()
    );
    assert!(
        call.validate_args(&json!({"agent": 1, "prompt": "go"}))
            .is_err()
    );
}

#[test]
fn recursive_host_schemas_compile() {
    // What normalize_schema keeps for a recursive pydantic model (API.md §1.4).
    let mut decl = host("specialist", "tree");
    decl.input_schema = json!({
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/TreeNode"}},
        "required": ["root"],
        "$defs": {"TreeNode": {"type": "object", "title": "TreeNode",
            "properties": {"name": {"type": "string"},
                           "children": {"type": "array", "items": {"$ref": "#/$defs/TreeNode"}}},
            "required": ["name"]}}
    });
    let c = compile(team(&[]), json!([]), &[decl]).expect("compiles");
    let tool = c
        .agent("specialist")
        .expect("specialist")
        .tool("tree")
        .expect("tree");
    assert_eq!(
        tool.validate_args(&json!({"root": {"name": "a", "children": [{"name": "b"}]}})),
        Ok(())
    );
    assert_eq!(
        tool.validate_args(&json!({"root": {"name": "a", "children": [{}]}})),
        Err("/root/children/0: \"name\" is a required property".to_owned())
    );
}

fn describe(toolkit: Value, agent: Value) -> Result<Vec<Value>, String> {
    describe_toolkit_tools(&toolkit.to_string(), &agent.to_string())
        .map(|s| serde_json::from_str(&s).expect("JSON list"))
        .map_err(|e| e.to_string())
}

fn names(rows: &[Value]) -> Vec<&str> {
    rows.iter().filter_map(|r| r["name"].as_str()).collect()
}

#[test]
fn describe_toolkit_tools_rows() {
    let planner = json!({"name": "planner", "role": "planner", "stateful": true,
        "model": {"id": "claude-sonnet-4-6", "provider": null},
        "systemPrompt": "p", "routes": [], "toolkits": ["plans"]});
    let executor =
        json!({"name": "executor", "role": "executor", "model": "m", "systemPrompt": "p"});
    let specialist = json!({"name": "s", "role": "specialist", "model": "m", "systemPrompt": "p"});

    let rows = describe(json!({"id": "plans", "config": null}), planner.clone()).expect("ok");
    assert_eq!(names(&rows), ["storePlan", "getPlan"]);
    assert_eq!(
        rows[1],
        json!({"name": "getPlan", "description": BuiltinTool::GetPlan.description(),
               "input_schema": BuiltinTool::GetPlan.input_schema()})
    );
    let rows = describe(json!({"id": "plans"}), executor.clone()).expect("ok");
    assert_eq!(names(&rows), ["getPlan", "executePlan"]);
    let rows = describe(json!({"id": "plans", "config": null}), specialist.clone()).expect("ok");
    assert_eq!(names(&rows), ["getPlan"]);
    let rows = describe(
        json!({"id": "plans", "config": {"tools": ["getPlan"]}}),
        planner.clone(),
    )
    .expect("ok");
    assert_eq!(names(&rows), ["getPlan"]);
    let rows = describe(
        json!({"id": "references", "config": null}),
        specialist.clone(),
    )
    .expect("ok");
    assert_eq!(names(&rows), ["resolveRef", "glimpseRef"]);
    let rows = describe(json!({"id": "agents", "config": null}), specialist.clone()).expect("ok");
    assert_eq!(names(&rows), ["call_agent"]);
    assert_eq!(
        rows[0]["input_schema"]["required"],
        json!(["agent", "prompt"]),
        "call_agent input schema"
    );

    // Different effective configs give different rows (and so different prompt hashes).
    let all = describe(json!({"id": "plans", "config": null}), planner.clone()).expect("ok");
    let narrowed = describe(
        json!({"id": "plans", "config": {"tools": ["storePlan"]}}),
        planner.clone(),
    )
    .expect("ok");
    assert_ne!(all, narrowed);

    assert_eq!(
        describe(json!({"id": "catalog", "config": null}), specialist.clone()),
        Err("toolkit composition error: unknown toolkit id: catalog (agent 's')".to_owned())
    );
    assert_eq!(
        describe(json!({"id": "plans", "config": {"tools": ["storePlan"]}}), executor),
        Err("toolkit composition error: tool 'storePlan' from toolkit 'plans' is not available for executor agents (agent 'executor')".to_owned())
    );
    let e = describe(
        json!({"id": "plans"}),
        json!({"name": "x", "role": "executor", "model": "m",
        "systemPrompt": "p", "maxTurns": 0}),
    )
    .expect_err("bad agent");
    assert!(e.contains("agent maxTurns must be at least 1"), "{e}");
    let e = describe(json!({"config": null}), specialist).expect_err("bad toolkit");
    assert!(e.starts_with("invalid toolkit spec JSON: "), "{e}");
}

#[test]
fn describe_role_defaults() {
    let rows: Vec<Value> = serde_json::from_str(
        &describe_role_default_tools(
            &json!({"name": "e", "role": "executor", "model": "m", "systemPrompt": "p"})
                .to_string(),
        )
        .expect("ok"),
    )
    .expect("json");
    assert_eq!(
        names(&rows),
        ["getPlan", "executePlan", "resolveRef", "glimpseRef"]
    );
    let rows = describe_role_default_tools(
        &json!({"name": "c", "role": "coordinator", "model": "m", "systemPrompt": "p",
                "routes": ["x"]})
        .to_string(),
    )
    .expect("ok");
    assert!(rows.contains("\"call_agent\""));
    assert_eq!(
        describe_role_default_tools(
            &json!({"name": "s", "role": "specialist", "model": "m", "systemPrompt": "p"})
                .to_string()
        )
        .expect("ok"),
        "[]"
    );
}

#[test]
fn descriptions_never_name_other_builtins() {
    for tool in BuiltinTool::ALL {
        for other in BuiltinTool::ALL {
            assert!(
                !tool.description().contains(other.name()),
                "{} mentions {}",
                tool.name(),
                other.name()
            );
        }
    }
}
