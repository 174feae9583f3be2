//! Inspection, replay, verification and forking of flowai run journals, and the `flowai`
//! command.
//!
//! This crate adds no decision logic (DESIGN.md §5): verify and resume go through the
//! engine's driver; what lives here is choosing the spec a run is verified against,
//! copying a journal prefix into a fork, and formatting runs for people and tools.
//!
//! ```
//! // The command as a library call: the bindings expose it as the console script.
//! let (mut out, mut err) = (Vec::new(), Vec::new());
//! let code = flowai_replay::run_with_io(["flowai", "--version"], &mut out, &mut err);
//! assert_eq!(code, 0);
//! assert!(String::from_utf8_lossy(&out).starts_with("flowai "));
//! ```

mod cli;
mod error;
mod fork;
mod inspect;
mod verify;

pub use cli::{Cli, Command, cli_main, run_with_io};
pub use error::{ForkError, ReplayError, SpecDocError, exit};
pub use fork::{fork, fork_async};
pub use inspect::{
    ApprovalSummary, PlanSummary, RunSummary, ToolCallSummary, export, export_line, journal_line,
    list_runs, parse_run_id, replay_lines, run_dict, run_info, runs_table, summarize,
};
pub use verify::{RecordedSpec, Verifier};
