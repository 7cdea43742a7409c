use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `rlhf … | head`: end quietly when the reader goes away, like other Unix tools, instead of
    // panicking in println! (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = rlhf_cli::Cli::parse();
    match rlhf_cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
