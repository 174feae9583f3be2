//! The plans toolkit (`storePlan`, `getPlan`, `executePlan`), the plan lifecycle and
//! the action dispatch (API.md §5.2–§5.6).
//!
//! Every plan version and transition is a journal record of the run; the store's plan
//! table is a projection used for live lookups only. On resume and verify, a plan this
//! run wrote is read back from the run's own records, and `executePlan` is re-entered
//! through its nested records (it is never re-run whole). A plan stored by an earlier
//! run is read back from this run's gate request or transition records, which carry
//! the full plan, so a replay never depends on what the table says today.

use flowai_storage::payloads;
use flowai_storage::{IndexUpdate, PlanRow, Precondition, RecordKind};
use serde_json::{Map, Value, json};

use crate::driver::{Driver, GateOutcome, Invocation, ToolOutcome, parse_raw, raw};
use crate::error::EngineError;
use crate::host::DispatchContext;
use crate::ids::rfc3339_ms;
use crate::spec::BuiltinTool;

/// The plan lifecycle as a transition table: anything not listed is an error.
const TRANSITIONS: [(&str, &str); 4] = [
    ("draft", "approved"),
    ("approved", "executing"),
    ("executing", "executed"),
    ("executing", "failed"),
];

/// Checks a plan transition against the table (API.md §5.4 messages).
pub fn check_transition(from: &str, to: &str) -> Result<(), String> {
    if TRANSITIONS.contains(&(from, to)) {
        return Ok(());
    }
    if matches!(from, "executed" | "failed") {
        return Err(format!("plan is in terminal state: {from}"));
    }
    let expected = TRANSITIONS
        .iter()
        .find(|(_, target)| *target == to)
        .map_or("none", |(source, _)| *source);
    Err(format!(
        "invalid transition: expected {expected}, got {from}"
    ))
}

/// Flattens and validates a planner body into stored actions and context (§5.3).
pub fn flatten_body(spec_name: &str, body: &Value) -> Result<(Vec<Value>, Value), String> {
    let Some(actions) = body.get("actions") else {
        return Err(format!(
            "planner output for spec '{spec_name}' is missing the required `actions` field"
        ));
    };
    let Some(actions) = actions.as_array() else {
        return Err(format!(
            "`actions` for spec '{spec_name}' must be a JSON array"
        ));
    };
    if actions.is_empty() {
        return Err(format!(
            "planner output for spec '{spec_name}' produced an empty action sequence"
        ));
    }
    let mut stored = Vec::with_capacity(actions.len());
    for (index, action) in actions.iter().enumerate() {
        let fail =
            |why: String| format!("action #{index} for spec '{spec_name}' failed to decode: {why}");
        let Some(object) = action.as_object() else {
            return Err(fail(String::from("action must be a JSON object")));
        };
        let Some(kind) = object.get("kind").and_then(Value::as_str) else {
            return Err(fail(String::from(
                "action is missing required string field `kind`",
            )));
        };
        let references = match object.get("references") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut refs = Vec::with_capacity(items.len());
                for item in items {
                    let kind = item.get("kind").and_then(Value::as_str);
                    let id = item.get("id").and_then(Value::as_str);
                    match (kind, id) {
                        (Some(kind), Some(id)) => refs.push(json!({"kind": kind, "id": id})),
                        _ => {
                            return Err(fail(format!(
                                "`references` did not match `[ArtifactRef]`: each reference needs string fields `kind` and `id`, got {item}"
                            )));
                        }
                    }
                }
                refs
            }
            Some(other) => {
                return Err(fail(format!(
                    "`references` did not match `[ArtifactRef]`: expected an array, got {other}"
                )));
            }
        };
        let payload: Map<String, Value> = object
            .iter()
            .filter(|(key, _)| key.as_str() != "kind" && key.as_str() != "references")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        stored.push(json!({"kind": kind, "payload": payload, "references": references}));
    }
    let context: Map<String, Value> = body
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(key, _)| key.as_str() != "actions")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok((stored, Value::Object(context)))
}

/// Validates a dispatcher's return value (§5.6); returns `(entitiesAffected, summary, details)`.
pub fn check_dispatch_envelope(value: &Value) -> Result<(u64, Value, Value), String> {
    let object = match value {
        Value::Null => return Ok((0, Value::Null, Value::Null)),
        Value::Object(object) => object,
        _ => {
            return Err(String::from(
                "action_dispatcher must return None or an object with required field `entitiesAffected`, optional `summary`, and optional `details`",
            ));
        }
    };
    for key in object.keys() {
        if !matches!(key.as_str(), "entitiesAffected" | "summary" | "details") {
            return Err(format!(
                "action_dispatcher returned unexpected field `{key}`; put domain-specific data under `details`"
            ));
        }
    }
    let Some(entities) = object.get("entitiesAffected") else {
        return Err(String::from(
            "action_dispatcher must return None or an object with required field `entitiesAffected` as a non-negative integer",
        ));
    };
    let Some(entities) = entities.as_u64() else {
        return Err(String::from(
            "action_dispatcher field `entitiesAffected` must be a non-negative integer",
        ));
    };
    let summary = object.get("summary").cloned().unwrap_or(Value::Null);
    if !matches!(summary, Value::Null | Value::String(_)) {
        return Err(String::from(
            "action_dispatcher field `summary` must be a string or null",
        ));
    }
    Ok((
        entities,
        summary,
        object.get("details").cloned().unwrap_or(Value::Null),
    ))
}

fn status_of(plan: &Value) -> &str {
    plan.get("status")
        .and_then(Value::as_str)
        .unwrap_or("draft")
}

pub(crate) async fn run_plan_tool(
    driver: &mut Driver,
    inv: &Invocation<'_>,
    tool: BuiltinTool,
    args: &Value,
) -> Result<ToolOutcome, EngineError> {
    match tool {
        BuiltinTool::StorePlan => store_plan(driver, args).await,
        BuiltinTool::GetPlan => Ok(get_plan(driver, args)),
        _ => execute_plan(driver, inv, args).await,
    }
}

fn string_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, ToolOutcome> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolOutcome::error(format!("Invalid input: missing field `{name}`")))
}

/// The outcome is already journaled: the caller reads it from ToolCallCompleted.
fn recorded_outcome() -> ToolOutcome {
    ToolOutcome::ok(Value::Null)
}

/// A plan as this run last journaled it. The version is kept beside the JSON because
/// the stored plan shape (§5.4) has no version field; it only feeds the plan table.
#[derive(Clone, Debug)]
pub(crate) struct KnownPlan {
    pub(crate) plan: Value,
    pub(crate) version: u64,
}

fn plan_row(driver: &mut Driver, plan_id: &str, known: &KnownPlan, seq: u64) -> IndexUpdate {
    let run_id = driver.journal().run_id();
    IndexUpdate::PutPlan(PlanRow {
        tenant: driver.tenant().to_owned(),
        plan_id: plan_id.to_owned(),
        version: known.version,
        status: status_of(&known.plan).to_owned(),
        body: known.plan.to_string(),
        run_id,
        seq,
    })
}

/// The plan table's row, read live (store-only built-ins and plans of earlier runs).
fn stored_row(driver: &mut Driver, plan_id: &str) -> Result<Option<KnownPlan>, EngineError> {
    Ok(stored_row_of(driver, plan_id)?.map(|(known, _)| known))
}

/// The plan table's row and the run that wrote it.
fn stored_row_of(
    driver: &mut Driver,
    plan_id: &str,
) -> Result<Option<(KnownPlan, flowai_storage::RunId)>, EngineError> {
    let tenant = driver.tenant().to_owned();
    let Some(row) = driver.journal().store().plan(&tenant, plan_id)? else {
        return Ok(None);
    };
    let plan = serde_json::from_str(&row.body)
        .map_err(|e| EngineError::Internal(format!("stored plan {plan_id} is not JSON: {e}")))?;
    let known = KnownPlan {
        plan,
        version: row.version,
    };
    Ok(Some((known, row.run_id)))
}

/// The version of a plan this run learns from a record that does not carry one. Only
/// the plan table's rows use it, so the live table is an acceptable source.
fn version_hint(driver: &mut Driver, plan_id: &str) -> Result<u64, EngineError> {
    if let Some(known) = driver.plans.get(plan_id) {
        return Ok(known.version);
    }
    Ok(stored_row(driver, plan_id)?.map_or(1, |known| known.version))
}

async fn store_plan(driver: &mut Driver, args: &Value) -> Result<ToolOutcome, EngineError> {
    match driver.journal().peek_kind() {
        Some(RecordKind::PlanStored) => {
            if let Some((_, stored)) = driver.journal().take::<payloads::PlanStored>().await? {
                let known = KnownPlan {
                    plan: parse_raw(&stored.plan),
                    version: stored.version,
                };
                driver.plans.insert(stored.plan_id, known);
            }
            return Ok(recorded_outcome());
        }
        Some(RecordKind::ToolCallCompleted) => return Ok(recorded_outcome()),
        _ => {}
    }
    let (spec_name, plan_id) = match (string_arg(args, "specName"), string_arg(args, "planId")) {
        (Ok(s), Ok(p)) => (s.to_owned(), p.to_owned()),
        (Err(e), _) | (_, Err(e)) => return Ok(e),
    };
    let Some(body) = args.get("body") else {
        return Ok(ToolOutcome::error("Invalid input: missing field `body`"));
    };
    let plans = &driver.shared().compiled.plans;
    let Some(plan_spec) = plans.get(&spec_name) else {
        return Ok(ToolOutcome::error(format!(
            "unknown plan spec: {spec_name}"
        )));
    };
    if let Err(errors) = plan_spec.validate(body) {
        return Ok(ToolOutcome::error(format!(
            "schema validation failed for spec '{spec_name}': {}",
            serde_json::to_string(&errors).unwrap_or_default()
        )));
    }
    let (actions, context) = match flatten_body(&spec_name, body) {
        Ok(flat) => flat,
        Err(message) => return Ok(ToolOutcome::error(message)),
    };
    // The table is fresher than this run's view only when another run wrote the plan
    // last; this run's own latest version may not be committed yet.
    let seen = driver.plans.get(&plan_id).cloned();
    let run = driver.journal().run_id();
    let (table, other_writer) = match stored_row_of(driver, &plan_id)? {
        Some((known, writer)) => (Some(known), writer != run),
        None => (None, false),
    };
    let current = match (&seen, &table) {
        (Some(_), Some(_)) if other_writer => table.as_ref(),
        (Some(_), _) => seen.as_ref(),
        (None, _) => table.as_ref(),
    };
    if current.is_some_and(|known| status_of(&known.plan) == "executing") {
        return Ok(ToolOutcome::error(format!("plan {plan_id} is executing")));
    }
    let version = [seen.as_ref(), table.as_ref()]
        .iter()
        .flatten()
        .map(|known| known.version)
        .max()
        .map_or(1, |latest| latest + 1);
    let now = rfc3339_ms(driver.journal().now_ms());
    let plan = json!({
        "id": plan_id, "owner": driver.tenant(), "actions": actions, "status": "draft",
        "description": null, "context": context, "createdAt": now, "approvedAt": null,
        "startedAt": null, "completedAt": null, "failedAt": null, "approvedBy": null,
        "outcome": null,
    });
    let known = KnownPlan {
        plan: plan.clone(),
        version,
    };
    let seq = driver.journal().next_seq();
    let row = plan_row(driver, &plan_id, &known, seq);
    driver.journal().push(
        &payloads::PlanStored {
            plan_id: plan_id.clone(),
            version,
            spec_name,
            plan: raw(&plan)?,
        },
        vec![row],
    )?;
    driver.plans.insert(plan_id, known);
    Ok(ToolOutcome::ok(plan))
}

fn get_plan(driver: &mut Driver, args: &Value) -> ToolOutcome {
    if driver.journal().peek_kind() == Some(RecordKind::ToolCallCompleted) {
        return recorded_outcome();
    }
    let plan_id = match string_arg(args, "planId") {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Some(known) = driver.plans.get(plan_id) {
        return ToolOutcome::ok(known.plan.clone());
    }
    match stored_row(driver, plan_id) {
        Ok(Some(known)) => ToolOutcome::ok(known.plan),
        Ok(None) => ToolOutcome::ok(Value::Null),
        Err(e) => ToolOutcome::error(format!("plan store error: {e}")),
    }
}

/// Records a transition checked against the table; returns the new plan JSON.
async fn transition(
    driver: &mut Driver,
    plan_id: &str,
    to: &str,
    emit: bool,
    outcome: Option<Value>,
) -> Result<Value, EngineError> {
    if let Some((seq, recorded)) = driver
        .journal()
        .take::<payloads::PlanTransitioned>()
        .await?
    {
        if recorded.plan_id != plan_id || recorded.to != to {
            return Err(driver.nondeterminism(
                seq,
                format!("move plan {} to {}", recorded.plan_id, recorded.to),
                format!("move plan {plan_id} to {to}"),
            ));
        }
        let plan = parse_raw(&recorded.plan);
        let version = version_hint(driver, plan_id)?;
        driver.plans.insert(
            plan_id.to_owned(),
            KnownPlan {
                plan: plan.clone(),
                version,
            },
        );
        return Ok(plan);
    }
    let mut known = driver
        .plans
        .get(plan_id)
        .cloned()
        .ok_or_else(|| EngineError::Internal(format!("plan {plan_id} is not loaded")))?;
    let from = status_of(&known.plan).to_owned();
    check_transition(&from, to).map_err(EngineError::Internal)?;
    let now = rfc3339_ms(driver.journal().now_ms());
    let Some(object) = known.plan.as_object_mut() else {
        return Err(EngineError::Internal(format!(
            "plan {plan_id} is not a JSON object"
        )));
    };
    object.insert(String::from("status"), json!(to));
    let stamp = match to {
        "approved" => {
            object.insert(String::from("approvedBy"), json!("runtime"));
            "approvedAt"
        }
        "executing" => "startedAt",
        "executed" => "completedAt",
        _ => "failedAt",
    };
    object.insert(String::from(stamp), json!(now));
    if let Some(outcome) = outcome {
        object.insert(String::from("outcome"), outcome);
    }
    let seq = driver.journal().next_seq();
    let row = plan_row(driver, plan_id, &known, seq);
    driver.journal().push(
        &payloads::PlanTransitioned {
            plan_id: plan_id.to_owned(),
            from,
            to: to.to_owned(),
            plan: raw(&known.plan)?,
            emit,
        },
        vec![row],
    )?;
    let plan = known.plan.clone();
    driver.plans.insert(plan_id.to_owned(), known);
    Ok(plan)
}

/// The plan as this run's own records show it where the run re-enters an
/// `executePlan` of a plan it did not store: the gate's request carries the plan, a
/// transition carries it too (with the status it left).
fn recorded_plan(driver: &mut Driver, plan_id: &str) -> Result<Option<Value>, EngineError> {
    let run = driver.journal().run_id();
    let from = driver.journal().next_recorded_seq();
    let mut found = None;
    let mut failure = None;
    driver
        .journal()
        .store()
        .scan_records(run, from, &mut |seq, view| {
            let parsed = match view.kind {
                RecordKind::PredicateEvaluated => return std::ops::ControlFlow::Continue(()),
                RecordKind::ApprovalRequested => {
                    serde_json::from_str::<payloads::ApprovalRequested>(view.payload).map(|r| {
                        (r.kind == "plan" && r.target == plan_id).then(|| parse_raw(&r.payload))
                    })
                }
                RecordKind::PlanTransitioned => {
                    serde_json::from_str::<payloads::PlanTransitioned>(view.payload).map(|r| {
                        (r.plan_id == plan_id).then(|| {
                            let mut plan = parse_raw(&r.plan);
                            if let Some(object) = plan.as_object_mut() {
                                object.insert(String::from("status"), json!(r.from));
                            }
                            plan
                        })
                    })
                }
                _ => Ok(None),
            };
            match parsed {
                Ok(plan) => found = plan,
                Err(e) => {
                    failure = Some(EngineError::CorruptPayload {
                        seq,
                        kind: view.kind.name(),
                        reason: e.to_string(),
                    });
                }
            }
            std::ops::ControlFlow::Break(())
        })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// Makes the plan known to this run and returns its status; `None` if there is no
/// such plan for this tenant.
fn load_plan(driver: &mut Driver, plan_id: &str) -> Result<Option<String>, EngineError> {
    if let Some(known) = driver.plans.get(plan_id) {
        return Ok(Some(status_of(&known.plan).to_owned()));
    }
    // Replaying: the run's records, not the live table, say what the plan was then.
    let recorded = if driver.journal().replaying() {
        recorded_plan(driver, plan_id)?
    } else {
        None
    };
    let known = match recorded {
        Some(plan) => KnownPlan {
            plan,
            version: version_hint(driver, plan_id)?,
        },
        None => match stored_row(driver, plan_id)? {
            Some(known) => known,
            None => return Ok(None),
        },
    };
    let status = status_of(&known.plan).to_owned();
    driver.plans.insert(plan_id.to_owned(), known);
    Ok(Some(status))
}

async fn execute_plan(
    driver: &mut Driver,
    inv: &Invocation<'_>,
    args: &Value,
) -> Result<ToolOutcome, EngineError> {
    let plan_id = match string_arg(args, "planId") {
        Ok(p) => p.to_owned(),
        Err(e) => return Ok(e),
    };
    if driver.journal().peek_kind() == Some(RecordKind::ToolCallCompleted)
        && !driver.plans.contains_key(&plan_id)
    {
        // Ended without a gate or a transition (unknown plan, invalid state): the
        // recorded result stands.
        return Ok(recorded_outcome());
    }
    let Some(status) = load_plan(driver, &plan_id)? else {
        return Ok(ToolOutcome::error(format!("plan not found: {plan_id}")));
    };
    match status.as_str() {
        "draft" => {
            let plan = driver
                .plans
                .get(&plan_id)
                .map_or(Value::Null, |known| known.plan.clone());
            let rule = inv.agent.policy.plan_rule().clone();
            let gate = driver
                .gate(
                    "plan",
                    &plan_id,
                    &plan,
                    Some(plan_id.clone()),
                    &rule,
                    &inv.thread,
                )
                .await?;
            // The approval's own status change is emitted only when the engine approved.
            let emit = match gate {
                GateOutcome::Open => true,
                GateOutcome::Decided(decided) => match decided.outcome.as_str() {
                    "approve" => false,
                    "revise" => {
                        let partial = decided.partial.as_deref().map_or(Value::Null, parse_raw);
                        return Ok(ToolOutcome::ok(json!({
                            "rejected": true, "should_revise": true,
                            "plan_id": plan_id, "partial": partial,
                        })));
                    }
                    "cancelled" => {
                        return Ok(ToolOutcome::error(format!(
                            "Plan {plan_id} approval was cancelled"
                        )));
                    }
                    _ => {
                        let reason = decided
                            .feedback
                            .unwrap_or_else(|| String::from("Plan rejected"));
                        return Ok(ToolOutcome::error(format!(
                            "Plan {plan_id} rejected: {reason}"
                        )));
                    }
                },
            };
            execute_approved(driver, inv, &plan_id, Some(emit)).await
        }
        "approved" => execute_approved(driver, inv, &plan_id, None).await,
        other => Ok(ToolOutcome::error(format!(
            "Invalid plan state for execution: {other}"
        ))),
    }
}

/// `executing → failed` with its outcome; the executePlan error result.
async fn fail_execution(
    driver: &mut Driver,
    plan_id: &str,
    message: String,
) -> Result<ToolOutcome, EngineError> {
    let outcome = json!({"state": "failed", "message": message, "code": null, "details": null});
    transition(driver, plan_id, "failed", false, Some(outcome)).await?;
    Ok(ToolOutcome::error(format!("Dispatch failed: {message}")))
}

/// A live transition of `executePlan` made under a plan guard: the status the run saw.
struct PlanGuard {
    expected: &'static str,
}

/// From here on, this run's records are committed only if the plan row still has the
/// status `expected` (the one this run saw). Only live: a replayed transition was
/// already committed under its guard.
async fn guard_plan(
    driver: &mut Driver,
    plan_id: &str,
    expected: &'static str,
) -> Result<Option<PlanGuard>, EngineError> {
    if driver.journal().replaying() {
        return Ok(None);
    }
    let precondition = Precondition::PlanStatusIn {
        tenant: driver.tenant().to_owned(),
        plan_id: plan_id.to_owned(),
        statuses: vec![expected.to_owned()],
    };
    driver.journal().guard_from_here(precondition).await?;
    Ok(Some(PlanGuard { expected }))
}

/// Commits the records pushed under the plan guard, if one is set. When the plan no
/// longer has the status the run saw, nothing was written (the journal already dropped
/// those records) and the result is the refusal, which the run journals as this call's
/// outcome, so that a replay finds it where a transition would be.
///
/// The run's view of the plan is stale then, so it forgets it rather than restoring it:
/// later calls read the plan as one of another run (the table live, the run's own records
/// on replay), and a replay forgets it at the same point ([`execute_approved`]).
async fn commit_guarded(
    driver: &mut Driver,
    plan_id: &str,
    guard: &mut Option<PlanGuard>,
) -> Result<Option<ToolOutcome>, EngineError> {
    let Some(PlanGuard { expected }) = guard.take() else {
        return Ok(None);
    };
    let Err(why) = driver.journal().flush_guarded().await? else {
        return Ok(None);
    };
    driver.plans.remove(plan_id);
    tracing::debug!(plan_id, %why, "plan moved by another run; not dispatching");
    Ok(Some(ToolOutcome::error(format!(
        "Plan {plan_id} is no longer {expected}: another run is executing it or has executed it"
    ))))
}

/// `draft → approved` when `approve` is set (its value: whether that transition emits
/// its status change), then `approved → executing`, hydration, dispatch,
/// `executed | failed`.
///
/// Live, the first of these transitions and everything up to the dispatch intent are
/// committed together under a plan guard: of two runs that saw the plan in the same
/// status, one moves it on and dispatches, the other gets an error result.
async fn execute_approved(
    driver: &mut Driver,
    _inv: &Invocation<'_>,
    plan_id: &str,
    approve: Option<bool>,
) -> Result<ToolOutcome, EngineError> {
    if driver.journal().peek_kind() == Some(RecordKind::ToolCallCompleted) {
        // An earlier drive of this call was refused by the guard: none of its
        // transitions were written and the recorded result is the refusal. The live
        // drive forgot the plan there; so does this one.
        driver.plans.remove(plan_id);
        return Ok(recorded_outcome());
    }
    let mut guard = None;
    if let Some(emit) = approve {
        guard = guard_plan(driver, plan_id, "draft").await?;
        transition(driver, plan_id, "approved", emit, None).await?;
    }
    if guard.is_none() {
        // Approved by an earlier drive or run (or replayed up to here): guard from the
        // first transition this drive makes live.
        guard = guard_plan(driver, plan_id, "approved").await?;
    }
    let executing_seq = match driver.journal().peek_kind() {
        Some(RecordKind::PlanTransitioned) => driver.journal().next_recorded_seq(),
        _ => driver.journal().next_seq(),
    };
    let plan = transition(driver, plan_id, "executing", false, None).await?;
    let actions = plan.get("actions").cloned().unwrap_or_else(|| json!([]));

    // Hydration: every reference once, in plan order.
    let hydrated = match driver.journal().take::<payloads::RefsHydrated>().await? {
        Some((_, recorded)) => recorded,
        None => {
            let mut seen = std::collections::BTreeSet::new();
            let mut resolved: Map<String, Value> = Map::new();
            let mut missing = None;
            let now = driver.journal().now_ms();
            'outer: for action in actions.as_array().into_iter().flatten() {
                for reference in action
                    .get("references")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let kind = reference
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let id = reference
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !seen.insert((kind.to_owned(), id.to_owned())) {
                        continue;
                    }
                    let tenant = driver.tenant().to_owned();
                    match driver.journal().store().reference(&tenant, kind, id, now)? {
                        Some(entry) => {
                            let value: Value = serde_json::from_str(&entry.value).map_err(|e| {
                                EngineError::Internal(format!(
                                    "stored reference kind={kind} id={id} is not JSON: {e}"
                                ))
                            })?;
                            resolved
                                .entry(kind.to_owned())
                                .or_insert_with(|| Value::Object(Map::new()))
                                .as_object_mut()
                                .map(|m| m.insert(id.to_owned(), value));
                        }
                        None => {
                            missing = Some((kind.to_owned(), id.to_owned()));
                            break 'outer;
                        }
                    }
                }
            }
            let record = payloads::RefsHydrated {
                plan_id: plan_id.to_owned(),
                resolved: if missing.is_none() {
                    Some(raw(&Value::Object(resolved))?)
                } else {
                    None
                },
                missing,
            };
            driver.journal().push(&record, Vec::new())?;
            record
        }
    };
    if let Some((kind, id)) = hydrated.missing {
        if let Some(refused) = commit_guarded(driver, plan_id, &mut guard).await? {
            return Ok(refused);
        }
        let message = format!("reference required by plan is missing: kind={kind} id={id}");
        return fail_execution(driver, plan_id, message).await;
    }
    let resolved_refs = hydrated
        .resolved
        .as_deref()
        .map_or_else(|| json!({}), parse_raw);

    // Dispatch as attempts: durable before the dispatcher runs.
    let idempotency_key = format!("{}:{plan_id}:{executing_seq}", driver.run_id_text());
    let mut last_attempt = 0;
    while driver.journal().peek_kind() == Some(RecordKind::DispatchStarted) {
        if let Some((_, started)) = driver.journal().take::<payloads::DispatchStarted>().await? {
            last_attempt = started.attempt;
        }
    }
    let dispatched = match driver
        .journal()
        .take::<payloads::ActionsDispatched>()
        .await?
    {
        Some((_, recorded)) => recorded,
        None => {
            let attempt = last_attempt + 1;
            driver.journal().push(
                &payloads::DispatchStarted {
                    plan_id: plan_id.to_owned(),
                    attempt,
                    idempotency_key: idempotency_key.clone(),
                },
                Vec::new(),
            )?;
            if let Some(refused) = commit_guarded(driver, plan_id, &mut guard).await? {
                return Ok(refused);
            }
            driver.journal().flush().await?;
            let host = std::sync::Arc::clone(&driver.shared().host);
            let returned = if host.has_dispatcher() {
                host.dispatch_actions(
                    actions.clone(),
                    DispatchContext {
                        run_id: driver.run_id_text().to_owned(),
                        plan_id: plan_id.to_owned(),
                        idempotency_key,
                        attempt,
                        resolved_refs: resolved_refs.clone(),
                    },
                )
                .await
            } else {
                Ok(Value::Null)
            };
            let record = match returned.and_then(|value| {
                check_dispatch_envelope(&value).map(|(entities, summary, details)| {
                    json!({"entitiesAffected": entities, "summary": summary, "details": details})
                })
            }) {
                Ok(outcome) => payloads::ActionsDispatched {
                    plan_id: plan_id.to_owned(),
                    outcome: Some(raw(&outcome)?),
                    error: None,
                },
                Err(message) => payloads::ActionsDispatched {
                    plan_id: plan_id.to_owned(),
                    outcome: None,
                    error: Some(message),
                },
            };
            driver.journal().push(&record, Vec::new())?;
            record
        }
    };
    if let Some(message) = dispatched.error {
        let message = format!("inner dispatcher failed: {message}");
        return fail_execution(driver, plan_id, message).await;
    }
    let outcome = dispatched.outcome.as_deref().map_or(Value::Null, parse_raw);
    let entities = outcome.get("entitiesAffected").cloned().unwrap_or(json!(0));
    let summary = outcome.get("summary").cloned().unwrap_or(Value::Null);
    let details = outcome.get("details").cloned().unwrap_or(Value::Null);
    transition(
        driver,
        plan_id,
        "executed",
        false,
        Some(json!({"state": "executed", "entitiesAffected": entities, "summary": summary, "details": details})),
    )
    .await?;
    let resolved_actions: Vec<Value> = actions
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| json!({"type": a.get("kind").cloned().unwrap_or(Value::Null), "payload": a.get("payload").cloned().unwrap_or(Value::Null)}))
        .collect();
    let details = match details {
        Value::Null => json!({"resolvedActions": resolved_actions}),
        Value::Object(mut map) => {
            map.insert(String::from("resolvedActions"), json!(resolved_actions));
            Value::Object(map)
        }
        other => json!({"result": other, "resolvedActions": resolved_actions}),
    };
    Ok(ToolOutcome::ok(json!({
        "entitiesAffected": entities, "summary": summary, "details": details,
        "resolvedActions": resolved_actions,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table() {
        assert!(check_transition("draft", "approved").is_ok());
        assert!(check_transition("approved", "executing").is_ok());
        assert!(check_transition("executing", "executed").is_ok());
        assert!(check_transition("executing", "failed").is_ok());
        assert_eq!(
            check_transition("draft", "executing"),
            Err(String::from(
                "invalid transition: expected approved, got draft"
            ))
        );
        assert_eq!(
            check_transition("executed", "failed"),
            Err(String::from("plan is in terminal state: executed"))
        );
    }

    #[test]
    fn flattening_matches_the_contract() {
        let body = json!({"actions":[{"kind":"price_change","product_id":"p-1","new_price":9.99}],"rationale":"test"});
        let (actions, context) = flatten_body("S", &body).expect("valid body");
        assert_eq!(
            actions,
            vec![
                json!({"kind":"price_change","payload":{"product_id":"p-1","new_price":9.99},"references":[]})
            ]
        );
        assert_eq!(context, json!({"rationale":"test"}));
        // Canonical form nests the payload once more (documented quirk).
        let (actions, _) =
            flatten_body("S", &json!({"actions":[{"kind":"k","payload":{"a":1}}]})).expect("valid");
        assert_eq!(actions[0]["payload"], json!({"payload":{"a":1}}));
    }

    #[test]
    fn flattening_errors() {
        assert_eq!(
            flatten_body("S", &json!({})),
            Err(String::from(
                "planner output for spec 'S' is missing the required `actions` field"
            ))
        );
        assert_eq!(
            flatten_body("S", &json!({"actions": {}})),
            Err(String::from("`actions` for spec 'S' must be a JSON array"))
        );
        assert_eq!(
            flatten_body("S", &json!({"actions": []})),
            Err(String::from(
                "planner output for spec 'S' produced an empty action sequence"
            ))
        );
        assert_eq!(
            flatten_body("S", &json!({"actions": [1]})),
            Err(String::from(
                "action #0 for spec 'S' failed to decode: action must be a JSON object"
            ))
        );
        assert_eq!(
            flatten_body("S", &json!({"actions": [{"x": 1}]})),
            Err(String::from(
                "action #0 for spec 'S' failed to decode: action is missing required string field `kind`"
            ))
        );
    }

    #[test]
    fn dispatch_envelopes() {
        assert_eq!(
            check_dispatch_envelope(&Value::Null),
            Ok((0, Value::Null, Value::Null))
        );
        assert!(
            check_dispatch_envelope(&json!(3)).is_err_and(|e| e.contains("optional `details`"))
        );
        assert_eq!(
            check_dispatch_envelope(&json!({"entitiesAffected": 1, "extra": 2})),
            Err(String::from(
                "action_dispatcher returned unexpected field `extra`; put domain-specific data under `details`"
            ))
        );
        assert!(
            check_dispatch_envelope(&json!({}))
                .is_err_and(|e| e.contains("as a non-negative integer"))
        );
        assert_eq!(
            check_dispatch_envelope(&json!({"entitiesAffected": -1})),
            Err(String::from(
                "action_dispatcher field `entitiesAffected` must be a non-negative integer"
            ))
        );
        assert_eq!(
            check_dispatch_envelope(&json!({"entitiesAffected": 1, "summary": 3})),
            Err(String::from(
                "action_dispatcher field `summary` must be a string or null"
            ))
        );
        assert_eq!(
            check_dispatch_envelope(
                &json!({"entitiesAffected": 2, "summary": "ok", "details": [1]})
            ),
            Ok((2, json!("ok"), json!([1])))
        );
    }
}
