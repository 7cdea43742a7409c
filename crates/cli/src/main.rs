use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rlhf_cli::Cli::parse();
    match rlhf_cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
