//! The SSE hub behind `/events`: event ids, the replay ring, one bounded
//! queue per subscriber, keep-alive, lag handling and shutdown.
//!
//! 1. [`Hub::publish`] serialises an event once into its exact frame
//!    (`id: N\nevent: instance\ndata: {json}\n\n`), appends it to the replay
//!    ring and pushes it into every subscriber's queue, all under one short
//!    lock, so ids, ring order and every queue agree. Nothing in it waits on
//!    a subscriber.
//! 2. [`Hub::subscribe`] registers the subscriber and queues the replay
//!    (`Last-Event-ID`) or the initial burst under that same lock, then
//!    returns the streaming response. Its first chunk is `retry: 3000`.
//! 3. The response body drains the queue, many frames per chunk; after
//!    [`KEEPALIVE`] of silence it writes `: keepalive`.
//! 4. Lag: a subscriber whose queue holds [`SUBSCRIBER_QUEUE`] frames when the
//!    next event comes is marked lagged, its stale frames are dropped, and it
//!    is resynchronised: a fresh `initial` burst from the snapshot source,
//!    then the live stream. A subscriber that lags again more than
//!    [`MAX_RESYNCS`] times within [`RESYNC_WINDOW`], or when no snapshot
//!    source is set, is sent `shutdown` and closed (clients reconnect).
//! 5. [`Hub::shutdown_all`] queues `shutdown` behind each stream's pending
//!    frames, after which the body ends. A stream ends only that way or when
//!    the client goes away (the body is dropped and unregisters itself).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::header;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::time::Sleep;

use crate::model::InstanceView;

mod shrink;

/// Silence after which a stream gets a `: keepalive` comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Every frame is strictly shorter than this; long `logs` are cut to fit.
pub const FRAME_LIMIT: usize = 64 * 1024;
/// Live frames a subscriber may have queued before it counts as lagging.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Bytes the replay ring may hold, whatever its event capacity.
pub const REPLAY_MAX_BYTES: usize = 16 << 20;
/// Resyncs a subscriber may need within [`RESYNC_WINDOW`]; one more lag and
/// it is closed.
pub const MAX_RESYNCS: usize = 3;
/// See [`MAX_RESYNCS`].
pub const RESYNC_WINDOW: Duration = Duration::from_secs(60);

const RETRY_FRAME: &[u8] = b"retry: 3000\n\n";
const KEEPALIVE_FRAME: &[u8] = b": keepalive\n\n";
/// Appended to a `logs` that was cut.
const CUT_MARK: &str = "…";
/// Room kept for `id: <u64>\n` while a frame body is built without its id.
const ID_LINE_MAX: usize = "id: \n".len() + 20;
/// Frames are coalesced into body chunks of about this size.
const CHUNK_TARGET: usize = 64 * 1024;

/// The `type` of an event; lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Initial,
    Create,
    Update,
    Delete,
    Log,
    Shutdown,
}

/// The `data:` line of a frame, keys in NodePass's order.
#[derive(Serialize)]
struct EventData<'a> {
    #[serde(rename = "type")]
    kind: EventKind,
    time: &'a str,
    instance: Option<&'a InstanceView>,
    logs: &'a str,
}

/// Builds the instance list for a resync (the master wires it to its
/// registry, `********` record first).
pub type SnapshotSource = Box<dyn Fn() -> Vec<InstanceView> + Send + Sync>;

/// [`SnapshotSource`] once the hub holds it.
type SharedSource = Arc<dyn Fn() -> Vec<InstanceView> + Send + Sync>;

/// The event hub; one per master, shared as `Arc<Hub>`.
pub struct Hub {
    state: Mutex<State>,
    source: RwLock<Option<SharedSource>>,
    keepalive_ms: AtomicU64,
    replay_capacity: usize,
}

/// Everything publish and subscribe must see atomically.
struct State {
    /// The last id handed out (ring events, bursts and shutdowns share it).
    last_id: u64,
    ring: VecDeque<(u64, Bytes)>,
    ring_bytes: usize,
    /// Highest id dropped from the ring; a resume from below it can't be served.
    evicted_upto: u64,
    subs: Vec<Arc<Sub>>,
    next_key: u64,
}

struct Sub {
    key: u64,
    queue: Mutex<Queue>,
}

/// One subscriber's pending output: `publish` produces, its body consumes.
#[derive(Default)]
struct Queue {
    /// Owed before any live frame: the replay or a burst.
    prefix: VecDeque<Bytes>,
    /// Live frames, at most [`SUBSCRIBER_QUEUE`].
    live: VecDeque<Bytes>,
    /// A burst must be built before anything else is sent; `publish` skips
    /// the subscriber meanwhile (the burst will cover those events).
    resync: Option<Resync>,
    /// `shutdown` is the last frame queued; the body ends after it.
    closing: bool,
    waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resync {
    /// First burst of [`Hub::subscribe_with_source`].
    Initial,
    /// The queue overflowed.
    Lagged,
}

impl Hub {
    /// A hub whose replay ring keeps the last `replay_capacity` events (and at
    /// most [`REPLAY_MAX_BYTES`]). Ids start at 1.
    pub fn new(replay_capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State {
                last_id: 0,
                ring: VecDeque::with_capacity(replay_capacity.min(4096)),
                ring_bytes: 0,
                evicted_upto: 0,
                subs: Vec::new(),
                next_key: 0,
            }),
            source: RwLock::new(None),
            keepalive_ms: AtomicU64::new(KEEPALIVE.as_millis() as u64),
            replay_capacity,
        })
    }

    /// Sets the keep-alive interval (default [`KEEPALIVE`]) for streams opened
    /// from now on.
    pub fn with_keepalive(self: Arc<Self>, every: Duration) -> Arc<Self> {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.keepalive_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// Starts ids at `first` instead of 1, if nothing was published yet.
    /// Seeding it from the clock (e.g. Unix ms × 1000) makes a `Last-Event-ID`
    /// left over from an earlier master run fall below this run's ring, so
    /// that client gets a fresh burst instead of an unrelated replay.
    pub fn with_first_id(self: Arc<Self>, first: u64) -> Arc<Self> {
        {
            let mut st = lock(&self.state);
            if st.last_id == 0 && first > 1 {
                st.last_id = first - 1;
                st.evicted_upto = first - 1;
            }
        }
        self
    }

    /// Where resyncs (and [`Hub::subscribe_with_source`]) get the current
    /// instances. Called with no hub lock held, so it may take the registry's
    /// lock even if the registry publishes while holding it.
    pub fn set_snapshot_source(&self, source: SnapshotSource) {
        *self.source.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::from(source));
    }

    /// Open streams (for metrics).
    pub fn subscribers(&self) -> usize {
        lock(&self.state).subs.len()
    }

    /// Publishes one event to the ring and every subscriber; returns its id.
    /// Never blocks on a subscriber. `Shutdown` is [`Hub::shutdown_all`]
    /// (a shutdown is never replayed, so it never enters the ring).
    ///
    /// Resyncs rely on the caller applying a change to its registry before
    /// publishing it, so a snapshot taken after an event was published
    /// reflects it.
    pub fn publish(&self, kind: EventKind, instance: Option<&InstanceView>, logs: &str) -> u64 {
        if kind == EventKind::Shutdown {
            return self.shutdown_all_id();
        }
        let body = frame_body(kind, instance, logs, &now_rfc3339());
        let mut st = lock(&self.state);
        let id = st.alloc();
        let frame = stamp(id, &body);
        st.remember(id, frame.clone(), self.replay_capacity);
        for sub in &st.subs {
            lock(&sub.queue).offer(&frame);
        }
        id
    }

    /// Sends `shutdown` (instance null) to every open stream after what it
    /// already has queued, then ends them; used on API-key regeneration and
    /// master stop. New subscriptions are still accepted afterwards.
    pub fn shutdown_all(&self) {
        self.shutdown_all_id();
    }

    fn shutdown_all_id(&self) -> u64 {
        let body = frame_body(EventKind::Shutdown, None, "", &now_rfc3339());
        let mut st = lock(&self.state);
        let id = st.alloc();
        let frame = stamp(id, &body);
        for sub in std::mem::take(&mut st.subs) {
            lock(&sub.queue).close_with(&frame, false);
        }
        tracing::debug!(id, "sse streams shut down");
        id
    }

    /// The `/events` response. Body: `retry: 3000`, then either the events
    /// after `last_event_id` if the ring still holds all of them, or one
    /// `initial` event (fresh id) per `snapshot` entry in its order, then
    /// live events.
    ///
    /// Ordering: registration and the burst's ids happen under the lock that
    /// `publish` takes, so every event published after this call reaches the
    /// stream after the burst, with larger ids. The caller must make sure no
    /// event is published between taking `snapshot` and this call (take both
    /// under the lock its registry publishes under), or use
    /// [`Hub::subscribe_with_source`], which needs no such care.
    pub fn subscribe(
        self: &Arc<Self>,
        last_event_id: Option<u64>,
        snapshot: Vec<InstanceView>,
    ) -> HttpResponse {
        sse_response(self.open(last_event_id, Some(snapshot)))
    }

    /// Like [`Hub::subscribe`], but the first burst comes from the snapshot
    /// source, taken after registration as a resync is: an event published
    /// around that moment may appear both in the burst and after it (never
    /// neither). Without a snapshot source the stream gets `shutdown`.
    pub fn subscribe_with_source(self: &Arc<Self>, last_event_id: Option<u64>) -> HttpResponse {
        sse_response(self.open(last_event_id, None))
    }

    fn open(
        self: &Arc<Self>,
        last_event_id: Option<u64>,
        snapshot: Option<Vec<InstanceView>>,
    ) -> EventStream {
        if let Some(last) = last_event_id {
            let mut st = lock(&self.state);
            if let Some(prefix) = st.replay_after(last) {
                tracing::debug!(last, replayed = prefix.len(), "sse subscriber resumes");
                let sub = st.register(Queue {
                    prefix,
                    ..Queue::default()
                });
                return EventStream::new(self.clone(), sub);
            }
        }
        let sub = match snapshot {
            Some(snapshot) => {
                let time = now_rfc3339();
                let bodies: Vec<Bytes> = snapshot
                    .iter()
                    .map(|view| frame_body(EventKind::Initial, Some(view), "", &time))
                    .collect();
                let mut st = lock(&self.state);
                let prefix = bodies.iter().map(|body| stamp(st.alloc(), body)).collect();
                st.register(Queue {
                    prefix,
                    ..Queue::default()
                })
            }
            None => lock(&self.state).register(Queue {
                resync: Some(Resync::Initial),
                ..Queue::default()
            }),
        };
        tracing::debug!(key = sub.key, "sse subscriber joins");
        EventStream::new(self.clone(), sub)
    }

    fn source(&self) -> Option<SharedSource> {
        self.source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends one subscriber `shutdown` now, dropping what it had queued.
    fn close_one(&self, sub: &Sub) {
        let body = frame_body(EventKind::Shutdown, None, "", &now_rfc3339());
        let mut st = lock(&self.state);
        let frame = stamp(st.alloc(), &body);
        st.subs.retain(|s| s.key != sub.key);
        lock(&sub.queue).close_with(&frame, true);
    }

    fn unregister(&self, key: u64) {
        lock(&self.state).subs.retain(|s| s.key != key);
    }
}

impl State {
    fn alloc(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn remember(&mut self, id: u64, frame: Bytes, capacity: usize) {
        self.ring_bytes += frame.len();
        self.ring.push_back((id, frame));
        while self.ring.len() > capacity || self.ring_bytes > REPLAY_MAX_BYTES {
            let Some((old, frame)) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= frame.len();
            self.evicted_upto = old;
        }
    }

    /// The ring's events after `last`, if it still holds every one of them.
    /// `0` and ids this run never issued mean "no usable position".
    fn replay_after(&self, last: u64) -> Option<VecDeque<Bytes>> {
        if last == 0 || last > self.last_id || last < self.evicted_upto {
            return None;
        }
        let start = self.ring.partition_point(|(id, _)| *id <= last);
        Some(
            self.ring
                .range(start..)
                .map(|(_, frame)| frame.clone())
                .collect(),
        )
    }

    fn register(&mut self, queue: Queue) -> Arc<Sub> {
        self.next_key += 1;
        let sub = Arc::new(Sub {
            key: self.next_key,
            queue: Mutex::new(queue),
        });
        self.subs.push(sub.clone());
        sub
    }
}

impl Queue {
    /// `publish`'s side: queue a live frame, or mark the subscriber lagged.
    fn offer(&mut self, frame: &Bytes) {
        if self.closing || self.resync.is_some() {
            return;
        }
        if self.live.len() >= SUBSCRIBER_QUEUE {
            self.live.clear();
            self.prefix.clear();
            self.resync = Some(Resync::Lagged);
        } else {
            self.live.push_back(frame.clone());
        }
        self.wake();
    }

    /// Queues `shutdown` as the last frame; `now` drops what was pending.
    fn close_with(&mut self, frame: &Bytes, now: bool) {
        if now || self.resync.is_some() {
            self.prefix.clear();
            self.live.clear();
            self.resync = None;
        }
        self.live.push_back(frame.clone());
        self.closing = true;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The body's side: what to do next.
    fn next_step(&mut self, waker: &Waker) -> Step {
        if !self.closing
            && let Some(reason) = self.resync.take()
        {
            self.prefix.clear();
            self.live.clear();
            return Step::Resync(reason);
        }
        let Some(first) = self.pop() else {
            if self.closing {
                return Step::End;
            }
            if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                self.waker = Some(waker.clone());
            }
            return Step::Idle;
        };
        let next_len = self.prefix.front().or(self.live.front()).map(Bytes::len);
        match next_len {
            Some(n) if first.len() + n <= CHUNK_TARGET => {
                let mut chunk = BytesMut::with_capacity(CHUNK_TARGET);
                chunk.extend_from_slice(&first);
                while let Some(next) = self.prefix.front().or(self.live.front()) {
                    if chunk.len() + next.len() > CHUNK_TARGET {
                        break;
                    }
                    chunk.extend_from_slice(next);
                    self.pop();
                }
                Step::Data(chunk.freeze())
            }
            _ => Step::Data(first),
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.prefix.pop_front().or_else(|| self.live.pop_front())
    }
}

enum Step {
    Data(Bytes),
    Resync(Resync),
    Idle,
    End,
}

/// The response body of one subscriber. Dropping it (client gone, stream
/// ended) unregisters the subscriber.
struct EventStream {
    hub: Arc<Hub>,
    sub: Arc<Sub>,
    keepalive: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    sent_retry: bool,
    done: bool,
    /// When recent lag resyncs happened, for the [`MAX_RESYNCS`] policy.
    resyncs: VecDeque<Instant>,
}

impl EventStream {
    fn new(hub: Arc<Hub>, sub: Arc<Sub>) -> Self {
        let keepalive = Duration::from_millis(hub.keepalive_ms.load(Ordering::Relaxed));
        Self {
            hub,
            sub,
            keepalive,
            idle: None,
            sent_retry: false,
            done: false,
            resyncs: VecDeque::new(),
        }
    }

    /// Restart the keep-alive countdown: something was just written.
    fn touch(&mut self) {
        if let Some(sleep) = &mut self.idle {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.keepalive);
        }
    }

    /// Replace whatever the subscriber missed with a fresh burst.
    ///
    /// The queue was emptied and re-armed (under its lock) before this runs,
    /// so events published from then on are queued; the snapshot is taken
    /// after that, so it reflects every event the subscriber did not get.
    /// The burst then gets fresh ids under the hub lock, and the events queued
    /// meanwhile are re-stamped after it: the stream's ids keep increasing
    /// and a later `Last-Event-ID` resume stays exact.
    fn resync(&mut self, reason: Resync) {
        if reason == Resync::Lagged {
            let now = Instant::now();
            while self
                .resyncs
                .front()
                .is_some_and(|t| now.duration_since(*t) > RESYNC_WINDOW)
            {
                self.resyncs.pop_front();
            }
            if self.resyncs.len() >= MAX_RESYNCS {
                tracing::warn!(
                    key = self.sub.key,
                    "sse subscriber keeps lagging; closing it"
                );
                self.hub.close_one(&self.sub);
                return;
            }
            self.resyncs.push_back(now);
            tracing::warn!(key = self.sub.key, "sse subscriber lagged; resynchronising");
        }
        let Some(source) = self.hub.source() else {
            tracing::warn!(
                key = self.sub.key,
                "sse resync without a snapshot source; closing"
            );
            self.hub.close_one(&self.sub);
            return;
        };
        let snapshot = source();
        let time = now_rfc3339();
        let bodies: Vec<Bytes> = snapshot
            .iter()
            .map(|view| frame_body(EventKind::Initial, Some(view), "", &time))
            .collect();
        let mut st = lock(&self.hub.state);
        let mut queue = lock(&self.sub.queue);
        if queue.closing || queue.resync.is_some() {
            // Shut down, or lagged again meanwhile: the poll loop goes on.
            return;
        }
        let queued = std::mem::take(&mut queue.live);
        for body in &bodies {
            let id = st.alloc();
            queue.prefix.push_back(stamp(id, body));
        }
        for frame in queued {
            let id = st.alloc();
            queue.prefix.push_back(restamp(id, &frame));
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.sent_retry {
            this.sent_retry = true;
            return Poll::Ready(Some(Ok(Bytes::from_static(RETRY_FRAME))));
        }
        loop {
            let step = lock(&this.sub.queue).next_step(cx.waker());
            match step {
                Step::Data(chunk) => {
                    this.touch();
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Step::Resync(reason) => this.resync(reason),
                Step::End => {
                    this.done = true;
                    this.hub.unregister(this.sub.key);
                    return Poll::Ready(None);
                }
                Step::Idle => {
                    let keepalive = this.keepalive;
                    let sleep = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(keepalive)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.touch();
                    return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE_FRAME))));
                }
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.hub.unregister(self.sub.key);
        tracing::debug!(key = self.sub.key, "sse subscriber leaves");
    }
}

/// The `Last-Event-ID` request header as an event id (`None` when absent or
/// not a number).
pub fn last_event_id(headers: &header::HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn sse_response(stream: EventStream) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Dropped by actix on HTTP/1.1 (keep-alive is the default there).
        .insert_header((header::CONNECTION, "keep-alive"))
        // Tells nginx not to buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `event: instance\ndata: {…}\n\n`: a frame without its id line, small
/// enough that the whole frame stays under [`FRAME_LIMIT`]: `logs` is cut on
/// a char boundary and marked with `…` when needed, and an instance too large
/// for a frame of its own has its long strings cut ([`shrink`]).
fn frame_body(kind: EventKind, instance: Option<&InstanceView>, logs: &str, time: &str) -> Bytes {
    let encode = |instance: Option<&InstanceView>, logs: &str| {
        let mut out = Vec::with_capacity(512 + logs.len());
        out.extend_from_slice(b"event: instance\ndata: ");
        let data = EventData {
            kind,
            time,
            instance,
            logs,
        };
        serde_json::to_writer(&mut out, &data).expect("event data always serialises to JSON");
        out.extend_from_slice(b"\n\n");
        out
    };
    let fits = |len: usize| len + ID_LINE_MAX < FRAME_LIMIT;
    let full = encode(instance, logs);
    if fits(full.len()) {
        return full.into();
    }
    let mut bare = encode(instance, "").len();
    let shrunk;
    let mut instance = instance;
    if !fits(bare + json_str_len(CUT_MARK)) {
        tracing::warn!(
            bytes = bare,
            "sse: an instance too large for one frame is sent with its long fields cut"
        );
        shrunk = instance.map(shrink::shrink);
        instance = shrunk.as_ref();
        bare = encode(instance, "").len();
    }
    let mut logs = logs.to_owned();
    shrink::cut(
        &mut logs,
        (FRAME_LIMIT - 1 - ID_LINE_MAX).saturating_sub(bare),
    );
    encode(instance, &logs).into()
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn json_str_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

fn stamp(id: u64, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(ID_LINE_MAX + body.len());
    frame.extend_from_slice(format!("id: {id}\n").as_bytes());
    frame.extend_from_slice(body);
    frame.freeze()
}

/// The same frame under a new id.
fn restamp(id: u64, frame: &Bytes) -> Bytes {
    let body_at = frame.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    stamp(id, &frame[body_at..])
}

fn now_rfc3339() -> String {
    proto::clock::now()
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::thread;

    use actix_web::{App, HttpRequest, HttpServer, web};
    use futures_util::{FutureExt, StreamExt};
    use serde_json::Value;

    use super::*;
    use crate::model::{MasterRecord, Meta, WorkerView};

    const WAIT: Duration = Duration::from_secs(10);

    fn view(id: &str) -> InstanceView {
        InstanceView {
            id: id.into(),
            alias: format!("alias-{id}"),
            kind: "server".into(),
            status: "running".into(),
            url: "server://:10101/127.0.0.1:8080?log=info".into(),
            config: "server://:10101/127.0.0.1:8080?log=info&mode=0".into(),
            restart: true,
            meta: Meta::default(),
            mode: 1,
            ping: 3,
            pool: 64,
            tcps: 0,
            udps: 0,
            tcprx: 1,
            tcptx: 2,
            udprx: 0,
            udptx: 0,
            tenant: "default".into(),
            worker: Some(WorkerView {
                state: "ready".into(),
                pid: Some(4242),
                entry: Some("127.0.0.1:40000".into()),
                restarts: 0,
                since: "2026-11-24T10:00:00.000+00:00".into(),
                last_exit: None,
            }),
        }
    }

    fn key_view() -> InstanceView {
        InstanceView::key_record(&MasterRecord {
            v: 1,
            api_key: "0123456789abcdef0123456789abcdef".into(),
            master_id: "0123456789abcdef".into(),
            alias: String::new(),
        })
    }

    /// One SSE block as read off the wire; `end` marks the final chunk.
    #[derive(Debug, Default)]
    struct Frame {
        raw: String,
        id: Option<u64>,
        event: Option<String>,
        data: Option<String>,
        retry: Option<String>,
        comment: Option<String>,
        end: bool,
    }

    impl Frame {
        fn parse(raw: &[u8]) -> Frame {
            let raw = String::from_utf8(raw.to_vec()).expect("frames are UTF-8");
            let mut frame = Frame::default();
            for line in raw.trim_end_matches('\n').split('\n') {
                if let Some(v) = line.strip_prefix("id: ") {
                    frame.id = Some(v.parse().expect("numeric id"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    frame.event = Some(v.into());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(frame.data.is_none(), "one data line per frame: {raw:?}");
                    frame.data = Some(v.into());
                } else if let Some(v) = line.strip_prefix("retry: ") {
                    frame.retry = Some(v.into());
                } else if let Some(v) = line.strip_prefix(": ") {
                    frame.comment = Some(v.into());
                } else {
                    panic!("unexpected line {line:?} in {raw:?}");
                }
            }
            frame.raw = raw;
            frame
        }

        fn json(&self) -> Value {
            serde_json::from_str(self.data.as_deref().expect("an event frame")).expect("JSON data")
        }

        fn kind(&self) -> String {
            self.json()["type"].as_str().expect("type").to_owned()
        }
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(at) = find(rest, b"\n\n") {
            out.push(Frame::parse(&rest[..at + 2]));
            rest = &rest[at + 2..];
        }
        assert!(rest.is_empty(), "trailing partial frame {rest:?}");
        out
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// A byte-exact HTTP/1.1 client: raw TCP, chunked decoding by hand.
    struct Client {
        sock: TcpStream,
        head: String,
        raw: Vec<u8>,
        body: Vec<u8>,
        ended: bool,
        eof: bool,
    }

    impl Client {
        fn connect(addr: SocketAddr, path: &str, last: Option<u64>) -> Client {
            let mut sock = TcpStream::connect(addr).expect("connect");
            let mut req =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
            if let Some(id) = last {
                req.push_str(&format!("Last-Event-ID: {id}\r\n"));
            }
            req.push_str("\r\n");
            sock.write_all(req.as_bytes()).expect("send request");
            let mut client = Client {
                sock,
                head: String::new(),
                raw: Vec::new(),
                body: Vec::new(),
                ended: false,
                eof: false,
            };
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(at) = find(&client.raw, b"\r\n\r\n") {
                    client.head = String::from_utf8(client.raw[..at].to_vec()).expect("head");
                    client.raw.drain(..at + 4);
                    break;
                }
                assert!(client.read(deadline), "no response head");
            }
            assert!(
                client.head.starts_with("HTTP/1.1 200 OK"),
                "{}",
                client.head
            );
            assert!(
                client
                    .head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "{}",
                client.head
            );
            client.decode();
            client
        }

        /// Reads more; false on timeout or EOF.
        fn read(&mut self, deadline: Instant) -> bool {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof {
                return false;
            }
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = [0u8; 64 * 1024];
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    false
                }
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    true
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
                Err(e) => panic!("read: {e}"),
            }
        }

        fn decode(&mut self) {
            let mut at = 0;
            while !self.ended {
                let Some(nl) = find(&self.raw[at..], b"\r\n") else {
                    break;
                };
                let size = std::str::from_utf8(&self.raw[at..at + nl]).expect("chunk size");
                let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
                let start = at + nl + 2;
                if self.raw.len() < start + size + 2 {
                    break;
                }
                assert_eq!(&self.raw[start + size..start + size + 2], b"\r\n");
                self.body.extend_from_slice(&self.raw[start..start + size]);
                at = start + size + 2;
                self.ended = size == 0;
            }
            self.raw.drain(..at);
        }

        fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(at) = find(&self.body, b"\n\n") {
                    let raw: Vec<u8> = self.body.drain(..at + 2).collect();
                    return Some(Frame::parse(&raw));
                }
                if self.ended {
                    assert!(self.body.is_empty(), "partial frame before the end");
                    return Some(Frame {
                        end: true,
                        ..Frame::default()
                    });
                }
                assert!(!self.eof, "connection closed without the final chunk");
                if self.read(deadline) {
                    self.decode();
                } else if !self.eof {
                    return None;
                }
            }
        }

        fn next(&mut self) -> Frame {
            self.next_within(WAIT).expect("a frame in time")
        }
    }

    struct TestApp {
        hub: Arc<Hub>,
        snapshot: Vec<InstanceView>,
    }

    async fn events(req: HttpRequest, app: web::Data<TestApp>) -> HttpResponse {
        app.hub
            .subscribe(last_event_id(req.headers()), app.snapshot.clone())
    }

    /// An in-process actix server with `/events`, on its own thread.
    struct Server {
        addr: SocketAddr,
        handle: actix_web::dev::ServerHandle,
    }

    impl Server {
        fn start(hub: Arc<Hub>, snapshot: Vec<InstanceView>) -> Server {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let app = web::Data::new(TestApp { hub, snapshot });
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(app.clone())
                            .route("/events", web::get().to(events))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0))
                    .expect("bind");
                    let addr = server.addrs()[0];
                    let server = server.run();
                    tx.send((addr, server.handle())).expect("report address");
                    let _ = server.await;
                })
            });
            let (addr, handle) = rx.recv().expect("server started");
            Server { addr, handle }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            actix_web::rt::System::new().block_on(self.handle.stop(false));
        }
    }

    fn wait_until(what: &str, probe: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !probe() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn ring_frame(hub: &Hub, id: u64) -> String {
        let st = lock(&hub.state);
        let (_, frame) = st.ring.iter().find(|(i, _)| *i == id).expect("in the ring");
        String::from_utf8(frame.to_vec()).expect("UTF-8")
    }

    /// Polls a body without blocking: what it has now, and whether it ended.
    fn drain(stream: &mut EventStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match stream.next().now_or_never() {
                Some(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
                Some(None) => return (out, true),
                None => return (out, false),
            }
        }
    }

    /// A frame is `id`, `event: instance` and one compact data line with
    /// `type,time,instance,logs` in that order; ids count from 1.
    #[test]
    fn frame_bytes_are_exact() {
        let hub = Hub::new(8);
        let v = view("a1b2c3d4");
        assert_eq!(hub.publish(EventKind::Update, Some(&v), ""), 1);
        assert_eq!(
            hub.publish(EventKind::Log, Some(&v), "line \u{1b}[32mINFO"),
            2
        );
        let frame = ring_frame(&hub, 1);
        let data = frame.split('\n').nth(2).expect("data line");
        let time: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data"))
            .map(|j: Value| j["time"].clone())
            .expect("JSON");
        let time = time.as_str().expect("time string");
        assert_eq!(time.len(), "2026-11-24T10:00:00.123+00:00".len(), "{time}");
        assert!(
            time.ends_with("+00:00") && time.as_bytes()[19] == b'.',
            "{time}"
        );
        let instance = serde_json::to_string(&v).expect("view JSON");
        assert_eq!(
            frame,
            format!(
                "id: 1\nevent: instance\ndata: {{\"type\":\"update\",\"time\":\"{time}\",\"instance\":{instance},\"logs\":\"\"}}\n\n"
            )
        );
        assert!(ring_frame(&hub, 2).contains(r#","logs":"line \u001b[32mINFO"}"#));
        assert_eq!(hub.publish(EventKind::Shutdown, None, ""), 3);
        assert_eq!(lock(&hub.state).ring.len(), 2, "shutdown is never replayed");
    }

    /// `Last-Event-ID` parsing tolerates spaces and rejects junk.
    #[test]
    fn last_event_id_header() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(last_event_id(&headers), None);
        headers.insert(
            header::HeaderName::from_static("last-event-id"),
            header::HeaderValue::from_static(" 42 "),
        );
        assert_eq!(last_event_id(&headers), Some(42));
        headers.insert(
            header::HeaderName::from_static("last-event-id"),
            header::HeaderValue::from_static("x"),
        );
        assert_eq!(last_event_id(&headers), None);
    }

    /// A 1 MiB log line (escapes and multi-byte chars) is cut on a char
    /// boundary so the frame stays under 64 KiB; short lines are untouched.
    #[test]
    fn long_logs_are_cut_below_the_frame_limit() {
        let line: String = "\u{1b}[32mINFO\u{1b}[0m é中\"\\\t"
            .chars()
            .cycle()
            .take(1 << 20)
            .collect();
        let v = view("a1b2c3d4");
        let body = frame_body(
            EventKind::Log,
            Some(&v),
            &line,
            "2026-11-24T10:00:00.000+00:00",
        );
        let frame = stamp(u64::MAX, &body);
        assert!(frame.len() < FRAME_LIMIT, "{}", frame.len());
        assert!(
            frame.len() > FRAME_LIMIT - 64,
            "cut no more than needed: {}",
            frame.len()
        );
        let parsed = frames(&frame);
        let logs = parsed[0].json()["logs"].as_str().expect("logs").to_owned();
        let kept = logs.strip_suffix(CUT_MARK).expect("cut mark");
        assert!(line.starts_with(kept));
        let short = frame_body(EventKind::Log, Some(&v), "short", "t");
        assert!(frames(&stamp(1, &short))[0].json()["logs"] == "short");
    }

    /// The largest record the API accepts, every string at its worst JSON
    /// escaping (URL and config 8192+ bytes of `"`, alias 256 control chars,
    /// meta at `MAX_META`), fits in one frame as it is: nothing is cut.
    #[test]
    fn a_maximal_record_fits_whole() {
        use crate::model::{MAX_FIELD, MAX_META};
        let mut v = view("a1b2c3d4");
        v.url = "\"".repeat(8192);
        v.config = "\"".repeat(8192 + 512);
        v.alias = "\u{1}".repeat(MAX_FIELD);
        v.tenant = "t".repeat(32);
        v.meta.peer.sid = "\u{1}".repeat(MAX_FIELD);
        for i in 0.. {
            let mut more = v.meta.clone();
            more.tags.insert(format!("{i:08}"), "\u{1}".repeat(40));
            if more.json_len() > MAX_META {
                break;
            }
            v.meta = more;
        }
        assert!(v.meta.json_len() > MAX_META - 300, "{}", v.meta.json_len());
        let w = v.worker.as_mut().expect("worker");
        w.entry = Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into());
        w.last_exit = Some(format!("signal 9 (SIGKILL): {}", "x".repeat(512)));
        for kind in [EventKind::Initial, EventKind::Update, EventKind::Log] {
            let frame = stamp(u64::MAX, &frame_body(kind, Some(&v), "", "t"));
            assert!(frame.len() < FRAME_LIMIT, "{}", frame.len());
            let sent: InstanceView =
                serde_json::from_value(frames(&frame)[0].json()["instance"].clone())
                    .expect("instance");
            assert_eq!(sent, v, "nothing cut");
        }
    }

    /// An instance whose JSON alone exceeds a frame (what a worker reports is
    /// not bounded by the API) is sent with long strings and surplus tags
    /// cut, every key still there, and still with room for a `logs` line.
    #[test]
    fn an_oversized_instance_is_cut_to_fit() {
        let huge = "\u{1}é\"".repeat(40_000);
        let mut v = view("a1b2c3d4");
        v.url = huge.clone();
        v.config = huge.clone();
        v.alias = huge.clone();
        v.meta.peer.alias = huge.clone();
        for i in 0..5_000 {
            v.meta.tags.insert(format!("k{i}"), "\u{1}".repeat(30));
        }
        v.meta.tags.insert("a".into(), huge.clone());
        let w = v.worker.as_mut().expect("worker");
        w.entry = Some(huge.clone());
        w.last_exit = Some(huge.clone());
        for logs in ["", "a line", huge.as_str()] {
            let frame = stamp(u64::MAX, &frame_body(EventKind::Log, Some(&v), logs, "t"));
            assert!(frame.len() < FRAME_LIMIT, "{}", frame.len());
            let data = frames(&frame)[0].json();
            let sent: InstanceView =
                serde_json::from_value(data["instance"].clone()).expect("every key present");
            assert_eq!(sent.id, v.id);
            assert!(
                sent.url.ends_with(CUT_MARK)
                    && huge.starts_with(sent.url.trim_end_matches(CUT_MARK))
            );
            assert!(!sent.meta.tags.is_empty() && !sent.meta.tags.contains_key("a"));
            assert!(
                sent.meta
                    .tags
                    .iter()
                    .all(|(k, val)| v.meta.tags.get(k) == Some(val))
            );
            if logs == "a line" {
                assert_eq!(data["logs"], "a line", "a short line is kept whole");
            }
        }
    }

    /// First bytes are `retry: 3000`, then one `initial` per snapshot entry in
    /// order with ids 1.., then live events in order with growing ids.
    #[test]
    fn stream_opens_with_retry_then_burst_then_live() {
        let hub = Hub::new(64);
        let snapshot = vec![key_view(), view("a1a1a1a1"), view("b2b2b2b2")];
        let server = Server::start(hub.clone(), snapshot.clone());
        let started = Instant::now();
        let mut c = Client::connect(server.addr, "/events", None);
        let head = c.head.to_ascii_lowercase();
        assert!(
            head.contains("content-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("cache-control: no-cache\r\n"), "{head}");
        let first = c.next();
        let elapsed = started.elapsed();
        assert_eq!(first.raw, "retry: 3000\n\n");
        assert!(
            elapsed < Duration::from_secs(1),
            "first bytes after {elapsed:?}"
        );
        for (n, want) in snapshot.iter().enumerate() {
            let f = c.next();
            assert_eq!(f.id, Some(n as u64 + 1));
            assert_eq!(f.event.as_deref(), Some("instance"));
            let j = f.json();
            assert_eq!(j["type"], "initial");
            assert_eq!(j["logs"], "");
            assert_eq!(j["instance"], serde_json::to_value(want).expect("view"));
        }
        assert_eq!(hub.subscribers(), 1);
        let a = view("a1a1a1a1");
        let ids: Vec<u64> = (0..3)
            .map(|n| hub.publish(EventKind::Update, Some(&a), &n.to_string()))
            .collect();
        assert_eq!(ids, [4, 5, 6]);
        for id in ids {
            let f = c.next();
            assert_eq!(f.id, Some(id));
            assert_eq!(f.raw, ring_frame(&hub, id));
        }
        assert!(c.next_within(Duration::from_millis(100)).is_none());
    }

    /// A resume replays exactly the events after `Last-Event-ID`, then live.
    #[test]
    fn resume_replays_exactly_the_missed_events() {
        let hub = Hub::new(100);
        let a = view("a1a1a1a1");
        for n in 1..=10 {
            assert_eq!(hub.publish(EventKind::Update, Some(&a), ""), n);
        }
        let server = Server::start(hub.clone(), vec![key_view()]);
        let mut c = Client::connect(server.addr, "/events", Some(5));
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        for id in 6..=10 {
            assert_eq!(c.next().raw, ring_frame(&hub, id));
        }
        assert!(c.next_within(Duration::from_millis(100)).is_none());
        assert_eq!(hub.publish(EventKind::Delete, Some(&a), ""), 11);
        let f = c.next();
        assert_eq!((f.id, f.kind()), (Some(11), "delete".to_owned()));
    }

    /// A resume the ring can't serve (too old, 0, or an id never issued)
    /// gets a fresh initial burst with fresh ids; the oldest servable id
    /// still replays.
    #[test]
    fn resume_beyond_the_ring_gets_a_fresh_burst() {
        let hub = Hub::new(4);
        let a = view("a1a1a1a1");
        for _ in 0..10 {
            hub.publish(EventKind::Update, Some(&a), "");
        }
        let snapshot = vec![key_view(), a.clone()];
        let server = Server::start(hub.clone(), snapshot);
        let mut next_id = 11;
        for last in [Some(2), Some(5), Some(0), Some(999), None] {
            let mut c = Client::connect(server.addr, "/events", last);
            assert_eq!(c.next().raw, "retry: 3000\n\n");
            for want in ["", "a1a1a1a1"] {
                let f = c.next();
                assert_eq!(f.id, Some(next_id), "resume from {last:?}");
                assert_eq!(f.kind(), "initial");
                assert_eq!(
                    f.json()["instance"]["id"],
                    if want.is_empty() { "********" } else { want }
                );
                next_id += 1;
            }
        }
        let mut c = Client::connect(server.addr, "/events", Some(6));
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        for id in 7..=10 {
            assert_eq!(c.next().raw, ring_frame(&hub, id));
        }
    }

    /// A silent stream gets `: keepalive` comments at the configured interval.
    #[test]
    fn idle_streams_get_keepalive_comments() {
        let hub = Hub::new(8).with_keepalive(Duration::from_millis(150));
        let server = Server::start(hub.clone(), vec![key_view()]);
        let mut c = Client::connect(server.addr, "/events", None);
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        assert_eq!(c.next().kind(), "initial");
        let started = Instant::now();
        let f = c.next_within(Duration::from_secs(2)).expect("keepalive");
        assert_eq!(f.raw, ": keepalive\n\n");
        assert!(started.elapsed() >= Duration::from_millis(100));
        hub.publish(EventKind::Update, Some(&view("a1a1a1a1")), "");
        assert_eq!(c.next().kind(), "update");
        assert_eq!(c.next().raw, ": keepalive\n\n");
    }

    /// `shutdown_all` delivers what was queued, then `shutdown` (instance
    /// null), then ends every body; new subscribers are served afterwards.
    #[test]
    fn shutdown_all_sends_shutdown_then_ends_the_streams() {
        let hub = Hub::new(8);
        let server = Server::start(hub.clone(), vec![key_view()]);
        let mut clients: Vec<Client> = (0..2)
            .map(|_| Client::connect(server.addr, "/events", None))
            .collect();
        wait_until("both subscribed", || hub.subscribers() == 2);
        let update = hub.publish(EventKind::Update, Some(&key_view()), "");
        hub.shutdown_all();
        assert_eq!(hub.subscribers(), 0);
        for c in &mut clients {
            assert_eq!(c.next().raw, "retry: 3000\n\n");
            assert_eq!(c.next().kind(), "initial");
            assert_eq!(c.next().id, Some(update));
            let f = c.next();
            let j = f.json();
            assert_eq!(j["type"], "shutdown");
            assert!(j["instance"].is_null());
            assert_eq!(j["logs"], "");
            assert!(f.id > Some(update));
            assert!(c.next().end, "the body ends after shutdown");
        }
        let mut c = Client::connect(server.addr, "/events", None);
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        assert_eq!(c.next().kind(), "initial");
    }

    /// A client that goes away is unregistered.
    #[test]
    fn disconnected_clients_are_removed() {
        let hub = Hub::new(8);
        let server = Server::start(hub.clone(), vec![key_view()]);
        let mut c = Client::connect(server.addr, "/events", None);
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        assert_eq!(hub.subscribers(), 1);
        drop(c);
        let deadline = Instant::now() + WAIT;
        while hub.subscribers() > 0 {
            assert!(Instant::now() < deadline, "subscriber not removed");
            hub.publish(EventKind::Update, Some(&key_view()), "");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Over the wire too, a 1 MiB log line arrives as one frame < 64 KiB.
    #[test]
    fn frames_on_the_wire_stay_under_64k() {
        let hub = Hub::new(8);
        let server = Server::start(hub.clone(), vec![key_view()]);
        let mut c = Client::connect(server.addr, "/events", None);
        assert_eq!(c.next().raw, "retry: 3000\n\n");
        assert_eq!(c.next().kind(), "initial");
        let line = "x\u{e9}".repeat(1 << 19);
        hub.publish(EventKind::Log, Some(&view("a1a1a1a1")), &line);
        let f = c.next();
        assert!(f.raw.len() < FRAME_LIMIT, "{}", f.raw.len());
        let logs = f.json()["logs"].as_str().expect("logs").to_owned();
        assert!(line.starts_with(logs.strip_suffix(CUT_MARK).expect("cut")));
    }

    /// A subscriber that never reads does not slow `publish` nor the others:
    /// a reader sees all 100,000 events in order (or a resync burst where
    /// it missed some), and the stuck one is marked lagged, not waited for.
    #[test]
    fn a_stuck_subscriber_never_blocks_the_others() {
        const EVENTS: u64 = 100_000;
        let hub = Hub::new(1024);
        let a = view("a1a1a1a1");
        let snapshot = vec![key_view(), a.clone()];
        let source = snapshot.clone();
        hub.set_snapshot_source(Box::new(move || source.clone()));
        let server = Server::start(hub.clone(), snapshot);
        let mut stuck = TcpStream::connect(server.addr).expect("connect");
        stuck
            .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        wait_until("the stuck one subscribed", || hub.subscribers() == 1);

        let seen = Arc::new(AtomicU64::new(0));
        let addr = server.addr;
        let reader = {
            let seen = seen.clone();
            thread::spawn(move || {
                // Log indices in arrival order; `None` marks an initial frame.
                let mut got: Vec<Option<u64>> = Vec::new();
                let mut c = Client::connect(addr, "/events", None);
                let mut last_id = 0;
                loop {
                    let f = c.next_within(Duration::from_secs(60)).expect("frame");
                    assert!(!f.end, "stream ended early");
                    let (Some(id), Some(data)) = (f.id, f.data) else {
                        continue;
                    };
                    assert!(id > last_id, "ids grow: {id} after {last_id}");
                    last_id = id;
                    if data.starts_with(r#"{"type":"initial""#) {
                        got.push(None);
                        continue;
                    }
                    let at = data.rfind(r#","logs":""#).expect("logs") + 9;
                    let logs = &data[at..data.len() - 2];
                    if logs == "done" {
                        return got;
                    }
                    let n: u64 = logs.strip_prefix('e').expect("e<n>").parse().expect("n");
                    got.push(Some(n));
                    seen.store(n + 1, Ordering::Relaxed);
                }
            })
        };
        wait_until("the reader subscribed", || hub.subscribers() == 2);

        let started = Instant::now();
        for n in 0..EVENTS {
            hub.publish(EventKind::Log, Some(&a), &format!("e{n}"));
            // Pace to the reader (never to the stuck one) so it needn't lag.
            let paced = Instant::now();
            while n + 1 > seen.load(Ordering::Relaxed) + 512 && paced.elapsed() < WAIT {
                thread::sleep(Duration::from_micros(50));
            }
        }
        hub.publish(EventKind::Log, Some(&a), "done");
        let got = reader.join().expect("reader");
        eprintln!("{EVENTS} events in {:?}", started.elapsed());

        let mut prev: Option<u64> = None;
        let mut resynced = false;
        for entry in got {
            match entry {
                None => resynced = true,
                Some(n) => {
                    if let Some(p) = prev {
                        assert!(n > p, "order: {n} after {p}");
                        assert!(
                            n == p + 1 || resynced,
                            "events {}..{n} silently lost",
                            p + 1
                        );
                    }
                    prev = Some(n);
                    resynced = false;
                }
            }
        }
        assert!(
            prev == Some(EVENTS - 1) || resynced,
            "tail lost after {prev:?}"
        );
        let lagged = lock(&hub.state)
            .subs
            .iter()
            .filter(|s| lock(&s.queue).resync == Some(Resync::Lagged))
            .count();
        assert_eq!(lagged, 1, "the stuck subscriber is marked lagged");
        drop(stuck);
    }

    /// Overflowing a queue drops the stale frames and resyncs with a fresh
    /// burst (fresh ids); a subscriber that lags again more than
    /// `MAX_RESYNCS` times in the window gets `shutdown` and its body ends.
    #[tokio::test]
    async fn lagging_subscribers_resync_then_get_closed() {
        let hub = Hub::new(16);
        let a = view("a1a1a1a1");
        let source = vec![key_view(), a.clone()];
        hub.set_snapshot_source(Box::new(move || source.clone()));
        let mut stream = hub.open(None, Some(vec![key_view()]));
        let (bytes, _) = drain(&mut stream);
        let opening = frames(&bytes);
        assert_eq!(opening.len(), 2);
        assert_eq!(opening[1].id, Some(1));

        for round in 0..=MAX_RESYNCS {
            let before = lock(&hub.state).last_id;
            for n in 0..SUBSCRIBER_QUEUE + 5 {
                hub.publish(EventKind::Log, Some(&a), &format!("e{n}"));
            }
            let (bytes, ended) = drain(&mut stream);
            let got = frames(&bytes);
            if round < MAX_RESYNCS {
                assert!(!ended);
                let kinds: Vec<String> = got.iter().map(Frame::kind).collect();
                assert_eq!(kinds, ["initial", "initial"], "round {round}");
                assert!(got[0].id > Some(before + SUBSCRIBER_QUEUE as u64));
                assert!(got[0].id < got[1].id);
                let live = hub.publish(EventKind::Update, Some(&a), "");
                let (bytes, _) = drain(&mut stream);
                let after = frames(&bytes);
                assert_eq!(after.len(), 1);
                assert_eq!(
                    (after[0].id, after[0].kind()),
                    (Some(live), "update".to_owned())
                );
            } else {
                assert!(ended, "closed after {MAX_RESYNCS} resyncs");
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].kind(), "shutdown");
                assert_eq!(hub.subscribers(), 0);
            }
        }
    }

    /// `subscribe_with_source` takes its burst after registering: an event
    /// published while the snapshot is built follows the burst, re-stamped
    /// with a larger id, so nothing falls between snapshot and live stream.
    #[tokio::test]
    async fn source_bursts_lose_nothing_published_meanwhile() {
        let hub = Hub::new(16);
        let a = view("a1a1a1a1");
        let weak = Arc::downgrade(&hub);
        let snap = vec![key_view(), a.clone()];
        hub.set_snapshot_source(Box::new(move || {
            let hub = weak.upgrade().expect("hub alive");
            hub.publish(EventKind::Log, Some(&view("a1a1a1a1")), "meanwhile");
            snap.clone()
        }));
        let early = hub.publish(EventKind::Update, Some(&a), "");
        let mut stream = hub.open(None, None);
        hub.publish(EventKind::Update, Some(&a), "covered by the burst");
        let (bytes, ended) = drain(&mut stream);
        assert!(!ended);
        let got = frames(&bytes);
        assert_eq!(got[0].raw, "retry: 3000\n\n");
        let kinds: Vec<String> = got[1..].iter().map(Frame::kind).collect();
        assert_eq!(kinds, ["initial", "initial", "log"]);
        assert_eq!(got[3].json()["logs"], "meanwhile");
        let ids: Vec<u64> = got[1..].iter().filter_map(|f| f.id).collect();
        assert!(
            ids[0] > early && ids.windows(2).all(|w| w[0] < w[1]),
            "{ids:?}"
        );
        let live = hub.publish(EventKind::Update, Some(&a), "");
        let (bytes, _) = drain(&mut stream);
        assert_eq!(frames(&bytes)[0].id, Some(live));
        assert!(live > *ids.last().expect("ids"));
        drop(stream);
        assert_eq!(hub.subscribers(), 0, "a dropped body unregisters");
    }

    /// Without a snapshot source a lagging subscriber is closed with
    /// `shutdown` rather than left with a gap.
    #[tokio::test]
    async fn lag_without_a_source_closes() {
        let hub = Hub::new(16);
        let mut stream = hub.open(None, Some(Vec::new()));
        for _ in 0..=SUBSCRIBER_QUEUE {
            hub.publish(EventKind::Update, Some(&key_view()), "");
        }
        let (bytes, ended) = drain(&mut stream);
        let got = frames(&bytes);
        assert!(ended);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].kind(), "shutdown");
    }
}
