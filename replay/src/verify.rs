//! Verify recorded runs with the engine's own driver (DESIGN.md §5): a runtime is built
//! from the spec a run recorded (or a given one) with a host that has no callbacks, and
//! `Runtime::verify` re-drives the run in Verify mode, which never calls a provider, tool,
//! predicate or dispatcher. This module only chooses the runtime; it decides nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use flowai_runtime::{
    HostToolDecl, InterpreterChoice, NoHost, RandomIds, Runtime, RuntimeOptions, RuntimeSpec,
};
use flowai_storage::payloads::RunStarted;
use flowai_storage::{RecordKind, RunId, RunStatus, Store, SystemClock};
use serde_json::Value;

use crate::error::{ReplayError, SpecDocError};
use crate::inspect::{list_runs, run_info};

/// A recorded-spec document (`{runtimeSpec, hostTools, predicates, interpreter,
/// mockResponse}`, as the engine writes it to the `specs` table), parsed.
#[derive(Clone, Debug)]
pub struct RecordedSpec {
    pub runtime_spec: RuntimeSpec,
    pub host_tools: Vec<HostToolDecl>,
    pub predicates: BTreeSet<String>,
    pub interpreter: InterpreterChoice,
    /// Where it came from, for messages (`specs:<hash>` or a file path).
    pub source_name: String,
}

impl RecordedSpec {
    /// Parses a recorded-spec JSON document.
    pub fn parse(source_name: &str, text: &str) -> Result<RecordedSpec, SpecDocError> {
        let invalid = |reason: String| SpecDocError::Invalid {
            source_name: source_name.to_owned(),
            reason,
        };
        let doc: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let field = |name: &str| {
            doc.get(name)
                .cloned()
                .ok_or_else(|| invalid(format!("missing field `{name}`")))
        };
        let runtime_spec: RuntimeSpec = serde_json::from_value(field("runtimeSpec")?)
            .map_err(|e| invalid(format!("runtimeSpec: {e}")))?;
        let host_tools: Vec<HostToolDecl> = serde_json::from_value(field("hostTools")?)
            .map_err(|e| invalid(format!("hostTools: {e}")))?;
        let predicates: BTreeSet<String> = serde_json::from_value(field("predicates")?)
            .map_err(|e| invalid(format!("predicates: {e}")))?;
        let interpreter = field("interpreter")?;
        let Some(interpreter) = interpreter.as_str() else {
            return Err(invalid(String::from("interpreter must be a string")));
        };
        let mock = match doc.get("mockResponse") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                return Err(invalid(String::from(
                    "mockResponse must be a string or null",
                )));
            }
        };
        let interpreter = InterpreterChoice::parse(interpreter, mock)
            .map_err(|e| invalid(format!("interpreter: {e}")))?;
        Ok(RecordedSpec {
            runtime_spec,
            host_tools,
            predicates,
            interpreter,
            source_name: source_name.to_owned(),
        })
    }

    /// Reads and parses a recorded-spec file (`flowai verify --spec FILE`).
    pub fn from_file(path: &Path) -> Result<RecordedSpec, SpecDocError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecDocError::Io {
            source_name: name.clone(),
            source,
        })?;
        RecordedSpec::parse(&name, &text)
    }

    /// The spec a run was started under, from the store's `specs` table.
    pub fn of_run(store: &Store, run: RunId) -> Result<RecordedSpec, ReplayError> {
        let hash = started(store, run)?.spec_hash;
        let text = store
            .spec(&hash)?
            .ok_or_else(|| SpecDocError::NotRecorded {
                run: run.to_string(),
                hash: hash.clone(),
            })?;
        Ok(RecordedSpec::parse(&format!("specs:{hash}"), &text)?)
    }

    /// A runtime over `store` built from this spec with no host callbacks and no provider
    /// clients: enough to verify, since Verify mode never calls either.
    pub fn offline_runtime(
        &self,
        store: Store,
        handle: tokio::runtime::Handle,
    ) -> Result<Runtime, SpecDocError> {
        Runtime::new_offline(RuntimeOptions {
            spec: self.runtime_spec.clone(),
            host_tools: self.host_tools.clone(),
            predicates: self.predicates.clone(),
            interpreter: self.interpreter.clone(),
            store,
            host: Arc::new(NoHost),
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            handle,
            env: Arc::new(|_| None),
            event_buffer: 16,
        })
        .map_err(|source| SpecDocError::Runtime {
            source_name: self.source_name.clone(),
            source: Box::new(source),
        })
    }
}

/// The run's RunStarted record.
fn started(store: &Store, run: RunId) -> Result<RunStarted, ReplayError> {
    run_info(store, run)?;
    // Only the first record: the rest of a long run is not needed here.
    let mut first = None;
    store.scan_records(run, 1, &mut |seq, view| {
        if seq == 1 && view.kind == RecordKind::RunStarted {
            first = Some(serde_json::from_str(view.payload));
        }
        std::ops::ControlFlow::Break(())
    })?;
    let first = first.ok_or_else(|| flowai_runtime::EngineError::CorruptPayload {
        seq: 1,
        kind: "RunStarted",
        reason: String::from("the run's first record is not RunStarted"),
    })?;
    first.map_err(|e| {
        ReplayError::Engine(flowai_runtime::EngineError::CorruptPayload {
            seq: 1,
            kind: "RunStarted",
            reason: e.to_string(),
        })
    })
}

/// Verifies runs of one store, building (and reusing) one runtime per recorded spec.
pub struct Verifier {
    store: Store,
    handle: tokio::runtime::Handle,
    /// `--spec`: verify against this spec instead of each run's recorded one.
    given: Option<Runtime>,
    by_hash: BTreeMap<String, Runtime>,
}

impl Verifier {
    /// With `spec`, every run is re-driven under that spec (command-level checks only, as
    /// `resume(allow_spec_change=True)` does); without it, under the spec it recorded.
    pub fn new(
        store: Store,
        handle: tokio::runtime::Handle,
        spec: Option<&RecordedSpec>,
    ) -> Result<Verifier, ReplayError> {
        let given = match spec {
            Some(spec) => Some(spec.offline_runtime(store.clone(), handle.clone())?),
            None => None,
        };
        Ok(Verifier {
            store,
            handle,
            given,
            by_hash: BTreeMap::new(),
        })
    }

    /// The runs `flowai verify STORE` checks: every finished one (of the given spec's
    /// tenant, with `--spec`), oldest first.
    pub fn finished_runs(&self) -> Result<Vec<RunId>, ReplayError> {
        let tenant = self.given.as_ref().map(|r| r.tenant().to_owned());
        let mut runs = Vec::new();
        for status in [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            for info in list_runs(&self.store, tenant.as_deref(), Some(status))? {
                runs.push((info.meta.run_id, info.records));
            }
        }
        runs.sort();
        Ok(runs.into_iter().map(|(run, _)| run).collect())
    }

    /// Re-drives one run in Verify mode; `Ok` when every command matches its journal.
    pub async fn verify(&mut self, run: RunId) -> Result<(), ReplayError> {
        let text = run.to_string();
        if let Some(runtime) = &self.given {
            return Ok(runtime.verify_with(&text, true).await?);
        }
        let hash = started(&self.store, run)?.spec_hash;
        if !self.by_hash.contains_key(&hash) {
            let spec = RecordedSpec::of_run(&self.store, run)?;
            let runtime = spec.offline_runtime(self.store.clone(), self.handle.clone())?;
            self.by_hash.insert(hash.clone(), runtime);
        }
        match self.by_hash.get(&hash) {
            Some(runtime) => Ok(runtime.verify(&text).await?),
            None => Err(ReplayError::RunNotFound(text)),
        }
    }
}
