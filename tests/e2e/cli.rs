//! The command line: `--version`, and malformed URLs refused with exit
//! status 2 and one line naming the part at fault.

use std::time::Duration;

use drover_e2e::worker::run_to_exit;

/// How long a refusal may take (it is parsing only; this catches a worker
/// that accepted the URL and started running).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

/// Each malformed URL and the part its error must name (any of the list).
const MALFORMED: &[(&str, &[&str])] = &[
    ("http://127.0.0.1:10001/127.0.0.1:2", &["scheme"]),
    ("tcp://127.0.0.1:10001/127.0.0.1:2", &["scheme"]),
    ("server://127.0.0.1:10001", &["target"]),
    ("server://127.0.0.1:10001/", &["target"]),
    ("server://127.0.0.1:0/127.0.0.1:2", &["tunnel address"]),
    ("server://127.0.0.1:70000/127.0.0.1:2", &["tunnel address"]),
    ("server://127.0.0.1/127.0.0.1:2", &["tunnel address"]),
    ("server://bad_host!:10001/127.0.0.1:2", &["tunnel address"]),
    ("server://%zz@127.0.0.1:10001/127.0.0.1:2", &["key"]),
    ("server://ab%4@127.0.0.1:10001/127.0.0.1:2", &["key"]),
    ("server://@127.0.0.1:10001/127.0.0.1:2", &["key"]),
    (
        "server://127.0.0.1:10001/127.0.0.1:2?bogus=1",
        &["param bogus"],
    ),
    ("server://127.0.0.1:10001/127.0.0.1:2?tls=2", &["param tls"]),
    ("server://127.0.0.1:10001/127.0.0.1:2?tls=3", &["param tls"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?min=-1",
        &["param min"],
    ),
    ("client://127.0.0.1:10001/127.0.0.1:2?min=0", &["param min"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?rate=abc",
        &["param rate"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?mode=3",
        &["param mode"],
    ),
    (
        "server://127.0.0.1:10001/127.0.0.1:2?type=1",
        &["param type"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?block=9",
        &["param block"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?dial=1.2.3",
        &["param dial"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?read=5x",
        &["param read"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?log=info&log=warn",
        &["param log"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?min=8&min=9",
        &["param min"],
    ),
    ("client://::1:10001/127.0.0.1:2", &["address"]),
    ("client://127.0.0.1:10001/::1:80", &["target"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?notcp=1&noudp=1",
        &["param notcp", "param noudp"],
    ),
    ("client://127.0.0.1:10001/127.0.0.1:99999", &["target"]),
    ("client://127.0.0.1:10001/127.0.0.1", &["target"]),
    ("client://127.0.0.1:10001/127.0.0.1:0", &["target"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2,,127.0.0.1:3",
        &["target"],
    ),
    ("client://127.0.0.1:10001/127.0.0.1:10001", &["target"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?slot=x",
        &["param slot"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?proxy=3",
        &["param proxy"],
    ),
    ("client://127.0.0.1:10001/127.0.0.1:2?fp=abc", &["param fp"]),
    ("client://127.0.0.1:10001/127.0.0.1:2?lbs=9", &["param lbs"]),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?max=99999999999",
        &["param max"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?dns=abc",
        &["param dns"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?log=loud",
        &["param log"],
    ),
    (
        "client://127.0.0.1:10001/127.0.0.1:2?notcp=2",
        &["param notcp"],
    ),
];

/// What is wrong with the worker's answer to `url`, if anything.
fn check_refusal(url: &str, parts: &[&str]) -> Option<String> {
    let out = match run_to_exit(&[url], REFUSAL_DEADLINE) {
        Ok(out) => out,
        Err(e) => return Some(format!("{url}: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!("exit status {} (want 2)", out.status));
    }
    if stderr.contains("panicked") {
        problems.push("panicked".to_string());
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        problems.push(format!("{} non-empty stderr lines (want 1)", lines.len()));
    }
    match lines.first() {
        Some(line) if !line.starts_with("drover-worker: ") => {
            problems.push("the line does not start with `drover-worker: `".to_string())
        }
        Some(line) if !parts.iter().any(|p| line.contains(p)) => {
            problems.push(format!("the line names none of {parts:?}"))
        }
        _ => {}
    }
    (!problems.is_empty()).then(|| format!("{url}: {} — stderr: {stderr:?}", problems.join("; ")))
}

/// Every malformed URL exits with status 2 and exactly one stderr line
/// `drover-worker: …` naming the part at fault, without a panic.
#[test]
fn malformed_urls_exit_2_naming_the_part() {
    assert!(MALFORMED.len() >= 20);
    // In parallel: a worker that wrongly accepts a URL costs the deadline once.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = MALFORMED
            .iter()
            .map(|(url, parts)| scope.spawn(move || check_refusal(url, parts)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("checker thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} malformed URLs were not refused as specified:\n{}",
        failures.len(),
        MALFORMED.len(),
        failures.join("\n")
    );
}

/// `drover-worker --version` prints the package version and exits 0.
#[test]
fn version_prints_and_exits_0() {
    let out =
        run_to_exit(&["--version"], REFUSAL_DEADLINE).unwrap_or_else(|e| panic!("--version: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--version exited {}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {stdout:?}, which lacks {}",
        env!("CARGO_PKG_VERSION")
    );
}
