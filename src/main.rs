//! The `chartcache` binary: parse config → init logging → run. Nothing else.

use std::process::ExitCode;

use chartcache::config::{Config, LogFormat};
use chartcache::runtime;

fn main() -> ExitCode {
    let (cfg, check_only) = match Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chartcache: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
    if check_only {
        println!("configuration OK\n{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("chartcache: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let creds = runtime::credentials_for(&cfg)?;
    let server = runtime::start(cfg, creds)?;
    server.run_until_signal()?;
    Ok(())
}

/// Diagnostics go to stderr (stdout carries the access log), filtered by
/// `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
