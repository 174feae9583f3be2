//! The event stream of a run (API.md §2.4, §9.3) and the replay iterator (§9.4).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flowai_runtime::{EngineError, RunStream, Runtime};
use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use pyo3_async_runtimes::TaskLocals;

use crate::handoff::{self, Delivery, Handed, Handoff};
use crate::host::PyHost;
use crate::{convert, errors, python};

static NEXT_EVENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// An awaitable whose result (or exception) is known already: awaiting it does not
/// go through the event loop.
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct Ready {
    outcome: Mutex<Option<PyResult<Py<PyAny>>>>,
}

impl Ready {
    pub(crate) fn new(outcome: PyResult<Py<PyAny>>) -> Ready {
        Ready {
            outcome: Mutex::new(Some(outcome)),
        }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> PyResult<Py<PyAny>> {
        let outcome = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match outcome {
            Some(Ok(value)) => Err(PyStopIteration::new_err((value,))),
            Some(Err(e)) => Err(e),
            None => Err(errors::flowai_error("this awaitable was awaited already")),
        }
    }
}

/// The async iterator of a run's event dicts. The run starts on the first `__anext__`.
#[pyclass(
    name = "PyRuntimeEventStream",
    module = "flowai_harness._internal",
    frozen
)]
pub(crate) struct PyRuntimeEventStream {
    run_id: String,
    inner: Arc<tokio::sync::Mutex<RunStream>>,
    host: Arc<PyHost>,
    /// Where the host hands this run's async calls while `__anext__` waits.
    handoff: Arc<Handoff>,
    hooks: Py<PyTuple>,
    runtime: Runtime,
    finished: Arc<AtomicBool>,
    /// The loop the last `__anext__` ran on, and its thread.
    last_loop: Mutex<Option<(Py<PyAny>, std::thread::ThreadId)>>,
    /// The last wait for the next event polled on `last_loop` (done or not).
    last_wait: Mutex<Option<python::LoopWait>>,
    /// The `PyRuntime` this stream belongs to, kept alive while the stream is.
    _owner: Py<PyAny>,
}

impl PyRuntimeEventStream {
    pub(crate) fn new(
        stream: RunStream,
        host: Arc<PyHost>,
        hooks: Py<PyTuple>,
        runtime: Runtime,
        owner: Py<PyAny>,
    ) -> PyRuntimeEventStream {
        let handoff = Arc::new(Handoff::default());
        host.set_handoff(stream.run_id(), Arc::clone(&handoff));
        PyRuntimeEventStream {
            run_id: stream.run_id().to_owned(),
            inner: Arc::new(tokio::sync::Mutex::new(stream)),
            host,
            handoff,
            hooks,
            runtime,
            finished: Arc::new(AtomicBool::new(false)),
            last_loop: Mutex::new(None),
            last_wait: Mutex::new(None),
            _owner: owner,
        }
    }
}

impl PyRuntimeEventStream {
    /// Makes the running loop the one this run's async callbacks use (API.md §2.4), and
    /// returns it.
    fn register_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let thread = std::thread::current().id();
        let mut last = self.last_loop.lock().unwrap_or_else(|p| p.into_inner());
        // One loop runs on a thread at a time: if the last one runs on this thread, this
        // call is inside it. Cheaper than `get_running_loop`, which makes a system call
        // (getpid) each time, three times a step here.
        if let Some((known, on)) = last.as_ref()
            && *on == thread
            && known.bind(py).call_method0("is_running")?.is_truthy()?
        {
            return Ok(known.bind(py).clone());
        }
        let running = python::running_loop(py)?;
        if last.as_ref().is_some_and(|(l, _)| l.bind(py).is(&running)) {
            *last = Some((running.clone().unbind(), thread));
            return Ok(running);
        }
        // A wait still pending on the previous loop will not be polled again: that loop
        // stopped with it pending. It holds the stream; end it, so that this loop reads on
        // from the first event it did not take.
        if let Some(stale) = self
            .last_wait
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            stale.abandon();
        }
        let locals = TaskLocals::new(running.clone()).copy_context(py)?;
        self.host.set_loop(&self.run_id, locals);
        *last = Some((running.clone().unbind(), thread));
        Ok(running)
    }

    fn anext<'py>(&self, py: Python<'py>, slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        if self.finished.load(Ordering::Acquire) {
            let ready = Ready::new(Err(PyStopAsyncIteration::new_err(())));
            return Ok(Bound::new(py, ready)?.into_any());
        }
        let running = self.register_loop(py)?;
        // Fast path: an event is buffered already; no thread hop, no loop round trip.
        let buffered = match self.inner.try_lock() {
            Ok(mut stream) if stream.started() => stream.try_next_buffered(),
            // The first call starts the run; a resumed one reads its whole journal first
            // (milliseconds for a long run), which other Python threads need not wait for.
            Ok(mut stream) => py.detach(|| stream.try_next_buffered()),
            Err(_) => None,
        };
        if let Some(event) = buffered {
            let outcome = self.deliver(py, event.as_str());
            return Ok(Bound::new(py, Ready::new(outcome))?.into_any());
        }
        let pending = self.wait_next(&running)?;
        NEXT_EVENT
            .import(py, "flowai_harness._stream", "next_event")?
            .call1((pending, self.hooks.bind(py), slf))
    }

    /// Waits for the next event, or for async calls handed over meanwhile. The wait is
    /// polled on `running`'s thread: the thread that makes an event ready (or hands a call
    /// over) pokes the loop itself, and the consumer counts as waiting for handed calls
    /// from this call on, not from whenever a worker would have started a waiting task.
    fn wait_next<'py>(&self, running: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        let finished = Arc::clone(&self.finished);
        let host = Arc::clone(&self.host);
        let handoff = Arc::clone(&self.handoff);
        let run_id = self.run_id.clone();
        let (awaitable, wait) = python::polled_on_loop(running, async move {
            let next = {
                let mut stream = inner.lock().await;
                handoff.next(&mut stream).await
            };
            let event = next.event.map(|event| match event {
                Some(Ok(event)) => Ok(event.into_string()),
                other => {
                    finished.store(true, Ordering::Release);
                    python::with_python(|_| host.clear_loop(&run_id));
                    Err(handoff::end_error(other.and_then(Result::err)))
                }
            });
            if next.calls.is_empty() {
                return match event {
                    Some(Ok(text)) => Ok(Delivery::Text(text)),
                    Some(Err(e)) => Err(e),
                    None => Err(errors::flowai_error(
                        "the event stream woke without an event or a call",
                    )),
                };
            }
            Ok(Delivery::Handed(Handed::new(host, next.calls, event)))
        })?;
        if wait.is_some() {
            *self.last_wait.lock().unwrap_or_else(|p| p.into_inner()) = wait;
        }
        Ok(awaitable)
    }

    /// The event as a dict, after the hooks have seen it (in order; an exception propagates).
    fn deliver(&self, py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
        let event = convert::loads(py, text)?;
        for hook in self.hooks.bind(py).iter() {
            hook.call1((&event,))?;
        }
        Ok(event.unbind())
    }
}

#[pymethods]
impl PyRuntimeEventStream {
    /// The run's id (a ULID), known before the first event.
    #[getter]
    fn run_id(&self) -> String {
        self.run_id.clone()
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.anext(py, slf)
    }

    /// An awaitable of the next event (a dict), or of async calls handed to this
    /// consumer meanwhile (`_stream.next_event` starts them and waits again).
    fn _wait_next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.wait_next(&python::running_loop(py)?)
    }

    /// Cancels the run durably; works before or after it started. Cancelling a run that
    /// has ended changes nothing.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        if let Ok(mut stream) = self.inner.try_lock()
            && !stream.started()
        {
            // It starts cancelled, if it is ever started.
            stream.cancel();
            return Ok(());
        }
        // Under way: cancel it by id, as `runtime.cancel` does (durably).
        let runtime = self.runtime.clone();
        let run_id = self.run_id.clone();
        match convert::block_on(py, async move { runtime.cancel(&run_id).await })? {
            Ok(()) | Err(EngineError::RunFinished { .. }) => Ok(()),
            Err(e) => Err(errors::engine_error(e)),
        }
    }

    fn __repr__(&self) -> String {
        format!("PyRuntimeEventStream(run_id={:?})", self.run_id)
    }
}

impl Drop for PyRuntimeEventStream {
    fn drop(&mut self) {
        Python::attach(|_| {
            self.host.clear_loop(&self.run_id);
            self.last_loop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        });
    }
}

/// The async iterator `Runtime.replay` returns: events rebuilt from the journal.
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct ReplayStream {
    run_id: String,
    events: Mutex<VecDeque<String>>,
}

impl ReplayStream {
    pub(crate) fn new(run_id: String, events: Vec<String>) -> ReplayStream {
        ReplayStream {
            run_id,
            events: Mutex::new(events.into()),
        }
    }
}

#[pymethods]
impl ReplayStream {
    /// The replayed run's id.
    #[getter]
    fn run_id(&self) -> String {
        self.run_id.clone()
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let next = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let outcome = match next {
            Some(text) => convert::loads(py, &text).map(Bound::unbind),
            None => Err(PyStopAsyncIteration::new_err(())),
        };
        Ok(Bound::new(py, Ready::new(outcome))?.into_any())
    }

    fn __repr__(&self) -> String {
        format!("ReplayStream(run_id={:?})", self.run_id)
    }
}
