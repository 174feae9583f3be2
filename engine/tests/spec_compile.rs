//! `compile_spec`: graph invariants, registries, provider routing, interpreter checks
//! and the approval policy compiler (API.md §1.13, §2.3, §7, §8).

use std::collections::BTreeSet;

use flowai_runtime::{
    ApprovalRule, CompiledSpec, HostToolDecl, InterpreterChoice, RuntimeSpec, SpecError,
    compile_spec,
};
use serde_json::{Value, json};

fn agent(name: &str, role: &str, routes: &[&str]) -> Value {
    json!({"name": name, "role": role, "model": "claude-sonnet-4-6",
           "systemPrompt": format!("You are {name}."), "routes": routes})
}

fn spec_with(agents: Vec<Value>, extra: Value) -> RuntimeSpec {
    let mut doc = json!({
        "tenant": {"resourceId": "acme", "version": "v1"},
        "agents": agents,
        "providers": {"anthropic": {"apiKey": "unused"}}
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            doc.insert(k.clone(), v.clone());
        }
    }
    RuntimeSpec::from_value(doc).expect("wire-valid spec")
}

fn team() -> Vec<Value> {
    vec![
        agent("coordinator", "coordinator", &["planner", "executor"]),
        agent("planner", "planner", &[]),
        agent("executor", "executor", &[]),
        agent("product_insights", "specialist", &[]),
    ]
}

fn host(agent: &str, name: &str, approval: ApprovalRule) -> HostToolDecl {
    HostToolDecl {
        agent: agent.into(),
        binding_key: name.into(),
        name: name.into(),
        description: format!("{name} things."),
        input_schema: json!({"type": "object", "properties": {"query": {"type": "string"}},
                             "required": ["query"]}),
        approval,
    }
}

fn preds(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn compile(spec: RuntimeSpec, tools: &[HostToolDecl]) -> Result<CompiledSpec, String> {
    compile_spec(spec, tools, &BTreeSet::new(), &InterpreterChoice::Noop).map_err(|e| e.to_string())
}

fn err(spec: RuntimeSpec) -> String {
    compile(spec, &[]).expect_err("must fail")
}

#[test]
fn fixture_team_compiles() {
    let c = compile(spec_with(team(), json!({})), &[]).expect("compiles");
    assert_eq!(c.tenant, "acme");
    let names: Vec<_> = c.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["coordinator", "planner", "executor", "product_insights"]
    );
    assert_eq!(
        c.coordinator().map(|a| a.name.as_str()),
        Some("coordinator")
    );
    let coord = c.agent("coordinator").expect("present");
    assert!(coord.stateful);
    assert_eq!(coord.provider_key, "anthropic");
    assert_eq!(coord.model_id, "claude-sonnet-4-6");
    assert_eq!(coord.routes, ["planner", "executor"]);
    assert_eq!(coord.max_turns, None);
    assert!(!c.agent("executor").expect("present").stateful);
}

#[test]
fn graph_messages() {
    let cases: Vec<(Vec<Value>, Value, &str)> = vec![
        (
            vec![agent("c", "coordinator", &[])],
            json!({}),
            "agent spec invalid: coordinator agent 'c' requires at least one route",
        ),
        (
            vec![
                agent("agent", "coordinator", &["planner"]),
                agent("agent", "executor", &[]),
            ],
            json!({}),
            "agent spec invalid: duplicate agent name 'agent'",
        ),
        (
            vec![
                agent("a", "coordinator", &["c"]),
                agent("b", "coordinator", &["c"]),
                agent("c", "specialist", &[]),
            ],
            json!({}),
            "agent spec invalid: multiple coordinator agents are not supported",
        ),
        (
            vec![agent("a", "coordinator", &["a"])],
            json!({}),
            "agent spec invalid: agent 'a' cannot route to itself",
        ),
        (
            vec![
                agent("a", "coordinator", &["b", "b"]),
                agent("b", "specialist", &[]),
            ],
            json!({}),
            "agent spec invalid: agent 'a' declares duplicate route 'b'",
        ),
        (
            vec![agent("a", "coordinator", &["planner"])],
            json!({}),
            "agent spec invalid: agent 'a' declares unknown route target 'planner'",
        ),
        (
            team(),
            json!({"approvalOverrides": {"agents": {"zed": {}, "bob": {"tools": {"kind": "always"}}}}}),
            "agent spec invalid: approvalOverrides.agents references unknown agent(s): [\"bob\", \"zed\"]",
        ),
        (
            team(),
            json!({"approvalOverrides": {"tools": {"ghost": {"t": {"kind": "always"}}}}}),
            "agent spec invalid: approvalOverrides.tools references unknown agent(s): [\"ghost\"]",
        ),
        (
            vec![agent("", "specialist", &[])],
            json!({}),
            "agent spec invalid: agent name must not be empty",
        ),
    ];
    for (agents, extra, expected) in cases {
        assert_eq!(err(spec_with(agents, extra)), expected);
    }
}

#[test]
fn duplicate_name_wins_over_unknown_route() {
    // API.md §1.13: two agents named `agent` whose coordinator routes to a missing
    // planner fail with the duplicate-name message.
    let spec = spec_with(
        vec![
            agent("agent", "coordinator", &["planner"]),
            agent("agent", "specialist", &[]),
        ],
        json!({}),
    );
    assert_eq!(
        err(spec),
        "agent spec invalid: duplicate agent name 'agent'"
    );
}

#[test]
fn host_tool_for_unknown_agent() {
    let e = compile(
        spec_with(team(), json!({})),
        &[host("nobody", "search", ApprovalRule::Never)],
    )
    .expect_err("unknown agent");
    assert!(e.starts_with("agent spec invalid: "), "{e}");
    assert!(e.contains("'nobody'"), "{e}");
}

#[test]
fn reference_registry() {
    let dup = spec_with(
        team(),
        json!({"references": [{"name": "P", "schema": {"type": "object"}},
                              {"name": "P", "schema": {"type": "object"}}]}),
    );
    assert_eq!(
        err(dup),
        "reference registry error: duplicate reference spec name 'P'"
    );
    let bad = spec_with(
        team(),
        json!({"references": [{"name": "P", "schema": {"type": 5}}]}),
    );
    let e = err(bad);
    assert!(
        e.starts_with("reference registry error: schema compilation failed for kind 'P': "),
        "{e}"
    );

    let c = compile(
        spec_with(
            team(),
            json!({"references": [{"name": "ProductSet", "ttlMs": 1000, "schema": {
                "type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
                "required": ["ids"]}}]}),
        ),
        &[],
    )
    .expect("compiles");
    let r = c.references.get("ProductSet").expect("registered");
    assert_eq!(r.ttl_ms, Some(1000));
    assert_eq!(r.validate(&json!({"ids": ["a"]})), Ok(()));
    assert_eq!(
        r.validate(&json!({"ids": [1]})),
        Err(vec!["/ids/0: 1 is not of type \"string\"".to_owned()])
    );
    assert_eq!(
        r.validate(&json!({})),
        Err(vec!["\"ids\" is a required property".to_owned()])
    );
    assert!(c.references.get("Other").is_none());
}

#[test]
fn plan_registry() {
    let dup = spec_with(
        team(),
        json!({"plans": [{"name": "S", "schema": {}}, {"name": "S", "schema": {}}]}),
    );
    assert_eq!(
        err(dup),
        "plan registry error: duplicate plan spec name 'S'"
    );
    let bad = spec_with(
        team(),
        json!({"plans": [{"name": "S", "schema": {"required": "x"}}]}),
    );
    let e = err(bad);
    assert!(
        e.starts_with("plan registry error: schema compilation failed for spec 'S': "),
        "{e}"
    );

    let c = compile(
        spec_with(
            team(),
            json!({"plans": [{"name": "ScenarioPlan",
                "displayAliases": [{"status": "draft", "alias": "pending_approval"}],
                "schema": {"type": "object", "required": ["actions"],
                           "properties": {"actions": {"type": "array", "minItems": 1}}}}]}),
        ),
        &[],
    )
    .expect("compiles");
    let p = c.plans.get("ScenarioPlan").expect("registered");
    assert_eq!(p.validate(&json!({"actions": [{"kind": "x"}]})), Ok(()));
    let errors = p.validate(&json!({"actions": []})).expect_err("empty");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("/actions: "), "{errors:?}");
    assert_eq!(
        p.display_alias(flowai_runtime::PlanDisplayStatus::Draft),
        Some("pending_approval")
    );
}

#[test]
fn draft_is_taken_from_schema_keyword() {
    // Draft 7 reads `items` as an array of positional schemas; 2020-12 would not
    // compile this schema at all.
    let c = compile(
        spec_with(
            team(),
            json!({"plans": [{"name": "S", "schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "array", "items": [{"type": "string"}]}}]}),
        ),
        &[],
    )
    .expect("draft 7 schema compiles");
    let p = c.plans.get("S").expect("registered");
    assert!(p.validate(&json!(["a", 1])).is_ok());
    assert!(p.validate(&json!([1])).is_err());
}

#[test]
fn catalog_toolkit_is_rejected_only_when_an_agent_uses_it() {
    // Declared but unused: the wire model carries it and the runtime builds.
    let spec = spec_with(
        team(),
        json!({"toolkits": [{"id": "catalog", "config": null}]}),
    );
    compile(spec, &[]).expect("unused catalog toolkit is fine");

    let mut agents = team();
    agents[3]["toolkits"] = json!(["catalog"]);
    let spec = spec_with(
        agents,
        json!({"toolkits": [{"id": "catalog", "config": null}]}),
    );
    assert_eq!(
        err(spec),
        "toolkit composition error: unknown toolkit id: catalog (agent 'product_insights')"
    );
}

#[test]
fn provider_must_be_declared() {
    let mut agents = team();
    agents[2]["model"] = json!("gpt-4o");
    let e = err(spec_with(agents, json!({})));
    assert_eq!(
        e,
        "agent 'executor' references provider 'openai-compatible' for model 'gpt-4o', but no such provider is declared in RuntimeSpec.providers"
    );

    let mut agents = team();
    agents[1]["model"] = json!({"id": "llama3", "provider": "ollama"});
    let spec = spec_with(
        agents,
        json!({"providers": {"anthropic": {"apiKey": "unused"}, "ollama": {"baseUrl": "http://x"}}}),
    );
    let c = compile(spec, &[]).expect("declared");
    assert_eq!(c.agent("planner").expect("present").provider_key, "ollama");
    assert_eq!(
        c.check_providers_registered(&|k| k == "anthropic").map_err(|e| e.to_string()),
        Err("agent 'planner' references provider 'ollama' for model 'llama3', but no ChatInterpreter is registered for that provider".to_owned())
    );

    let bedrock = spec_with(
        vec![
            json!({"name": "s", "role": "specialist", "model": "us.anthropic.claude-3",
                    "systemPrompt": "p"}),
        ],
        json!({"providers": {"anthropic": {}}}),
    );
    assert!(err(bedrock).contains("references provider 'bedrock'"));
}

#[test]
fn single_provider_interpreters_need_their_provider() {
    let spec = spec_with(team(), json!({}));
    let e = compile_spec(
        spec.clone(),
        &[],
        &BTreeSet::new(),
        &InterpreterChoice::OpenAiCompatible,
    )
    .expect_err("no openai provider")
    .to_string();
    assert_eq!(
        e,
        "interpreter='openai-compatible' requires an openai-compatible provider"
    );
    compile_spec(
        spec.clone(),
        &[],
        &BTreeSet::new(),
        &InterpreterChoice::Anthropic,
    )
    .expect("anthropic declared");
    let no_providers = {
        let mut s = spec;
        s.providers.clear();
        s
    };
    let e = compile_spec(
        no_providers,
        &[],
        &BTreeSet::new(),
        &InterpreterChoice::Scripted,
    )
    .expect_err("routing applies to deterministic interpreters too");
    assert!(matches!(e, SpecError::ProviderNotDeclared { .. }), "{e}");
}

// ---------------------------------------------------------------------------------
// Approval policy (API.md §7)

fn policy_spec(extra: Value) -> RuntimeSpec {
    spec_with(team(), extra)
}

#[test]
fn floor_applies_without_patches() {
    let c = compile(policy_spec(json!({})), &[]).expect("compiles");
    let p = &c.agent("executor").expect("present").policy;
    assert_eq!(p.tool_rule("executePlan"), &ApprovalRule::Never);
    assert_eq!(p.tool_rule("anything"), &ApprovalRule::Never);
    assert_eq!(p.plan_rule(), &ApprovalRule::Always);
}

#[test]
fn agent_patch_overrides_floor_per_channel() {
    let c = compile(
        policy_spec(json!({
            "approvalPolicies": {"plans": {"kind": "never"}, "tools": {"kind": "never"}},
            "approvalOverrides": {"agents": {"executor": {"tools": {"kind": "always"}}}}
        })),
        &[],
    )
    .expect("compiles");
    let p = &c.agent("executor").expect("present").policy;
    assert_eq!(p.tool_rule("getPlan"), &ApprovalRule::Always);
    assert_eq!(
        p.plan_rule(),
        &ApprovalRule::Never,
        "plans channel inherits the floor"
    );
    let other = &c.agent("planner").expect("present").policy;
    assert_eq!(other.tool_rule("getPlan"), &ApprovalRule::Never);
}

#[test]
fn tool_rule_beats_channel_default_both_ways() {
    // A tool-level `always` tightens a `never` floor ...
    let c = compile(
        policy_spec(json!({})),
        &[host("product_insights", "delete_all", ApprovalRule::Always)],
    )
    .expect("compiles");
    let p = &c.agent("product_insights").expect("present").policy;
    assert_eq!(p.tool_rule("delete_all"), &ApprovalRule::Always);
    assert_eq!(p.tool_rule("other"), &ApprovalRule::Never);

    // ... and a tool-level `never` relaxes an `always` floor.
    let c = compile(
        policy_spec(json!({"approvalPolicies": {"plans": {"kind": "always"},
                                                "tools": {"kind": "always"}}})),
        &[host("product_insights", "search", ApprovalRule::Never)],
    )
    .expect("compiles");
    let p = &c.agent("product_insights").expect("present").policy;
    assert_eq!(p.tool_rule("search"), &ApprovalRule::Never);
    assert_eq!(p.tool_rule("other"), &ApprovalRule::Always);
}

#[test]
fn override_wins_over_the_tools_own_rule() {
    let c = compile(
        policy_spec(json!({"approvalOverrides": {"tools": {"product_insights": {
            "search": {"kind": "never"}, "execute_query": {"kind": "always"}}}}})),
        &[
            host("product_insights", "search", ApprovalRule::Always),
            host("executor", "search", ApprovalRule::Always),
        ],
    )
    .expect("compiles");
    let p = &c.agent("product_insights").expect("present").policy;
    assert_eq!(p.tool_rule("search"), &ApprovalRule::Never);
    assert_eq!(p.tool_rule("execute_query"), &ApprovalRule::Always);
    // The override is per agent: the executor keeps the tool's own rule.
    let e = &c.agent("executor").expect("present").policy;
    assert_eq!(e.tool_rule("search"), &ApprovalRule::Always);
}

#[test]
fn dynamic_predicates_must_be_registered_everywhere() {
    let dynamic = |id: &str| json!({"kind": "dynamic", "value": id});
    let cases: Vec<(Value, Vec<HostToolDecl>, &str)> = vec![
        (
            json!({"approvalPolicies": {"plans": dynamic("floor_p")}}),
            vec![],
            "floor_p",
        ),
        (
            json!({"approvalPolicies": {"tools": dynamic("floor_t")}}),
            vec![],
            "floor_t",
        ),
        (
            json!({"approvalOverrides": {"agents": {"planner": {"plans": dynamic("patch")}}}}),
            vec![],
            "patch",
        ),
        (
            json!({"approvalOverrides": {"tools": {"planner": {"storePlan": dynamic("ovr")}}}}),
            vec![],
            "ovr",
        ),
        (
            json!({}),
            vec![host(
                "planner",
                "search",
                ApprovalRule::Dynamic("search_approval".into()),
            )],
            "search_approval",
        ),
    ];
    for (extra, tools, id) in cases {
        let spec = policy_spec(extra);
        let e = compile_spec(
            spec.clone(),
            &tools,
            &preds(&["other"]),
            &InterpreterChoice::Noop,
        )
        .expect_err("unregistered")
        .to_string();
        assert_eq!(
            e,
            format!("approval policy error: dynamic approval predicate '{id}' is not registered")
        );
        let c = compile_spec(spec, &tools, &preds(&[id]), &InterpreterChoice::Noop)
            .expect("registered");
        let all_rules: Vec<ApprovalRule> = c
            .agents
            .iter()
            .flat_map(|a| {
                let p = &a.policy;
                [
                    p.plan_rule().clone(),
                    p.tool_rule("search").clone(),
                    p.tool_rule("storePlan").clone(),
                ]
            })
            .collect();
        assert!(
            all_rules.contains(&ApprovalRule::Dynamic(id.to_owned())),
            "{id}"
        );
    }
}
