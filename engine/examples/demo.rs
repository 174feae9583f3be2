//! A durable coordinator → planner → executor run on a local redb file.
//!
//! `cargo run -p flowai-runtime --example demo -- [STORE]` runs two processes one after
//! the other, as an operator would see them:
//! 1. the first starts a run that looks up prices with a host tool, has the planner
//!    store a typed price-change plan referencing a product set, and has the executor
//!    ask to execute it; the plan needs approval, and the process exits at the gate
//!    without closing anything, as a crashed process would;
//! 2. the second opens the same file, finds the pending approval, approves it, resumes
//!    the run (nothing recorded is called again) and prints what was dispatched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use async_trait::async_trait;
use flowai_runtime::{
    Decision, DispatchContext, Host, HostToolCall, HostToolDecl, HostToolOutcome,
    InterpreterChoice, PredicateContext, RandomIds, Runtime, RuntimeOptions, RuntimeSpec,
};
use flowai_storage::{Store, SystemClock};
use serde_json::{Value, json};

fn spec() -> anyhow::Result<RuntimeSpec> {
    let agent = |name: &str, role: &str, routes: &[&str], prompt: &str| {
        json!({"name": name, "role": role, "model": {"id": "claude-sonnet-4-6", "provider": null},
               "systemPrompt": prompt, "routes": routes, "toolkits": []})
    };
    Ok(serde_json::from_value(json!({
        "tenant": {"resourceId": "acme", "version": "2026-11-25"},
        "agents": [
            agent("coordinator", "coordinator", &["planner", "executor"], "You coordinate pricing work."),
            agent("planner", "planner", &[], "You produce typed price plans."),
            agent("executor", "executor", &[], "You execute approved plans."),
        ],
        "references": [{"name": "ProductSet", "schema": {"type": "object", "properties": {"skus": {"type": "array"}}, "required": ["skus"]}, "ttlMs": 86_400_000}],
        "plans": [{"name": "PricePlan", "schema": {
            "type": "object", "required": ["actions"],
            "properties": {"actions": {"type": "array", "items": {"type": "object", "required": ["kind", "sku", "new_price"]}}}
        }, "displayAliases": []}],
        "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "unused"}},
    }))?)
}

/// The host: one tool handler and the action dispatcher.
#[derive(Default)]
struct DemoHost {
    dispatched: Mutex<Vec<Value>>,
}

#[async_trait]
impl Host for DemoHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        let prices = json!({"sku-1": 12.5, "sku-2": 8.0});
        println!(
            "  [host] lookup_prices {} (attempt {})",
            call.args, call.ctx.attempt
        );
        HostToolOutcome {
            result: Ok(json!({"prices": prices, "displaySummary": "2 prices found"})),
            created_references: Vec::new(),
        }
    }

    async fn evaluate_predicate(&self, _id: &str, _args: &Value, _ctx: &PredicateContext) -> bool {
        true
    }

    fn has_dispatcher(&self) -> bool {
        true
    }

    async fn dispatch_actions(
        &self,
        actions: Value,
        ctx: DispatchContext,
    ) -> Result<Value, String> {
        println!(
            "  [host] dispatching {} action(s), idempotency key {}",
            actions.as_array().map_or(0, Vec::len),
            ctx.idempotency_key
        );
        self.dispatched
            .lock()
            .map_err(|_| String::from("dispatcher lock poisoned"))?
            .push(actions.clone());
        let count = actions.as_array().map_or(0, Vec::len);
        Ok(json!({"entitiesAffected": count, "summary": format!("{count} prices changed")}))
    }
}

fn runtime(store: Store, host: Arc<DemoHost>) -> anyhow::Result<Runtime> {
    let tool: HostToolDecl = serde_json::from_value(json!({
        "agent": "coordinator", "bindingKey": "lookup_prices", "name": "lookup_prices",
        "description": "Look up current prices.", "inputSchema": {"type": "object", "properties": {"skus": {"type": "array"}}},
        "approval": {"kind": "never"},
    }))?;
    Ok(Runtime::new(RuntimeOptions {
        spec: spec()?,
        host_tools: vec![tool],
        predicates: BTreeSet::new(),
        interpreter: InterpreterChoice::Scripted,
        store,
        host,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        handle: tokio::runtime::Handle::current(),
        env: Arc::new(|name| std::env::var(name).ok()),
        event_buffer: 64,
    })?)
}

fn print_event(event: &Value) {
    let kind = event["type"].as_str().unwrap_or_default();
    let detail = match kind {
        "tool-agent" => format!("{} {}", event["agentName"], event["state"]),
        "tool-invocation" => format!("{} {}", event["toolName"], event["state"]),
        "text" => {
            let text = event["text"].as_str().unwrap_or_default();
            let cut: String = text.chars().take(72).collect();
            if cut.len() < text.len() {
                format!("{cut}…")
            } else {
                cut
            }
        }
        "approval-required" | "approval-decision" => event["data"]["id"].to_string(),
        "plan-status-change" => format!("{} -> {}", event["data"]["from"], event["data"]["to"]),
        "error" => event["error"]["message"].to_string(),
        _ => String::new(),
    };
    println!("  {kind:<20} {detail}");
}

async fn start(path: &Path) -> anyhow::Result<()> {
    let store = Store::open(path, Default::default())?;
    let runtime = runtime(store, Arc::new(DemoHost::default()))?;
    let products = json!({"skus": ["sku-1", "sku-2"]});
    let reference = runtime
        .create_reference(
            "ProductSet",
            &products,
            &json!({"count": 2, "sample": ["sku-1", "sku-2"]}),
        )
        .await?;
    let plan_body = json!({"actions": [
        {"kind": "price_change", "sku": "sku-1", "new_price": 11.99, "references": [{"kind": "ProductSet", "id": reference.id}]},
        {"kind": "price_change", "sku": "sku-2", "new_price": 7.49},
    ], "rationale": "match competitor prices"});
    let planner = json!({"tool": "storePlan", "args": {"specName": "PricePlan", "planId": "price-plan-1", "body": plan_body}});
    let executor = json!({"tool": "executePlan", "args": {"planId": "price-plan-1"}});
    let script = json!({"script": [
        {"tool": "lookup_prices", "args": {"skus": ["sku-1", "sku-2"]}},
        {"tool": "call_agent", "args": {"agent": "planner", "prompt": planner.to_string()}},
        {"tool": "call_agent", "args": {"agent": "executor", "prompt": executor.to_string()}},
    ]});
    let mut stream = runtime.query(&script.to_string(), "pricing-thread", None)?;
    println!("process 1: run {}", stream.run_id());
    while let Some(event) = stream.next().await {
        let event = event?.to_value();
        print_event(&event);
        if event["type"] == "approval-required" {
            println!(
                "process 1: waiting for approval {} — exiting without closing, like a crash",
                event["data"]["id"]
            );
            std::process::exit(0);
        }
    }
    bail!("the run ended without asking for approval")
}

async fn approve(path: &Path) -> anyhow::Result<()> {
    let store = Store::open(path, Default::default())?;
    let host = Arc::new(DemoHost::default());
    let runtime = runtime(store, Arc::clone(&host))?;
    let suspended = runtime.runs(None, Some(flowai_storage::RunStatus::Suspended), 10)?;
    let run = suspended.first().context("no suspended run in the store")?;
    let run_id = run.meta.run_id.to_string();
    let approval = run
        .pending_approvals
        .first()
        .context("no pending approval")?
        .clone();
    println!(
        "process 2: run {run_id} is {}; approving {approval}",
        run.meta.status.as_str()
    );
    runtime
        .respond_to_approval(
            &approval,
            Decision {
                outcome: String::from("approve"),
                feedback: None,
                partial: None,
            },
        )
        .await?;
    let mut stream = runtime.resume(&run_id, false)?;
    while let Some(event) = stream.next().await {
        print_event(&event?.to_value());
    }
    let info = runtime.run(&run_id)?;
    println!(
        "process 2: dispatched {}",
        serde_json::to_string(
            &*host
                .dispatched
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
        )?
    );
    println!(
        "summary: run {run_id} {} — {} records, agent {}, thread {}",
        info.meta.status.as_str(),
        info.records,
        info.meta.agent,
        info.meta.thread
    );
    for entry in runtime.journal(&run_id, 0)? {
        if entry.kind == "PlanTransitioned" {
            println!(
                "  plan {}: {} -> {}",
                entry.data["planId"], entry.data["from"], entry.data["to"]
            );
        }
    }
    runtime.close()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.get(1).map(String::as_str) {
        Some("--phase=start") => rt.block_on(start(Path::new(&args[2]))),
        Some("--phase=approve") => rt.block_on(approve(Path::new(&args[2]))),
        other => {
            let path = PathBuf::from(other.unwrap_or("demo.redb"));
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            let exe = std::env::current_exe()?;
            for phase in ["--phase=start", "--phase=approve"] {
                let status = Command::new(&exe).arg(phase).arg(&path).status()?;
                if !status.success() {
                    bail!("{phase} failed: {status}");
                }
            }
            println!("store: {}", path.display());
            Ok(())
        }
    }
}
