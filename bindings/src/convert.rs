//! Moving values across the boundary: JSON text both ways, exception texts, and the
//! one helper that waits for Rust work with the GIL released.

use std::future::Future;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use crate::errors;

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TO_JSON_TEXT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static IS_AWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static JSON_SCAN_ONCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `json.loads(text)`, for text without surrounding whitespace (what serde_json writes):
/// the decoder's scanner is called directly, without `json.loads`'s Python layers (type
/// checks, whitespace regexes), which took half the time of decoding an event. Anything
/// the scanner does not take whole goes to `json.loads`, for its result or its error.
pub(crate) fn loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let text = PyString::new(py, text);
    let scanned = JSON_SCAN_ONCE
        .get_or_try_init(py, || {
            py.import("json")?
                .getattr("_default_decoder")?
                .getattr("scan_once")
                .map(Bound::unbind)
        })
        .and_then(|scan| scan.bind(py).call1((&text, 0)));
    if let Ok(scanned) = scanned
        && let Ok((value, end)) = scanned.extract::<(Bound<'py, PyAny>, usize)>()
        && text.len().is_ok_and(|len| len == end)
    {
        return Ok(value);
    }
    JSON_LOADS.import(py, "json", "loads")?.call1((text,))
}

/// A JSON value as the equivalent Python object: what `json.loads` of its text gives,
/// built directly (a tool's arguments, on every call) rather than written and parsed again.
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => int.into_pyobject(py)?.into_any(),
            (None, Some(int), _) => int.into_pyobject(py)?.into_any(),
            (None, None, float) => PyFloat::new(py, float.unwrap_or(f64::NAN)).into_any(),
        },
        Value::String(text) => PyString::new(py, text).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(entries) => {
            let dict = PyDict::new(py);
            for (key, item) in entries {
                dict.set_item(key, to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// How deep [`plain_json`] follows containers before leaving a value to the encoder, far
/// below serde_json's parsing limit (128), so that a deep or cyclic value gets the
/// encoder's error as before.
const PLAIN_DEPTH_MAX: usize = 64;

/// `value` as JSON when it is built only of exact `dict`s with `str` keys, `list`s,
/// `tuple`s, `str`s, `int`s within 64 bits, finite `float`s, `bool`s and `None`: the value
/// `json.dumps` would write, without the text. `None` for anything else (pydantic models,
/// subclasses, NaN, big ints...), which [`to_json`] hands to the encoder. Runs no Python
/// code, so nothing changes the containers while they are read.
fn plain_json(value: &Bound<'_, PyAny>, depth: usize) -> Option<Value> {
    if depth > PLAIN_DEPTH_MAX {
        return None;
    }
    if value.is_none() {
        return Some(Value::Null);
    }
    if let Ok(text) = value.cast_exact::<PyString>() {
        return text
            .to_str()
            .ok()
            .map(|text| Value::String(text.to_owned()));
    }
    if let Ok(flag) = value.cast_exact::<PyBool>() {
        return Some(Value::Bool(flag.is_true()));
    }
    if let Ok(int) = value.cast_exact::<PyInt>() {
        return match int.extract::<i64>() {
            Ok(int) => Some(Value::from(int)),
            Err(_) => int.extract::<u64>().ok().map(Value::from),
        };
    }
    if let Ok(float) = value.cast_exact::<PyFloat>() {
        return serde_json::Number::from_f64(float.value()).map(Value::Number);
    }
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        let mut entries = serde_json::Map::new();
        for (key, item) in dict.iter() {
            let key = key.cast_exact::<PyString>().ok()?.to_str().ok()?;
            entries.insert(key.to_owned(), plain_json(&item, depth + 1)?);
        }
        return Some(Value::Object(entries));
    }
    let items = |iter: &mut dyn Iterator<Item = Bound<'_, PyAny>>| -> Option<Value> {
        iter.map(|item| plain_json(&item, depth + 1))
            .collect::<Option<Vec<Value>>>()
            .map(Value::Array)
    };
    if let Ok(list) = value.cast_exact::<PyList>() {
        return items(&mut list.iter());
    }
    if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        return items(&mut tuple.iter());
    }
    None
}

/// A Python value (pydantic models dumped) as JSON; a value that is not
/// JSON-serializable raises (`TypeError`/`ValueError` from `json.dumps`).
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Some(plain) = plain_json(value, 0) {
        return Ok(plain);
    }
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
    // What handlers return most: plain JSON containers, which are never awaitable (exact
    // types only; a subclass may define `__await__`).
    if value.is_exact_instance_of::<PyDict>() || value.is_exact_instance_of::<PyList>() {
        return Ok(false);
    }
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

/// Environment variable that sets how many tokio worker threads drive runs.
pub(crate) const WORKER_THREADS_ENV: &str = "FLOWAI_WORKER_THREADS";

/// Sets up the tokio runtime's worker threads, before anything uses it: one fewer than
/// the cores (at least one), since the thread running the asyncio loop (the consumer,
/// async handlers) keeps a core busy too. tokio's default, one per core, oversubscribes
/// by that thread; on two cores its second worker was mostly woken for nothing (a worker
/// that finds work wakes a sibling to look for more), which took an async handler's
/// in-memory step from ≈ 70 to ≈ 130 µs (BENCHMARKS.md). `FLOWAI_WORKER_THREADS`
/// overrides the count; a value that is not a positive integer fails the import.
pub(crate) fn configure_tokio_runtime() -> PyResult<()> {
    let workers = match std::env::var(WORKER_THREADS_ENV) {
        // Set but empty reads as unset, as shells make it easy to write.
        Ok(text) if !text.trim().is_empty() => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "{WORKER_THREADS_ENV} must be a positive integer, got {text:?}"
                )));
            }
        },
        _ => std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    Ok(())
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
