//! The control channel's receive path with real fds (`proto::channel`):
//! bytes and `SCM_RIGHTS` fds go through a socketpair the way a compromised
//! peer could send them — any split of the bytes over `sendmsg` calls, any
//! fd count on each (including more than a message may carry) — and a
//! `ControlReceiver` of the chosen direction reads until the end.
//!
//! Checked: no panic and no hang; every message comes with exactly
//! `fd_count()` fds, close-on-exec; a frame with a bad body (or wrong fds)
//! is consumed and the next one read; and when all is dropped no fd is left
//! open (refused fds are closed, never leaked). Input layout:
//! [`drover_fuzz::Segments`].
#![no_main]

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::LazyLock;

use drover_fuzz::Segments;
use libfuzzer_sys::fuzz_target;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use proto::message::Message;
use proto::{ControlChannel, ProtoError, ToMaster, ToWorker};
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime")
});

/// What the fuzzer's fds point at (each `sendmsg` passes copies of it).
static PASSED: LazyLock<File> = LazyLock::new(|| File::open("/dev/null").expect("open /dev/null"));

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Writes the segments until one does not go whole (full socket buffer,
/// fd limits): the receiver then sees a stream cut there.
fn send_all(sock: &UnixStream, input: &Segments<'_>) {
    let passed = PASSED.as_raw_fd();
    for seg in &input.segments {
        if seg.bytes.is_empty() {
            continue;
        }
        let fds: Vec<RawFd> = vec![passed; seg.fds];
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(seg.bytes)];
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == seg.bytes.len() => {}
            _ => break,
        }
    }
}

/// A frame that fails like this was consumed; the channel can go on.
fn frame_was_skipped(err: &ProtoError) -> bool {
    matches!(
        err,
        ProtoError::NotJson(_)
            | ProtoError::UnknownType(_)
            | ProtoError::InvalidMessage { .. }
            | ProtoError::VersionMismatch { .. }
            | ProtoError::FdCount { .. }
    )
}

fn receive<Out: Message, In: Message>(sock: UnixStream, max_recvs: usize) {
    let _rt = RUNTIME.enter();
    let channel = ControlChannel::<Out, In>::from_std(sock).expect("wrap the socket");
    let (_sender, mut receiver) = channel.split();
    RUNTIME.block_on(async {
        for _ in 0..max_recvs {
            match receiver.recv().await {
                Ok(Some((msg, fds))) => {
                    assert_eq!(fds.len(), msg.fd_count(), "{msg:?}");
                    for fd in &fds {
                        let flags = fcntl(fd, FcntlArg::F_GETFD).expect("a received fd is open");
                        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
                    }
                }
                Ok(None) => return,
                Err(e) if frame_was_skipped(&e) => {}
                Err(e) => {
                    assert!(!matches!(e, ProtoError::Encode { .. }), "{e}");
                    return;
                }
            }
        }
        panic!("{max_recvs} receives and the stream has not ended");
    });
}

fuzz_target!(|data: &[u8]| {
    LazyLock::force(&RUNTIME);
    LazyLock::force(&PASSED);
    let input = Segments::parse(data);
    let before = open_fds();
    {
        let (ours, theirs) = proto::socketpair().expect("socketpair");
        ours.set_nonblocking(true).expect("non-blocking");
        send_all(&ours, &input);
        drop(ours);
        // Each message takes at least 5 bytes (header and body).
        let max_recvs = data.len() / 5 + 2;
        if input.to_master {
            receive::<ToWorker, ToMaster>(theirs, max_recvs);
        } else {
            receive::<ToMaster, ToWorker>(theirs, max_recvs);
        }
    }
    assert_eq!(
        open_fds(),
        before,
        "fds left open after the channel was dropped"
    );
});
