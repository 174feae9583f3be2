//! The one place where native errors become Python exceptions (API.md §2.3, §9).
//!
//! The exception classes are defined in Python (`flowai_harness/errors.py`), so that
//! the tree rooted at `FlowAIError` is plain, documented Python; they are imported
//! here on first use.

use flowai_runtime::{EngineError, SpecError};
use flowai_storage::StoreError;
use pyo3::PyErr;

pyo3::import_exception!(flowai_harness.errors, FlowAIError);
pyo3::import_exception!(flowai_harness.errors, FlowAIValueError);
pyo3::import_exception!(flowai_harness.errors, StoreLockedError);
pyo3::import_exception!(flowai_harness.errors, NonDeterminismError);
pyo3::import_exception!(flowai_harness.errors, SpecMismatchError);

/// Spec, toolkit and registry errors are `ValueError`s in the contract (API.md §2.3);
/// their Display text is the message, verbatim.
pub(crate) fn spec_error(error: &SpecError) -> PyErr {
    FlowAIValueError::new_err(error.to_string())
}

/// A caller-side mistake the contract reports as `ValueError`.
pub(crate) fn value_error(message: impl Into<String>) -> PyErr {
    FlowAIValueError::new_err(message.into())
}

/// A native failure without a more specific class.
pub(crate) fn flowai_error(message: impl Into<String>) -> PyErr {
    FlowAIError::new_err(message.into())
}

/// Storage errors: a lock names the path (`StoreLockedError`), a closed store reads
/// `store is closed: <path>`, everything else is a `FlowAIError` with the Rust text.
pub(crate) fn store_error(error: &StoreError) -> PyErr {
    match error {
        StoreError::Locked { .. } => StoreLockedError::new_err(error.to_string()),
        StoreError::Closed { path } => FlowAIError::new_err(format!("store is closed: {path}")),
        StoreError::NotFound { .. } => FlowAIValueError::new_err(error.to_string()),
        _ => FlowAIError::new_err(error.to_string()),
    }
}

/// Runtime errors by kind: lookups and arguments are `ValueError`s, verify and spec
/// checks have their own classes (API.md §9.3, §9.4).
pub(crate) fn engine_error(error: EngineError) -> PyErr {
    match error {
        EngineError::Spec(_)
        | EngineError::InvalidArgument(_)
        | EngineError::RunNotFound(_)
        | EngineError::RunExists(_)
        | EngineError::RunFinished { .. }
        | EngineError::ApprovalNotFound(_)
        | EngineError::ApprovalResolved(_)
        | EngineError::RunBusy { .. } => FlowAIValueError::new_err(error.to_string()),
        EngineError::SpecMismatch { .. } => SpecMismatchError::new_err(error.to_string()),
        EngineError::NonDeterminism { .. } => NonDeterminismError::new_err(error.to_string()),
        EngineError::Store(ref store) => store_error(store),
        other => FlowAIError::new_err(other.to_string()),
    }
}

/// Fork errors (API.md §9.4): argument and lookup problems are `ValueError`s.
pub(crate) fn fork_error(error: flowai_replay::ForkError) -> PyErr {
    use flowai_replay::ForkError;
    match error {
        ForkError::Store(ref store) => store_error(store),
        ForkError::Engine(engine) => engine_error(engine),
        other => FlowAIValueError::new_err(other.to_string()),
    }
}
