//! `/tcping` with bounded concurrency: at most 10 probes at once; a request
//! that finds no free slot within a second answers 200 `too many requests`
//! (as NodePass does), and the rest of the API answers meanwhile.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use drover_e2e::{Api, KEY_ID, Master};

/// The master's probe pool (`tcping::MAX_PROBES`).
const MAX_PROBES: usize = 10;
/// Probes sent at once: more than the pool.
const SENT: usize = MAX_PROBES + 5;

/// A listener whose accept queue is full and never drained: the kernel drops
/// further SYNs, so a connect to it hangs until the prober's own timeout.
/// Returns its address and what must be kept alive.
fn black_hole() -> (SocketAddr, Socket, Vec<TcpStream>) {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    sock.bind(&any.into()).expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    // Backlog 0 still queues one connection; fill it (a connect that hangs
    // here already shows the queue is full).
    let fillers = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (addr, sock, fillers)
}

/// `GET /tcping?target=T`; asserts 200 and returns the answer.
async fn tcping(api: &Api, target: &str) -> Value {
    api.get(&format!("/tcping?target={target}"))
        .await
        .ok_json(200)
}

/// 15 probes of a target that never answers, sent at once: 10 hold the slots
/// until their dial timeout, the others are answered `too many requests`;
/// the API answers other requests meanwhile, and the slots are free again
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcping_beyond_the_bound_is_too_many_requests() {
    let master = Master::start().await;
    let api = master.api();
    let (hole, _listener, _fillers) = black_hole();
    let target = hole.to_string();
    let probes: Vec<_> = (0..SENT)
        .map(|_| {
            let (api, target) = (api.clone(), target.clone());
            tokio::spawn(async move { tcping(&api, &target).await })
        })
        .collect();
    // Meanwhile the API answers.
    assert_eq!(api.list().await[0]["id"], KEY_ID);
    api.get("/info").await.ok_json(200);

    let (mut busy, mut timed_out) = (0, 0);
    for probe in probes {
        let v = probe.await.expect("probe task");
        assert_eq!(v["target"], target.as_str(), "{v}");
        assert_eq!((&v["connected"], &v["latency"]), (&false.into(), &0.into()));
        let error = v["error"].as_str().unwrap_or_default();
        if error == "too many requests" {
            busy += 1;
        } else if error == format!("dial tcp {target}: i/o timeout") {
            timed_out += 1;
        } else {
            panic!("unexpected tcping answer {v}");
        }
    }
    // Every probe that got a slot hangs until its timeout, so the first 10
    // time out; the others came while all slots were held (unless one came
    // 4 s late, which makes only `busy` smaller).
    assert!(
        timed_out >= MAX_PROBES && busy >= 1,
        "{timed_out} timed out, {busy} too many requests, of {SENT}"
    );

    let live = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = live.local_addr().expect("addr").to_string();
    assert_eq!(tcping(&api, &addr).await["connected"], true);
}
