//! `drover-worker "<url>"`: one tunnel from the command line.
//!
//! 1. Parse the URL (exit 2 with one line naming the part on error).
//! 2. Run the engine, printing the stats line every [`STATS_INTERVAL`].
//! 3. SIGTERM/SIGINT: stop accepting, drain up to [`GRACE`], print the final
//!    stats line, exit 0. A fatal engine error exits 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use proto::spec::{LogLevel, TunnelSpec};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;
use crate::tunnel::{Engine, LocalBinder};

pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How long open sessions may finish after a stop signal.
pub const GRACE: Duration = Duration::from_secs(10);

/// Parses `url` or explains in one line why not.
pub fn parse(url: &str) -> Result<TunnelSpec, String> {
    TunnelSpec::parse(url).map_err(|e| format!("invalid url: {e}"))
}

/// Runs one tunnel until a stop signal.
pub fn run(spec: TunnelSpec) -> ExitCode {
    let level = spec.params.log;
    crate::logging::init(level);
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let engine = Engine::new(spec, Arc::new(LocalBinder), None);
        let stats = engine.stats();
        let stop = CancellationToken::new();
        let printer = tokio::spawn(print_stats(stats.clone(), level));
        let signals = on_signal(stop.clone());
        engine.grace_handle().store(
            GRACE.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let res = engine.run(stop).await;
        printer.abort();
        signals.abort();
        if level != LogLevel::None {
            print_line(&stats);
        }
        match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(cause = %e, "tunnel failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `stop` on SIGTERM or SIGINT. The handlers are installed before
/// this returns, so a signal arriving right after start-up is not lost.
fn on_signal(stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        stop.cancel();
    })
}

async fn print_stats(stats: Arc<Stats>, level: LogLevel) {
    if level == LogLevel::None {
        return;
    }
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        print_line(&stats);
    }
}

fn print_line(stats: &Stats) {
    // Stats are NodePass's EVENT level: shown at every log level but `none`.
    eprintln!(
        "{} EVENT {}",
        proto::clock::now(),
        crate::stats::check_point(&stats.snapshot())
    );
}
