//! A raw SSE client: HTTP/1.1 written by hand on a TCP socket, the chunked
//! body decoded here, and the event stream split into frames byte by byte,
//! so the tests see exactly what went over the wire.
//!
//! 1. [`SseStream::open`] writes `GET <path>` (with `X-API-Key` and
//!    `Last-Event-ID` when given), reads the status line and headers.
//! 2. The body is de-chunked (`Transfer-Encoding: chunked`) or read to EOF;
//!    the last chunk (or EOF) ends it.
//! 3. [`SseStream::next_frame`] cuts the body at each blank line and parses
//!    the frame strictly: `retry: N\n\n`, `: comment\n\n`, or
//!    `id: N\nevent: instance\ndata: <one line>\n\n`; anything else panics
//!    with the raw bytes.
//! 4. Every event read is kept in [`SseStream::history`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

use crate::DEADLINE;

/// One SSE frame as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `retry: N\n\n`.
    Retry(u64),
    /// `: text\n\n` (the text after `": "`).
    Comment(String),
    /// `id: N\nevent: NAME\ndata: JSON\n\n`.
    Event(Event),
}

/// One event frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    /// The `event:` name (`instance` for every NodePass event).
    pub name: String,
    /// The `data:` line without its field name.
    pub data: String,
    /// The frame's bytes, blank line included.
    pub raw: Vec<u8>,
}

impl Event {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event {} data is not JSON ({e}): {:?}", self.id, self.data))
    }

    /// `data.type`: initial, create, update, delete, log, shutdown.
    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }

    /// `data.instance.id`, if the event carries an instance.
    pub fn instance_id(&self) -> Option<String> {
        self.json()["instance"]["id"].as_str().map(str::to_string)
    }

    /// `data.instance`.
    pub fn instance(&self) -> Value {
        self.json()["instance"].clone()
    }
}

/// An open `/events` response.
pub struct SseStream {
    pub status: u16,
    /// Response headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Every event read so far, in order.
    pub history: Vec<Event>,
    /// The body of a non-200 answer (read whole).
    pub error_body: Vec<u8>,
    sock: TcpStream,
    /// Socket bytes not decoded yet.
    wire: Vec<u8>,
    /// Body bytes not framed yet.
    body: Vec<u8>,
    chunked: bool,
    ended: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl SseStream {
    /// Connects to `addr` and sends `GET path`.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        key: Option<&str>,
        last_event_id: Option<&str>,
    ) -> SseStream {
        Self::open_with(
            TcpSocket::new_v4().expect("socket"),
            addr,
            path,
            key,
            last_event_id,
        )
        .await
    }

    /// [`SseStream::open`] on `sock`, set up by the caller (e.g. a small
    /// receive buffer).
    pub async fn open_with(
        sock: TcpSocket,
        addr: SocketAddr,
        path: &str,
        key: Option<&str>,
        last_event_id: Option<&str>,
    ) -> SseStream {
        let end = Instant::now() + DEADLINE;
        let mut sock = match timeout_at(end, sock.connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => panic!("SSE: connecting to {addr}: {e}"),
            Err(_) => panic!("SSE: connecting to {addr}: no answer within {DEADLINE:?}"),
        };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        if let Some(key) = key {
            req.push_str(&format!("X-API-Key: {key}\r\n"));
        }
        if let Some(last) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {last}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes())
            .await
            .expect("SSE: writing the request");
        let mut stream = SseStream {
            status: 0,
            headers: Vec::new(),
            history: Vec::new(),
            error_body: Vec::new(),
            sock,
            wire: Vec::new(),
            body: Vec::new(),
            chunked: false,
            ended: false,
        };
        let head_end = loop {
            if let Some(at) = find(&stream.wire, b"\r\n\r\n") {
                break at;
            }
            if !stream.read_more(end).await {
                panic!(
                    "SSE {path}: connection closed inside the response head: {:?}",
                    String::from_utf8_lossy(&stream.wire)
                );
            }
        };
        let head = String::from_utf8_lossy(&stream.wire[..head_end]).into_owned();
        stream.wire.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        stream.status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("SSE {path}: bad status line {status_line:?}"));
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                stream
                    .headers
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        stream.chunked = stream
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if stream.status != 200 {
            let len: usize = stream
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while stream.wire.len() < len && stream.read_more(end).await {}
            stream.error_body = stream.wire.drain(..len.min(stream.wire.len())).collect();
            stream.ended = true;
        }
        stream
    }

    /// A response header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    /// Reads more socket bytes; false on EOF. Panics at `end`.
    async fn read_more(&mut self, end: Instant) -> bool {
        // Straight into `wire`: a buffer on the stack would be part of every
        // future that awaits this, and the tests' futures live on the stack.
        self.wire.reserve(64 * 1024);
        match timeout_at(end, self.sock.read_buf(&mut self.wire)).await {
            Ok(Ok(0)) => false,
            Ok(Ok(_)) => true,
            Ok(Err(e)) => panic!("SSE: reading: {e}"),
            Err(_) => panic!(
                "SSE: nothing more within the deadline; pending body bytes {:?}",
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    /// Moves whole chunks from `wire` to `body`; sets `ended` on the last chunk.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.wire);
            return;
        }
        while !self.ended {
            let Some(line_end) = find(&self.wire, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.wire[..line_end]).into_owned();
            let size_hex = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .unwrap_or_else(|_| panic!("SSE: bad chunk size line {size_text:?}"));
            if size == 0 {
                // Last chunk; trailers (none expected) end with a blank line.
                if find(&self.wire[line_end..], b"\r\n\r\n").is_none() {
                    return;
                }
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.wire.len() < start + size + 2 {
                return;
            }
            assert_eq!(
                &self.wire[start + size..start + size + 2],
                b"\r\n",
                "SSE: chunk not followed by CRLF"
            );
            self.body.extend_from_slice(&self.wire[start..start + size]);
            self.wire.drain(..start + size + 2);
        }
    }

    /// The next frame, or `None` when the body ended (panics if bytes of an
    /// unfinished frame are left, or nothing comes within `wait`).
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        let end = Instant::now() + wait;
        loop {
            // Bytes that came with the head or an earlier read may hold chunks.
            self.decode();
            if let Some(at) = find(&self.body, b"\n\n") {
                let raw: Vec<u8> = self.body.drain(..at + 2).collect();
                let frame = parse_frame(&raw);
                if let Frame::Event(e) = &frame {
                    self.history.push(e.clone());
                }
                return Some(frame);
            }
            if self.ended {
                assert!(
                    self.body.is_empty(),
                    "SSE: the stream ended inside a frame: {:?}",
                    String::from_utf8_lossy(&self.body)
                );
                return None;
            }
            if !self.read_more(end).await {
                // EOF: whatever was decoded is all there is.
                self.decode();
                self.ended = true;
                continue;
            }
        }
    }

    /// The next event, skipping `retry` and comments; panics if the stream ends.
    pub async fn next_event(&mut self, wait: Duration) -> Event {
        loop {
            match self.next_frame(wait).await {
                Some(Frame::Event(e)) => return e,
                Some(_) => continue,
                None => panic!(
                    "SSE: the stream ended while an event was expected; events so far:\n{}",
                    self.history_text()
                ),
            }
        }
    }

    /// Reads events until one satisfies `pred` (within `wait` overall).
    pub async fn wait_event(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "SSE: no event {what} within {wait:?}; events so far:\n{}",
                    self.history_text()
                );
            }
            let e = self.next_event(left).await;
            if pred(&e) {
                return e;
            }
        }
    }

    /// Asserts the body ends (last chunk or EOF) within `wait` without
    /// another frame.
    pub async fn expect_end(&mut self, wait: Duration) {
        if let Some(frame) = self.next_frame(wait).await {
            panic!("SSE: expected the stream to end, got {frame:?}");
        }
    }

    /// Whether the response body has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The events read so far, one line each, for messages.
    pub fn history_text(&self) -> String {
        self.history
            .iter()
            .map(|e| format!("  {}: {}", e.id, e.data))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Parses one frame (the bytes up to and including its blank line).
pub fn parse_frame(raw: &[u8]) -> Frame {
    let text =
        std::str::from_utf8(raw).unwrap_or_else(|_| panic!("SSE: frame is not UTF-8: {raw:?}"));
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("SSE: frame does not end with a blank line: {text:?}"));
    let lines: Vec<&str> = body.split('\n').collect();
    match lines.as_slice() {
        [retry] if retry.starts_with("retry: ") => Frame::Retry(
            retry["retry: ".len()..]
                .parse()
                .unwrap_or_else(|_| panic!("SSE: bad retry frame {text:?}")),
        ),
        [comment] if comment.starts_with(':') => Frame::Comment(
            comment[1..]
                .strip_prefix(' ')
                .unwrap_or(&comment[1..])
                .to_string(),
        ),
        [id, event, data]
            if id.starts_with("id: ")
                && event.starts_with("event: ")
                && data.starts_with("data: ") =>
        {
            let id_text = &id["id: ".len()..];
            assert!(
                !id_text.is_empty() && id_text.bytes().all(|b| b.is_ascii_digit()),
                "SSE: id is not a decimal number: {text:?}"
            );
            Frame::Event(Event {
                id: id_text
                    .parse()
                    .unwrap_or_else(|_| panic!("SSE: id out of range: {text:?}")),
                name: event["event: ".len()..].to_string(),
                data: data["data: ".len()..].to_string(),
                raw: raw.to_vec(),
            })
        }
        _ => panic!("SSE: unexpected frame layout: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three frame shapes parse; ids, names and data come out whole.
    #[test]
    fn parses_frames() {
        assert_eq!(parse_frame(b"retry: 3000\n\n"), Frame::Retry(3000));
        assert_eq!(
            parse_frame(b": keepalive\n\n"),
            Frame::Comment("keepalive".into())
        );
        let raw = b"id: 7\nevent: instance\ndata: {\"type\":\"initial\"}\n\n";
        let Frame::Event(e) = parse_frame(raw) else {
            panic!("not an event");
        };
        assert_eq!((e.id, e.name.as_str()), (7, "instance"));
        assert_eq!(e.kind(), "initial");
        assert_eq!(e.raw, raw.to_vec());
    }
}
