//! Tests of [`super::ControlChannel`] over real socketpairs: round trips,
//! fd passing and attribution, bad peers, EOF, concurrency, cancellation.

use std::future::{Future, poll_fn};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use super::*;
use crate::MAX_FRAME;
use crate::message::tests::{to_master_samples, to_worker_samples};
use crate::message::{Adopt, Bound, Log, ToMaster, ToWorker, Transport};

/// A master and a worker channel over a fresh socketpair.
fn pair() -> (MasterChannel, WorkerChannel) {
    let (a, b) = socketpair().expect("socketpair");
    (
        MasterChannel::from_std(a).expect("master end"),
        WorkerChannel::from_std(b).expect("worker end"),
    )
}

/// A worker channel and the raw std socket of its peer, to play a
/// misbehaving master.
fn raw_pair() -> (StdUnixStream, WorkerChannel) {
    let (a, b) = socketpair().expect("socketpair");
    (a, WorkerChannel::from_std(b).expect("worker end"))
}

/// A socket whose peer reports EOF once every copy of it is closed.
fn watched() -> (StdUnixStream, StdUnixStream) {
    let (passed, watch) = StdUnixStream::pair().expect("pair");
    watch
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (passed, watch)
}

fn assert_closed(mut watch: StdUnixStream) {
    let mut byte = [0u8; 1];
    assert_eq!(watch.read(&mut byte).expect("EOF, not a timeout"), 0);
}

fn frame_of<M: Message>(msg: &M) -> Vec<u8> {
    frame::encode(msg).expect("encode")
}

/// Every message crosses in both directions, each with its fds (Hello's
/// listeners in order).
#[tokio::test]
async fn round_trip_both_directions() {
    let (master, mut worker) = pair();
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let conn_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let samples = to_worker_samples();
    for msg in &samples {
        let fds: Vec<BorrowedFd<'_>> = match msg.fd_count() {
            0 => vec![],
            1 => vec![conn_listener.as_fd()],
            _ => vec![tcp.as_fd(), udp.as_fd()],
        };
        master.send(msg, &fds).await.expect("send");
    }
    for want in &samples {
        let (msg, fds) = worker.recv().await.expect("recv").expect("a message");
        assert_eq!(&msg, want);
        assert_eq!(fds.len(), msg.fd_count());
        if let ToWorker::Hello(_) = msg {
            let mut fds = fds.into_iter();
            let got_tcp = TcpListener::from(fds.next().expect("tcp fd"));
            let got_udp = UdpSocket::from(fds.next().expect("udp fd"));
            assert_eq!(got_tcp.local_addr().ok(), tcp.local_addr().ok());
            assert_eq!(got_udp.local_addr().ok(), udp.local_addr().ok());
        }
    }

    let (worker_tx, _worker_rx) = worker.split();
    let mut master = master;
    for msg in to_master_samples() {
        worker_tx.send(&msg, &[]).await.expect("send");
        let (got, fds) = master.recv().await.expect("recv").expect("a message");
        assert_eq!((got, fds.len()), (msg, 0));
    }
}

/// A listener passed with `Bound` accepts on the worker's copy; a
/// connection passed with `Adopt` carries bytes from the worker's copy.
#[tokio::test]
async fn passes_listener_and_connection() {
    let (master, mut worker) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bound = ToWorker::from(Bound {
        addr: addr.to_string(),
        proto: Transport::Tcp,
    });
    master
        .send(&bound, &[listener.as_fd()])
        .await
        .expect("send");
    drop(listener);
    let (_, mut fds) = worker.recv().await.expect("recv").expect("Bound");
    let copy = TcpListener::from(fds.pop().expect("one fd"));
    let client = TcpStream::connect(addr).expect("connect");
    let (accepted, _) = copy.accept().expect("accept on the received copy");

    let adopt = ToWorker::from(Adopt {
        kind: Transport::Tcp,
        client: "198.51.100.1".into(),
        peer: "198.51.100.1:5000".parse().unwrap(),
        seq: 1,
    });
    master
        .send(&adopt, &[accepted.as_fd()])
        .await
        .expect("send");
    drop(accepted);
    let (msg, mut fds) = worker.recv().await.expect("recv").expect("Adopt");
    assert_eq!(msg, adopt);
    let mut adopted = TcpStream::from(fds.pop().expect("one fd"));
    adopted.write_all(b"served").expect("write");
    drop(adopted);
    let mut got = String::new();
    let mut client = client;
    client.read_to_string(&mut got).expect("read");
    assert_eq!(got, "served");
}

/// Fds on a message that takes none, or none on one that takes one, is
/// `FdCount`; the stray fds are closed and the next frame still decodes.
#[tokio::test]
async fn wrong_fd_count_from_peer() {
    let (raw, mut worker) = raw_pair();
    let (passed, watch) = watched();
    fdpass::send(
        raw.as_fd(),
        &frame_of(&ToWorker::Ping { seq: 1 }),
        &[passed.as_fd()],
    )
    .expect("send");
    drop(passed);
    match worker.recv().await {
        Err(ProtoError::FdCount {
            ty: "Ping",
            expected: 0,
            got: 1,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_closed(watch);

    let adopt = ToWorker::from(Adopt {
        kind: Transport::Tcp,
        client: "c".into(),
        peer: "127.0.0.1:5000".parse().unwrap(),
        seq: 1,
    });
    fdpass::send(raw.as_fd(), &frame_of(&adopt), &[]).expect("send");
    assert!(matches!(
        worker.recv().await,
        Err(ProtoError::FdCount {
            expected: 1,
            got: 0,
            ..
        })
    ));

    fdpass::send(raw.as_fd(), &frame_of(&ToWorker::Ping { seq: 2 }), &[]).expect("send");
    let (msg, _) = worker.recv().await.expect("recv").expect("a message");
    assert_eq!(msg, ToWorker::Ping { seq: 2 });
}

/// `send` refuses a fd count that does not match the message, sending
/// nothing.
#[tokio::test]
async fn wrong_fd_count_at_sender() {
    let (master, mut worker) = pair();
    let extra = TcpListener::bind("127.0.0.1:0").expect("bind");
    assert!(matches!(
        master
            .send(&ToWorker::Ping { seq: 1 }, &[extra.as_fd()])
            .await,
        Err(ProtoError::FdCount { .. })
    ));
    let adopt = ToWorker::from(Adopt {
        kind: Transport::Tcp,
        client: "c".into(),
        peer: "127.0.0.1:5000".parse().unwrap(),
        seq: 1,
    });
    assert!(matches!(
        master.send(&adopt, &[]).await,
        Err(ProtoError::FdCount { .. })
    ));
    drop(master);
    assert!(worker.recv().await.expect("clean EOF").is_none());
}

/// EOF between frames is `None`; EOF in a header or body is `Truncated`.
#[tokio::test]
async fn eof_at_boundary_and_mid_frame() {
    let frame = frame_of(&ToWorker::Ping { seq: 9 });
    for cut in [0, 2, 4, frame.len() - 1] {
        let (mut raw, mut worker) = raw_pair();
        raw.write_all(&frame).expect("write");
        raw.write_all(&frame[..cut]).expect("write");
        drop(raw);
        let (msg, _) = worker.recv().await.expect("recv").expect("first frame");
        assert_eq!(msg, ToWorker::Ping { seq: 9 });
        match worker.recv().await {
            Ok(None) if cut == 0 => {}
            Err(ProtoError::Truncated { got }) if cut > 0 => assert_eq!(got, cut),
            other => panic!("cut {cut}: unexpected {other:?}"),
        }
    }
}

/// A header claiming 2 GiB fails at once, while the peer is still
/// connected, and keeps failing: the channel is done.
#[tokio::test]
async fn oversize_frame_ends_the_channel() {
    let (mut raw, mut worker) = raw_pair();
    raw.write_all(&(1u32 << 31).to_be_bytes()).expect("write");
    raw.write_all(b"{\"type\":").expect("write");
    for _ in 0..2 {
        match worker.recv().await {
            Err(ProtoError::FrameTooLarge { len }) => assert_eq!(len, 1 << 31),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(worker.receiver.buf.capacity() <= 2 * READ_CHUNK);
}

/// Garbage and unknown types in whole frames are reported as such.
#[tokio::test]
async fn bad_bodies() {
    let (mut raw, mut worker) = raw_pair();
    let mut bytes = 7u32.to_be_bytes().to_vec();
    bytes.extend(b"garbage");
    let body = br#"{"type":"Launch"}"#;
    bytes.extend((body.len() as u32).to_be_bytes());
    bytes.extend(body);
    raw.write_all(&bytes).expect("write");
    assert!(matches!(worker.recv().await, Err(ProtoError::NotJson(_))));
    assert!(matches!(worker.recv().await, Err(ProtoError::UnknownType(t)) if t == "Launch"));
}

/// Several frames in one write come out one by one.
#[tokio::test]
async fn several_frames_in_one_read() {
    let (mut raw, mut worker) = raw_pair();
    let msgs: Vec<ToWorker> = (0..5).map(|seq| ToWorker::Ping { seq }).collect();
    let bytes: Vec<u8> = msgs.iter().flat_map(frame_of).collect();
    raw.write_all(&bytes).expect("write");
    for want in msgs {
        let (msg, fds) = worker.recv().await.expect("recv").expect("a message");
        assert_eq!((msg, fds.len()), (want, 0));
    }
}

/// Frames with and without fds written back to back before any read:
/// each fd goes to the frame that carried it.
#[tokio::test]
async fn fds_attach_to_their_frame() {
    let (raw, mut worker) = raw_pair();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let bound = ToWorker::from(Bound {
        addr: "x".into(),
        proto: Transport::Tcp,
    });
    let sequence = [
        ToWorker::Ping { seq: 1 },
        bound.clone(),
        ToWorker::Ping { seq: 2 },
        bound.clone(),
        bound,
        ToWorker::Ping { seq: 3 },
    ];
    for msg in &sequence {
        let fds: &[BorrowedFd<'_>] = if msg.fd_count() == 1 {
            &[listener.as_fd()]
        } else {
            &[]
        };
        fdpass::send(raw.as_fd(), &frame_of(msg), fds).expect("send");
    }
    for want in &sequence {
        let (msg, fds) = worker.recv().await.expect("recv").expect("a message");
        assert_eq!(&msg, want);
        assert_eq!(fds.len(), want.fd_count());
    }
}

/// A near-limit frame with fds goes out in several writes while the
/// receiver reads; the fds still arrive with it, the next frame is intact.
#[tokio::test]
async fn large_frame_with_fds() {
    let (master, mut worker) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let big = ToWorker::from(Bound {
        addr: "a".repeat(MAX_FRAME - 100),
        proto: Transport::Tcp,
    });
    let reader = tokio::spawn(async move {
        let first = worker.recv().await.expect("recv").expect("big");
        let second = worker.recv().await.expect("recv").expect("ping");
        (first.0, first.1.len(), second.0, second.1.len())
    });
    master
        .send(&big, &[listener.as_fd()])
        .await
        .expect("send big");
    master
        .send(&ToWorker::Ping { seq: 5 }, &[])
        .await
        .expect("send ping");
    let (first, first_fds, second, second_fds) = reader.await.expect("reader");
    assert_eq!((first, first_fds), (big, 1));
    assert_eq!((second, second_fds), (ToWorker::Ping { seq: 5 }, 0));
}

/// Senders on several tasks never interleave their frames.
#[tokio::test]
async fn concurrent_senders() {
    let (mut master, worker) = pair();
    let (tx, _rx) = worker.split();
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let line = format!(
                    "{task}:{i}:{}",
                    "z".repeat((task * 7919 + i * 104_729) as usize % 60_000)
                );
                let msg = ToMaster::from(Log {
                    level: "info".into(),
                    line,
                });
                tx.send(&msg, &[]).await.expect("send");
            }
        }));
    }
    let mut next = [0u64; 8];
    for _ in 0..8 * 40 {
        let (msg, _) = master.recv().await.expect("recv").expect("a message");
        let ToMaster::Log(log) = msg else {
            panic!("unexpected {msg:?}");
        };
        let mut parts = log.line.splitn(3, ':');
        let task: usize = parts.next().and_then(|p| p.parse().ok()).expect("task");
        let i: u64 = parts.next().and_then(|p| p.parse().ok()).expect("index");
        assert_eq!(i, next[task], "task {task} out of order");
        next[task] += 1;
    }
    for task in tasks {
        task.await.expect("sender task");
    }
}

/// A send dropped mid-frame is finished by the next send, so the peer
/// sees both frames whole.
#[tokio::test]
async fn cancelled_send_is_finished_by_the_next() {
    let (master, mut worker) = pair();
    let big = ToWorker::from(Bound {
        addr: "b".repeat(MAX_FRAME - 100),
        proto: Transport::Tcp,
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    {
        // One poll writes what the socket buffer takes, then waits.
        let fds = [listener.as_fd()];
        let mut send = pin!(master.send(&big, &fds));
        let first = poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "a 1 MiB frame fills the socket buffer");
    }
    assert!(master.sender.pending.lock().await.written > 0);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..2 {
            let (msg, fds) = worker.recv().await.expect("recv").expect("a message");
            got.push((msg, fds.len()));
        }
        got
    });
    master
        .send(&ToWorker::Ping { seq: 7 }, &[])
        .await
        .expect("send");
    let got = reader.await.expect("reader");
    assert_eq!(got, vec![(big, 1), (ToWorker::Ping { seq: 7 }, 0)]);
}

/// The worker side refuses an inherited fd that is not a stream socket.
#[tokio::test]
async fn from_fd_checks_the_socket() {
    let (read, _write) = nix::unistd::pipe().expect("pipe");
    assert!(WorkerChannel::from_fd(read).is_err());
    let (dgram, _) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    assert!(WorkerChannel::from_fd(dgram).is_err());
    let (stream, _peer) = socketpair().expect("socketpair");
    assert!(WorkerChannel::from_fd(OwnedFd::from(stream)).is_ok());
}

/// Both ends of the helper's pair are close-on-exec.
#[test]
fn socketpair_is_cloexec() {
    let (a, b) = socketpair().expect("socketpair");
    for end in [a.as_fd(), b.as_fd()] {
        let flags = nix::fcntl::fcntl(end, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
    }
}
