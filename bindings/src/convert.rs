//! Moving values across the boundary: JSON text both ways, exception texts, and the
//! one helper that waits for Rust work with the GIL released.

use std::future::Future;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;
use serde_json::Value;

use crate::errors;

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TO_JSON_TEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static IS_AWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `json.loads(text)`.
pub(crate) fn loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    JSON_LOADS
        .import(py, "json", "loads")?
        .call1((PyString::new(py, text),))
}

/// A JSON value as the equivalent Python object.
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    loads(py, &value.to_string())
}

/// A Python value (pydantic models dumped) as JSON; a value that is not
/// JSON-serializable raises (`TypeError`/`ValueError` from `json.dumps`).
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    let py = value.py();
    let text = TO_JSON_TEXT
        .import(py, "flowai_harness._results", "to_json_text")?
        .call1((value,))?;
    let text: &str = &text.extract::<String>()?;
    serde_json::from_str(text)
        .map_err(|e| errors::value_error(format!("value is not valid JSON: {e}")))
}

/// `inspect.isawaitable(value)`.
pub(crate) fn is_awaitable(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    IS_AWAITABLE
        .import(value.py(), "inspect", "isawaitable")?
        .call1((value,))?
        .is_truthy()
}

static IS_COROUTINE_FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `inspect.iscoroutinefunction(value)`.
pub(crate) fn is_coroutine_function(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    IS_COROUTINE_FUNCTION
        .import(value.py(), "inspect", "iscoroutinefunction")?
        .call1((value,))?
        .is_truthy()
}

/// `"<ExcType>: <message>"`, the text a failed callback becomes (API.md §2.6, §5.6).
pub(crate) fn exception_text(py: Python<'_>, error: &PyErr) -> String {
    let name = error
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| String::from("Exception"));
    let message = error
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    format!("{name}: {message}")
}

/// The process-wide tokio runtime (created on first use, outliving asyncio loops).
pub(crate) fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` to completion on the native runtime with the GIL released; works from
/// any thread, including a tokio worker running a synchronous tool handler.
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = tokio_runtime().handle().clone();
    py.detach(move || match tokio::runtime::Handle::try_current() {
        Ok(current) if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(fut)))
        }
        Ok(_) => {
            // On a single-threaded runtime of someone else: hand the work over and wait.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                let _ = tx.send(fut.await);
            });
            rx.recv()
                .map_err(|_| errors::flowai_error("the native runtime dropped a blocking call"))
        }
        Err(_) => Ok(handle.block_on(fut)),
    })
}
