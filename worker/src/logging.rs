//! Log output of the worker: plain lines, level from the URL's `log`; on
//! stderr standalone, to the master under supervision.

use proto::spec::LogLevel;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Only our crates at the chosen level; libraries (rustls) stay at warn.
/// (`Targets`, not `EnvFilter`: no regex engine paged into every worker.)
fn filter(level: LogLevel) -> Targets {
    // `event` and `none` show only errors: stats lines do not go through the log.
    let ours = match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Event => LevelFilter::ERROR,
        LogLevel::None => LevelFilter::OFF,
    };
    Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("drover_worker", ours)
        .with_target("proto", ours)
}

/// Installs the stderr logger (standalone: with timestamps).
pub fn init(level: LogLevel) {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter(level)))
        .try_init();
}

/// Installs a logger writing one formatted line per event to `writer`,
/// without a timestamp (the master stamps what it receives).
pub fn init_with_writer<W>(level: LogLevel, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(writer);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter(level)))
        .try_init();
}
