//! Client-side checks over real sockets: echo round trips, bulk streams with
//! SHA-256, half-close, "closed without data", UDP round trips.
//!
//! Every helper is bounded in time; a hang panics with what was being waited for.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::{DEADLINE, TRANSFER_DEADLINE};

/// Connects to `addr` or panics.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    match timeout(DEADLINE, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
        Err(_) => panic!("connecting to {addr}: no answer within {DEADLINE:?}"),
    }
}

/// Reads exactly `len` bytes (or panics naming how many arrived).
pub async fn read_exact_len(stream: &mut TcpStream, len: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    let res = timeout(TRANSFER_DEADLINE, async {
        while got < len {
            match stream.read(&mut buf[got..]).await {
                Ok(0) => return Err(format!("EOF after {got} of {len} bytes")),
                Ok(n) => got += n,
                Err(e) => return Err(format!("{e} after {got} of {len} bytes")),
            }
        }
        Ok(())
    })
    .await;
    match res {
        Ok(Ok(())) => buf,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: only {got} of {len} bytes within {TRANSFER_DEADLINE:?}"),
    }
}

/// Writes `payload` on a new connection to `addr` and reads back as many
/// bytes, writing and reading concurrently; returns what came back.
pub async fn echo_once(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let stream = connect(addr).await;
    echo_on(stream, payload).await
}

/// Like [`echo_once`] on an open connection, which it then drops.
pub async fn echo_on(stream: TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = stream.into_split();
    let data = payload.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = vec![0u8; payload.len()];
    let mut got = 0;
    let res = timeout(TRANSFER_DEADLINE, async {
        while got < buf.len() {
            match rd.read(&mut buf[got..]).await {
                Ok(0) => return Err(format!("EOF after {got} bytes")),
                Ok(n) => got += n,
                Err(e) => return Err(format!("{e} after {got} bytes")),
            }
        }
        Ok(())
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("echo of {} bytes: {e}", payload.len()),
        Err(_) => panic!(
            "echo of {} bytes: only {got} back within {TRANSFER_DEADLINE:?}",
            payload.len()
        ),
    }
    writer
        .await
        .expect("writer task")
        .expect("writing the payload");
    buf
}

/// Asserts that `payload` comes back unchanged through `addr`.
pub async fn assert_echo(addr: SocketAddr, payload: &[u8]) {
    let back = echo_once(addr, payload).await;
    assert!(
        back == payload,
        "echo through {addr} differs from what was sent ({} bytes)",
        payload.len()
    );
}

/// Sends `data` through `addr` to an echo server while concurrently reading
/// the echo; asserts the SHA-256 of what came back equals that of `data`.
pub async fn stream_echo_sha256(addr: SocketAddr, data: Vec<u8>) {
    let expected: [u8; 32] = Sha256::digest(&data).into();
    let len = data.len();
    let stream = connect(addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(64 * 1024) {
            wr.write_all(chunk).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let res = timeout(TRANSFER_DEADLINE, async {
        while got < len {
            let want = (len - got).min(buf.len());
            match rd.read(&mut buf[..want]).await {
                Ok(0) => return Err(format!("EOF after {got} of {len} bytes")),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    got += n;
                }
                Err(e) => return Err(format!("{e} after {got} of {len} bytes")),
            }
        }
        Ok(())
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("streaming {len} bytes through {addr}: {e}"),
        Err(_) => panic!(
            "streaming {len} bytes through {addr}: only {got} back within {TRANSFER_DEADLINE:?}"
        ),
    }
    let got_hash: [u8; 32] = hasher.finalize().into();
    assert_eq!(
        hex::encode(got_hash),
        hex::encode(expected),
        "SHA-256 of the {len} bytes echoed through {addr} differs from what was sent"
    );
    writer
        .await
        .expect("writer task")
        .expect("writing the stream");
}

/// Writes `payload`, half-closes (shutdown write) and reads until EOF.
pub async fn send_half_close_read_all(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let stream = connect(addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let data = payload.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await?;
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut out = Vec::new();
    let res = timeout(TRANSFER_DEADLINE, rd.read_to_end(&mut out)).await;
    match res {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "reading the reply after half-close: {e} after {} bytes",
            out.len()
        ),
        Err(_) => panic!(
            "reading the reply after half-close: no EOF within {TRANSFER_DEADLINE:?} ({} bytes so far)",
            out.len()
        ),
    }
    writer
        .await
        .expect("writer task")
        .expect("writing then half-closing");
    out
}

/// How a connection that should be refused ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly EOF without data.
    Eof,
    /// Reset / aborted / broken pipe.
    Reset,
}

/// Reads from `stream` until it ends; panics if any byte arrives or it is
/// still open after the deadline. Returns how it ended.
pub async fn expect_closed_without_data(stream: &mut TcpStream, what: &str) -> Closed {
    let mut buf = [0u8; 4096];
    match timeout(DEADLINE, stream.read(&mut buf)).await {
        Ok(Ok(0)) => Closed::Eof,
        Ok(Ok(n)) => panic!(
            "{what}: expected the connection closed without data, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(e)) if is_reset(&e) => Closed::Reset,
        Ok(Err(e)) => panic!("{what}: unexpected read error {e}"),
        Err(_) => panic!("{what}: connection still open after {DEADLINE:?}"),
    }
}

/// Whether `e` means the peer reset or closed the connection.
pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

/// Waits until a read on `stream` shows it closed (EOF or reset), ignoring
/// any bytes that still arrive; panics if open after `deadline`.
pub async fn wait_closed(stream: &mut TcpStream, deadline: Duration, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let res = timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    })
    .await;
    if res.is_err() {
        panic!("{what}: connection still open after {deadline:?}");
    }
}

/// A UDP socket on `127.0.0.1:0` connected to `peer`.
pub async fn udp_connected(peer: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp client");
    socket.connect(peer).await.expect("connect udp client");
    socket
}

/// Receives one datagram within `deadline`; `None` on timeout.
pub async fn udp_recv(socket: &UdpSocket, deadline: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; 65_536];
    match timeout(deadline, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(Ok(buf[..n].to_vec())),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => None,
    }
}

/// Sends `probe` until it comes back once (the first datagram of a dual-end
/// session may arrive before the pool is ready). Late copies of `probe` may
/// still arrive afterwards: callers ignore datagrams equal to it.
pub async fn udp_warm_up(socket: &UdpSocket, probe: &[u8]) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        socket.send(probe).await.expect("send udp probe");
        if let Some(Ok(d)) = udp_recv(socket, Duration::from_millis(300)).await
            && d == probe
        {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!(
                "no UDP echo through {:?} within {DEADLINE:?}",
                socket.peer_addr()
            );
        }
    }
}

/// One echo round trip of `payload` on a new connection, as a probe for
/// [`crate::wait_until_async`]: true only if it all came back unchanged
/// within `deadline`; refusals, resets and timeouts are false.
pub async fn try_echo(addr: SocketAddr, payload: &[u8], deadline: Duration) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(payload).await.ok()?;
        let mut buf = vec![0u8; payload.len()];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf == payload)
    };
    matches!(timeout(deadline, attempt).await, Ok(Some(true)))
}
