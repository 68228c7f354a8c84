//! Log output of the worker: plain lines, level from the URL's `log`; on
//! stderr standalone, to the master under supervision.

use proto::spec::LogLevel;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

fn filter(level: LogLevel) -> EnvFilter {
    // `event` and `none` show only errors: stats lines do not go through the log.
    let directive = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error | LogLevel::Event => "error",
        LogLevel::None => "off",
    };
    // Only our crates at the chosen level; libraries (rustls) stay at warn.
    EnvFilter::new(format!("warn,drover_worker={directive},proto={directive}"))
}

/// Installs the stderr logger (standalone: with timestamps).
pub fn init(level: LogLevel) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs a logger writing one formatted line per event to `writer`,
/// without a timestamp (the master stamps what it receives).
pub fn init_with_writer<W>(level: LogLevel, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(writer)
        .try_init();
}
