//! The master's log: one line per event on stderr (journald adds the time
//! under systemd), level from the master URL's `log`.

use proto::spec::LogLevel;
use tracing_subscriber::EnvFilter;

/// Installs the logger.
pub fn init(level: LogLevel) {
    let directive = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error | LogLevel::Event => "error",
        LogLevel::None => "off",
    };
    // Our crates at the chosen level (`proto` logs certificate reloads);
    // libraries stay at warn.
    let filter = EnvFilter::new(format!(
        "warn,drover={directive},drover_master={directive},proto={directive}"
    ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
