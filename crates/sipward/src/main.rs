//! `sipward`: the binary. It reads the environment, the config file and the clock,
//! wires the libraries together, and turns errors into one sentence and an exit code
//! (2 for bad input or environment, 1 for findings and failures).

mod backup_keys;
mod cli;
mod clock;
mod cmd;
mod config;
mod error;
mod log;
mod open;
mod output;
mod tls;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let log = match log::init(cli.log_format, cli.log_filter.as_deref()) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli, log)) {
        Ok(code) => code,
        Err(err) => {
            let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(error::exit_code_for(&err))
        }
    }
}
