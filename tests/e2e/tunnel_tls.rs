//! TLS on the tunnel: `tls=1` with the fingerprint pinned by `fp=`, `tls=2`
//! with a CA and a server certificate made here, verified against `sni`.

use drover_e2e::io::{assert_echo, stream_echo_sha256};
use drover_e2e::tls::{fingerprint_of, make_pki};
use drover_e2e::topology::Plan;
use drover_e2e::{
    DEADLINE, EchoServer, Mode, RecordingProxy, Tunnel, TunnelBuilder, Worker, free_port, pattern,
    random_bytes,
};

/// The name the `tls=2` server certificate is made for.
const SERVER_NAME: &str = "tunnel.drover.test";

/// Starts the server of `plan`, reads its fingerprint, and starts the client
/// with `extra` appended to its URL (`{fp}` replaced by the fingerprint).
async fn start_with_fingerprint(plan: &Plan, extra: &str) -> (Tunnel, String) {
    let server = Worker::start(plan.server_url.as_ref().expect("dual-end"));
    server.wait_for_line("tunnel listening", DEADLINE).await;
    let line = server.wait_for_line("fingerprint=sha256:", DEADLINE).await;
    let fp = fingerprint_of(&line);
    let client = Worker::start(&format!(
        "{}&{}",
        plan.client_url,
        extra.replace("{fp}", &fp)
    ));
    let tunnel = Tunnel {
        plan: plan.clone(),
        entrance: plan.entrance,
        server: Some(server),
        client,
    };
    (tunnel, fp)
}

/// tls=1: the client that pins the fingerprint the server logged comes up
/// and carries data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls1_right_fingerprint_works() {
    let echo = EchoServer::start().await;
    let plan = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .server("tls=1")
        .client("tls=1")
        .plan();
    let (tunnel, _) = start_with_fingerprint(&plan, "fp=sha256:{fp}").await;
    tunnel.wait_ready().await;
    stream_echo_sha256(tunnel.entrance, random_bytes(1 << 20)).await;
}

/// tls=1: a client pinning another fingerprint logs `fingerprint mismatch`,
/// never brings the tunnel up, and keeps running (it retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls1_wrong_fingerprint_refused() {
    let echo = EchoServer::start().await;
    let plan = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .server("tls=1")
        .plan();
    let server = Worker::start(plan.server_url.as_ref().expect("dual-end"));
    let line = server.wait_for_line("fingerprint=sha256:", DEADLINE).await;
    let fp = fingerprint_of(&line);
    // Flip the last hex digit.
    let last = if fp.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &fp[..63]);
    let client = Worker::start(&format!("{}&tls=1&fp=sha256:{wrong}", plan.client_url));
    client.wait_for_line("fingerprint mismatch", DEADLINE).await;
    assert_eq!(
        client.count_lines("tunnel up"),
        0,
        "the client brought the tunnel up despite the mismatch"
    );
    assert_eq!(
        server.count_lines("tunnel up"),
        0,
        "the server brought the tunnel up despite the mismatch"
    );
    assert!(
        client.is_running(),
        "the client exited after a refused handshake"
    );
    assert_eq!(echo.accepted(), 0);
}

/// tls=1: the user's bytes never appear in clear on the tunnel connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls1_encrypts_tunnel_traffic() {
    let echo = EchoServer::start().await;
    let port = free_port();
    let proxy = RecordingProxy::start(([127, 0, 0, 1], port).into()).await;
    let plan = TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .key("tls-record-key")
        .tunnel_port(port)
        .client_dials(proxy.addr)
        .server("tls=1")
        .client("tls=1")
        .plan();
    let (tunnel, _) = start_with_fingerprint(&plan, "fp=sha256:{fp}").await;
    tunnel.wait_ready().await;
    let marker = b"PLAINTEXT-MARKER-that-must-not-cross-the-tunnel-in-clear";
    let payload: Vec<u8> = marker
        .iter()
        .copied()
        .cycle()
        .take(64 * marker.len())
        .collect();
    assert_echo(tunnel.entrance, &payload).await;
    for i in 0..proxy.connections() {
        let rec = proxy.recorded(i);
        for (dir, bytes) in [("client→server", &rec.up), ("server→client", &rec.down)] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "tunnel connection #{i} carried the user's bytes in clear ({dir})"
            );
        }
    }
}

fn tls2_plan(echo: &EchoServer, pki: &drover_e2e::tls::TestPki, client: &str) -> Plan {
    TunnelBuilder::new(Mode::Reverse, &[echo.addr])
        .server(&format!(
            "tls=2&crt={}&key={}",
            pki.cert_pem.display(),
            pki.key_pem.display()
        ))
        .client(client)
        .plan()
}

/// tls=2: a client trusting the test CA (`crt=`) with the right `sni`
/// verifies the server and carries data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls2_right_sni_works() {
    let echo = EchoServer::start().await;
    let pki = make_pki(SERVER_NAME);
    let client = format!("tls=2&sni={SERVER_NAME}&crt={}", pki.ca_pem.display());
    let tunnel = tls2_plan(&echo, &pki, &client).start().await;
    assert_echo(tunnel.entrance, &pattern(200_000, 3)).await;
}

/// tls=2: a client expecting another server name (`sni`) refuses the
/// certificate and logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls2_wrong_sni_refused() {
    let echo = EchoServer::start().await;
    let pki = make_pki(SERVER_NAME);
    let client = format!("tls=2&sni=other.drover.test&crt={}", pki.ca_pem.display());
    let tunnel = tls2_plan(&echo, &pki, &client).spawn().await;
    tunnel
        .client
        .wait_for_problem("certificate", DEADLINE)
        .await;
    assert_eq!(
        tunnel.client.count_lines("tunnel up"),
        0,
        "the client accepted a certificate for another name"
    );
    assert_eq!(tunnel.server().count_lines("tunnel up"), 0);
    assert!(
        tunnel.client.is_running(),
        "the client exited after a refused handshake"
    );
}

/// tls=2: a client that does not trust the issuing CA refuses the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls2_untrusted_ca_refused() {
    let echo = EchoServer::start().await;
    let pki = make_pki(SERVER_NAME);
    let other = make_pki(SERVER_NAME);
    let client = format!("tls=2&sni={SERVER_NAME}&crt={}", other.ca_pem.display());
    let tunnel = tls2_plan(&echo, &pki, &client).spawn().await;
    tunnel
        .client
        .wait_for_problem("certificate", DEADLINE)
        .await;
    assert_eq!(
        tunnel.client.count_lines("tunnel up"),
        0,
        "the client accepted a certificate from an untrusted CA"
    );
    assert_eq!(tunnel.server().count_lines("tunnel up"), 0);
}
