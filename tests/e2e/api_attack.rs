//! Hostile clients against the master API (issue 8): bodies far over the
//! limit, deep nesting, invalid UTF-8, header floods, many idle connections,
//! SSE clients that never read. After each attack the master still answers,
//! and every API error is `{"error": "…"}` with its status. (What the
//! schema-driven fuzzer found is in `api_schema`.)
//!
//! Requests that are not HTTP at all (a NUL in a header, more than 96
//! headers, a header block over the limit) are refused by the HTTP layer
//! before any route: a status with an empty body, then the connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use drover_e2e::api::id_of;
use drover_e2e::{DEADLINE, Master, free_addr, wait_until, wait_until_async};

/// A reverse-mode server on fresh ports (runs without a client).
fn server_url() -> String {
    format!("server://{}/{}?mode=1", free_addr(), free_addr())
}

/// An answer read off a raw socket.
struct RawResp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// `{"error": "<prefix>…"}` + newline, as JSON.
    fn assert_error_prefix(&self, status: u16, prefix: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "{}", self.head);
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {:?}", String::from_utf8_lossy(&self.body));
        });
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        assert!(msg.starts_with(prefix), "{msg:?} vs {prefix:?}");
        assert!(self.body.ends_with(b"}\n"));
    }
}

/// Sends `request` (writing it from another task, so an early answer is read
/// while the rest is still going out, and write errors after it don't
/// matter) and reads one response.
async fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> RawResp {
    let end = Instant::now() + DEADLINE;
    let sock = timeout_at(end, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut buf = Vec::new();
    let resp = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            let len: usize = head
                .split("\r\n")
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= at + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("bad status line in {head:?}"));
                break RawResp {
                    status,
                    head,
                    body: buf[at + 4..at + 4 + len].to_vec(),
                };
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout_at(end, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection ended before a whole response: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within {DEADLINE:?}"),
        }
    };
    writer.abort();
    resp
}

/// `METHOD {prefix}path` with the key, `extra` header lines and `body`.
fn request(
    master: &Master,
    method: &str,
    path: &str,
    extra: &[Vec<u8>],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\n",
        master.prefix,
        master.addr,
        master.key()
    )
    .into_bytes();
    for line in extra {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the
/// hard limit); returns the soft limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// The master answers, with the right key, right now.
async fn assert_alive(master: &Master) {
    assert!(
        master.try_status().is_none(),
        "master exited\n{}",
        master.dump()
    );
    master.api().get("/info").await.ok_json(200);
}

/// 10 MiB bodies, declared with `Content-Length` or sent chunked, are a
/// clean 413 JSON error on every route that takes a body; the master does not
/// buffer them (its RSS stays far below what they add up to) and answers
/// normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_bodies_are_413_and_not_buffered() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    // The peak, so that a body buffered and freed again would still show.
    let before = status_kib(master.pid(), "VmHWM");
    let big = {
        let mut b = b"{\"url\":\"".to_vec();
        b.resize(10 << 20, b'x');
        b.extend_from_slice(b"\"}");
        b
    };
    let inst = format!("/instances/{id}");
    let routes = [
        ("POST", "/instances"),
        ("PATCH", inst.as_str()),
        ("PUT", inst.as_str()),
        ("POST", "/info"),
        ("PUT", "/clients/someone"),
    ];
    for (method, path) in routes {
        let resp = raw_exchange(master.addr, request(&master, method, path, &[], Some(&big))).await;
        resp.assert_error_prefix(413, "Request body exceeds 65536 bytes");
        // The same bytes chunked, with no length announced.
        let mut chunked = request(
            &master,
            method,
            path,
            &[
                b"Content-Type: application/json".to_vec(),
                b"Transfer-Encoding: chunked".to_vec(),
            ],
            None,
        );
        for piece in big.chunks(256 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let resp = raw_exchange(master.addr, chunked).await;
        resp.assert_error_prefix(413, "Request body exceeds 65536 bytes");
    }
    assert_alive(&master).await;
    let after = status_kib(master.pid(), "VmHWM");
    // Ten 10 MiB bodies were offered; buffering even one would show.
    assert!(
        after < before + 8 * 1024,
        "master peak RSS grew from {before} KiB to {after} KiB"
    );
    // Nothing was created or changed by the refused requests.
    assert_eq!(master.api().list().await.len(), 2);
    assert_eq!(master.api().instance(&id).await["alias"], "");
}

/// 100,000 `[` (over the limit) is 413; deep nesting that fits in 64 KiB —
/// arrays, objects, and nested inside a real field — is 400 `Invalid
/// request body`, never a crash or a stack overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let api = master.api();
    let inst = format!("/instances/{id}");
    api.call(Method::POST, "/instances", Some(vec![b'['; 100_000]))
        .await
        .assert_error(413, "Request body exceeds 65536 bytes");
    let deep_tags = {
        let mut b = b"{\"meta\":{\"tags\":".to_vec();
        b.extend(std::iter::repeat_n(b'[', 60_000));
        b
    };
    let bodies: Vec<Vec<u8>> = vec![
        vec![b'['; 60_000],
        b"{\"a\":".repeat(10_000),
        [b"[".repeat(30_000), b"]".repeat(30_000)].concat(),
        [
            b"{\"url\":".repeat(5_000),
            b"1".to_vec(),
            b"}".repeat(5_000),
        ]
        .concat(),
        deep_tags,
    ];
    for (method, path) in [
        (Method::POST, "/instances"),
        (Method::PATCH, inst.as_str()),
        (Method::PUT, inst.as_str()),
        (Method::POST, "/info"),
        (Method::PUT, "/clients/someone"),
    ] {
        for body in &bodies {
            api.call(method.clone(), path, Some(body.clone()))
                .await
                .assert_error_prefix(400, "Invalid request body");
        }
    }
    assert_alive(&master).await;
}

/// Invalid UTF-8: in a body (400 `Invalid request body`), in the key header
/// (401), in a percent-decoded path or query (404 / 400 JSON), in
/// `Last-Event-ID` (a fresh burst) and in any other header (ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_refused_cleanly() {
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let api = master.api();
    let inst = format!("/instances/{id}");
    for (method, path, body) in [
        (
            Method::POST,
            "/instances",
            &b"{\"url\":\"server://\xff\xfe:1/x:2\"}"[..],
        ),
        (Method::PATCH, inst.as_str(), b"{\"alias\":\"\xc3\x28\"}"),
        (Method::PUT, inst.as_str(), b"{\"url\":\"\xed\xa0\x80\"}"),
        (Method::POST, "/info", b"{\"alias\":\"\xff\"}"),
        (
            Method::PATCH,
            inst.as_str(),
            b"{\"meta\":{\"tags\":{\"\xff\":\"v\"}}}",
        ),
        (
            Method::PUT,
            "/clients/c",
            b"{\"instance\":\"\xf8\x88\x80\x80\x80\"}",
        ),
    ] {
        api.call(method, path, Some(body.to_vec()))
            .await
            .assert_error(400, "Invalid request body");
    }
    assert_eq!(api.instance(&id).await["alias"], "");

    let mut bad_key = request(&master, "GET", "/info", &[], None);
    let key = master.key();
    let at = bad_key
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .expect("key in request");
    bad_key[at..at + 4].copy_from_slice(b"\xff\xfe\xc3\x28");
    raw_exchange(master.addr, bad_key)
        .await
        .assert_error_prefix(401, "Unauthorized: Invalid API key");

    let odd_header = request(
        &master,
        "GET",
        "/info",
        &[b"X-Odd: \xff\xfe\x80".to_vec()],
        None,
    );
    assert_eq!(raw_exchange(master.addr, odd_header).await.status, 200);

    api.get("/instances/%FF%FE")
        .await
        .assert_error(404, "Instance not found");
    api.get("/instances/%FF/logs")
        .await
        .assert_error(404, "Instance not found");
    api.get("/clients/%C3%28")
        .await
        .assert_error(404, "Client not bound");
    api.get(&format!("{inst}/logs?tail=%FF"))
        .await
        .assert_error_prefix(400, "Invalid query: ");
    api.get("/tcping?target=%FF%FE")
        .await
        .assert_error_prefix(400, "Invalid target");

    // A `Last-Event-ID` that is not even text gets a fresh burst.
    let mut sse = TcpStream::connect(master.addr).await.expect("connect");
    sse.write_all(&request(
        &master,
        "GET",
        "/events",
        &[b"Last-Event-ID: \xff\xfe1".to_vec()],
        None,
    ))
    .await
    .expect("request");
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains("\"type\":\"initial\"") {
        let mut chunk = [0u8; 4096];
        match timeout_at(end, sse.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no initial burst ({other:?}): {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    assert!(seen.starts_with(b"HTTP/1.1 200 "));
    assert_alive(&master).await;
}

/// Header floods: up to the HTTP layer's 96 headers a request is served;
/// more headers, or one header larger than the head limit, get a bodyless
/// 431 and the connection closes; a NUL in a header is a bodyless 400. A
/// stream of such requests leaves the master answering and holding no extra
/// descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused() {
    let master = Master::start().await;
    assert_alive(&master).await;
    let fds_before = fd_count(master.pid());
    let many = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("X-Flood-{i}: {}", "v".repeat(32)).into_bytes())
            .collect()
    };
    let ok = raw_exchange(
        master.addr,
        request(&master, "GET", "/info", &many(80), None),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.head);

    for _ in 0..50 {
        for (extra, status) in [
            (many(200), 431),
            (many(5000), 431),
            (
                vec![format!("X-Big: {}", "a".repeat(256 * 1024)).into_bytes()],
                431,
            ),
            (vec![b"X-Nul: a\0b".to_vec()], 400),
        ] {
            let resp =
                raw_exchange(master.addr, request(&master, "GET", "/info", &extra, None)).await;
            assert_eq!(resp.status, status, "{}", resp.head);
            assert!(resp.body.is_empty());
            assert_eq!(resp.header("connection").as_deref(), Some("close"));
        }
    }
    assert_alive(&master).await;
    wait_until(
        DEADLINE,
        "the master's descriptors are back to normal",
        || fd_count(master.pid()) <= fds_before + 4,
    )
    .await;
}

/// 1,000 connections that send nothing and 200 that stop halfway through a
/// request head do not starve the API: it still answers requests on new
/// connections; the master closes the idle ones itself (it does not wait for
/// the clients), and its descriptors go back to where they were.
/// `scripts/api-fuzz` runs the same with 10,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_starve_the_api() {
    const IDLE: usize = 1000;
    const HALF: usize = 200;
    let limit = raise_nofile(4096);
    assert!(
        limit >= 2048,
        "RLIMIT_NOFILE {limit} is too low for this test"
    );
    let master = Master::start().await;
    assert_alive(&master).await;
    let fds_before = fd_count(master.pid());
    let mut idle = Vec::with_capacity(IDLE + HALF);
    for i in 0..IDLE + HALF {
        let mut sock = TcpStream::connect(master.addr).await.expect("connect");
        if i >= IDLE {
            sock.write_all(
                format!("GET {}/info HTTP/1.1\r\nHost: x\r\nX-Api", master.prefix).as_bytes(),
            )
            .await
            .expect("partial head");
        }
        idle.push(sock);
    }
    // Served while every idle connection is still open.
    for _ in 0..20 {
        master.api().get("/info").await.ok_json(200);
        master.api().get("/instances").await.ok_json(200);
    }
    assert!(master.try_status().is_none());
    // The master ends each idle connection (EOF or an error, after an
    // optional 408); none is left for the client to close.
    let end = Instant::now() + Duration::from_secs(120);
    for mut sock in idle {
        let mut buf = vec![0u8; 4096];
        loop {
            match timeout_at(end, sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("an idle connection was never closed by the master"),
            }
        }
    }
    wait_until(
        DEADLINE,
        "the master's descriptors are back to normal",
        || fd_count(master.pid()) <= fds_before + 4,
    )
    .await;
    assert_alive(&master).await;
}

/// SSE subscribers that never read: while 16 of them sit on full sockets
/// and 800 events of ~16 KiB each are published (12.6 MB; kept for every
/// stalled stream that would be ~200 MB), a reading subscriber receives every
/// event, the master's RSS stays bounded, and once the stalled clients go
/// away the master forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_that_never_read_cost_bounded_memory() {
    const STALLED: usize = 16;
    const EVENTS: usize = 800;
    let master = Master::start().await;
    let id = id_of(&master.api().create_url(&server_url()).await);
    let inst = format!("/instances/{id}");
    let mut reader = master.events().await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let sock = std::net::TcpStream::connect(master.addr).expect("connect");
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &4096)
            .expect("SO_RCVBUF");
        let mut sock = TcpStream::from_std({
            sock.set_nonblocking(true).expect("nonblocking");
            sock
        })
        .expect("tokio socket");
        sock.write_all(
            format!(
                "GET {}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\r\n",
                master.prefix,
                master.key()
            )
            .as_bytes(),
        )
        .await
        .expect("request");
        stalled.push(sock);
    }
    wait_until_async(DEADLINE, "every stream is registered", || async {
        master
            .api()
            .get("/metrics")
            .await
            .text()
            .lines()
            .any(|l| l == format!("drover_sse_subscribers {}", STALLED + 1))
    })
    .await;
    let before = rss_kib(master.pid());
    // Distinct ~16 KiB frames: 58 tags of 256 bytes (meta's limit is 16 KiB).
    for n in 0..EVENTS {
        let tags: serde_json::Map<String, Value> = (0..58)
            .map(|t| (format!("t{t:03}-{n}"), json!(format!("{n:0>256}"))))
            .collect();
        let alias = if n + 1 == EVENTS {
            "last".to_string()
        } else {
            n.to_string()
        };
        master
            .api()
            .patch_instance(&id, json!({ "alias": alias, "meta": { "tags": tags } }))
            .await;
    }
    let last = reader
        .wait_event("the last update", DEADLINE, |e| {
            e.kind() == "update" && e.instance()["alias"] == "last"
        })
        .await;
    assert_eq!(last.instance_id().as_deref(), Some(id.as_str()));
    let after = rss_kib(master.pid());
    // The replay ring may keep up to 16 MiB and the store caches writes; a
    // copy per stalled stream would be ~200 MB.
    assert!(
        after < before + 96 * 1024,
        "master RSS grew from {before} KiB to {after} KiB with {STALLED} stalled streams"
    );
    drop(stalled);
    wait_until_async(DEADLINE, "the stalled streams are gone", || async {
        master
            .api()
            .get("/metrics")
            .await
            .text()
            .lines()
            .any(|l| l == "drover_sse_subscribers 1")
    })
    .await;
    master.api().get(&inst).await.ok_json(200);
}
