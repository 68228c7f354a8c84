//! A subscriber that stops reading must not slow the others, and must never
//! silently lose events. master/src/sse.rs queues at most `SUBSCRIBER_QUEUE`
//! (1024) frames per subscriber; one more and the queue is dropped and the
//! subscriber resynchronised: a fresh `initial` burst (`********` first,
//! then every instance as it is now), then the live stream; after repeated
//! lags it is sent `shutdown` and closed instead.

use serde_json::json;
use tokio::net::TcpSocket;

use drover_e2e::api::id_of;
use drover_e2e::{DEADLINE, Event, Frame, KEY_ID, Master, SseStream, free_addr};

/// Updates in the burst: well beyond the 1024 frames a subscriber may have
/// queued plus the ~200 the stalled reader's socket path holds (its small
/// receive buffer and MSS keep the server's send buffer small).
const UPDATES: usize = 1500;

/// Reads `retry` and the opening `initial` burst of `count` events.
async fn read_opening(stream: &mut SseStream, count: usize) {
    assert_eq!(stream.status, 200);
    for _ in 0..count {
        let e = stream.next_event(DEADLINE).await;
        assert_eq!(e.kind(), "initial", "{}", e.data);
    }
}

/// The alias `e` shows for instance `id`, if it is about `id`.
fn alias_of(e: &Event, id: &str) -> Option<String> {
    let v = e.json();
    (v["instance"]["id"] == id).then(|| v["instance"]["alias"].as_str().unwrap_or("").into())
}

/// The burst's aliases, in order.
fn burst() -> Vec<String> {
    (0..UPDATES).map(|i| format!("u{i}")).collect()
}

/// One reader stalls (small receive buffer, reads nothing) while a burst of
/// updates goes out: the other reader gets every update, in order, ids
/// consecutive. Reading again, the stalled one sees a gapless prefix of the
/// burst, then at the gap a resync burst that carries the final state (or
/// `shutdown` and the end of the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_resynchronised_and_slows_no_one() {
    let master = Master::start().await;
    let api = master.api();
    let url = format!("server://{}/{}?mode=1", free_addr(), free_addr());
    let id = id_of(&api.create(json!({ "url": url })).await);
    // Stopped: no worker, so the burst's updates are the only events.
    api.patch_instance(&id, json!({ "action": "stop" })).await;
    let last = format!("u{}", UPDATES - 1);

    let mut fast = master.events().await;
    read_opening(&mut fast, 2).await;
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket2::SockRef::from(&sock)
        .set_tcp_mss(536)
        .expect("TCP_MAXSEG");
    let path = format!("{}/events", master.prefix);
    let mut stalled =
        SseStream::open_with(sock, master.addr, &path, Some(&master.key()), None).await;
    // Read its opening, so its burst's ids come before the updates'.
    read_opening(&mut stalled, 2).await;

    let reader = {
        let (id, last) = (id.clone(), last.clone());
        tokio::spawn(async move {
            let opened = fast.history.len();
            let mut seen = Vec::new();
            while seen.last() != Some(&last) {
                let e = fast.next_event(DEADLINE).await;
                seen.extend(alias_of(&e, &id));
            }
            (seen, fast.history.split_off(opened))
        })
    };
    for alias in burst() {
        api.patch_instance(&id, json!({ "alias": alias })).await;
    }
    let (seen, got) = reader.await.expect("fast reader");
    assert_eq!(seen, burst(), "the fast reader's updates");
    for w in got.windows(2) {
        assert_eq!(
            w[1].id,
            w[0].id + 1,
            "fast reader: ids jump at {}",
            w[1].data
        );
        assert_eq!(w[1].kind(), "update", "fast reader: {}", w[1].data);
    }

    // The stalled reader reads again: up to a gap, a prefix of the burst.
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut marker = None;
    while after.last() != Some(&last) && before.last() != Some(&last) {
        let Some(frame) = stalled.next_frame(DEADLINE).await else {
            break;
        };
        let Frame::Event(e) = frame else {
            continue;
        };
        let prev = stalled.history[stalled.history.len() - 2].id;
        if marker.is_none() && e.id != prev + 1 {
            let resync = e.kind() == "initial" && e.instance_id().as_deref() == Some(KEY_ID);
            assert!(
                resync || e.kind() == "shutdown",
                "stalled reader: ids jump from {prev} to {} without a resync or shutdown: {}",
                e.id,
                e.data
            );
            marker = Some(e.kind());
        }
        if e.kind() == "shutdown" {
            stalled.expect_end(DEADLINE).await;
            break;
        }
        let list = if marker.is_some() {
            &mut after
        } else {
            &mut before
        };
        list.extend(alias_of(&e, &id));
    }
    let kind = marker.expect("the stalled reader never fell behind: raise UPDATES");
    assert_eq!(
        before[..],
        burst()[..before.len()],
        "the stalled reader's updates before the {kind}"
    );
    if kind == "initial" {
        assert_eq!(
            after.last(),
            Some(&last),
            "after the resync the stalled reader lacks the final state"
        );
    }
}
