//! Async tool handlers started by the loop that iterates the run's stream, together with
//! the event that loop was waiting for.
//!
//! An async handler runs on the asyncio loop that iterates its run's stream (API.md
//! §2.4, §2.6). Scheduling its coroutine from a tokio worker (`call_soon_threadsafe`)
//! wakes that loop once for the call, besides the wake-up that delivers the step's
//! events: two loop wake-ups, and the GIL taken on the worker for each, per step. When
//! the consumer is waiting in `__anext__` as the call is made (the usual case: it has
//! read every event so far), the call is handed to that wait instead ([`Handoff`]); the
//! loop receives the call and the step's first event in one wake-up and starts the
//! handler as a task itself ([`Handed::start`]). A call the consumer is not waiting for
//! takes the old way, so a consumer busy elsewhere on its loop never holds a handler up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use flowai_runtime::{CreatedReference, EngineError, HostToolCall, RunStream};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::host::PyHost;
use crate::{convert, errors};

static RUN_HANDLER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A tool call waiting for the loop to start its async handler.
pub(crate) struct AsyncCall {
    pub(crate) call: HostToolCall,
    pub(crate) created: Arc<Mutex<Vec<CreatedReference>>>,
    /// Set once the handler was called: a call dropped before that may still be run the
    /// old way; one dropped after must not run twice.
    pub(crate) started: Arc<AtomicBool>,
    pub(crate) reply: oneshot::Sender<Result<Value, String>>,
}

#[derive(Default)]
struct Slot {
    /// The consumer is inside [`Handoff::next`], waiting.
    waiting: bool,
    calls: Vec<AsyncCall>,
}

/// Where a run's host hands async calls to the consumer of the run's stream.
#[derive(Default)]
pub(crate) struct Handoff {
    slot: Mutex<Slot>,
    notify: tokio::sync::Notify,
}

/// What one wait of the consumer found: an event (or the end), calls to start, or both.
pub(crate) struct Next {
    /// `None`: no event yet, only calls.
    pub(crate) event: Option<Option<Result<flowai_runtime::Event, EngineError>>>,
    pub(crate) calls: Vec<AsyncCall>,
}

/// Marks the consumer as not waiting when its wait ends, however it ends (an asyncio
/// cancellation drops the wait). Calls handed over and not taken are dropped unstarted,
/// which sends their host down the old way.
struct Waiting<'a>(&'a Handoff);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut slot = self.0.lock();
        slot.waiting = false;
        slot.calls.clear();
    }
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `call` to the consumer if it is waiting for its next event now; gives it
    /// back otherwise.
    pub(crate) fn offer(&self, call: AsyncCall) -> Result<(), Box<AsyncCall>> {
        let mut slot = self.lock();
        if !slot.waiting {
            return Err(Box::new(call));
        }
        slot.calls.push(call);
        drop(slot);
        self.notify.notify_one();
        Ok(())
    }

    /// The stream's next event, with any calls handed over meanwhile; or calls alone
    /// (then with an event only if one is already buffered).
    pub(crate) async fn next(&self, stream: &mut RunStream) -> Next {
        let _waiting = Waiting(self);
        loop {
            {
                let mut slot = self.lock();
                if !slot.calls.is_empty() {
                    slot.waiting = false;
                    let calls = std::mem::take(&mut slot.calls);
                    drop(slot);
                    let event = stream.try_next_buffered().map(|e| Some(Ok(e)));
                    return Next { event, calls };
                }
                slot.waiting = true;
            }
            tokio::select! {
                biased;
                () = self.notify.notified() => {}
                event = stream.next() => {
                    let mut slot = self.lock();
                    slot.waiting = false;
                    let calls = std::mem::take(&mut slot.calls);
                    return Next { event: Some(event), calls };
                }
            }
        }
    }
}

/// Calls handed to the consumer, and the event that came with them, for the loop to
/// start (`_stream.next_event` calls [`Handed::start`]).
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct Handed {
    host: Arc<PyHost>,
    calls: Mutex<Vec<AsyncCall>>,
    /// The event text; `None` when none came yet; `Err` at the end or on failure.
    event: Mutex<Option<PyResult<String>>>,
}

impl Handed {
    pub(crate) fn new(
        host: Arc<PyHost>,
        calls: Vec<AsyncCall>,
        event: Option<PyResult<String>>,
    ) -> Handed {
        Handed {
            host,
            calls: Mutex::new(calls),
            event: Mutex::new(event),
        }
    }
}

#[pymethods]
impl Handed {
    /// Starts every handed call's handler on the running loop, then returns the event
    /// (a dict) that came with them (`None` if none did) or raises the stream's end/error.
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()));
        for call in calls {
            start_call(py, &self.host, call);
        }
        let event = self
            .event
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .transpose()?;
        event.map(|text| convert::loads(py, &text)).transpose()
    }
}

/// Calls the handler on this (the loop's) thread and runs its coroutine as a task of the
/// loop, in the context captured from the consumer, as `run_coroutine_threadsafe` would.
fn start_call(py: Python<'_>, host: &PyHost, call: AsyncCall) {
    let AsyncCall {
        call,
        created,
        started,
        reply,
    } = call;
    started.store(true, Ordering::Release);
    crate::python::expect_reply_soon();
    let value = match host.call_handler(py, &call, &created) {
        Ok(value) => value,
        Err(text) => {
            let _ = reply.send(Err(text));
            return;
        }
    };
    let text = |e: PyErr| convert::exception_text(py, &e);
    match convert::is_awaitable(&value) {
        Ok(true) => {
            // The handler runs inside `_stream.run_handler`, which gives its outcome to
            // `finish` as it returns: a done-callback would take one more turn of the loop.
            let finish = match Bound::new(py, Finish::new(reply)) {
                Ok(finish) => finish,
                // The reply is dropped with it: the host reports the call as lost.
                Err(_) => {
                    crate::host::close_unawaited(&value);
                    return;
                }
            };
            let wrapped = RUN_HANDLER
                .import(py, "flowai_harness._stream", "run_handler")
                .and_then(|run| run.call1((&value, &finish)));
            let wrapped = match wrapped {
                Ok(wrapped) => wrapped,
                Err(e) => {
                    crate::host::close_unawaited(&value);
                    finish.get().send(Err(text(e)));
                    return;
                }
            };
            if let Err(why) = schedule(py, host, &call.ctx.run_id, &wrapped) {
                crate::host::close_unawaited(&wrapped);
                crate::host::close_unawaited(&value);
                finish.get().send(Err(why));
            }
        }
        Ok(false) => {
            let _ = reply.send(convert::to_json(&value).map_err(text));
        }
        Err(e) => {
            let _ = reply.send(Err(text(e)));
        }
    }
}

/// Runs `coroutine` as a task of the run's loop (this thread's), in the captured context.
/// `create_task` with the loop and the context at hand: `ensure_future` would look the
/// loop up again (a `getpid` system call each time).
fn schedule<'py>(
    py: Python<'py>,
    host: &PyHost,
    run_id: &str,
    coroutine: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>, String> {
    let Some(locals) = host.loop_of(run_id) else {
        return Err(String::from(crate::host::NO_LOOP));
    };
    let text = |e: PyErr| convert::exception_text(py, &e);
    // A copy, as a task started inside `context.run` takes: a handler's context
    // variables stay its own.
    let context = locals.context(py).call_method0("copy").map_err(text)?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("context", context).map_err(text)?;
    locals
        .event_loop(py)
        .call_method("create_task", (coroutine,), Some(&kwargs))
        .map_err(text)
}

/// Where `_stream.run_handler` gives a handler's outcome: its result (or exception text)
/// to the host, once.
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct Finish {
    reply: Mutex<Option<oneshot::Sender<Result<Value, String>>>>,
}

impl Finish {
    fn new(reply: oneshot::Sender<Result<Value, String>>) -> Finish {
        Finish {
            reply: Mutex::new(Some(reply)),
        }
    }

    fn send(&self, outcome: Result<Value, String>) {
        if let Some(reply) = self.reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = reply.send(outcome);
        }
    }
}

#[pymethods]
impl Finish {
    /// The handler returned `value`.
    fn succeed(&self, value: &Bound<'_, PyAny>) {
        let py = value.py();
        self.send(convert::to_json(value).map_err(|e| convert::exception_text(py, &e)));
    }

    /// The handler raised `error` (or its task was cancelled).
    fn fail(&self, error: &Bound<'_, PyAny>) {
        let py = error.py();
        self.send(Err(convert::exception_text(
            py,
            &PyErr::from_value(error.clone()),
        )));
    }
}

/// What the consumer's wait resolves to: an event (a dict once settled), or handed calls.
pub(crate) enum Delivery {
    Text(String),
    Handed(Handed),
}

impl<'py> IntoPyObject<'py> for Delivery {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        match self {
            Delivery::Text(text) => convert::loads(py, &text),
            Delivery::Handed(handed) => Ok(Bound::new(py, handed)?.into_any()),
        }
    }
}

/// An end of stream as the exception `__anext__` raises.
pub(crate) fn end_error(error: Option<EngineError>) -> PyErr {
    match error {
        Some(e) => errors::engine_error(e),
        None => PyStopAsyncIteration::new_err(()),
    }
}
