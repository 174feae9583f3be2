//! Python bindings: the private native module `flowai_harness._internal`.
//!
//! The public package `flowai_harness` is plain Python; this module holds only what
//! must come from the Rust runtime: the runtime handle and its event stream
//! (`runtime`, `stream`), the host over Python callbacks (`host`), references
//! (`references`), the store (`store`), and the error mapping (`errors`).

use pyo3::prelude::*;

mod convert;
mod errors;
mod handoff;
mod host;
mod python;
mod references;
mod runtime;
mod store;
mod stream;

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

/// Runs the `flowai` command with `args` (without the program name); returns its exit
/// code (API.md §9.6). Output goes to the process's stdout and stderr.
#[pyfunction]
fn cli_main(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(move || flowai_replay::cli_main(std::iter::once(String::from("flowai")).chain(args)))
}

#[pymodule]
fn _internal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    convert::configure_tokio_runtime()?;
    m.add_function(wrap_pyfunction!(describe_toolkit_tools, m)?)?;
    m.add_function(wrap_pyfunction!(describe_role_default_tools, m)?)?;
    m.add_function(wrap_pyfunction!(store::open_store, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_class::<runtime::PyRuntime>()?;
    m.add_class::<stream::PyRuntimeEventStream>()?;
    m.add_class::<stream::ReplayStream>()?;
    m.add_class::<references::ToolCallRuntime>()?;
    m.add_class::<store::PyStore>()?;
    let shutdown = wrap_pyfunction!(python::_shutdown, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (shutdown,))?;
    Ok(())
}
