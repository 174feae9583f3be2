//! The runtime handle: builds the engine from a spec and host callbacks, starts,
//! resumes, inspects, replays and verifies runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use flowai_storage::payloads;
use flowai_storage::{
    AppendRequest, ApprovalStatus, Clock, IndexUpdate, Precondition, Record, ReferenceEntry,
    RunAppend, RunFilter, RunId, RunInfo, RunStatus, Store, StoreError,
};
use futures::FutureExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Control, Decision, Driver, RunEnd, SharedGateWait};
use crate::error::EngineError;
use crate::events::{Event, Projector};
use crate::host::Host;
use crate::ids::{IdSource, rfc3339_ms};
use crate::journal::{DriveMode, EventSink, RunJournal};
use crate::spec::{self, CompiledSpec, HostToolDecl, InterpreterChoice, RuntimeSpec};

/// Looks up an environment variable (injected so tests never touch the real environment).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Everything needed to build a [`Runtime`].
pub struct RuntimeOptions {
    pub spec: RuntimeSpec,
    pub host_tools: Vec<HostToolDecl>,
    pub predicates: BTreeSet<String>,
    pub interpreter: InterpreterChoice,
    pub store: Store,
    pub host: Arc<dyn Host>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    /// The tokio runtime that drives runs.
    pub handle: tokio::runtime::Handle,
    /// Environment lookup for provider keys (`apiKeyEnv`).
    pub env: EnvLookup,
    /// How many commits' worth of events a stream buffers before the run waits for its
    /// consumer (events travel one batch per commit).
    pub event_buffer: usize,
}

pub(crate) struct ActiveRun {
    control: mpsc::UnboundedSender<Control>,
    gate_wait: SharedGateWait,
    task: Option<tokio::task::AbortHandle>,
    /// The runtime driving it ([`Shared::runtime_id`]).
    owner: u64,
}

/// Runs driven in this process, per open store. Every runtime on one store sees the
/// same map, so an approval or a cancel reaches the driver whichever runtime of the
/// tenant it comes through (lookup only; never iterated to decide anything).
type ActiveMap = Mutex<HashMap<RunId, ActiveRun>>;
type ActiveRuns = Arc<ActiveMap>;

static ACTIVE_BY_STORE: LazyLock<Mutex<HashMap<usize, Weak<ActiveMap>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

static NEXT_RUNTIME_ID: AtomicU64 = AtomicU64::new(1);

fn active_runs_of(store: &Store) -> ActiveRuns {
    let mut registries = ACTIVE_BY_STORE.lock().unwrap_or_else(|p| p.into_inner());
    registries.retain(|_, weak| weak.strong_count() > 0);
    if let Some(active) = registries.get(&store.instance_id()).and_then(Weak::upgrade) {
        return active;
    }
    let active: ActiveRuns = Arc::new(Mutex::new(HashMap::new()));
    registries.insert(store.instance_id(), Arc::downgrade(&active));
    active
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) compiled: CompiledSpec,
    pub(crate) spec_hash: String,
    pub(crate) spec_json: String,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdSource>,
    pub(crate) interpreter: InterpreterChoice,
    pub(crate) models: BTreeMap<String, Arc<dyn crate::providers::ModelClient>>,
    handle: tokio::runtime::Handle,
    event_buffer: usize,
    /// Runs driven in this process on this runtime's store.
    active: ActiveRuns,
    runtime_id: u64,
    closed: std::sync::atomic::AtomicBool,
    /// Expired references are swept when a run starts and this much injected-clock
    /// time has passed since the last sweep.
    sweep_interval_ms: AtomicI64,
    last_sweep_ms: AtomicI64,
}

/// Default interval of the periodic reference sweep.
pub const DEFAULT_SWEEP_INTERVAL_MS: i64 = 60_000;

/// The runtime handle. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

/// A run's event stream. The run starts on the first [`RunStream::next`].
pub struct RunStream {
    run_id: String,
    rx: Option<mpsc::Receiver<Vec<Event>>>,
    /// The rest of the batch `rx` last gave.
    buffered: VecDeque<Event>,
    done: Option<oneshot::Receiver<Result<RunEnd, EngineError>>>,
    start: Option<Box<dyn FnOnce(bool) + Send>>,
    cancel_before_start: bool,
    shared: Arc<Shared>,
}

impl RunStream {
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The next event; `None` at the end; `Err` when the run could not be driven
    /// (non-determinism on resume, a storage failure).
    ///
    /// Cancel-safe: dropping the future before it resolves loses no event and not the
    /// run's outcome, so it may race other futures in a `select!`.
    pub async fn next(&mut self) -> Option<Result<Event, EngineError>> {
        if let Some(start) = self.start.take() {
            start(self.cancel_before_start);
        }
        if let Some(event) = self.buffered.pop_front() {
            return Some(Ok(event));
        }
        if let Some(rx) = &mut self.rx {
            while let Some(batch) = rx.recv().await {
                self.buffered.extend(batch);
                if let Some(event) = self.buffered.pop_front() {
                    return Some(Ok(event));
                }
            }
            self.rx = None;
        }
        let outcome = self.done.as_mut()?.await;
        self.done = None;
        match outcome {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// Whether the run was started (by a first [`RunStream::next`] or
    /// [`RunStream::try_next_buffered`]). Starting a resumed run reads its whole journal
    /// on the calling thread, which a caller holding a lock (Python's GIL) may want to
    /// release first.
    pub fn started(&self) -> bool {
        self.start.is_none()
    }

    /// The next event if one is buffered right now; never waits. `None` means "nothing
    /// buffered", not the end of the stream: call [`RunStream::next`] then. Starts the
    /// run like `next` does.
    pub fn try_next_buffered(&mut self) -> Option<Event> {
        if let Some(start) = self.start.take() {
            start(self.cancel_before_start);
        }
        if let Some(event) = self.buffered.pop_front() {
            return Some(event);
        }
        let rx = self.rx.as_mut()?;
        while let Ok(batch) = rx.try_recv() {
            self.buffered.extend(batch);
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
        }
        None
    }

    /// Cancels the run durably (before or after it started).
    pub fn cancel(&mut self) {
        if self.start.is_some() {
            self.cancel_before_start = true;
            return;
        }
        let active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(run) = flowai_storage::parse_run_id(&self.run_id)
            && let Some(active) = active.get(&run)
        {
            let _ = active.control.send(Control::Cancel);
        }
    }
}

/// One journal record as the runtime API shows it (API.md §9.2).
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub seq: u64,
    pub kind: &'static str,
    pub at_ms: i64,
    pub data: Value,
}

impl JournalEntry {
    /// `{"seq","kind","at","data"}`.
    pub fn to_json(&self) -> Value {
        json!({"seq": self.seq, "kind": self.kind, "at": rfc3339_ms(self.at_ms), "data": self.data})
    }
}

/// A reference created through the runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct CreatedRef {
    pub kind: String,
    pub id: String,
    pub glimpse: Value,
}

fn parse_run_id(run_id: &str) -> Result<RunId, EngineError> {
    flowai_storage::parse_run_id(run_id).ok_or_else(|| EngineError::RunNotFound(run_id.to_owned()))
}

impl Runtime {
    /// Validates and compiles the spec, and prepares the providers the agents use.
    pub fn new(options: RuntimeOptions) -> Result<Runtime, EngineError> {
        Self::build(options, false)
    }

    /// Like [`Runtime::new`] but without provider clients, so no API key is needed: for
    /// tools that only verify or inspect recorded runs (verify never calls a provider).
    /// A run that reaches a live model call on such a runtime fails with "no model client".
    /// Unlike `new`, it leaves a cancellation requested before a crash for the next
    /// runtime to finish: it writes nothing when it starts.
    pub fn new_offline(options: RuntimeOptions) -> Result<Runtime, EngineError> {
        Self::build(options, true)
    }

    fn build(options: RuntimeOptions, offline: bool) -> Result<Runtime, EngineError> {
        let recorded = spec::recorded_spec(
            &options.spec,
            &options.host_tools,
            &options.predicates,
            &options.interpreter,
        );
        let spec_hash = spec::spec_hash(&recorded);
        let compiled = spec::compile_spec(
            options.spec,
            &options.host_tools,
            &options.predicates,
            &options.interpreter,
        )?;
        let models = if offline {
            BTreeMap::new()
        } else {
            crate::live::build_clients(&compiled, &options.interpreter, &*options.env)?
        };
        let spec_json = recorded.to_string();
        let now_ms = options.clock.now_ms();
        let active = active_runs_of(&options.store);
        let runtime = Runtime {
            shared: Arc::new(Shared {
                store: options.store,
                compiled,
                spec_hash,
                spec_json,
                host: options.host,
                clock: options.clock,
                ids: options.ids,
                interpreter: options.interpreter,
                models,
                handle: options.handle,
                event_buffer: options.event_buffer.max(1),
                active,
                runtime_id: NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed),
                closed: std::sync::atomic::AtomicBool::new(false),
                sweep_interval_ms: AtomicI64::new(DEFAULT_SWEEP_INTERVAL_MS),
                last_sweep_ms: AtomicI64::new(now_ms),
            }),
        };
        if !offline {
            // Verify and inspect tools leave the store as they found it.
            runtime.finish_requested_cancels()?;
        }
        Ok(runtime)
    }

    /// Cancels this tenant's runs whose cancellation was asked for while their driver was
    /// taking a step, and whose driver then stopped before recording it (the process died,
    /// or the runtime closed): `cancel` returned, so the run must end cancelled.
    fn finish_requested_cancels(&self) -> Result<(), EngineError> {
        if self.shared.store.is_read_only() {
            return Ok(());
        }
        for status in [RunStatus::Interrupted, RunStatus::Suspended] {
            for info in self.runs(None, Some(status), usize::MAX)? {
                let run = info.meta.run_id;
                if info.cancel_requested_at_ms.is_some() && !self.is_active(run) {
                    self.finish_requested_cancel(run, info.meta.status)?;
                }
            }
        }
        Ok(())
    }

    /// Records the cancellation of `run`, of `status`, whose cancellation was asked for
    /// (and acknowledged) before its driver stopped.
    fn finish_requested_cancel(&self, run: RunId, status: RunStatus) -> Result<(), EngineError> {
        match self
            .shared
            .store
            .append_blocking(self.cancel_in_store(run, status)?)
        {
            Ok(_) => {
                tracing::info!(run_id = %run, "run cancelled as requested before its driver stopped");
                Ok(())
            }
            // Another runtime on this store got to it first.
            Err(StoreError::PreconditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.shared.compiled.tenant
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn spec_hash(&self) -> &str {
        &self.shared.spec_hash
    }

    /// Sets the interval of the periodic reference sweep (injected-clock milliseconds).
    pub fn set_sweep_interval_ms(&self, interval_ms: i64) {
        self.shared
            .sweep_interval_ms
            .store(interval_ms.max(1), Ordering::Relaxed);
    }

    /// Sweeps expired references in the background when the interval has passed.
    fn maybe_sweep(&self) {
        let now = self.shared.clock.now_ms();
        let last = self.shared.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.shared.sweep_interval_ms.load(Ordering::Relaxed) {
            return;
        }
        if self
            .shared
            .last_sweep_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let store = self.shared.store.clone();
        self.shared.handle.spawn(async move {
            match store.gc_references(now).await {
                Ok(removed) => tracing::debug!(removed, "reference sweep"),
                Err(e) => tracing::warn!(error = %e, "reference sweep failed"),
            }
        });
    }

    /// The recorded-spec JSON document this runtime was built from (its hash is
    /// [`Runtime::spec_hash`]); runs started here store it in the `specs` table.
    pub fn recorded_spec_json(&self) -> &str {
        &self.shared.spec_json
    }

    pub fn interpreter(&self) -> &InterpreterChoice {
        &self.shared.interpreter
    }

    /// The id source of this runtime (new run ids, invocation and approval ids).
    pub fn ids(&self) -> &Arc<dyn IdSource> {
        &self.shared.ids
    }

    /// The clock that timestamps this runtime's records.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(EngineError::Closed);
        }
        Ok(())
    }

    /// Starts a run on the coordinator.
    pub fn query(
        &self,
        prompt: &str,
        thread_id: &str,
        run_id: Option<&str>,
    ) -> Result<RunStream, EngineError> {
        let agent = self
            .shared
            .compiled
            .agents
            .iter()
            .find(|a| a.role == spec::AgentRole::Coordinator)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        self.start(prompt, thread_id, run_id, "query", agent)
    }

    /// Starts a run on a specialist.
    pub fn run_specialist(
        &self,
        specialist: &str,
        prompt: &str,
        thread_id: Option<&str>,
        run_id: Option<&str>,
    ) -> Result<RunStream, EngineError> {
        let thread = match thread_id {
            Some(t) => t.to_owned(),
            None => format!("specialist-{}", self.shared.ids.uuid4()),
        };
        self.start(prompt, &thread, run_id, "specialist", specialist.to_owned())
    }

    fn start(
        &self,
        prompt: &str,
        thread: &str,
        run_id: Option<&str>,
        entry: &str,
        agent: String,
    ) -> Result<RunStream, EngineError> {
        self.check_open()?;
        self.maybe_sweep();
        let run = match run_id {
            Some(text) => {
                let run = flowai_storage::parse_run_id(text).ok_or_else(|| {
                    EngineError::InvalidArgument(format!("run_id must be a ULID: {text}"))
                })?;
                if self.shared.store.run(run)?.is_some() {
                    return Err(EngineError::RunExists(text.to_owned()));
                }
                run
            }
            None => self.shared.ids.ulid(),
        };
        let started = payloads::RunStarted {
            tenant: self.shared.compiled.tenant.clone(),
            thread: thread.to_owned(),
            agent,
            entry: entry.to_owned(),
            prompt: prompt.to_owned(),
            spec_hash: self.shared.spec_hash.clone(),
            interpreter: self.shared.interpreter.as_str().to_owned(),
            parent: None,
        };
        Ok(self.stream_for(run, DriveMode::Live, Some(started)))
    }

    fn stream_for(
        &self,
        run: RunId,
        mode: DriveMode,
        started: Option<payloads::RunStarted>,
    ) -> RunStream {
        let (tx, rx) = mpsc::channel(self.shared.event_buffer);
        let (done_tx, done_rx) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let start = Box::new(move |cancelled: bool| {
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let gate_wait = SharedGateWait::default();
            {
                let mut active = shared.active.lock().unwrap_or_else(|p| p.into_inner());
                if active.contains_key(&run) {
                    let _ = done_tx.send(Err(EngineError::RunBusy {
                        run: run.to_string(),
                    }));
                    return;
                }
                active.insert(
                    run,
                    ActiveRun {
                        control: control_tx,
                        gate_wait: Arc::clone(&gate_wait),
                        task: None,
                        owner: shared.runtime_id,
                    },
                );
            }
            // Read after registering: a decision journaled before this point is in the
            // records, a later one reaches the driver as a control message.
            let recorded = match mode {
                DriveMode::Live => Vec::new(),
                _ => match shared.store.records(run, 1) {
                    Ok(recorded) => recorded,
                    Err(e) => {
                        shared
                            .active
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&run);
                        let _ = done_tx.send(Err(e.into()));
                        return;
                    }
                },
            };
            let sink = EventSink::new(tx);
            let journal = match mode {
                DriveMode::Live => {
                    RunJournal::new_live(shared.store.clone(), run, Arc::clone(&shared.clock), sink)
                }
                _ => RunJournal::new_recorded(
                    shared.store.clone(),
                    run,
                    Arc::clone(&shared.clock),
                    mode,
                    recorded,
                    sink,
                ),
            };
            let driver = Driver::new(
                Arc::clone(&shared),
                journal,
                Some(control_rx),
                gate_wait,
                cancelled,
            );
            let cleanup = Arc::clone(&shared);
            let task = shared.handle.spawn(async move {
                // A panic in the driver (redb's, on a damaged page it commits over, or a bug)
                // ends the run with an error the stream yields, rather than ending the stream
                // as if the run had finished and leaving it marked as driven here.
                let result = std::panic::AssertUnwindSafe(driver.run(started))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        let detail = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic without a message");
                        Err(EngineError::Internal(format!(
                            "the run's driver panicked: {detail}"
                        )))
                    });
                if let Err(e) = &result {
                    tracing::warn!(run_id = %run, error = %e, "run stopped");
                    // It stopped while running, as when its process dies or its runtime
                    // closes: `interrupted`, so that `pending()` shows it now rather than
                    // after the next open. Verify never writes; a store that fails the
                    // write (the likely cause of the stop) leaves that to the next open.
                    // A new run whose first commit found its id taken was never this
                    // driver's: the run under that id is someone else's to mark.
                    let not_ours = matches!(
                        e,
                        EngineError::Store(
                            StoreError::PreconditionFailed { .. } | StoreError::RunExists { .. }
                        )
                    );
                    if mode != DriveMode::Verify && !not_ours {
                        let marked = cleanup
                            .store
                            .append(mark_interrupted(run, cleanup.clock.now_ms()))
                            .await;
                        match marked {
                            Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                            Err(e) => {
                                tracing::warn!(run_id = %run, error = %e, "could not mark the stopped run interrupted");
                            }
                        }
                    }
                }
                let mut active = cleanup.active.lock().unwrap_or_else(|p| p.into_inner());
                if active
                    .get(&run)
                    .is_some_and(|a| a.owner == cleanup.runtime_id)
                {
                    active.remove(&run);
                }
                drop(active);
                let _ = done_tx.send(result);
            });
            let mut active = shared.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = active.get_mut(&run) {
                entry.task = Some(task.abort_handle());
            }
        });
        RunStream {
            run_id: run.to_string(),
            rx: Some(rx),
            buffered: VecDeque::new(),
            done: Some(done_rx),
            start: Some(start),
            cancel_before_start: false,
            shared: Arc::clone(&self.shared),
        }
    }

    fn run_of_tenant(&self, run_id: &str) -> Result<(RunId, RunInfo), EngineError> {
        let run = parse_run_id(run_id)?;
        match self.shared.store.run(run)? {
            Some(info) if info.meta.tenant == self.shared.compiled.tenant => Ok((run, info)),
            _ => Err(EngineError::RunNotFound(run_id.to_owned())),
        }
    }

    fn check_spec(&self, run_id: &str, run: RunId) -> Result<(), EngineError> {
        /// The one field wanted of the RunStarted: its prompt can be megabytes.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct SpecOfRun {
            spec_hash: String,
        }
        let mut first = None;
        self.shared.store.scan_records(run, 1, &mut |seq, view| {
            first = Some((seq, serde_json::from_str::<SpecOfRun>(view.payload)));
            std::ops::ControlFlow::Break(())
        })?;
        let started = match first {
            None => return Err(EngineError::RunNotFound(run_id.to_owned())),
            Some((seq, decoded)) => decoded.map_err(|e| EngineError::CorruptPayload {
                seq,
                kind: "RunStarted",
                reason: e.to_string(),
            })?,
        };
        if started.spec_hash == self.shared.spec_hash {
            return Ok(());
        }
        let current: Value = serde_json::from_str(&self.shared.spec_json).unwrap_or(Value::Null);
        let recorded: Value = self
            .shared
            .store
            .spec(&started.spec_hash)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        let path = spec::first_difference(&recorded, &current).unwrap_or_else(|| String::from("$"));
        Err(EngineError::SpecMismatch {
            run: run_id.to_owned(),
            recorded: started.spec_hash,
            current: self.shared.spec_hash.clone(),
            path,
        })
    }

    /// Re-drives a suspended or interrupted run from its journal, then continues live.
    pub fn resume(&self, run_id: &str, allow_spec_change: bool) -> Result<RunStream, EngineError> {
        self.check_open()?;
        let (run, info) = self.run_of_tenant(run_id)?;
        match info.meta.status {
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {
                return Err(EngineError::RunFinished {
                    run: run_id.to_owned(),
                    status: info.meta.status.as_str().to_owned(),
                });
            }
            RunStatus::Running | RunStatus::Suspended | RunStatus::Interrupted => {}
        }
        if self.is_active(run) {
            return Err(EngineError::RunBusy {
                run: run_id.to_owned(),
            });
        }
        if info.cancel_requested_at_ms.is_some() {
            self.finish_requested_cancel(run, info.meta.status)?;
            return Err(EngineError::RunFinished {
                run: run_id.to_owned(),
                status: RunStatus::Cancelled.as_str().to_owned(),
            });
        }
        if !allow_spec_change {
            self.check_spec(run_id, run)?;
        }
        Ok(self.stream_for(run, DriveMode::Resume, None))
    }

    /// What `read` takes from the entry of `run` among the runs this process drives.
    fn active_run<T>(&self, run: RunId, read: impl FnOnce(&ActiveRun) -> T) -> Option<T> {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run)
            .map(read)
    }

    /// The control channel of the driver of `run`, when this process drives it.
    fn control_of(&self, run: RunId) -> Option<mpsc::UnboundedSender<Control>> {
        self.active_run(run, |a| a.control.clone())
    }

    /// The control channel and gate state of the driver of `run`, when this process
    /// drives it.
    fn driver_of(&self, run: RunId) -> Option<(mpsc::UnboundedSender<Control>, SharedGateWait)> {
        self.active_run(run, |a| (a.control.clone(), Arc::clone(&a.gate_wait)))
    }

    /// The control channel of the driver of `run`, when this runtime started it.
    fn own_driver_of(&self, run: RunId) -> Option<mpsc::UnboundedSender<Control>> {
        self.active_run(run, |a| {
            (a.owner == self.shared.runtime_id).then(|| a.control.clone())
        })
        .flatten()
    }

    fn is_active(&self, run: RunId) -> bool {
        self.active_run(run, |_| ()).is_some()
    }

    /// Answers a pending approval of this tenant (API.md §2.4, §9.3).
    pub async fn respond_to_approval(
        &self,
        approval_id: &str,
        decision: Decision,
    ) -> Result<(), EngineError> {
        if !matches!(decision.outcome.as_str(), "approve" | "reject" | "revise") {
            return Err(EngineError::InvalidArgument(format!(
                "approval outcome must be approve, reject, or revise; got {}",
                decision.outcome
            )));
        }
        let row = match self.shared.store.approval(approval_id)? {
            Some(row) if row.tenant == self.shared.compiled.tenant => row,
            _ => return Err(EngineError::ApprovalNotFound(approval_id.to_owned())),
        };
        if row.status != ApprovalStatus::Pending {
            return Err(EngineError::ApprovalResolved(approval_id.to_owned()));
        }
        let control = self.control_of(row.run_id);
        if let Some(control) = control {
            let (ack_tx, ack_rx) = oneshot::channel();
            let sent = control.send(Control::Decide {
                approval_id: approval_id.to_owned(),
                decision: decision.clone(),
                ack: ack_tx,
            });
            if sent.is_ok()
                && let Ok(reply) = ack_rx.await
            {
                return reply;
            }
        }
        // Nobody drives the run here: journal the decision; `resume` continues it.
        let request = approval_request(&self.shared.store, &row)?
            .ok_or_else(|| EngineError::ApprovalNotFound(approval_id.to_owned()))?;
        let partial = match (decision.outcome.as_str(), &decision.partial) {
            ("revise", Some(v)) => Some(to_raw(v)?),
            ("revise", None) => Some(to_raw(&Value::Null)?),
            _ => None,
        };
        let decided = payloads::ApprovalDecided {
            approval_id: approval_id.to_owned(),
            kind: request.kind,
            target: request.target,
            outcome: decision.outcome.clone(),
            feedback: decision.feedback,
            partial,
            origin: String::from("host"),
        };
        let status = match decision.outcome.as_str() {
            "approve" => ApprovalStatus::Approved,
            "revise" => ApprovalStatus::Revised,
            _ => ApprovalStatus::Rejected,
        };
        let record = self.record_of(&decided)?;
        let result = self
            .shared
            .store
            .append(AppendRequest {
                run: Some(RunAppend {
                    run_id: row.run_id,
                    expected_first_seq: None,
                    records: vec![record],
                }),
                index_updates: vec![IndexUpdate::SetApprovalStatus {
                    id: approval_id.to_owned(),
                    status,
                }],
                precondition: Precondition::ApprovalPending(approval_id.to_owned()),
            })
            .await;
        match result {
            Ok(_) => {
                // A resume of this run may have started since the check above.
                let control = self.control_of(row.run_id);
                if let Some(control) = control {
                    let _ = control.send(Control::Appended);
                }
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                Err(EngineError::ApprovalResolved(approval_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn record_of<P: payloads::Payload>(&self, payload: &P) -> Result<Record, EngineError> {
        Ok(Record {
            kind: P::KIND,
            version: P::VERSION,
            at_ms: self.shared.clock.now_ms(),
            payload: serde_json::to_string(payload)
                .map_err(|e| EngineError::Internal(format!("cannot encode record: {e}")))?,
        })
    }

    /// Cancels a run durably. A run driven here that waits at a gate is cancelled there,
    /// durably by the time this returns. One taking a step stops at its next one; the
    /// request is durable by the time this returns, and should the process stop first, the
    /// next runtime of the tenant on the store cancels the run. A suspended or interrupted
    /// run is cancelled in the store, its approvals resolved.
    pub async fn cancel(&self, run_id: &str) -> Result<(), EngineError> {
        let (run, info) = match self.run_of_tenant(run_id) {
            Ok(found) => found,
            Err(EngineError::RunNotFound(e)) => {
                // A run this runtime started whose first commit is still to come: its
                // driver records the cancellation there.
                let Some(control) =
                    flowai_storage::parse_run_id(run_id).and_then(|run| self.own_driver_of(run))
                else {
                    return Err(EngineError::RunNotFound(e));
                };
                let _ = control.send(Control::Cancel);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if let Some((control, gate_wait)) = self.driver_of(run) {
            let acked = gate_wait
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ack_when_cancelled();
            if acked.is_none() {
                // Waiting for the step could deadlock (the caller may be what it waits
                // for: the event loop, for an async handler or a consumer), so the request
                // itself is made durable.
                self.shared
                    .store
                    .append(AppendRequest {
                        run: None,
                        index_updates: vec![IndexUpdate::RequestCancel {
                            run_id: run,
                            at_ms: self.shared.clock.now_ms(),
                        }],
                        precondition: Precondition::None,
                    })
                    .await?;
            }
            if control.send(Control::Cancel).is_ok() {
                if let Some(acked) = acked {
                    // Nothing but this cancellation is left for that driver to do: no
                    // handler, no consumer stands between it and the commit.
                    let _ = acked.await;
                }
                return Ok(());
            }
        }
        if info.meta.status.is_finished() {
            return Err(EngineError::RunFinished {
                run: run_id.to_owned(),
                status: info.meta.status.as_str().to_owned(),
            });
        }
        self.shared
            .store
            .append(self.cancel_in_store(run, info.meta.status)?)
            .await?;
        Ok(())
    }

    /// What cancels `run`, of `status`, when no driver runs it: its approvals resolved as
    /// cancelled, the gated call's result (a suspended run), and RunCancelled, guarded
    /// against a driver or another process moving the run on meanwhile.
    fn cancel_in_store(&self, run: RunId, status: RunStatus) -> Result<AppendRequest, EngineError> {
        let mut records = Vec::new();
        let mut updates = Vec::new();
        for (decided, update) in cancelled_decisions(&self.shared.store, run, "host")? {
            records.push(self.record_of(&decided)?);
            updates.push(update);
        }
        if status == RunStatus::Suspended {
            for completed in cancelled_gate_results(&self.shared.store, run)? {
                records.push(self.record_of(&completed)?);
            }
        }
        records.push(self.record_of(&payloads::RunCancelled {
            origin: String::from("host"),
        })?);
        updates.push(IndexUpdate::SetRunStatus {
            run_id: run,
            status: RunStatus::Cancelled,
            at_ms: self.shared.clock.now_ms(),
        });
        Ok(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: None,
                records,
            }),
            index_updates: updates,
            precondition: Precondition::RunStatusIn(
                run,
                vec![
                    RunStatus::Suspended,
                    RunStatus::Interrupted,
                    RunStatus::Running,
                ],
            ),
        })
    }

    /// Runs of this tenant, newest first.
    pub fn runs(
        &self,
        thread_id: Option<&str>,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<Vec<RunInfo>, EngineError> {
        Ok(self.shared.store.list_runs(&RunFilter {
            tenant: Some(self.shared.compiled.tenant.clone()),
            thread: thread_id.map(str::to_owned),
            status,
            limit,
        })?)
    }

    pub fn run(&self, run_id: &str) -> Result<RunInfo, EngineError> {
        Ok(self.run_of_tenant(run_id)?.1)
    }

    /// Runs that need action: interrupted ones, and suspended ones whose approval
    /// has been decided.
    pub fn pending(&self) -> Result<Vec<RunInfo>, EngineError> {
        let mut out = Vec::new();
        for status in [RunStatus::Interrupted, RunStatus::Suspended] {
            for info in self.runs(None, Some(status), usize::MAX)? {
                if status == RunStatus::Suspended && !info.pending_approvals.is_empty() {
                    continue;
                }
                if self.is_active(info.meta.run_id) {
                    continue;
                }
                out.push(info);
            }
        }
        out.sort_by_key(|info| std::cmp::Reverse(info.meta.run_id));
        Ok(out)
    }

    /// A run's records from `since` (exclusive) on.
    pub fn journal(&self, run_id: &str, since: u64) -> Result<Vec<JournalEntry>, EngineError> {
        let (run, _) = self.run_of_tenant(run_id)?;
        journal_entries(&self.shared.store, run, since)
    }

    /// [`Runtime::journal`] as the text of one JSON array of the same
    /// `{"seq","kind","at","data"}` objects, for a caller that parses it anyway (the
    /// Python binding): each payload goes in as recorded instead of through a tree.
    pub fn journal_text(&self, run_id: &str, since: u64) -> Result<String, EngineError> {
        let (run, _) = self.run_of_tenant(run_id)?;
        journal_text(&self.shared.store, run, since)
    }

    /// The run's stream events, rebuilt from its journal alone.
    pub fn replay_events(&self, run_id: &str) -> Result<Vec<Event>, EngineError> {
        let (run, _) = self.run_of_tenant(run_id)?;
        replay_events(&self.shared.store, run)
    }

    /// Re-drives the run against this runtime's spec and code without acting live;
    /// the first differing command is a `NonDeterminism` error.
    pub async fn verify(&self, run_id: &str) -> Result<(), EngineError> {
        self.verify_with(run_id, false).await
    }

    /// [`Runtime::verify`]; with `allow_spec_change` a run recorded under another spec
    /// is re-driven anyway and only the command-level check applies (as for `resume`).
    pub async fn verify_with(
        &self,
        run_id: &str,
        allow_spec_change: bool,
    ) -> Result<(), EngineError> {
        let (run, _) = self.run_of_tenant(run_id)?;
        if !allow_spec_change {
            self.check_spec(run_id, run)?;
        }
        let recorded = self.shared.store.records(run, 1)?;
        let journal = RunJournal::new_recorded(
            self.shared.store.clone(),
            run,
            Arc::clone(&self.shared.clock),
            DriveMode::Verify,
            recorded,
            EventSink::none(),
        );
        let driver = Driver::new(
            Arc::clone(&self.shared),
            journal,
            None,
            SharedGateWait::default(),
            false,
        );
        driver.run(None).await.map(|_| ())
    }

    /// Creates (or refreshes) a reference of this tenant.
    pub async fn create_reference(
        &self,
        kind: &str,
        value: &Value,
        glimpse: &Value,
    ) -> Result<CreatedRef, EngineError> {
        let compiled = self.shared.compiled.references.get(kind).ok_or_else(|| {
            EngineError::InvalidArgument(format!("unknown reference kind: {kind}"))
        })?;
        let ttl_ms = compiled.ttl_ms;
        if let Err(errors) = compiled.validate(value) {
            return Err(EngineError::InvalidArgument(format!(
                "schema validation failed for kind '{kind}': {}",
                serde_json::to_string(&errors).unwrap_or_default()
            )));
        }
        let tenant = &self.shared.compiled.tenant;
        let id = flowai_storage::reference_id(tenant, kind, value)?;
        let now = self.shared.clock.now_ms();
        let entry = ReferenceEntry {
            tenant: tenant.clone(),
            kind: kind.to_owned(),
            id: id.clone(),
            value: value.to_string(),
            glimpse: glimpse.to_string(),
            created_at_ms: now,
            expires_at_ms: ttl_ms
                .map(|ttl| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        };
        self.shared
            .store
            .append(AppendRequest {
                run: None,
                index_updates: vec![IndexUpdate::PutReference(entry)],
                precondition: Precondition::None,
            })
            .await?;
        Ok(CreatedRef {
            kind: kind.to_owned(),
            id,
            glimpse: glimpse.clone(),
        })
    }

    fn reference_entry(&self, kind: &str, id: &str) -> Result<ReferenceEntry, EngineError> {
        if !self.shared.compiled.references.contains(kind) {
            return Err(EngineError::InvalidArgument(format!(
                "unknown reference kind: {kind}"
            )));
        }
        let now = self.shared.clock.now_ms();
        self.shared
            .store
            .reference(&self.shared.compiled.tenant, kind, id, now)?
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!("reference not found: kind={kind} id={id}"))
            })
    }

    pub fn resolve_reference(&self, kind: &str, id: &str) -> Result<Value, EngineError> {
        let entry = self.reference_entry(kind, id)?;
        serde_json::from_str(&entry.value)
            .map_err(|e| EngineError::Internal(format!("stored reference is not JSON: {e}")))
    }

    pub fn reference_glimpse(&self, kind: &str, id: &str) -> Result<Value, EngineError> {
        let entry = self.reference_entry(kind, id)?;
        serde_json::from_str(&entry.glimpse)
            .map_err(|e| EngineError::Internal(format!("stored glimpse is not JSON: {e}")))
    }

    /// Removes expired references; returns how many.
    pub async fn gc(&self) -> Result<usize, EngineError> {
        Ok(self
            .shared
            .store
            .gc_references(self.shared.clock.now_ms())
            .await?)
    }

    /// Stops the runs this runtime drives: running ones become `interrupted`, gated
    /// ones stay `suspended`. Idempotent.
    pub fn close(&self) -> Result<(), EngineError> {
        if self
            .shared
            .closed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let stopped: Vec<RunId> = {
            let mut active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
            let runs: Vec<RunId> = active
                .iter()
                .filter(|(_, a)| a.owner == self.shared.runtime_id)
                .map(|(run, _)| *run)
                .collect();
            for run in &runs {
                if let Some(entry) = active.remove(run)
                    && let Some(task) = entry.task
                {
                    task.abort();
                }
            }
            runs
        };
        for run in stopped {
            if let Some(info) = self.shared.store.run(run)?
                && info.meta.status == RunStatus::Running
            {
                let marked = self
                    .shared
                    .store
                    .append_blocking(mark_interrupted(run, self.shared.clock.now_ms()));
                match marked {
                    // The run finished (or suspended) between the check and the append.
                    Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

/// Marks `run` interrupted if it is still `running` (a precondition failure means it
/// finished, suspended or was marked meanwhile): its driver stopped before the run ended.
fn mark_interrupted(run: RunId, at_ms: i64) -> AppendRequest {
    AppendRequest {
        run: None,
        index_updates: vec![IndexUpdate::SetRunStatus {
            run_id: run,
            status: RunStatus::Interrupted,
            at_ms,
        }],
        precondition: Precondition::RunStatusIn(run, vec![RunStatus::Running]),
    }
}

/// The `cancelled` decisions (with their index updates) that resolve a run's open
/// approvals when the run is cancelled; `origin` is `"engine"` or `"host"`.
pub(crate) fn cancelled_decisions(
    store: &Store,
    run: RunId,
    origin: &str,
) -> Result<Vec<(payloads::ApprovalDecided, IndexUpdate)>, EngineError> {
    let mut out = Vec::new();
    for approval in store.approvals_of_run(run)? {
        if approval.status != ApprovalStatus::Pending {
            continue;
        }
        // The decision names the request it resolves, so its events need no other record.
        let (kind, target) = approval_request(store, &approval)?
            .map(|r| (r.kind, r.target))
            .unwrap_or_default();
        out.push((
            payloads::ApprovalDecided {
                approval_id: approval.id.clone(),
                kind,
                target,
                outcome: String::from("cancelled"),
                feedback: None,
                partial: None,
                origin: origin.to_owned(),
            },
            IndexUpdate::SetApprovalStatus {
                id: approval.id,
                status: ApprovalStatus::Cancelled,
            },
        ));
    }
    Ok(out)
}

/// The results that cancelling a run suspended at a gate gives the calls it left open,
/// innermost first, as its driver gives them when the run is cancelled while it waits
/// (API.md §5.1, §5.5, §7; every call gets its result): the call gated by a pending tool
/// approval, or the `executePlan` behind a pending plan approval, then each `call_agent`
/// around it. Empty unless every open call is one of those, so that replay stops where a
/// driver would have stopped.
fn cancelled_gate_results(
    store: &Store,
    run: RunId,
) -> Result<Vec<payloads::ToolCallCompleted>, EngineError> {
    use crate::events::decode;
    use flowai_storage::RecordKind;
    let mut open: BTreeMap<u64, payloads::ToolCallStarted> = BTreeMap::new();
    let mut pending: BTreeMap<String, payloads::ApprovalRequested> = BTreeMap::new();
    for stored in store.records(run, 1)? {
        let (seq, payload) = (stored.seq, stored.record.payload.as_str());
        match stored.record.kind {
            RecordKind::ToolCallStarted => {
                open.insert(seq, decode(seq, payload)?);
            }
            RecordKind::ToolCallCompleted => {
                let done: payloads::ToolCallCompleted = decode(seq, payload)?;
                open.remove(&done.call_seq);
            }
            RecordKind::ApprovalRequested => {
                let asked: payloads::ApprovalRequested = decode(seq, payload)?;
                pending.insert(asked.approval_id.clone(), asked);
            }
            RecordKind::ApprovalDecided => {
                let decided: payloads::ApprovalDecided = decode(seq, payload)?;
                pending.remove(&decided.approval_id);
            }
            _ => {}
        }
    }
    let mut results = Vec::new();
    for (call_seq, call) in open.into_iter().rev() {
        let innermost = results.is_empty();
        let gated = |kind: &str, target: &str, correlation: Option<&str>| {
            pending.values().any(|a| {
                a.kind == kind
                    && a.target == target
                    && correlation.is_none_or(|id| a.correlation_id.as_deref() == Some(id))
            })
        };
        let message = if !innermost && call.tool == "call_agent" {
            String::from("Sub-agent invocation cancelled")
        } else if innermost && gated("tool", &call.tool, Some(&call.tool_use_id)) {
            String::from("Cancelled while awaiting approval")
        } else if innermost && call.tool == "executePlan" {
            let args: Value = serde_json::from_str(call.args.get()).unwrap_or(Value::Null);
            match args.get("planId").and_then(Value::as_str) {
                Some(plan_id) if gated("plan", plan_id, None) => {
                    format!("Plan {plan_id} approval was cancelled")
                }
                _ => return Ok(Vec::new()),
            }
        } else {
            return Ok(Vec::new());
        };
        results.push(payloads::ToolCallCompleted {
            call_seq,
            result: to_raw(&json!({ "error": message }))?,
            is_error: true,
            duration_ms: 0,
            ui: Vec::new(),
            echo_text: false,
        });
    }
    Ok(results)
}

/// The ApprovalRequested record an approval row points at (one record read, not the
/// rest of the journal).
pub(crate) fn approval_request(
    store: &Store,
    row: &flowai_storage::ApprovalRow,
) -> Result<Option<payloads::ApprovalRequested>, EngineError> {
    let mut found = None;
    store.scan_records(row.run_id, row.seq, &mut |_, view| {
        if view.kind == flowai_storage::RecordKind::ApprovalRequested {
            found = serde_json::from_str(view.payload).ok();
        }
        std::ops::ControlFlow::Break(())
    })?;
    Ok(found)
}

fn to_raw(value: &Value) -> Result<payloads::Json, EngineError> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| EngineError::Internal(format!("cannot encode JSON value: {e}")))
}

/// A run's records as API.md §9.2 dicts, after `since`.
pub fn journal_entries(
    store: &Store,
    run: RunId,
    since: u64,
) -> Result<Vec<JournalEntry>, EngineError> {
    let records = store.records(run, since.saturating_add(1))?;
    let mut out = Vec::with_capacity(records.len());
    for stored in records {
        let data: Value = serde_json::from_str(&stored.record.payload).map_err(|e| {
            EngineError::CorruptPayload {
                seq: stored.seq,
                kind: stored.record.kind.name(),
                reason: e.to_string(),
            }
        })?;
        out.push(JournalEntry {
            seq: stored.seq,
            kind: stored.record.kind.name(),
            at_ms: stored.record.at_ms,
            data,
        });
    }
    Ok(out)
}

/// [`journal_entries`] written as one JSON array. A payload's text is checked to be one
/// JSON value (a corrupt one is the same error as there) and copied, not re-encoded: the
/// values in it are the text recorded, and `data`'s keys keep the order they were
/// recorded in.
pub fn journal_text(store: &Store, run: RunId, since: u64) -> Result<String, EngineError> {
    use std::fmt::Write as _;
    let mut out = String::from("[");
    let mut corrupt = None;
    store.scan_records(run, since.saturating_add(1), &mut |seq, view| {
        let kind = view.kind.name();
        let data = match serde_json::from_str::<&RawValue>(view.payload) {
            Ok(data) => data,
            Err(e) => {
                corrupt = Some(EngineError::CorruptPayload {
                    seq,
                    kind,
                    reason: e.to_string(),
                });
                return std::ops::ControlFlow::Break(());
            }
        };
        if out.len() > 1 {
            out.push(',');
        }
        // Kind names and timestamps are plain ASCII: nothing in them needs escaping.
        let _ = write!(
            out,
            r#"{{"seq":{seq},"kind":"{kind}","at":"{}","data":{}}}"#,
            rfc3339_ms(view.at_ms),
            data.get()
        );
        std::ops::ControlFlow::Continue(())
    })?;
    if let Some(error) = corrupt {
        return Err(error);
    }
    out.push(']');
    Ok(out)
}

/// A run's stream events rebuilt from its journal (no spec needed).
pub fn replay_events(store: &Store, run: RunId) -> Result<Vec<Event>, EngineError> {
    let mut projector = Projector::new();
    let mut events = Vec::new();
    let mut failure = None;
    store.scan_records(run, 1, &mut |seq, view| match projector.project(
        seq,
        view.kind,
        view.payload,
    ) {
        Ok(mut more) => {
            events.append(&mut more);
            std::ops::ControlFlow::Continue(())
        }
        Err(e) => {
            failure = Some(e);
            std::ops::ControlFlow::Break(())
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(events),
    }
}
