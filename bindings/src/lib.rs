//! Python bindings: the private native module `flowai_harness._internal`.

use pyo3::prelude::*;

#[pymodule]
fn _internal(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
