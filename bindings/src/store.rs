//! `Store` and `open_store` (API.md §9.1), and who holds which store.
//!
//! Several holders may share one storage `Store` in a process (runtimes created with the
//! same path, runtimes sharing a `Store` object, the `Store` object itself). The file
//! is closed when the last holder lets go, or at once by an explicit `Store.close()`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use flowai_storage::{Durability, Store, StoreOptions};
use pyo3::prelude::*;

use crate::errors;

/// Holders per store file (canonical path). In-memory stores have a single holder.
static HOLDERS: LazyLock<Mutex<HashMap<PathBuf, usize>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One holder's share of a store; [`StoreShare::release`] (or drop) gives it back.
pub(crate) struct StoreShare {
    store: Option<Store>,
}

impl StoreShare {
    pub(crate) fn new(store: Store) -> StoreShare {
        if let Some(path) = store.path() {
            *HOLDERS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(path.to_path_buf())
                .or_insert(0) += 1;
        }
        StoreShare { store: Some(store) }
    }

    pub(crate) fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Gives the share back; closes the store (flushing it) when nobody else holds it.
    pub(crate) fn release(&mut self) -> Result<(), flowai_storage::StoreError> {
        let Some(store) = self.store.take() else {
            return Ok(());
        };
        let last = match store.path() {
            None => true,
            Some(path) => {
                let mut holders = HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
                match holders.get_mut(path) {
                    Some(count) if *count > 1 => {
                        *count -= 1;
                        false
                    }
                    _ => {
                        holders.remove(path);
                        true
                    }
                }
            }
        };
        if last { store.close() } else { Ok(()) }
    }
}

impl Drop for StoreShare {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing_free_warning(&e);
        }
    }
}

fn tracing_free_warning(error: &flowai_storage::StoreError) {
    eprintln!("flowai: closing a store failed: {error}");
}

/// `"immediate"` / `"eventual"` (API.md §9.1).
pub(crate) fn parse_durability(text: &str) -> PyResult<Durability> {
    match text {
        "immediate" => Ok(Durability::Immediate),
        "eventual" => Ok(Durability::Eventual),
        other => Err(errors::value_error(format!(
            "durability must be 'immediate' or 'eventual'; got {other}"
        ))),
    }
}

/// Opens (or joins, if this process holds it already) the store file at `path`.
pub(crate) fn open_path(
    py: Python<'_>,
    path: PathBuf,
    durability: Durability,
    shared_reads: bool,
) -> PyResult<Store> {
    py.detach(move || {
        Store::open(
            &path,
            StoreOptions {
                durability,
                shared_reads,
            },
        )
    })
    .map_err(|e| errors::store_error(&e))
}

/// A durable store file that several runtimes of this process may share.
#[pyclass(name = "Store", module = "flowai_harness._internal", frozen)]
pub(crate) struct PyStore {
    share: Mutex<StoreShare>,
    path: String,
}

impl PyStore {
    /// The open store, or `FlowAIError("store is closed: <path>")`.
    pub(crate) fn store(&self) -> PyResult<Store> {
        let share = self.share.lock().unwrap_or_else(|p| p.into_inner());
        share
            .store()
            .cloned()
            .ok_or_else(|| errors::flowai_error(format!("store is closed: {}", self.path)))
    }
}

#[pymethods]
impl PyStore {
    /// The canonical path of the store file.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.share
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store()
            .is_none()
    }

    /// Flushes and closes the file (for every runtime sharing it). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let store = {
            let mut share = self.share.lock().unwrap_or_else(|p| p.into_inner());
            let store = share.store().cloned();
            let _ = share.release();
            store
        };
        match store {
            Some(store) => py
                .detach(move || store.close())
                .map_err(|e| errors::store_error(&e)),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.path)
    }
}

/// `open_store(path, *, durability="immediate", shared_reads=False) -> Store`.
#[pyfunction]
#[pyo3(signature = (path, *, durability = "immediate", shared_reads = false))]
pub(crate) fn open_store(
    py: Python<'_>,
    path: PathBuf,
    durability: &str,
    shared_reads: bool,
) -> PyResult<PyStore> {
    let durability = parse_durability(durability)?;
    let store = open_path(py, path, durability, shared_reads)?;
    let path = store
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Ok(PyStore {
        share: Mutex::new(StoreShare::new(store)),
        path,
    })
}
