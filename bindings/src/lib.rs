//! Python bindings: the private native module `flowai_harness._internal`.
//!
//! The public package `flowai_harness` is plain Python; this module holds only what
//! must come from the Rust runtime.

use pyo3::prelude::*;

/// The one place where native errors become Python exceptions.
///
/// The exception classes are defined in Python (`flowai_harness/errors.py`), so that
/// the tree rooted at `FlowAIError` is plain, documented Python; they are imported
/// here on first use.
mod errors {
    use flowai_runtime::SpecError;
    use pyo3::PyErr;

    pyo3::import_exception!(flowai_harness.errors, FlowAIValueError);

    /// Spec, toolkit and registry errors are `ValueError`s in the contract
    /// (API.md §2.3); their Display text is the message, verbatim.
    pub(crate) fn spec_error(error: &SpecError) -> PyErr {
        FlowAIValueError::new_err(error.to_string())
    }
}

/// The tools one toolkit contributes to one agent, as a JSON list of
/// `{"name", "description", "input_schema"}` (API.md §1.14).
///
/// Both arguments are wire JSON: a `ToolkitSpec` and an `AgentSpec`.
#[pyfunction]
fn describe_toolkit_tools(toolkit_json: &str, agent_json: &str) -> PyResult<String> {
    flowai_runtime::describe_toolkit_tools(toolkit_json, agent_json)
        .map_err(|e| errors::spec_error(&e))
}

/// The role-default built-in tools of one agent (wire `AgentSpec` JSON), in the row
/// shape of `describe_toolkit_tools`.
#[pyfunction]
fn describe_role_default_tools(agent_json: &str) -> PyResult<String> {
    flowai_runtime::describe_role_default_tools(agent_json).map_err(|e| errors::spec_error(&e))
}

#[pymodule]
fn _internal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(describe_toolkit_tools, m)?)?;
    m.add_function(wrap_pyfunction!(describe_role_default_tools, m)?)?;
    Ok(())
}
