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
    // Under mpirun every rank would run the whole command and write the same files.
    let session = match rlhf_dist::init() {
        Ok(session) => session,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let world = rlhf_dist::world();
    if world.is_distributed() {
        rlhf_dist::restore_stderr();
        eprintln!(
            "error: `rlhf` runs as one process ({} were started); launch the training stages' own binaries (rlhf-sft, rlhf-reward, rlhf-dpo) under mpirun: docs/distributed.md",
            world.size()
        );
        session.abort(2);
    }
    match rlhf_cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
