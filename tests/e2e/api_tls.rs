//! The master API over TLS: `tls=1` (a self-signed certificate whose
//! fingerprint the master logs, pinned here) and `tls=2` (a CA and server
//! certificate made here, the chain verified, the files reloaded when they
//! change); plain HTTP to the TLS port fails cleanly and the API serves on.

use std::net::SocketAddr;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use drover_e2e::tls::{fingerprint_of, make_pki, pinning, trusting};
use drover_e2e::{Api, DEADLINE, KEY_ID, Master};

/// The name the `tls=2` certificate is made for; the client resolves it to
/// the master's address.
const HOST: &str = "api.drover.test";

/// An HTTPS client with `tls` that sends [`HOST`] to `addr`, on a fresh
/// connection pool (each check is a new handshake).
fn https(tls: ClientConfig, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .resolve(HOST, addr)
        .tls_backend_preconfigured(tls)
        .build()
        .expect("building the HTTPS client")
}

/// The master's API over HTTPS at `https://HOST:PORT{prefix}`.
fn api(master: &Master, tls: ClientConfig) -> Api {
    Api::new(
        https(tls, master.addr),
        format!("https://{HOST}:{}{}", master.addr.port(), master.prefix),
        Some(master.key()),
    )
}

/// Asserts that a request with `tls` fails (the handshake is refused).
async fn assert_refused(master: &Master, tls: ClientConfig, why: &str) {
    let url = format!(
        "https://{HOST}:{}{}/healthz",
        master.addr.port(),
        master.prefix
    );
    if let Ok(resp) = https(tls, master.addr).get(&url).send().await {
        panic!("{why}: GET {url} answered {}", resp.status());
    }
}

/// An authenticated list and `/info` over HTTPS; returns `/info`.
async fn serves(api: &Api) -> serde_json::Value {
    let list = api.list().await;
    assert_eq!(list[0]["id"], KEY_ID);
    api.clone()
        .without_key()
        .get("/instances")
        .await
        .assert_error(401, "Unauthorized: API key required");
    api.get("/info").await.ok_json(200)
}

/// tls=1: the master logs its certificate's SHA-256; a client pinning it
/// gets an authenticated answer, one pinning another is refused. Plain HTTP
/// on the port gets no HTTP answer and is closed; the API serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls1_self_signed_pinned_by_logged_fingerprint() {
    let master = Master::start_url("master://127.0.0.1:0/api?tls=1").await;
    let line = master.wait_for_line("fingerprint=sha256:", DEADLINE).await;
    let fp = fingerprint_of(&line);
    let info = serves(&api(&master, pinning(&fp))).await;
    assert_eq!(info["tls"], "1");
    assert_refused(&master, pinning(&"0".repeat(64)), "a wrong pin").await;

    // Plain HTTP to the TLS port: whatever comes back is no HTTP answer, and
    // the connection ends.
    let mut sock = TcpStream::connect(master.addr).await.expect("connect");
    let req = format!(
        "GET {}/instances HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\r\n",
        master.prefix,
        master.key()
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, sock.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "plain HTTP: the TLS port neither answered nor closed"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1."),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let url = format!("http://{}{}/healthz", master.addr, master.prefix);
    assert!(
        plain.get(&url).send().await.is_err(),
        "GET {url} over plain HTTP succeeded on a TLS port"
    );
    serves(&api(&master, pinning(&fp))).await;
}

/// tls=2: the client verifies the chain to the test CA (a client trusting
/// another CA is refused); replacing the crt/key files makes new
/// connections get the new certificate, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls2_verified_chain_and_reloaded_files() {
    let pki = make_pki(HOST);
    let url = format!(
        "master://127.0.0.1:0/api?tls=2&crt={}&key={}",
        pki.cert_pem.display(),
        pki.key_pem.display()
    );
    let master = Master::start_url(&url).await;
    let info = serves(&api(&master, trusting(&pki.ca_pem))).await;
    assert_eq!(info["tls"], "2");
    assert_eq!(info["crt"], pki.cert_pem.display().to_string());
    let other = make_pki(HOST);
    assert_refused(
        &master,
        trusting(&other.ca_pem),
        "a client trusting another CA",
    )
    .await;

    // Replace the files (each by rename, as a certificate manager does).
    for (from, to) in [
        (&other.key_pem, &pki.key_pem),
        (&other.cert_pem, &pki.cert_pem),
    ] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).expect("copy the new file");
        std::fs::rename(&tmp, to).expect("rename over the old file");
    }
    serves(&api(&master, trusting(&other.ca_pem))).await;
    assert_refused(
        &master,
        trusting(&pki.ca_pem),
        "the old certificate after the files changed",
    )
    .await;
    master
        .wait_for_line("tls certificate reloaded", DEADLINE)
        .await;
}
