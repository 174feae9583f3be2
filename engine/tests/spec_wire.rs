//! The RuntimeSpec wire model (API.md §1, §10), spec hashing and redaction.

use std::collections::BTreeSet;

use flowai_runtime::{
    AgentRole, AgentSpec, ApprovalOverrides, ApprovalPolicies, ApprovalPolicyPatch, ApprovalRule,
    HostToolDecl, InterpreterChoice, ModelSpec, RuntimeSpec, ToolkitSpec, first_difference,
    recorded_spec, redact_secrets, spec_hash,
};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/runtime_spec.json"
));

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

fn agent(v: Value) -> Result<AgentSpec, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[test]
fn conformance_fixture_round_trips() {
    let doc = fixture();
    let spec = RuntimeSpec::from_json(FIXTURE).expect("fixture loads");
    assert_eq!(spec.to_value(), doc);
    assert_eq!(serde_json::to_value(&spec).expect("serializes"), doc);
    // Text round trip as well: parse what we wrote.
    let text = serde_json::to_string(&spec).expect("serializes");
    assert_eq!(RuntimeSpec::from_json(&text).expect("reloads"), spec);

    assert_eq!(
        spec.agents[0],
        AgentSpec {
            name: "coordinator".into(),
            role: AgentRole::Coordinator,
            stateful: true,
            model: ModelSpec::new("claude-sonnet-4-6"),
            system_prompt: "You coordinate analytical work.".into(),
            routes: vec!["planner".into(), "executor".into()],
            toolkits: vec![],
            max_turns: None,
        }
    );
    assert_eq!(
        spec.toolkits[0],
        ToolkitSpec {
            id: "catalog".into(),
            config: None
        }
    );
    assert_eq!(spec.approval_policies, ApprovalPolicies::default());
    assert!(spec.approval_overrides.is_empty());
    assert_eq!(spec.references[0].ttl_ms, Some(3_600_000));
    assert!(doc.get("approvalOverrides").is_none());
}

#[test]
fn minimal_spec_dump_matches_the_contract() {
    let spec = RuntimeSpec::from_value(json!({
        "tenant": {"resourceId": "acme", "version": "v1"},
        "agents": [{"name": "planner", "role": "planner", "model": "claude-sonnet-4-6",
                    "systemPrompt": "You produce typed plans."}],
        "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": 100}],
        "plans": [{"name": "ScenarioPlan", "schema": {"type": "object"}}],
        "providers": {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}}
    }))
    .expect("valid");
    assert_eq!(
        spec.to_value(),
        json!({"tenant": {"resourceId": "acme", "version": "v1"},
         "agents": [{"name": "planner", "role": "planner", "stateful": true,
                     "model": {"id": "claude-sonnet-4-6", "provider": null},
                     "systemPrompt": "You produce typed plans.", "routes": [], "toolkits": []}],
         "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": 100}],
         "plans": [{"name": "ScenarioPlan", "schema": {"type": "object"}, "displayAliases": []}],
         "toolkits": [],
         "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
         "storageFactories": {"kv": null, "plans": null, "memory": null},
         "providers": {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}}})
    );
}

#[test]
fn model_accepts_string_shorthand() {
    let m: ModelSpec = serde_json::from_value(json!("gpt-4o")).expect("shorthand");
    assert_eq!(
        m,
        ModelSpec {
            id: "gpt-4o".into(),
            provider: None
        }
    );
    assert_eq!(
        serde_json::to_value(&m).expect("ser"),
        json!({"id": "gpt-4o", "provider": null})
    );
    let m: ModelSpec =
        serde_json::from_value(json!({"id": "x", "provider": "ollama"})).expect("object");
    assert_eq!(m.provider.as_deref(), Some("ollama"));
    let err = serde_json::from_value::<ModelSpec>(json!({"id": "x", "region": "eu"}))
        .expect_err("unknown field");
    assert!(err.to_string().contains("region"), "{err}");
    assert!(serde_json::from_value::<ModelSpec>(json!(3)).is_err());
}

#[test]
fn agent_stateful_defaults_by_role() {
    for (role, stateful) in [
        ("coordinator", true),
        ("planner", true),
        ("executor", false),
        ("specialist", false),
    ] {
        let a = agent(json!({"name": "a", "role": role, "model": "m", "systemPrompt": "p"}))
            .expect("valid");
        assert_eq!(a.stateful, stateful, "{role}");
        let a = agent(
            json!({"name": "a", "role": role, "model": "m", "systemPrompt": "p",
                             "stateful": null}),
        )
        .expect("valid");
        assert_eq!(a.stateful, stateful, "{role} with null");
        let a = agent(
            json!({"name": "a", "role": role, "model": "m", "systemPrompt": "p",
                             "stateful": !stateful}),
        )
        .expect("valid");
        assert_eq!(a.stateful, !stateful, "{role} explicit wins");
    }
}

#[test]
fn agent_max_turns() {
    let err = agent(
        json!({"name": "a", "role": "executor", "model": "m", "systemPrompt": "p",
                           "maxTurns": 0}),
    )
    .expect_err("0 rejected");
    assert!(err.contains("agent maxTurns must be at least 1"), "{err}");

    let a = agent(
        json!({"name": "a", "role": "executor", "model": "m", "systemPrompt": "p",
                         "maxTurns": 24}),
    )
    .expect("valid");
    assert_eq!(a.max_turns, Some(24));
    assert_eq!(
        serde_json::to_value(&a).expect("ser")["maxTurns"],
        json!(24)
    );

    let a = agent(
        json!({"name": "a", "role": "executor", "model": "m", "systemPrompt": "p",
                         "maxTurns": null}),
    )
    .expect("valid");
    assert!(
        serde_json::to_value(&a)
            .expect("ser")
            .get("maxTurns")
            .is_none()
    );
}

#[test]
fn agent_rejects_unknown_role_and_fields() {
    assert!(
        agent(json!({"name": "a", "role": "test_case_builder", "model": "m", "systemPrompt": "p"}))
            .is_err()
    );
    let err = agent(
        json!({"name": "a", "role": "planner", "model": "m", "systemPrompt": "p",
                           "plan": {}}),
    )
    .expect_err("unknown field");
    assert!(err.contains("plan"), "{err}");
    assert!(agent(json!({"name": "a", "role": "planner", "model": "m"})).is_err());
}

#[test]
fn approval_rule_encodings() {
    for (rule, wire) in [
        (ApprovalRule::Never, json!({"kind": "never"})),
        (ApprovalRule::Always, json!({"kind": "always"})),
        (
            ApprovalRule::Dynamic("p".into()),
            json!({"kind": "dynamic", "value": "p"}),
        ),
    ] {
        assert_eq!(serde_json::to_value(&rule).expect("ser"), wire);
        assert_eq!(
            serde_json::from_value::<ApprovalRule>(wire).expect("de"),
            rule
        );
    }
    assert!(serde_json::from_value::<ApprovalRule>(json!({"kind": "sometimes"})).is_err());
    assert!(serde_json::from_value::<ApprovalRule>(json!({"kind": "dynamic"})).is_err());
    assert!(serde_json::from_value::<ApprovalRule>(json!({"kind": "never", "extra": 1})).is_err());
}

#[test]
fn approval_overrides_are_dumped_when_set() {
    let mut spec = RuntimeSpec::from_json(FIXTURE).expect("fixture");
    spec.approval_overrides = ApprovalOverrides {
        agents: [(
            "executor".to_owned(),
            ApprovalPolicyPatch {
                plans: None,
                tools: Some(ApprovalRule::Always),
            },
        )]
        .into(),
        tools: [(
            "executor".to_owned(),
            [("search_products".to_owned(), ApprovalRule::Never)].into(),
        )]
        .into(),
    };
    let v = spec.to_value();
    assert_eq!(
        v["approvalOverrides"],
        json!({"agents": {"executor": {"tools": {"kind": "always"}}},
               "tools": {"executor": {"search_products": {"kind": "never"}}}})
    );
    assert_eq!(RuntimeSpec::from_value(v).expect("reloads"), spec);
}

#[test]
fn policies_default_per_channel() {
    let p: ApprovalPolicies =
        serde_json::from_value(json!({"tools": {"kind": "always"}})).expect("partial");
    assert_eq!(p.plans, ApprovalRule::Always);
    assert_eq!(p.tools, ApprovalRule::Always);
}

#[test]
fn spec_rejects_unknown_top_level_fields() {
    let mut doc = fixture();
    doc["toolBindings"] = json!([]);
    let err = RuntimeSpec::from_value(doc).expect_err("unknown field");
    assert!(err.to_string().contains("toolBindings"), "{err}");
}

#[test]
fn spec_hash_is_stable_under_key_order_and_changes_with_content() {
    let doc = fixture();
    let reordered: Value = {
        // Re-serialize with keys in reverse order by building the text by hand.
        fn rev(v: &Value) -> String {
            match v {
                Value::Object(m) => {
                    let parts: Vec<String> = m
                        .iter()
                        .rev()
                        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), rev(v)))
                        .collect();
                    format!("{{{}}}", parts.join(","))
                }
                Value::Array(a) => format!("[{}]", a.iter().map(rev).collect::<Vec<_>>().join(",")),
                other => other.to_string(),
            }
        }
        serde_json::from_str(&rev(&doc)).expect("json")
    };
    assert_eq!(spec_hash(&doc), spec_hash(&reordered));

    let mut changed = doc.clone();
    changed["agents"][1]["systemPrompt"] = json!("You produce typed plans!");
    assert_ne!(spec_hash(&doc), spec_hash(&changed));
    assert_eq!(
        first_difference(&doc, &changed).as_deref(),
        Some("agents[1].systemPrompt")
    );
    assert_eq!(first_difference(&doc, &reordered), None);
}

#[test]
fn redaction_removes_keys_and_header_values() {
    let mut doc = json!({
        "tenant": {"resourceId": "acme", "version": "v1"},
        "providers": {
            "anthropic": {"apiKey": "sk-secret", "apiKeyEnv": "ANTHROPIC_API_KEY",
                          "headers": {"x-team": "t1", "authorization": "Bearer abc"}},
            "openai-compatible": {"apiKeyEnv": "OPENAI_API_KEY", "baseUrl": "http://localhost:1"},
            "bedrock": "opaque"
        }
    });
    redact_secrets(&mut doc);
    assert_eq!(
        doc["providers"],
        json!({
            "anthropic": {"apiKey": "<redacted>", "apiKeyEnv": "ANTHROPIC_API_KEY",
                          "headers": {"x-team": "<redacted>", "authorization": "<redacted>"}},
            "openai-compatible": {"apiKeyEnv": "OPENAI_API_KEY", "baseUrl": "http://localhost:1"},
            "bedrock": "opaque"
        })
    );
    assert!(!doc.to_string().contains("sk-secret"));
    // No providers at all is fine.
    let mut bare = json!({"tenant": {}});
    redact_secrets(&mut bare);
    assert_eq!(bare, json!({"tenant": {}}));
}

#[test]
fn recorded_spec_is_redacted_and_hash_sensitive() {
    let mut spec = RuntimeSpec::from_json(FIXTURE).expect("fixture");
    spec.providers
        .insert("openai-compatible".into(), json!({"apiKey": "sk-live"}));
    let tools = vec![HostToolDecl {
        agent: "executor".into(),
        binding_key: "search".into(),
        name: "search".into(),
        description: "Search.".into(),
        input_schema: json!({"type": "object"}),
        approval: ApprovalRule::Dynamic("search_approval".into()),
    }];
    let preds: BTreeSet<String> = ["search_approval".to_owned()].into();
    let rec = recorded_spec(&spec, &tools, &preds, &InterpreterChoice::Scripted);
    assert!(!rec.to_string().contains("sk-live"));
    assert_eq!(
        rec["runtimeSpec"]["providers"]["openai-compatible"]["apiKey"],
        json!("<redacted>")
    );
    assert_eq!(rec["interpreter"], json!("scripted"));
    assert_eq!(rec["predicates"], json!(["search_approval"]));
    assert_eq!(
        rec["hostTools"][0],
        json!({"agent": "executor", "bindingKey": "search", "name": "search",
               "description": "Search.", "inputSchema": {"type": "object"},
               "approval": {"kind": "dynamic", "value": "search_approval"}})
    );
    let decl: HostToolDecl =
        serde_json::from_value(rec["hostTools"][0].clone()).expect("reads back");
    assert_eq!(decl, tools[0]);

    let h = spec_hash(&rec);
    let mock = recorded_spec(&spec, &tools, &preds, &InterpreterChoice::Mock("hi".into()));
    assert_ne!(h, spec_hash(&mock));
    let noop = recorded_spec(&spec, &tools, &preds, &InterpreterChoice::Noop);
    assert_ne!(spec_hash(&noop), spec_hash(&mock));
    // A different secret does not change the hash: it never reaches the record.
    spec.providers
        .insert("openai-compatible".into(), json!({"apiKey": "sk-other"}));
    assert_eq!(
        h,
        spec_hash(&recorded_spec(
            &spec,
            &tools,
            &preds,
            &InterpreterChoice::Scripted
        ))
    );
}
