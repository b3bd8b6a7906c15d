//! The `keyturn` binary: parse the command line, load and validate the config, build the
//! runtime, hand over to the library.

use clap::Parser;
use keyturn::cli::{Cli, Command};
use keyturn::config::Config;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    // Before any secret is read: no core dumps, no ptrace by same-uid processes.
    if let Err(e) = keyturn::infra::hardening::apply() {
        eprintln!("keyturn: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyturn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Serve { config, log_format } = &cli.command else {
        return runtime.block_on(keyturn::cli::run_client(cli));
    };
    let loaded = match config {
        Some(path) => Config::load(path).map_err(|e| format!("{}: {e}", path.display())),
        None => Config::embedded_default().map_err(|e| e.to_string()),
    };
    let loaded = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyturn: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    keyturn::infra::logging::init(
        log_format.unwrap_or(loaded.server.log_format),
        loaded.server.under_journald,
    );
    if config.is_none() {
        tracing::info!("no --config given: running the embedded default (file backend in ./keyturn-data, one ES256 key set)");
    }
    let clock = Arc::new(keyturn::core::clock::SystemClock);
    match runtime.block_on(keyturn::server::app::run(loaded, config.clone(), clock)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "keyturn stopped on an error");
            eprintln!("keyturn: {e:#}");
            ExitCode::FAILURE
        }
    }
}
