//! Opt-in log output for hosts (the Python module, the `flowai` command).

/// Installs a `tracing` subscriber writing to stderr, filtered by the `FLOWAI_LOG`
/// environment variable (`info`, `flowai_runtime=debug`, …). Does nothing when the
/// variable is unset or a subscriber is already installed.
pub fn init_logging_from_env() {
    let Ok(filter) = std::env::var("FLOWAI_LOG") else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
