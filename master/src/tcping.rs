//! `GET /tcping?target=host:port`: can the master open a TCP connection to
//! the target, and how long did it take?
//!
//! 1. The target is checked (`host:port` or `[v6]:port`, port 1..=65535); a
//!    malformed one is an `Err` for the API to answer 400.
//! 2. A slot is taken from a process-wide pool of [`MAX_PROBES`]; after
//!    [`SLOT_WAIT`] without one the answer is `"too many requests"` (NodePass
//!    answers that with 200 too).
//! 3. Resolve and connect within [`DIAL_TIMEOUT`] (DNS included, as Go's
//!    `net.DialTimeout`), trying each resolved address in turn; the
//!    connection is closed at once.
//!
//! A failed probe is a normal result (`connected:false` and the error text),
//! never an error of the request.

use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpStream, lookup_host};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

/// Probes in flight at once, process-wide (NodePass: 10).
pub const MAX_PROBES: usize = 10;
/// How long a probe waits for a slot before giving up.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);
/// Deadline for resolving and connecting.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool of probe slots.
static SLOTS: Semaphore = Semaphore::const_new(MAX_PROBES);

/// The `/tcping` answer, NodePass's fields in NodePass's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpingResult {
    /// The target as given.
    pub target: String,
    pub connected: bool,
    /// Connect time in whole milliseconds; 0 when not connected.
    pub latency: u64,
    /// Why the probe failed; `null` on success.
    pub error: Option<String>,
}

/// Probes `target`; `Err` (for a 400) only when the target is malformed.
pub async fn probe(target: &str) -> Result<TcpingResult, String> {
    probe_with(&SLOTS, target).await
}

async fn probe_with(slots: &Semaphore, target: &str) -> Result<TcpingResult, String> {
    let (host, port) = parse_target(target)?;
    let failed = |error: String| TcpingResult {
        target: target.to_owned(),
        connected: false,
        latency: 0,
        error: Some(error),
    };
    let Ok(Ok(_slot)) = timeout(SLOT_WAIT, slots.acquire()).await else {
        return Ok(failed("too many requests".into()));
    };
    let start = Instant::now();
    Ok(match timeout(DIAL_TIMEOUT, dial(host, port)).await {
        Ok(Ok(())) => TcpingResult {
            target: target.to_owned(),
            connected: true,
            latency: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            error: None,
        },
        Ok(Err(error)) => failed(error),
        Err(_) => failed(format!("dial tcp {target}: i/o timeout")),
    })
}

/// Splits and checks the target; errors are worded for a 400 body.
pub(crate) fn parse_target(target: &str) -> Result<(&str, u16), String> {
    if target.is_empty() {
        return Err("Target address required".into());
    }
    let (host, port) =
        proto::url::split_host_port(target).map_err(|e| format!("Invalid target: {e}"))?;
    if host.is_empty() {
        return Err(format!("Invalid target {target:?}: host required"));
    }
    let port = Some(port)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("Invalid target {target:?}: port must be 1-65535"))?;
    Ok((host, port))
}

/// Resolves `host` and connects to its addresses in turn; the error text
/// follows Go's so NodePass clients see familiar messages.
async fn dial(host: &str, port: u16) -> Result<(), String> {
    let addrs = lookup_host((host, port))
        .await
        .map_err(|e| format!("dial tcp: lookup {host}: {}", io_text(&e)))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("dial tcp {addr}: connect: {}", io_text(&e))),
        }
    }
    Err(last.unwrap_or_else(|| format!("dial tcp: lookup {host}: no such host")))
}

/// `Connection refused (os error 111)` → `connection refused`.
fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A listening port connects, with `"error":null` in the JSON.
    #[tokio::test]
    async fn connects_to_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let result = probe(&target).await.unwrap();
        assert!(result.connected, "{result:?}");
        assert!(result.latency < DIAL_TIMEOUT.as_millis() as u64);
        assert_eq!(result.error, None);
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"target":"{target}","connected":true,"latency":{},"error":null}}"#,
                result.latency
            )
        );
    }

    /// IPv6 targets are written in brackets.
    #[tokio::test]
    async fn connects_to_v6_listener() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            return; // no IPv6 loopback here
        };
        let port = listener.local_addr().unwrap().port();
        let result = probe(&format!("[::1]:{port}")).await.unwrap();
        assert!(result.connected, "{result:?}");
    }

    /// A closed port is `connected:false`, latency 0, with the reason.
    #[tokio::test]
    async fn closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        drop(listener);
        let result = probe(&target).await.unwrap();
        assert!(!result.connected);
        assert_eq!(result.latency, 0);
        assert_eq!(
            result.error.as_deref(),
            Some(format!("dial tcp {target}: connect: connection refused").as_str())
        );
    }

    /// An unresolvable name is a failed probe, not a bad request.
    #[tokio::test]
    async fn unresolvable_host_fails() {
        let result = probe("no-such-host.invalid:80").await.unwrap();
        assert!(!result.connected);
        assert!(
            result
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("dial tcp")),
            "{result:?}"
        );
    }

    /// Malformed targets are errors for a 400.
    #[tokio::test]
    async fn malformed_targets() {
        let cases = [
            ("", "Target address required"),
            ("example.com", "port must be 1-65535"),
            ("example.com:", "port must be 1-65535"),
            ("example.com:0", "port must be 1-65535"),
            ("example.com:65536", "port must be 1-65535"),
            ("example.com:+80", "port must be 1-65535"),
            ("example.com:http", "port must be 1-65535"),
            (":80", "host required"),
            ("[]:80", "host required"),
            ("::1:80", "IPv6 addresses must be in brackets"),
            ("[::1:80", "unclosed '['"),
        ];
        for (target, want) in cases {
            let err = probe(target).await.unwrap_err();
            assert!(err.contains(want), "{target:?}: {err}");
        }
    }

    /// With every slot taken, a probe gives up after SLOT_WAIT.
    #[tokio::test(start_paused = true)]
    async fn too_many_requests() {
        let slots = Semaphore::new(0);
        let start = Instant::now();
        let result = probe_with(&slots, "127.0.0.1:9").await.unwrap();
        assert_eq!(
            result,
            TcpingResult {
                target: "127.0.0.1:9".into(),
                connected: false,
                latency: 0,
                error: Some("too many requests".into()),
            }
        );
        assert!(start.elapsed() >= SLOT_WAIT);
    }

    /// Go-style error text from io errors.
    #[test]
    fn io_text_cases() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_text(&refused), "connection refused");
        assert_eq!(io_text(&std::io::Error::other("Odd")), "odd");
        assert_eq!(io_text(&std::io::Error::other("")), "");
    }
}
