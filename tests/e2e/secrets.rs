//! Secrets stay secret (issue 8).
//!
//! 1. The API key and tunnel keys (a right one and a wrong one, each used
//!    by a real tunnel at `log=debug`) never appear in any worker's argv or
//!    environment (`/proc/<pid>/cmdline`, `/proc/<pid>/environ`), nor the
//!    master's, nor in any log line: the master's own log after its
//!    first-start `API Key created:` line, `/instances/{id}/logs`, and the
//!    `logs` of SSE `log` events. A wrong API key sent to the API (input
//!    from anyone) is not echoed either.
//! 2. The store is private: the data dir and every directory in it are
//!    0700, every file 0600, while the master runs and after it stopped.
//!
//! Key comparisons are constant-time in the code (API key:
//! `subtle::ConstantTimeEq` in `master/src/api/mod.rs`; tunnel keys are never
//! compared, their HMAC proofs are, with `Mac::verify_slice` in
//! `worker/src/tunnel/auth.rs`); `api_errors` checks a wrong key of the right
//! length is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use drover_e2e::api::{id_of, worker_pid};
use drover_e2e::io::assert_echo;
use drover_e2e::lifecycle::{wait_instance, wait_ready};
use drover_e2e::procs::{proc_cmdline, proc_environ};
use drover_e2e::{DEADLINE, EchoServer, Frame, Master, free_addr, pattern, wait_until_async};

/// The master's first-start line that prints the API key, once.
const KEY_LINE: &str = "API Key created: ";

/// Every place a secret could leak to, and what it says there.
fn leaks(secrets: &[&str], place: &str, texts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for text in texts {
        for s in secrets {
            if text.contains(s) {
                out.push(format!("{place}: {text:?} contains {s:?}"));
            }
        }
    }
    out
}

/// The mode bits of every directory and file under `dir` (itself included)
/// that are not 0700 / 0600.
fn loose_modes(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    // Bounded: a data dir holds a few dozen entries.
    for _ in 0..10_000 {
        let Some(path) = todo.pop() else { break };
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if mode != 0o700 {
                bad.push(format!(
                    "{} is a directory of mode {mode:o}",
                    path.display()
                ));
            }
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                todo.push(entry.expect("entry").path());
            }
        } else if meta.is_file() && mode != 0o600 {
            bad.push(format!("{} is a file of mode {mode:o}", path.display()));
        }
    }
    bad
}

/// Neither key travels outside the control socket: not on a worker's argv or
/// in its environment, not in any log line after the first-start key line.
#[tokio::test]
async fn keys_stay_out_of_processes_and_logs() {
    let master = Master::start_url("master://127.0.0.1:0/api?log=debug").await;
    let api = master.api();
    let api_key = master.key();
    let mut sse = master.events().await;
    let tunnel_key = format!("tk{}", hex::encode(rand::random::<[u8; 12]>()));
    let wrong_key = format!("wk{}", hex::encode(rand::random::<[u8; 12]>()));
    let wrong_api_key = format!("ak{}", hex::encode(rand::random::<[u8; 15]>()));
    let secrets = [
        api_key.as_str(),
        tunnel_key.as_str(),
        wrong_key.as_str(),
        wrong_api_key.as_str(),
    ];

    // A keyed reverse tunnel carrying traffic, and a client with the wrong key.
    let echo = EchoServer::start().await;
    let (tunnel, entrance) = (free_addr(), free_addr());
    let server = id_of(
        &api.create_url(&format!("server://{tunnel_key}@{tunnel}/{entrance}?mode=1"))
            .await,
    );
    let client = id_of(
        &api.create_url(&format!(
            "client://{tunnel_key}@{tunnel}/{}?mode=2",
            echo.addr
        ))
        .await,
    );
    wait_until_async(DEADLINE, "both ends log `tunnel up`", || async {
        api.logged(&server, "tunnel up").await && api.logged(&client, "tunnel up").await
    })
    .await;
    assert_echo(entrance, &pattern(64 * 1024, 3)).await;
    let intruder = id_of(
        &api.create_url(&format!(
            "client://{wrong_key}@{tunnel}/{}?mode=2",
            echo.addr
        ))
        .await,
    );
    wait_until_async(
        DEADLINE,
        "the wrong key is refused, and both ends say so",
        || async {
            api.logged(&intruder, "refused our key proof").await
                && api.logged(&server, "handshake refused").await
        },
    )
    .await;
    // Anyone's input: a wrong API key.
    api.clone()
        .with_key(&wrong_api_key)
        .get("/instances")
        .await
        .expect(401);

    let ids = [&server, &client, &intruder];
    let mut found = Vec::new();
    // Processes: every worker's argv and environment, and the master's.
    let mut pids = vec![master.pid()];
    for id in ids {
        let v = wait_instance(&api, id, DEADLINE, "has a worker", |v| {
            worker_pid(v).is_some()
        })
        .await;
        pids.push(worker_pid(&v).expect("checked"));
    }
    for pid in &pids {
        let argv = proc_cmdline(*pid).expect("cmdline");
        let env = proc_environ(*pid).expect("environ");
        found.extend(leaks(&secrets, &format!("argv of {pid}"), &argv));
        found.extend(leaks(&secrets, &format!("environment of {pid}"), &env));
    }
    // Workers get an empty environment: nothing to leak there at all.
    for pid in &pids[1..] {
        assert_eq!(
            proc_environ(*pid),
            Some(vec![]),
            "environment of worker {pid}"
        );
    }
    // The API's log rings.
    for id in ids {
        let logs = api.logs(id, 1000).await;
        assert!(!logs.is_empty(), "{id} logged nothing");
        found.extend(leaks(&secrets, &format!("/instances/{id}/logs"), &logs));
    }
    // SSE log events, up to the intruder's refusal (they come in order).
    let mut sse_lines = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut refusal_seen = false;
    while !refusal_seen {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no SSE log event of the refusal within {DEADLINE:?}"
        );
        match sse.next_frame(left).await {
            Some(Frame::Event(e)) if e.kind() == "log" => {
                let line = e.json()["logs"].as_str().unwrap_or_default().to_string();
                refusal_seen |= e.instance_id().as_deref() == Some(intruder.as_str())
                    && line.contains("refused our key proof");
                sse_lines.push(line);
            }
            Some(_) => {}
            None => panic!("the SSE stream ended"),
        }
    }
    found.extend(leaks(&secrets, "SSE log event", &sse_lines));
    // The master's own log, after the line that prints the key once.
    let lines = master.lines();
    let key_line = lines
        .iter()
        .position(|l| l.contains(KEY_LINE))
        .expect("the first start prints the key");
    assert!(lines[key_line].contains(&api_key));
    found.extend(leaks(&secrets, "master log", &lines[key_line + 1..]));
    found.extend(leaks(&secrets[1..], "master log", &lines[..=key_line]));
    assert!(
        lines.len() > key_line + 20,
        "the master logged little at log=debug: {lines:?}"
    );
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}

/// The data dir and everything in it are private to the master's user:
/// directories 0700, files 0600, while it runs and after it stopped.
#[tokio::test]
async fn store_is_private() {
    let master = Master::start().await;
    let api = master.api();
    for _ in 0..3 {
        let v = api
            .create_url(&format!("server://{}/{}?mode=2", free_addr(), free_addr()))
            .await;
        wait_ready(&api, &id_of(&v), None, DEADLINE).await;
    }
    let dir = master.data_dir().to_path_buf();
    assert!(
        dir.join("db").is_dir(),
        "no sled database in {}",
        dir.display()
    );
    let bad = loose_modes(&dir);
    assert!(bad.is_empty(), "while running:\n{}", bad.join("\n"));
    master.stop().await;
    let bad = loose_modes(&dir);
    assert!(bad.is_empty(), "after stopping:\n{}", bad.join("\n"));
}
