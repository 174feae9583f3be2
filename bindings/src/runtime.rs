//! `PyRuntime`, the native runtime handle (API.md §2.4, §9).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use flowai_runtime::{
    ApprovalRule, Decision, HostToolDecl, InterpreterChoice, RandomIds, Runtime, RuntimeOptions,
    RuntimeSpec, rfc3339_ms,
};
use flowai_storage::{Durability, RunInfo, RunStatus, Store, SystemClock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::host::{Callback, PyHost};
use crate::references::{self, Lookup};
use crate::store::{self, PyStore, StoreShare};
use crate::stream::{PyRuntimeEventStream, ReplayStream};
use crate::{convert, errors, python};

/// How many events a stream buffers before the run waits for its consumer.
const EVENT_BUFFER: usize = 64;

/// A host tool as `create_runtime` passes it:
/// `(agent, binding_key, name, description, input_schema_json, approval_json, handler)`.
type HostToolArg = (String, String, String, String, String, String, Py<PyAny>);

/// The runtime of one tenant over a store, with the Python callbacks it calls.
#[pyclass(name = "PyRuntime", module = "flowai_harness._internal", frozen)]
pub(crate) struct PyRuntime {
    runtime: Runtime,
    host: Arc<PyHost>,
    hooks: Py<PyTuple>,
    share: Mutex<StoreShare>,
}

impl PyRuntime {
    fn stream(
        slf: &Bound<'_, Self>,
        stream: flowai_runtime::RunStream,
    ) -> PyResult<PyRuntimeEventStream> {
        let this = slf.get();
        Ok(PyRuntimeEventStream::new(
            stream,
            Arc::clone(&this.host),
            this.hooks.clone_ref(slf.py()),
            this.runtime.clone(),
            slf.clone().into_any().unbind(),
        ))
    }

    fn close_inner(&self) -> PyResult<()> {
        let result = self.runtime.close();
        self.host.set_runtime(None);
        let released = self
            .share
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release();
        result.map_err(errors::engine_error)?;
        released.map_err(|e| errors::store_error(&e))
    }
}

fn run_dict<'py>(py: Python<'py>, info: &RunInfo) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("runId", info.meta.run_id.to_string())?;
    out.set_item("threadId", &info.meta.thread)?;
    out.set_item("agent", &info.meta.agent)?;
    out.set_item("status", info.meta.status.as_str())?;
    out.set_item("createdAt", rfc3339_ms(info.meta.created_at_ms))?;
    out.set_item("updatedAt", rfc3339_ms(info.meta.updated_at_ms))?;
    out.set_item(
        "pendingApprovals",
        PyList::new(py, &info.pending_approvals)?,
    )?;
    out.set_item("records", info.records)?;
    Ok(out)
}

fn run_list<'py>(py: Python<'py>, runs: &[RunInfo]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for info in runs {
        list.append(run_dict(py, info)?)?;
    }
    Ok(list)
}

/// The store a new runtime uses (API.md §9.1).
fn store_for(py: Python<'_>, store: &Bound<'_, PyAny>, durability: &str) -> PyResult<Store> {
    let durability = store::parse_durability(durability)?;
    if store.is_none() {
        return Store::in_memory().map_err(|e| errors::store_error(&e));
    }
    if let Ok(shared) = store.cast::<PyStore>() {
        if durability != Durability::Immediate {
            return Err(errors::value_error(
                "durability applies only when store is a path; the Store object was opened with its own durability",
            ));
        }
        return shared.get().store();
    }
    let path: PathBuf = store.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(
            "store must be None, a path (str or os.PathLike) or a Store from open_store",
        )
    })?;
    store::open_path(py, path, durability, false)
}

fn host_tool(tool: &HostToolArg) -> PyResult<HostToolDecl> {
    let (agent, binding_key, name, description, schema, approval, _) = tool;
    let input_schema = serde_json::from_str(schema)
        .map_err(|e| errors::value_error(format!("tool '{name}' input schema is not JSON: {e}")))?;
    let approval: ApprovalRule = serde_json::from_str(approval)
        .map_err(|e| errors::value_error(format!("tool '{name}' approval rule is invalid: {e}")))?;
    Ok(HostToolDecl {
        agent: agent.clone(),
        binding_key: binding_key.clone(),
        name: name.clone(),
        description: description.clone(),
        input_schema,
        approval,
    })
}

#[pymethods]
impl PyRuntime {
    /// Builds the runtime; called by `flowai_harness.create_runtime` (see its docstring).
    #[staticmethod]
    #[pyo3(signature = (
        *, spec_json, host_tools, predicates, action_dispatcher, event_hooks, services,
        tool_context_factory, dispatch_context_factory, interpreter, mock_response, store,
        durability
    ))]
    #[allow(clippy::too_many_arguments)]
    fn _create(
        py: Python<'_>,
        spec_json: &str,
        host_tools: Vec<HostToolArg>,
        predicates: HashMap<String, Py<PyAny>>,
        action_dispatcher: Option<Py<PyAny>>,
        event_hooks: Vec<Py<PyAny>>,
        services: &Bound<'_, PyDict>,
        tool_context_factory: Py<PyAny>,
        dispatch_context_factory: Py<PyAny>,
        interpreter: &str,
        mock_response: Option<String>,
        store: &Bound<'_, PyAny>,
        durability: &str,
    ) -> PyResult<PyRuntime> {
        // The services reach handlers through the tool context factory.
        let _ = services;
        let interpreter = InterpreterChoice::parse(interpreter, mock_response)
            .map_err(|e| errors::value_error(e.to_string()))?;
        let spec: RuntimeSpec = serde_json::from_str(spec_json)
            .map_err(|e| errors::value_error(format!("runtime spec is invalid: {e}")))?;
        let decls = host_tools
            .iter()
            .map(host_tool)
            .collect::<PyResult<Vec<_>>>()?;
        let mut handlers = HashMap::new();
        for (_, binding_key, _, _, _, _, handler) in host_tools {
            if let std::collections::hash_map::Entry::Vacant(slot) = handlers.entry(binding_key) {
                slot.insert(Callback::new(handler.into_bound(py))?);
            }
        }
        let action_dispatcher = action_dispatcher
            .map(|d| Callback::new(d.into_bound(py)))
            .transpose()?;
        let predicate_ids: BTreeSet<String> = predicates.keys().cloned().collect();
        let host = Arc::new(PyHost::new(
            handlers,
            predicates,
            action_dispatcher,
            tool_context_factory,
            dispatch_context_factory,
        ));
        let store = store_for(py, store, durability)?;
        let share = StoreShare::new(store.clone());
        let handle = convert::tokio_runtime().handle().clone();
        let options = RuntimeOptions {
            spec,
            host_tools: decls,
            predicates: predicate_ids,
            interpreter,
            store,
            host: Arc::clone(&host) as Arc<dyn flowai_runtime::Host>,
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            handle: handle.clone(),
            env: Arc::new(|name: &str| std::env::var(name).ok()),
            event_buffer: EVENT_BUFFER,
        };
        let runtime = py
            .detach(move || {
                let _guard = handle.enter();
                Runtime::new(options)
            })
            .map_err(errors::engine_error)?;
        host.set_runtime(Some(runtime.clone()));
        Ok(PyRuntime {
            runtime,
            host,
            hooks: PyTuple::new(py, event_hooks)?.unbind(),
            share: Mutex::new(share),
        })
    }

    /// The tenant's resource id.
    #[getter]
    fn resource_id(&self) -> String {
        self.runtime.tenant().to_owned()
    }

    /// Starts a run on the coordinator; `resume` is accepted and ignored (API.md §2.4).
    #[pyo3(signature = (prompt, thread_id, resume = None, *, run_id = None))]
    fn query(
        slf: &Bound<'_, Self>,
        prompt: &str,
        thread_id: &str,
        resume: Option<&Bound<'_, PyAny>>,
        run_id: Option<&str>,
    ) -> PyResult<PyRuntimeEventStream> {
        let _ = resume;
        let runtime = slf.get().runtime.clone();
        let stream = slf
            .py()
            .detach(|| runtime.query(prompt, thread_id, run_id))
            .map_err(errors::engine_error)?;
        Self::stream(slf, stream)
    }

    /// Starts a run on a specialist; the thread defaults to `"specialist-<uuid4>"`.
    #[pyo3(signature = (specialist, prompt, thread_id = None))]
    fn run_specialist(
        slf: &Bound<'_, Self>,
        specialist: &str,
        prompt: &str,
        thread_id: Option<&str>,
    ) -> PyResult<PyRuntimeEventStream> {
        let runtime = slf.get().runtime.clone();
        let stream = slf
            .py()
            .detach(|| runtime.run_specialist(specialist, prompt, thread_id, None))
            .map_err(errors::engine_error)?;
        Self::stream(slf, stream)
    }

    /// Answers a pending approval (awaitable).
    #[pyo3(signature = (approval_id, outcome, feedback = None, partial = None))]
    fn respond_to_approval<'py>(
        &self,
        py: Python<'py>,
        approval_id: String,
        outcome: String,
        feedback: Option<String>,
        partial: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !matches!(outcome.as_str(), "approve" | "reject" | "revise") {
            return Err(errors::value_error(format!(
                "approval outcome must be approve, reject, or revise; got {outcome}"
            )));
        }
        let partial = match partial {
            Some(value) if !value.is_none() => Some(convert::to_json(value)?),
            _ => None,
        };
        let runtime = self.runtime.clone();
        python::awaitable(py, async move {
            runtime
                .respond_to_approval(
                    &approval_id,
                    Decision {
                        outcome,
                        feedback,
                        partial,
                    },
                )
                .await
                .map_err(errors::engine_error)
        })
    }

    /// Stores a value under a reference kind (awaitable); `{"kind", "id", "glimpse"}`.
    #[pyo3(signature = (reference, value, glimpse = None))]
    fn create_reference<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        glimpse: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let none = py.None().into_bound(py);
        references::create(
            py,
            self.runtime.clone(),
            reference,
            value,
            glimpse.unwrap_or(&none),
            None,
        )
    }

    /// The value stored for a reference handle (awaitable).
    fn resolve_reference<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        references::lookup(py, self.runtime.clone(), reference, Lookup::Value)
    }

    /// The glimpse stored for a reference handle (awaitable).
    fn reference_glimpse<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        references::lookup(py, self.runtime.clone(), reference, Lookup::Glimpse)
    }

    /// Runs of this tenant, newest first (API.md §9.2).
    #[pyo3(signature = (*, thread_id = None, status = None, limit = 100))]
    fn runs<'py>(
        &self,
        py: Python<'py>,
        thread_id: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let status = status
            .map(|s| {
                RunStatus::from_str(s).map_err(|_| {
                    errors::value_error(format!(
                        "unknown run status '{s}'; expected running, suspended, completed, failed, cancelled, or interrupted"
                    ))
                })
            })
            .transpose()?;
        let runtime = self.runtime.clone();
        let runs = py
            .detach(|| runtime.runs(thread_id, status, limit))
            .map_err(errors::engine_error)?;
        run_list(py, &runs)
    }

    /// One run of this tenant.
    fn run<'py>(&self, py: Python<'py>, run_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let runtime = self.runtime.clone();
        let info = py
            .detach(|| runtime.run(run_id))
            .map_err(errors::engine_error)?;
        run_dict(py, &info)
    }

    /// A run's journal records after `since`: `[{"seq", "kind", "at", "data"}]`.
    #[pyo3(signature = (run_id, *, since = 0))]
    fn journal<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        since: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let runtime = self.runtime.clone();
        let text = py
            .detach(|| runtime.journal_text(run_id, since))
            .map_err(errors::engine_error)?;
        convert::loads(py, &text)
    }

    /// Runs that need action: interrupted ones and suspended ones whose approval was decided.
    fn pending<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let runtime = self.runtime.clone();
        let runs = py
            .detach(|| runtime.pending())
            .map_err(errors::engine_error)?;
        run_list(py, &runs)
    }

    /// Re-drives a suspended or interrupted run from its journal, then continues live.
    #[pyo3(signature = (run_id, *, allow_spec_change = false))]
    fn resume(
        slf: &Bound<'_, Self>,
        run_id: &str,
        allow_spec_change: bool,
    ) -> PyResult<PyRuntimeEventStream> {
        let runtime = slf.get().runtime.clone();
        let stream = slf
            .py()
            .detach(|| runtime.resume(run_id, allow_spec_change))
            .map_err(errors::engine_error)?;
        Self::stream(slf, stream)
    }

    /// The run's events rebuilt from its journal; with `verify` the run is re-driven in
    /// verify mode first (`NonDeterminismError`, `SpecMismatchError`).
    #[pyo3(signature = (run_id, *, verify = true))]
    fn replay(&self, py: Python<'_>, run_id: &str, verify: bool) -> PyResult<ReplayStream> {
        let runtime = self.runtime.clone();
        if verify {
            let (rt, id) = (runtime.clone(), run_id.to_owned());
            convert::block_on(py, async move { rt.verify(&id).await })?
                .map_err(errors::engine_error)?;
        }
        let events = py
            .detach(|| runtime.replay_events(run_id))
            .map_err(errors::engine_error)?;
        Ok(ReplayStream::new(
            run_id.to_owned(),
            events.into_iter().map(|e| e.into_string()).collect(),
        ))
    }

    /// A new run from the first `at_seq` records of `run_id` (optionally with a new entry
    /// prompt); it starts `interrupted` and continues on `resume` (API.md §9.4).
    #[pyo3(signature = (run_id, *, at_seq, prompt = None))]
    fn fork(
        &self,
        py: Python<'_>,
        run_id: &str,
        at_seq: u64,
        prompt: Option<&str>,
    ) -> PyResult<String> {
        let runtime = self.runtime.clone();
        py.detach(|| flowai_replay::fork(&runtime, run_id, at_seq, prompt))
            .map_err(errors::fork_error)
    }

    /// Cancels a run durably (its pending approvals are resolved as cancelled).
    fn cancel(&self, py: Python<'_>, run_id: String) -> PyResult<()> {
        let runtime = self.runtime.clone();
        convert::block_on(py, async move { runtime.cancel(&run_id).await })?
            .map_err(errors::engine_error)
    }

    /// Removes expired references; returns how many.
    fn gc(&self, py: Python<'_>) -> PyResult<usize> {
        let runtime = self.runtime.clone();
        convert::block_on(py, async move { runtime.gc().await })?.map_err(errors::engine_error)
    }

    /// Stops the runs this runtime drives, flushes, and lets go of the store. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.close_inner())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("PyRuntime(resource_id={:?})", self.runtime.tenant())
    }
}

impl Drop for PyRuntime {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.close() {
            eprintln!("flowai: closing a dropped runtime failed: {e}");
        }
        self.host.set_runtime(None);
    }
}
