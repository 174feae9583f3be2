//! The `flowai` command: inspect, replay and verify run journals (API.md §9.6).

fn main() -> std::process::ExitCode {
    let code = flowai_replay::cli_main(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
