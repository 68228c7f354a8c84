//! `GET /events` read byte by byte from a raw socket: framing, ids, the
//! `initial` burst, live events after API calls, `Last-Event-ID` resume,
//! keep-alive comments, and `shutdown` on key regeneration and master stop.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use drover_e2e::api::{assert_instance_shape, id_of, top_level_keys};
use drover_e2e::{DEADLINE, Event, Frame, KEY_ID, Master, SseStream, free_addr};

/// A reverse-mode server on fresh ports (runs without a client).
fn server_url() -> String {
    format!("server://{}/{}?mode=1", free_addr(), free_addr())
}

/// `2026-11-24T10:00:00.123+00:00` or with `Z`: an RFC 3339 date-time.
fn assert_rfc3339(t: &str) {
    let b = t.as_bytes();
    let ok = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (t.ends_with('Z') || t[19..].contains('+') || t[19..].contains('-'));
    assert!(ok, "time {t:?} is not RFC 3339");
}

/// Checks one event frame byte for byte: `id: N\nevent: instance\ndata: …\n\n`
/// with `data` one line of compact JSON whose keys are exactly
/// `type,time,instance,logs` in that order.
fn assert_event_frame(e: &Event) {
    let want = format!("id: {}\nevent: instance\ndata: {}\n\n", e.id, e.data);
    assert_eq!(
        String::from_utf8_lossy(&e.raw),
        want,
        "frame layout of event {}",
        e.id
    );
    assert_eq!(e.name, "instance", "event name of {}", e.id);
    assert_eq!(
        top_level_keys(&e.data),
        ["type", "time", "instance", "logs"],
        "data keys of event {}",
        e.id
    );
    let v = e.json();
    assert_eq!(
        serde_json::to_string(&v).expect("json").len(),
        e.data.len(),
        "data of event {} is not compact JSON",
        e.id
    );
    assert!(v["logs"].is_string(), "logs of event {}", e.id);
    assert_rfc3339(v["time"].as_str().expect("time"));
    if e.kind() == "shutdown" {
        assert!(v["instance"].is_null(), "shutdown carries instance null");
        assert_eq!(v["logs"], "");
    } else {
        assert_instance_shape(&v["instance"]);
    }
    if e.kind() != "log" {
        assert_eq!(v["logs"], "", "logs of a {} event", e.kind());
    }
}

/// Ids strictly increase along the stream.
fn assert_ids_increase(events: &[Event]) {
    for w in events.windows(2) {
        assert!(
            w[1].id > w[0].id,
            "event ids do not increase: {} then {}",
            w[0].id,
            w[1].id
        );
    }
}

/// Reads the `retry: 3000` frame (exact bytes) and the initial burst of
/// `count` events; returns the burst.
async fn read_opening(stream: &mut SseStream, count: usize) -> Vec<Event> {
    assert_eq!(stream.status, 200, "status of /events");
    assert_eq!(
        stream.next_frame(DEADLINE).await,
        Some(Frame::Retry(3000)),
        "the stream starts with `retry: 3000`"
    );
    let mut burst = Vec::new();
    for _ in 0..count {
        let e = stream.next_event(DEADLINE).await;
        assert_eq!(e.kind(), "initial", "burst event {}: {}", e.id, e.data);
        assert_event_frame(&e);
        burst.push(e);
    }
    burst
}

/// The stream opens with exactly `retry: 3000\n\n`, then one `initial` per
/// instance with `********` first (its `url` the key, `type` ""), each a
/// well-formed frame, ids increasing; headers say `text/event-stream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_burst_and_framing() {
    let master = Master::start().await;
    let api = master.api();
    let a = id_of(&api.create_url(&server_url()).await);
    let b = id_of(&api.create_url(&server_url()).await);

    for spelling in ["", "/v1"] {
        let opened = Instant::now();
        let mut stream = master.events_at(spelling, None).await;
        assert_eq!(stream.status, 200);
        assert_eq!(
            stream.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        assert_eq!(stream.header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(
            stream.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        let burst = read_opening(&mut stream, 3).await;
        let first_after = opened.elapsed();
        assert!(
            first_after < Duration::from_secs(2),
            "the initial burst took {first_after:?}"
        );
        assert_ids_increase(&burst);
        let key_rec = burst[0].instance();
        assert_eq!(key_rec["id"], KEY_ID, "the first initial event is {KEY_ID}");
        assert_eq!(key_rec["type"], "");
        assert_eq!(key_rec["url"], master.key().as_str());
        let ids: BTreeSet<String> = burst[1..]
            .iter()
            .map(|e| e.instance_id().expect("instance id"))
            .collect();
        assert_eq!(ids, BTreeSet::from([a.clone(), b.clone()]));
    }
}

/// POST, PATCH and DELETE show up as `create`, `update` and `delete` events
/// carrying the instance, in that order, ids increasing across everything
/// the stream carries (worker updates and `log` lines included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_delete_events_follow_api_calls() {
    let master = Master::start().await;
    let api = master.api_v1();
    let mut stream = master.events_at("/v1", None).await;
    read_opening(&mut stream, 1).await;

    let created = api
        .create(json!({ "url": server_url(), "alias": "sse" }))
        .await;
    let id = id_of(&created);
    let first = stream
        .wait_event("about the new instance", DEADLINE, |e| {
            e.instance_id().as_deref() == Some(id.as_str())
        })
        .await;
    assert_eq!(
        first.kind(),
        "create",
        "the first event about a new instance is `create`"
    );
    assert_eq!(first.instance()["alias"], "sse");
    assert_eq!(first.instance()["url"], created["url"]);

    // The worker comes up: an update with state ready.
    stream
        .wait_event("update with worker ready", DEADLINE, |e| {
            e.kind() == "update"
                && e.instance_id().as_deref() == Some(id.as_str())
                && e.instance()["worker"]["state"] == "ready"
        })
        .await;

    api.patch_instance(&id, json!({ "alias": "renamed" })).await;
    stream
        .wait_event("update with the new alias", DEADLINE, |e| {
            e.kind() == "update" && e.instance()["alias"] == "renamed"
        })
        .await;
    api.patch_instance(&id, json!({ "meta": { "tags": { "k": "v" } } }))
        .await;
    stream
        .wait_event("update with the new tags", DEADLINE, |e| {
            e.kind() == "update" && e.instance()["meta"]["tags"]["k"] == "v"
        })
        .await;
    api.patch_instance(&id, json!({ "action": "stop" })).await;
    stream
        .wait_event("update with status stopped", DEADLINE, |e| {
            e.kind() == "update"
                && e.instance_id().as_deref() == Some(id.as_str())
                && e.instance()["status"] == "stopped"
        })
        .await;

    api.delete(&format!("/instances/{id}")).await.expect(204);
    let deleted = stream
        .wait_event("delete", DEADLINE, |e| e.kind() == "delete")
        .await;
    assert_eq!(deleted.instance_id().as_deref(), Some(id.as_str()));

    let live: Vec<Event> = stream.history[1..].to_vec();
    assert_ids_increase(&stream.history);
    for e in &live {
        assert_event_frame(e);
        assert_ne!(e.kind(), "initial", "no initial after the burst");
        if e.kind() == "log" {
            assert!(
                !e.json()["logs"].as_str().unwrap_or_default().is_empty(),
                "a log event carries its line: {}",
                e.data
            );
        }
    }
    let after_delete: Vec<&Event> = live
        .iter()
        .skip_while(|e| e.kind() != "delete")
        .skip(1)
        .filter(|e| e.instance_id().as_deref() == Some(id.as_str()))
        .collect();
    assert!(
        after_delete.is_empty(),
        "events about {id} after its delete: {after_delete:?}"
    );
}

/// A stream opened with `Last-Event-ID: K` gets `retry`, then exactly the
/// frames after K that a live stream got (byte for byte), no burst; an id the
/// master never issued (or garbage) gets a fresh burst instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_exactly() {
    let master = Master::start().await;
    let api = master.api();
    let mut live = master.events().await;
    read_opening(&mut live, 1).await;

    let id = id_of(&api.create_url(&server_url()).await);
    api.patch_instance(&id, json!({ "alias": "a1" })).await;
    let resume_at = live
        .wait_event("alias a1", DEADLINE, |e| e.instance()["alias"] == "a1")
        .await;
    api.patch_instance(&id, json!({ "alias": "a2" })).await;
    api.patch_instance(&id, json!({ "alias": "a3" })).await;
    let last = live
        .wait_event("alias a3", DEADLINE, |e| e.instance()["alias"] == "a3")
        .await;

    let mut resumed = master.events_at("", Some(&resume_at.id.to_string())).await;
    assert_eq!(resumed.next_frame(DEADLINE).await, Some(Frame::Retry(3000)));
    let want: Vec<&Event> = live
        .history
        .iter()
        .filter(|e| e.id > resume_at.id && e.id <= last.id)
        .collect();
    for expected in want {
        let got = resumed.next_event(DEADLINE).await;
        assert_eq!(
            String::from_utf8_lossy(&got.raw),
            String::from_utf8_lossy(&expected.raw),
            "resumed frame differs from the live one"
        );
    }
    assert!(
        resumed.history.iter().all(|e| e.kind() != "initial"),
        "a resume sends no burst"
    );

    // Ids this master never issued, or no number at all: a fresh burst.
    let beyond = (last.id + 1_000_000).to_string();
    for bogus in [beyond.as_str(), "0", "garbage"] {
        let mut fresh = master.events_at("", Some(bogus)).await;
        let burst = read_opening(&mut fresh, 2).await;
        assert_eq!(burst[0].instance_id().as_deref(), Some(KEY_ID));
        assert_eq!(burst[1].instance_id().as_deref(), Some(id.as_str()));
        assert_eq!(burst[1].instance()["alias"], "a3");
    }
}

/// `PATCH /instances/********` `{"action":"restart"}`: the answer carries
/// the new key; every open stream gets the key record's `update`, then
/// `shutdown` as its last frame, and ends; the old key is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_regeneration_shuts_every_stream() {
    let master = Master::start().await;
    let old = master.key();
    let mut a = master.events().await;
    let mut b = master.events_at("/v1", None).await;
    read_opening(&mut a, 1).await;
    read_opening(&mut b, 1).await;

    let rec = master
        .api()
        .patch_instance(KEY_ID, json!({ "action": "restart" }))
        .await;
    let new = rec["url"].as_str().expect("url").to_string();
    assert!(
        new.len() == 32 && new.bytes().all(|c| c.is_ascii_hexdigit()),
        "new key {new:?}"
    );
    assert_ne!(new, old, "the key changed");
    assert_eq!(rec["id"], KEY_ID);

    // The old key is refused at once, on every route.
    master
        .api()
        .get("/instances")
        .await
        .assert_error(401, "Unauthorized: Invalid API key");
    let refused = master.events().await;
    assert_eq!(refused.status, 401, "/events with the old key");
    assert_eq!(
        String::from_utf8_lossy(&refused.error_body),
        "{\"error\":\"Unauthorized: Invalid API key\"}\n"
    );
    master.set_key(&new);
    let list = master.api().list().await;
    assert_eq!(list[0]["url"], new.as_str());

    for stream in [&mut a, &mut b] {
        let update = stream
            .wait_event("the key record's update", DEADLINE, |e| {
                e.instance_id().as_deref() == Some(KEY_ID)
            })
            .await;
        assert_eq!(update.kind(), "update");
        assert_eq!(update.instance()["url"], new.as_str());
        let shutdown = stream
            .wait_event("shutdown", DEADLINE, |e| e.kind() == "shutdown")
            .await;
        assert_event_frame(&shutdown);
        assert!(shutdown.id > update.id);
        stream.expect_end(DEADLINE).await;
        assert_ids_increase(&stream.history);
    }

    // A new stream with the new key works and shows it.
    let mut c = master.events().await;
    let burst = read_opening(&mut c, 1).await;
    assert_eq!(burst[0].instance()["url"], new.as_str());
}

/// SIGTERM to the master: open streams get `shutdown`, then end; exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_stop_shuts_every_stream() {
    let master = Master::start().await;
    master.api().create_url(&server_url()).await;
    let mut stream = master.events().await;
    read_opening(&mut stream, 2).await;
    master.signal(nix::sys::signal::Signal::SIGTERM);
    let shutdown = stream
        .wait_event("shutdown", DEADLINE, |e| e.kind() == "shutdown")
        .await;
    assert_event_frame(&shutdown);
    stream.expect_end(DEADLINE).await;
    master.stop().await;
}

/// An idle stream gets `: keepalive` comments (every 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_keepalive_comments() {
    let master = Master::start().await;
    let mut stream = master.events().await;
    read_opening(&mut stream, 1).await;
    let quiet_since = Instant::now();
    let frame = stream.next_frame(Duration::from_secs(25)).await;
    let after = quiet_since.elapsed();
    assert_eq!(frame, Some(Frame::Comment("keepalive".into())));
    assert!(
        after >= Duration::from_secs(10),
        "keepalive after only {after:?} of silence"
    );
}

/// A PATCH whose `meta` would make the instance too large for one SSE frame
/// (242 tags of 256 bytes, still under the 64 KiB body limit) is 400 naming
/// the limit and changes nothing; the largest record accepted (meta at the
/// limit, an alias of 256 escaped bytes, a 7,000-byte tunnel key in the URL)
/// goes out whole, in `update` and `initial` frames under 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_is_bounded_so_every_frame_fits() {
    const FRAME_LIMIT: usize = 64 * 1024;
    const MAX_META: usize = 16 * 1024;
    let master = Master::start().await;
    let api = master.api();
    let key = "k".repeat(7000);
    let url = format!("server://{key}@{}/{}?mode=1", free_addr(), free_addr());
    let created = api.create_url(&url).await;
    let id = id_of(&created);
    let path = format!("/instances/{id}");
    let kept = json!({ "keep": "me" });
    api.patch_instance(&id, json!({ "meta": { "tags": kept } }))
        .await;

    let tags: serde_json::Map<String, serde_json::Value> = (0..242)
        .map(|i| (format!("tag{i:05}"), json!("v".repeat(256))))
        .collect();
    let too_big = json!({ "alias": "changed", "meta": { "tags": tags } });
    assert!(
        too_big.to_string().len() < 64 * 1024,
        "under the body limit"
    );
    api.patch(&path, &too_big)
        .await
        .assert_error(400, &format!("Meta exceeds maximum size {MAX_META} bytes"));
    let now = api.instance(&id).await;
    assert_eq!(now["alias"], "", "a refused PATCH applies nothing");
    assert_eq!(now["meta"]["tags"], kept);

    // Tags that bring meta's JSON as close to the limit as they can.
    let empty_peer = json!({ "sid": "", "type": "", "alias": "" });
    let mut tags = serde_json::Map::new();
    loop {
        let mut more = tags.clone();
        more.insert(format!("tag{:05}", more.len()), json!("\"".repeat(100)));
        let meta = json!({ "peer": empty_peer, "tags": more });
        if meta.to_string().len() > MAX_META {
            break;
        }
        tags = more;
    }
    let alias = "\"".repeat(256);
    let mut stream = master.events().await;
    read_opening(&mut stream, 2).await;
    let patched = api
        .patch_instance(&id, json!({ "alias": alias, "meta": { "tags": tags } }))
        .await;
    assert_eq!(patched["meta"]["tags"], json!(tags));
    let update = stream
        .wait_event("update with the largest record", DEADLINE, |e| {
            e.kind() == "update" && e.instance()["alias"] == alias.as_str()
        })
        .await;
    let mut fresh = master.events().await;
    let burst = read_opening(&mut fresh, 2).await;
    let initial = burst
        .iter()
        .find(|e| e.instance_id().as_deref() == Some(id.as_str()))
        .expect("an initial event for the instance");
    for e in [&update, initial] {
        assert_event_frame(e);
        assert!(
            e.raw.len() < FRAME_LIMIT,
            "{} frame of {} bytes",
            e.kind(),
            e.raw.len()
        );
        assert!(e.raw.len() > 30 * 1024, "the record is large");
        let inst = e.instance();
        assert_eq!(inst["meta"]["tags"], json!(tags), "tags sent whole");
        assert_eq!(inst["url"], created["url"], "url sent whole");
    }
}
