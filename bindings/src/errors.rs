//! The one place where native errors become Python exceptions.
//!
//! The exception classes are defined in Python (`flowai_harness/errors.py`) so that the
//! tree rooted at `FlowAIError` is plain, documented Python; they are imported here on
//! first use.

use flowai_runtime::SpecError;
use pyo3::PyErr;

pyo3::import_exception!(flowai_harness.errors, FlowAIValueError);

/// Spec, toolkit and registry errors are `ValueError`s in the contract (API.md §2.3);
/// their Rust Display text is the message, verbatim.
pub(crate) fn spec_error(error: &SpecError) -> PyErr {
    FlowAIValueError::new_err(error.to_string())
}
