//! The compromised worker (`drover-evil-worker`, source in `tests/evil/`):
//! where it is and how a test picks its behaviour.
//!
//! A behaviour is chosen per instance by the tunnel key of its URL,
//! `server://evil-<behaviour>@…`; any other instance of the same master gets
//! the real `drover-worker` (the evil binary `exec`s it).

use std::path::PathBuf;

use crate::api::{Api, id_of};
use crate::free_addr;
use crate::worker::worker_bin;

/// The argument that makes the evil binary a [`Behaviour::NoTerm`] child.
pub const CHILD_ARG: &str = "--evil-child";
/// The `Log` line prefix with which [`Behaviour::NoTerm`] reports its child.
pub const CHILD_REPORT: &str = "evil: child ";

/// Most memory [`Behaviour::Hog`] takes.
pub const HOG_MAX: usize = 2 << 30;

/// `tcps` of the `Stats` a flood ends with: once the API shows it, the
/// master has read the whole flood.
pub const DONE_TCPS: u64 = 424_242;
/// The stderr line after [`Behaviour::StderrFlood`]'s endless one.
pub const STDERR_DONE: &str = "stderr flood done";
/// Length of [`Behaviour::StderrFlood`]'s endless line.
pub const STDERR_FLOOD_BYTES: usize = 256 << 20;

/// What the evil worker does instead of serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// `Ready`, then a frame header claiming 2 GiB.
    Oversize,
    /// `Ready`, then a well-sized frame whose body is not JSON.
    Garbage,
    /// `Ready`, then unframed bytes (an HTTP request).
    Noise,
    /// `Ready`, then a `Log` frame with an fd attached.
    FdSmuggle,
    /// `Ready`, then 20 000 `Log` lines as fast as it can, the first 16 a
    /// megabyte long; then `Stats` with `tcps` = [`DONE_TCPS`].
    LogFlood,
    /// `Ready`, a few stderr lines, one of [`STDERR_FLOOD_BYTES`], then
    /// [`STDERR_DONE`]; then `Stats` with `tcps` = [`DONE_TCPS`].
    StderrFlood,
    /// `Ready`, then 20 000 `Stats` as fast as it can, counters jumping
    /// between small and near `u64::MAX`, the last with every traffic
    /// counter at `u64::MAX` and `tcps` = [`DONE_TCPS`]; then exits 0 (so the
    /// next worker's counters add up on top).
    StatsFlood,
    /// `Ready`, then `Bind` for these ports (on every spelling of a local
    /// address), its own URL's addresses and non-addresses, TCP and UDP;
    /// reports each answer as `evil: bind "ADDR"/PROTO -> ANSWER`.
    Bind(Vec<u16>),
    /// Never `Ready`, never reads.
    Silent,
    /// `Ready`, then never reads (no `Pong`).
    NoPong,
    /// `Ready`, then `Bind`s whose answers it never reads.
    Deaf,
    /// `Ready`, then reads and drops everything, `Shutdown` included (so a
    /// stop must end it with SIGTERM).
    NoShutdown,
    /// As [`Behaviour::NoShutdown`], but SIGTERM is ignored too, by it and
    /// by a child in its process group, whose pid it reports as
    /// `evil: child PID` (so a stop must end both with SIGKILL of the group).
    NoTerm,
    /// `Ready`, then allocates and touches memory, a MiB per millisecond, up
    /// to [`HOG_MAX`], and lingers: over any sane memory limit.
    Hog,
}

impl Behaviour {
    /// The tunnel key that selects this behaviour.
    pub fn key(&self) -> String {
        let name = match self {
            Behaviour::Oversize => "oversize",
            Behaviour::Garbage => "garbage",
            Behaviour::Noise => "noise",
            Behaviour::FdSmuggle => "fdsmuggle",
            Behaviour::LogFlood => "logflood",
            Behaviour::StderrFlood => "stderrflood",
            Behaviour::StatsFlood => "statsflood",
            Behaviour::Bind(ports) => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                return format!("evil-bind-{}", ports.join("-"));
            }
            Behaviour::Silent => "silent",
            Behaviour::NoPong => "nopong",
            Behaviour::Deaf => "deaf",
            Behaviour::NoShutdown => "noshutdown",
            Behaviour::NoTerm => "noterm",
            Behaviour::Hog => "hog",
        };
        format!("evil-{name}")
    }

    /// The behaviour a tunnel key selects, if any.
    pub fn from_key(key: &str) -> Option<Behaviour> {
        let name = key.strip_prefix("evil-")?;
        if let Some(ports) = name.strip_prefix("bind") {
            let ports = ports
                .split('-')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u16>>>()?;
            return Some(Behaviour::Bind(ports));
        }
        Some(match name {
            "oversize" => Behaviour::Oversize,
            "garbage" => Behaviour::Garbage,
            "noise" => Behaviour::Noise,
            "fdsmuggle" => Behaviour::FdSmuggle,
            "logflood" => Behaviour::LogFlood,
            "stderrflood" => Behaviour::StderrFlood,
            "statsflood" => Behaviour::StatsFlood,
            "silent" => Behaviour::Silent,
            "nopong" => Behaviour::NoPong,
            "deaf" => Behaviour::Deaf,
            "noshutdown" => Behaviour::NoShutdown,
            "noterm" => Behaviour::NoTerm,
            "hog" => Behaviour::Hog,
            _ => return None,
        })
    }
}

/// An evil instance: a forward-mode server whose key names `b` (the master
/// binds only its tunnel port, so it asks nothing of other instances);
/// returns its id.
pub async fn create_evil(api: &Api, b: &Behaviour) -> String {
    let url = format!("server://{}@{}/127.0.0.1:1?mode=2", b.key(), free_addr());
    id_of(&api.create_url(&url).await)
}

/// The evil worker binary: `$DROVER_EVIL_WORKER_BIN`, else beside `drover-worker`.
pub fn evil_worker_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DROVER_EVIL_WORKER_BIN") {
        return PathBuf::from(path);
    }
    let bin = worker_bin().with_file_name("drover-evil-worker");
    assert!(
        bin.is_file(),
        "drover-evil-worker binary not found at {}: run `cargo build --workspace --bins` first \
         (or set DROVER_EVIL_WORKER_BIN)",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every behaviour's key selects that behaviour; other keys none.
    #[test]
    fn keys_round_trip() {
        for b in [
            Behaviour::Oversize,
            Behaviour::Garbage,
            Behaviour::Noise,
            Behaviour::FdSmuggle,
            Behaviour::LogFlood,
            Behaviour::StderrFlood,
            Behaviour::StatsFlood,
            Behaviour::Bind(vec![1, 65535]),
            Behaviour::Bind(vec![]),
            Behaviour::Silent,
            Behaviour::NoPong,
            Behaviour::Deaf,
            Behaviour::NoShutdown,
            Behaviour::NoTerm,
            Behaviour::Hog,
        ] {
            assert_eq!(Behaviour::from_key(&b.key()), Some(b));
        }
        for other in [
            "secret",
            "evil",
            "evil-",
            "evil-nope",
            "evil-bind-x",
            "e68be2b4",
        ] {
            assert_eq!(Behaviour::from_key(other), None, "{other}");
        }
    }
}
