//! Log output of the worker: plain lines on stderr, level from the URL's `log`.

use proto::spec::LogLevel;
use tracing_subscriber::EnvFilter;

/// Installs the stderr logger. `event` and `none` show only errors here:
/// stats lines are printed by the runner, not through the log filter.
pub fn init(level: LogLevel) {
    let directive = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error | LogLevel::Event => "error",
        LogLevel::None => "off",
    };
    // Only our crates at the chosen level; libraries (rustls) stay at warn.
    let filter = EnvFilter::new(format!("warn,drover_worker={directive},proto={directive}"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
