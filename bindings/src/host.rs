//! The engine's [`Host`] over Python callbacks (API.md §2.6, §5.6, §7).
//!
//! Callbacks run with the GIL taken only for the call itself. A coroutine a callback
//! returns runs on the asyncio loop that last awaited the run's stream (registered by
//! the stream on every `__anext__`); its result is awaited here without the GIL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flowai_runtime::{
    CreatedReference, DispatchContext, Host, HostToolCall, HostToolOutcome, PredicateContext,
    Runtime,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3_async_runtimes::TaskLocals;
use serde_json::Value;

use crate::handoff::{AsyncCall, Handoff};
use crate::references::ToolCallRuntime;
use crate::{convert, python};

pub(crate) const NO_LOOP: &str =
    "async Python callback requires the runtime stream to be iterated from asyncio";

/// The Python side of one runtime.
pub(crate) struct PyHost {
    /// Handler per binding key.
    tools: HashMap<String, Callback>,
    predicates: HashMap<String, Py<PyAny>>,
    dispatcher: Option<Callback>,
    tool_context_factory: Py<PyAny>,
    dispatch_context_factory: Py<PyAny>,
    /// The asyncio loop (and context) each run's stream was last awaited from.
    loops: Mutex<HashMap<String, TaskLocals>>,
    /// Where each run's stream takes async calls while it waits for events.
    handoffs: Mutex<HashMap<String, Arc<Handoff>>>,
    /// The engine runtime, for references created through a tool context. Set after
    /// construction, cleared on close (it would otherwise keep the runtime alive).
    runtime: Mutex<Option<Runtime>>,
}

/// A host callable, and whether it is an `async def` (calling it only makes a
/// coroutine, so it never blocks the calling thread).
pub(crate) struct Callback {
    func: Py<PyAny>,
    coroutine_function: bool,
}

impl Callback {
    pub(crate) fn new(func: Bound<'_, PyAny>) -> PyResult<Callback> {
        let coroutine_function = convert::is_coroutine_function(&func)?;
        Ok(Callback {
            func: func.unbind(),
            coroutine_function,
        })
    }
}

/// A callback's return value: ready, or a coroutine running on an asyncio loop.
enum Returned {
    Ready(Value),
    Pending(std::pin::Pin<Box<dyn std::future::Future<Output = PyResult<Py<PyAny>>> + Send>>),
}

impl PyHost {
    pub(crate) fn new(
        tools: HashMap<String, Callback>,
        predicates: HashMap<String, Py<PyAny>>,
        dispatcher: Option<Callback>,
        tool_context_factory: Py<PyAny>,
        dispatch_context_factory: Py<PyAny>,
    ) -> PyHost {
        PyHost {
            tools,
            predicates,
            dispatcher,
            tool_context_factory,
            dispatch_context_factory,
            loops: Mutex::new(HashMap::new()),
            handoffs: Mutex::new(HashMap::new()),
            runtime: Mutex::new(None),
        }
    }

    pub(crate) fn set_runtime(&self, runtime: Option<Runtime>) {
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = runtime;
    }

    fn runtime(&self) -> Option<Runtime> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the loop a run's stream is being awaited from (call with the GIL held).
    pub(crate) fn set_loop(&self, run_id: &str, locals: TaskLocals) {
        let old = self
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_owned(), locals);
        drop(old);
    }

    /// Forgets a run's loop (call with the GIL held).
    pub(crate) fn clear_loop(&self, run_id: &str) {
        let old = self
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
        drop(old);
        self.handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
    }

    /// Lets a run's stream take its async calls (see `handoff`); call with the GIL held.
    pub(crate) fn set_handoff(&self, run_id: &str, handoff: Arc<Handoff>) {
        let old = self
            .handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_owned(), handoff);
        drop(old);
    }

    fn handoff_of(&self, run_id: &str) -> Option<Arc<Handoff>> {
        self.handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }

    pub(crate) fn loop_of(&self, run_id: &str) -> Option<TaskLocals> {
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }

    /// Interprets what a callback returned: a coroutine is scheduled on the run's loop.
    fn returned(&self, value: Bound<'_, PyAny>, run_id: &str) -> Result<Returned, String> {
        let py = value.py();
        match convert::is_awaitable(&value) {
            Ok(true) => {
                let Some(locals) = self.loop_of(run_id) else {
                    close_unawaited(&value);
                    return Err(String::from(NO_LOOP));
                };
                let future = pyo3_async_runtimes::into_future_with_locals(&locals, value)
                    .map_err(|e| convert::exception_text(py, &e))?;
                Ok(Returned::Pending(Box::pin(future)))
            }
            Ok(false) => convert::to_json(&value)
                .map(Returned::Ready)
                .map_err(|e| convert::exception_text(py, &e)),
            Err(e) => Err(convert::exception_text(py, &e)),
        }
    }

    async fn settle(returned: Returned) -> Result<Value, String> {
        match returned {
            Returned::Ready(value) => Ok(value),
            Returned::Pending(future) => {
                let outcome = future.await;
                python::with_python(|py| match outcome {
                    Ok(value) => convert::to_json(value.bind(py))
                        .map_err(|e| convert::exception_text(py, &e)),
                    Err(e) => Err(convert::exception_text(py, &e)),
                })
                .unwrap_or_else(|| Err(String::from(python::EXITING_TEXT)))
            }
        }
    }

    fn start_tool(
        &self,
        call: &HostToolCall,
        created: &Arc<Mutex<Vec<CreatedReference>>>,
    ) -> Result<Returned, String> {
        python::with_python(|py| {
            let value = self.call_handler(py, call, created)?;
            self.returned(value, &call.ctx.run_id)
        })
        .unwrap_or_else(|| Err(String::from(python::EXITING_TEXT)))
    }

    /// Calls a tool's handler with its arguments and a fresh tool context; returns what
    /// it returned (a coroutine, for an `async def`), or the error text.
    pub(crate) fn call_handler<'py>(
        &self,
        py: Python<'py>,
        call: &HostToolCall,
        created: &Arc<Mutex<Vec<CreatedReference>>>,
    ) -> Result<Bound<'py, PyAny>, String> {
        let handler = self.tools.get(&call.binding_key).ok_or_else(|| {
            format!(
                "no handler is registered for tool binding '{}'",
                call.binding_key
            )
        })?;
        let text = |e: PyErr| convert::exception_text(py, &e);
        let args = convert::to_py(py, &call.args).map_err(text)?;
        let proxy = Py::new(
            py,
            ToolCallRuntime::new(self.runtime(), Arc::clone(created)),
        )
        .map_err(text)?;
        // `ToolContext.factory(services)`: (runtime, tool_use_id, run_id, idempotency_key, attempt).
        let ctx = self
            .tool_context_factory
            .bind(py)
            .call1((
                proxy,
                &call.ctx.tool_use_id,
                &call.ctx.run_id,
                &call.ctx.idempotency_key,
                call.ctx.attempt,
            ))
            .map_err(text)?;
        handler.func.bind(py).call1((args, ctx)).map_err(text)
    }

    /// Hands an async tool call to the consumer of its run's stream, if that consumer is
    /// waiting for an event right now (see `handoff`). `None`: take the old way.
    async fn handed_over(
        &self,
        call: &HostToolCall,
        created: &Arc<Mutex<Vec<CreatedReference>>>,
    ) -> Option<Result<Value, String>> {
        let handoff = self.handoff_of(&call.ctx.run_id)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let offered = AsyncCall {
            call: call.clone(),
            created: Arc::clone(created),
            started: Arc::clone(&started),
            reply,
        };
        // The consumer may be reading this step's events right now and wait again a few
        // microseconds later: offer the call until then, as long as a short handler takes.
        let start = std::time::Instant::now();
        let mut offered = offered;
        while let Err(back) = handoff.offer(offered) {
            if start.elapsed() >= HANDOFF_SPIN {
                return None;
            }
            offered = *back;
            tokio::task::yield_now().await;
        }
        match spin_then_wait(answer).await {
            Ok(result) => Some(result),
            // Dropped before the loop called the handler (the wait was cancelled).
            Err(_) if !started.load(Ordering::Acquire) => None,
            Err(_) => Some(Err(String::from(
                "the asyncio task running the handler was destroyed before it finished",
            ))),
        }
    }

    fn start_dispatch(&self, actions: &Value, ctx: &DispatchContext) -> Result<Returned, String> {
        python::with_python(|py| {
            let text = |e: PyErr| convert::exception_text(py, &e);
            let Some(dispatcher) = &self.dispatcher else {
                return Ok(Returned::Ready(Value::Null));
            };
            let actions = convert::to_py(py, actions).map_err(text)?;
            let resolved = convert::to_py(py, &ctx.resolved_refs).map_err(text)?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("run_id", &ctx.run_id).map_err(text)?;
            kwargs.set_item("plan_id", &ctx.plan_id).map_err(text)?;
            kwargs
                .set_item("idempotency_key", &ctx.idempotency_key)
                .map_err(text)?;
            kwargs.set_item("attempt", ctx.attempt).map_err(text)?;
            let py_ctx = self
                .dispatch_context_factory
                .bind(py)
                .call((resolved,), Some(&kwargs))
                .map_err(text)?;
            let value = dispatcher
                .func
                .bind(py)
                .call1((actions, py_ctx))
                .map_err(text)?;
            self.returned(value, &ctx.run_id)
        })
        .unwrap_or_else(|| Err(String::from(python::EXITING_TEXT)))
    }
}

/// How long a call handed to the loop is polled for before its worker sleeps on it.
const HANDOFF_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Awaits a reply from the asyncio thread, polling it for up to [`HANDOFF_SPIN`] first
/// (yielding to the worker's other tasks between polls): a short handler answers within
/// tens of microseconds, and a tokio worker that went to sleep takes about as long again
/// to wake on a virtual machine's idle vCPU.
async fn spin_then_wait<T>(
    mut answer: tokio::sync::oneshot::Receiver<T>,
) -> Result<T, tokio::sync::oneshot::error::RecvError> {
    let start = std::time::Instant::now();
    while start.elapsed() < HANDOFF_SPIN {
        match answer.try_recv() {
            Ok(value) => return Ok(value),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
        }
    }
    answer.await
}

/// Closes a coroutine that will never be awaited (avoids "never awaited" warnings).
pub(crate) fn close_unawaited(value: &Bound<'_, PyAny>) {
    if value.hasattr("close").unwrap_or(false) {
        let _ = value.call_method0("close");
    }
}

#[async_trait]
impl Host for PyHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        let created = Arc::new(Mutex::new(Vec::new()));
        let blocking = self
            .tools
            .get(&call.binding_key)
            .is_some_and(|h| !h.coroutine_function);
        let handed = if blocking {
            None
        } else {
            self.handed_over(&call, &created).await
        };
        let result = match handed {
            Some(result) => result,
            None => {
                let started = if blocking {
                    python::blocking(|| self.start_tool(&call, &created))
                } else {
                    self.start_tool(&call, &created)
                };
                match started {
                    Ok(returned) => Self::settle(returned).await,
                    Err(e) => Err(e),
                }
            }
        };
        let created_references =
            std::mem::take(&mut *created.lock().unwrap_or_else(|p| p.into_inner()));
        HostToolOutcome {
            result,
            created_references,
        }
    }

    async fn evaluate_predicate(&self, id: &str, args: &Value, ctx: &PredicateContext) -> bool {
        python::blocking(|| self.predicate(id, args, ctx))
    }

    fn has_dispatcher(&self) -> bool {
        self.dispatcher.is_some()
    }

    async fn dispatch_actions(
        &self,
        actions: Value,
        ctx: DispatchContext,
    ) -> Result<Value, String> {
        let blocking = self
            .dispatcher
            .as_ref()
            .is_some_and(|d| !d.coroutine_function);
        let returned = if blocking {
            python::blocking(|| self.start_dispatch(&actions, &ctx))?
        } else {
            self.start_dispatch(&actions, &ctx)?
        };
        Self::settle(returned).await
    }
}

impl PyHost {
    /// Calls a predicate; a failure or a non-bool answer means approval is required.
    fn predicate(&self, id: &str, args: &Value, ctx: &PredicateContext) -> bool {
        python::with_python(|py| {
            let Some(predicate) = self.predicates.get(id) else {
                eprintln!(
                    "flowai: approval predicate '{id}' is not registered; approval is required"
                );
                return true;
            };
            let call = || -> PyResult<Bound<'_, PyAny>> {
                let args = convert::to_py(py, args)?;
                let context = PyDict::new(py);
                context.set_item("kind", PyString::new(py, &ctx.kind))?;
                context.set_item("target", PyString::new(py, &ctx.target))?;
                context.set_item("tenant", PyString::new(py, &ctx.tenant))?;
                predicate.bind(py).call1((args, context))
            };
            match call() {
                Ok(answer) => match answer.extract::<bool>() {
                    Ok(required) if answer.is_instance_of::<pyo3::types::PyBool>() => required,
                    _ => {
                        let shown = answer
                            .repr()
                            .map(|r| r.to_string())
                            .unwrap_or_else(|_| String::from("<unprintable>"));
                        eprintln!(
                            "flowai: approval predicate '{id}' returned {shown}, not a bool; approval is required"
                        );
                        true
                    }
                },
                Err(e) => {
                    eprintln!("flowai: approval predicate '{id}' raised; approval is required:");
                    e.print(py);
                    true
                }
            }
        })
        .unwrap_or(true)
    }
}
