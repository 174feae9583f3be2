//! The `flowai` command (API.md §9.6). The binary is a thin `main` over [`cli_main`], so
//! the Python bindings run the same code as the console script.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use flowai_storage::{Clock, RunStatus, Store, StoreError, StoreOptions, SystemClock};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{ReplayError, exit};
use crate::inspect;
use crate::verify::{RecordedSpec, Verifier};

/// Inspect, replay and verify the run journals of a flowai store.
#[derive(Debug, Parser)]
#[command(
    name = "flowai",
    version,
    about = "Inspect, replay and verify the run journals of a flowai store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    text.parse::<RunStatus>().map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List runs, newest first.
    Runs {
        /// The store file.
        store: PathBuf,
        /// Only runs of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only runs in this status (running, suspended, completed, failed, cancelled, interrupted).
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// One run dict (API.md §9.2) per line.
        #[arg(long)]
        json: bool,
    },
    /// Summarize one run: status, agent, approvals, plans, tool calls, final error.
    Show {
        store: PathBuf,
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// One line per record of a run.
    Journal {
        store: PathBuf,
        run: String,
        /// Print exactly the §9.2 record dicts, one per line.
        #[arg(long)]
        json: bool,
        /// Only records after this seq.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Print a run's stream events, rebuilt from its journal, as JSON lines.
    Replay { store: PathBuf, run: String },
    /// Re-drive finished runs (or RUN) in verify mode against the spec each recorded.
    Verify {
        store: PathBuf,
        run: Option<String>,
        /// Verify against this recorded-spec JSON document instead.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Print a run's records as JSON lines (the §9.2 record dicts).
    Export { store: PathBuf, run: String },
    /// Remove expired references (opens the store for writing).
    Gc { store: PathBuf },
    /// Verify the store file: every page's checksum, and every run's journal read through
    /// (opens the store for writing first, which folds in a crashed writer's log).
    Check { store: PathBuf },
}

/// Runs the command with the process's stdout and stderr; returns its exit code.
pub fn cli_main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_with_io(args, &mut stdout.lock(), &mut stderr.lock())
}

/// [`cli_main`] writing to the given streams (progress bars still go to the terminal).
///
/// ```
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// let code = flowai_replay::run_with_io(["flowai", "runs", "/no/such/store.redb"], &mut out, &mut err);
/// assert_eq!(code, 3);
/// assert!(String::from_utf8_lossy(&err).contains("does not exist"));
/// ```
pub fn run_with_io<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            let target: &mut dyn Write = if code == exit::OK { out } else { err };
            let _ = write!(target, "{}", e.render());
            return code;
        }
    };
    match execute(cli.command, out, err) {
        Ok(code) => code,
        // A closed pipe (`flowai journal … | head`) is the reader's choice, not a failure.
        Err(ReplayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            let _ = writeln!(err, "flowai: {e}");
            e.exit_code()
        }
    }
}

fn line(out: &mut dyn Write, text: &str) -> Result<(), ReplayError> {
    writeln!(out, "{text}").map_err(ReplayError::Output)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn open(path: &Path) -> Result<Store, ReplayError> {
    Ok(Store::open_read_only(path)?)
}

fn execute(command: Command, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32, ReplayError> {
    match command {
        Command::Runs {
            store,
            tenant,
            status,
            json,
        } => {
            let store = open(&store)?;
            let runs = inspect::list_runs(&store, tenant.as_deref(), status)?;
            if json {
                for info in &runs {
                    line(out, &inspect::run_dict(info).to_string())?;
                }
            } else {
                write!(out, "{}", inspect::runs_table(&runs)).map_err(ReplayError::Output)?;
            }
            Ok(exit::OK)
        }
        Command::Show { store, run, json } => {
            let store = open(&store)?;
            let summary = inspect::summarize(&store, inspect::parse_run_id(&run)?)?;
            if json {
                line(out, &summary.to_json().to_string())?;
            } else {
                write!(out, "{}", summary.to_text()).map_err(ReplayError::Output)?;
            }
            Ok(exit::OK)
        }
        Command::Journal {
            store,
            run,
            json,
            since,
        } => {
            let store = open(&store)?;
            let run = inspect::parse_run_id(&run)?;
            inspect::run_info(&store, run)?;
            for entry in flowai_runtime::journal_entries(&store, run, since)? {
                if json {
                    line(out, &inspect::export_line(&entry))?;
                } else {
                    line(out, &inspect::journal_line(&entry))?;
                }
            }
            Ok(exit::OK)
        }
        Command::Replay { store, run } => {
            let store = open(&store)?;
            for event in inspect::replay_lines(&store, inspect::parse_run_id(&run)?)? {
                line(out, &event)?;
            }
            Ok(exit::OK)
        }
        Command::Export { store, run } => {
            let store = open(&store)?;
            let entries = inspect::export(&store, inspect::parse_run_id(&run)?)?;
            let bar = progress(entries.len() as u64, "export");
            for entry in &entries {
                line(out, &inspect::export_line(entry))?;
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok(exit::OK)
        }
        Command::Verify { store, run, spec } => verify(&store, run.as_deref(), spec, out, err),
        Command::Gc { store } => {
            // Store::open would create a missing file; gc of nothing is a mistake.
            if !store.exists() {
                return Err(StoreError::NotFound {
                    path: store.display().to_string(),
                }
                .into());
            }
            // A store this process holds (the command called from Python beside a runtime)
            // is the holder's to close: closing it here would close it for the holder too.
            let held_here = Store::is_open_in_this_process(&store);
            let store = Store::open(&store, StoreOptions::default())?;
            let removed = store.gc_references_blocking(SystemClock.now_ms())?;
            if !held_here {
                store.close()?;
            }
            line(out, &format!("removed {removed} expired references"))?;
            Ok(exit::OK)
        }
        Command::Check { store } => {
            let mut bar = ProgressBar::hidden();
            let report = Store::check_with_progress(&store, &mut |done, total| {
                if done == 0 {
                    bar = progress(total as u64, "check");
                }
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            let rebuilt = if report.allocator_rebuilt {
                "; redb rebuilt its allocator state"
            } else {
                ""
            };
            line(
                out,
                &format!(
                    "ok: {} runs, {} records, every page checksum verified{rebuilt}",
                    report.runs, report.records
                ),
            )?;
            Ok(exit::OK)
        }
    }
}

fn verify(
    path: &Path,
    run: Option<&str>,
    spec: Option<PathBuf>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ReplayError> {
    let spec = match spec {
        Some(file) => Some(RecordedSpec::from_file(&file)?),
        None => None,
    };
    let run = match run {
        Some(text) => Some(inspect::parse_run_id(text)?),
        None => None,
    };
    let store = open(path)?;
    if let Some(run) = run {
        inspect::run_info(&store, run)?;
    }
    // The engine's verify is async; the command may itself be called from async code
    // (tests, the bindings), where a nested block_on would panic, so the runs are driven
    // on a thread of their own and reported here as they finish.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<Progress>();
        let worker = scope.spawn(move || verify_worker(store, run, spec.as_ref(), &tx));
        let mut bar = ProgressBar::hidden();
        let mut total = 0usize;
        let mut failed = 0usize;
        let mut code = exit::OK;
        for message in rx {
            match message {
                Progress::Planned(n) => {
                    total = n;
                    bar = progress(n as u64, "verify");
                }
                Progress::Done(run, Ok(())) => {
                    bar.inc(1);
                    line(out, &format!("ok    {run}"))?;
                }
                Progress::Done(run, Err(e)) => {
                    bar.inc(1);
                    failed += 1;
                    code = code.max(e.exit_code()).max(exit::FAILURE);
                    bar.suspend(|| writeln!(err, "FAIL  {run}: {e}"))
                        .map_err(ReplayError::Output)?;
                    line(out, &format!("FAIL  {run}"))?;
                }
            }
        }
        bar.finish_and_clear();
        match worker.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(ReplayError::Engine(flowai_runtime::EngineError::Internal(
                    String::from("the verify thread panicked"),
                )));
            }
        }
        line(
            out,
            &format!(
                "verified {total} runs: {} ok, {failed} failed",
                total - failed
            ),
        )?;
        if failed > 0 && code == exit::FAILURE {
            return Err(ReplayError::VerifyFailed {
                failed,
                checked: total,
            });
        }
        Ok(code)
    })
}

enum Progress {
    Planned(usize),
    Done(flowai_storage::RunId, Result<(), ReplayError>),
}

fn verify_worker(
    store: Store,
    run: Option<flowai_storage::RunId>,
    spec: Option<&RecordedSpec>,
    tx: &std::sync::mpsc::Sender<Progress>,
) -> Result<(), ReplayError> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReplayError::Output)?;
    let mut verifier = Verifier::new(store, tokio.handle().clone(), spec)?;
    let runs = match run {
        Some(run) => vec![run],
        None => verifier.finished_runs()?,
    };
    if tx.send(Progress::Planned(runs.len())).is_err() {
        return Ok(());
    }
    for run in runs {
        let result = tokio.block_on(verifier.verify(run));
        if tx.send(Progress::Done(run, result)).is_err() {
            break;
        }
    }
    Ok(())
}
