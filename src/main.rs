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
    let log_format = cfg.log_format;
    init_logging(log_format);
    if check_only {
        // Valid TOML as a whole (the verdict is a comment): it can be saved and used
        // as --config.
        print!("# configuration OK\n{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in the log's format: a JSON line where logs are JSON, a plain
            // `chartcache: ...` line otherwise.
            let message = chain_message(&e);
            match log_format {
                LogFormat::Json => tracing::error!("{message}"),
                LogFormat::Text => eprintln!("chartcache: {message}"),
            }
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, `: `-joined, skipping a cause whose text the
/// message already carries (an error that formats its source would otherwise
/// repeat it, e.g. "... (os error 13): ... (os error 13)").
fn chain_message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let creds = runtime::credentials_for(&cfg)?;
    let server = runtime::start(cfg, creds)?;
    server.run_until_signal()?;
    Ok(())
}

/// Diagnostics go to stderr (stdout carries the access log), filtered by
/// `RUST_LOG` (default `info`). Text logs are coloured only on a terminal
/// (never in files or `kubectl logs`).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
