//! The replay crate's integration tests in one binary: goldens, the `flowai` command,
//! fork, and non-determinism.

#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is the failure report.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod fork;
mod goldens;
mod nondeterminism;
