//! Reference methods (API.md §6), shared by `PyRuntime` and the per-call runtime a
//! tool context's `ReferenceClient` talks to.

use std::sync::{Arc, Mutex};

use flowai_runtime::{CreatedReference, Runtime};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use serde_json::Value;

use crate::{convert, errors, python};

static PREPARE_CREATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn parse(text: &str, what: &str) -> PyResult<Value> {
    serde_json::from_str(text)
        .map_err(|e| errors::value_error(format!("{what} is not valid JSON: {e}")))
}

/// `create_reference(reference, value, glimpse=None)`: the arguments are read now, the
/// store write happens when the awaitable runs. `created` collects what a tool call made.
pub(crate) fn create<'py>(
    py: Python<'py>,
    runtime: Runtime,
    reference: &Bound<'py, PyAny>,
    value: &Bound<'py, PyAny>,
    glimpse: &Bound<'py, PyAny>,
    created: Option<Arc<Mutex<Vec<CreatedReference>>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (kind, value_json, glimpse_json): (String, String, String) = PREPARE_CREATE
        .import(py, "flowai_harness._references", "prepare_reference_create")?
        .call1((reference, value, glimpse))?
        .extract()?;
    let value = parse(&value_json, "reference value")?;
    let glimpse = parse(&glimpse_json, "reference glimpse")?;
    python::awaitable(py, async move {
        let made = runtime
            .create_reference(&kind, &value, &glimpse)
            .await
            .map_err(errors::engine_error)?;
        if let Some(created) = created {
            created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(CreatedReference {
                    kind: made.kind.clone(),
                    id: made.id.clone(),
                });
        }
        python::with_python(|py| -> PyResult<Py<PyAny>> {
            let out = PyDict::new(py);
            out.set_item("kind", &made.kind)?;
            out.set_item("id", &made.id)?;
            out.set_item("glimpse", convert::to_py(py, &made.glimpse)?)?;
            Ok(out.into_any().unbind())
        })
        .unwrap_or_else(|| Err(errors::flowai_error(python::EXITING_TEXT)))
    })
}

/// What `resolve_reference` / `reference_glimpse` read.
#[derive(Clone, Copy)]
pub(crate) enum Lookup {
    Value,
    Glimpse,
}

/// `resolve_reference(ref)` / `reference_glimpse(ref)`.
pub(crate) fn lookup<'py>(
    py: Python<'py>,
    runtime: Runtime,
    reference: &Bound<'py, PyAny>,
    what: Lookup,
) -> PyResult<Bound<'py, PyAny>> {
    let (kind, id): (String, String) = HANDLE
        .import(py, "flowai_harness._references", "reference_handle")?
        .call1((reference,))?
        .extract()?;
    python::awaitable(py, async move {
        let value = match what {
            Lookup::Value => runtime.resolve_reference(&kind, &id),
            Lookup::Glimpse => runtime.reference_glimpse(&kind, &id),
        }
        .map_err(errors::engine_error)?;
        python::with_python(|py| Ok(convert::to_py(py, &value)?.unbind()))
            .unwrap_or_else(|| Err(errors::flowai_error(python::EXITING_TEXT)))
    })
}

/// The runtime a tool context's `ReferenceClient` uses during one call: the runtime's
/// reference methods, recording the references the call creates (journaled with its
/// result as `ReferenceCreated`).
#[pyclass(module = "flowai_harness._internal", frozen)]
pub(crate) struct ToolCallRuntime {
    runtime: Option<Runtime>,
    created: Arc<Mutex<Vec<CreatedReference>>>,
}

impl ToolCallRuntime {
    pub(crate) fn new(
        runtime: Option<Runtime>,
        created: Arc<Mutex<Vec<CreatedReference>>>,
    ) -> ToolCallRuntime {
        ToolCallRuntime { runtime, created }
    }

    fn runtime(&self) -> PyResult<Runtime> {
        self.runtime
            .clone()
            .ok_or_else(|| errors::flowai_error("runtime is closed"))
    }
}

#[pymethods]
impl ToolCallRuntime {
    /// The runtime tenant's resource id.
    #[getter]
    fn resource_id(&self) -> PyResult<String> {
        Ok(self.runtime()?.tenant().to_owned())
    }

    #[pyo3(signature = (reference, value, glimpse = None))]
    fn create_reference<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        glimpse: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let none = py.None().into_bound(py);
        create(
            py,
            self.runtime()?,
            reference,
            value,
            glimpse.unwrap_or(&none),
            Some(Arc::clone(&self.created)),
        )
    }

    fn resolve_reference<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        lookup(py, self.runtime()?, reference, Lookup::Value)
    }

    fn reference_glimpse<'py>(
        &self,
        py: Python<'py>,
        reference: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        lookup(py, self.runtime()?, reference, Lookup::Glimpse)
    }

    fn __repr__(&self) -> String {
        match &self.runtime {
            Some(rt) => format!("ToolCallRuntime(resource_id={:?})", rt.tenant()),
            None => String::from("ToolCallRuntime(closed)"),
        }
    }
}
