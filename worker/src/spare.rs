//! `drover-worker --spare --control-fd 3`: a worker started ahead of need.
//!
//! The master keeps one per tenant, already confined (uid, cgroup, rlimits),
//! so starting an instance skips forking the master and joining a cgroup (an
//! RCU grace period: 5–15 ms on a small VM). The spare waits for exactly one
//! `Become{instance}` frame and re-executes itself as `--instance <id>`;
//! the `Hello` behind that frame is read by the new image (fd 3 survives
//! `exec`). Control EOF means the master retired the spare: exit quietly.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use proto::ToWorker;
use proto::frame::HEADER_LEN;

/// Largest `Become` frame body accepted.
const MAX_BECOME: usize = 1024;

/// Entry point for `--spare`.
pub fn run(control_fd: RawFd) -> ExitCode {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() == 1 {
        return ExitCode::FAILURE;
    }
    // SAFETY: the master set up `control_fd` for us; it stays open (no
    // CLOEXEC) across the exec below because this File is never dropped
    // before it.
    let mut control = unsafe { File::from_raw_fd(control_fd) };
    let instance = match read_become(&mut control) {
        Ok(Some(id)) => id,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-worker --spare: {e}");
            return ExitCode::from(2);
        }
    };
    let fd = control_fd.to_string();
    let args = ["--instance", instance.as_str(), "--control-fd", fd.as_str()];
    // The binary the master started (a wrapper, in tests), else our own image.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let err = Command::new(&argv0)
        .arg0(&argv0)
        .args(args)
        .env_clear()
        .exec();
    let fallback = Command::new("/proc/self/exe")
        .arg0(&argv0)
        .args(args)
        .env_clear()
        .exec();
    eprintln!(
        "drover-worker --spare: exec {}: {err}; /proc/self/exe: {fallback}",
        argv0.to_string_lossy()
    );
    std::mem::forget(control);
    ExitCode::FAILURE
}

/// Reads one frame, never a byte past it: `Ok(None)` on EOF before it.
fn read_become(control: &mut File) -> Result<Option<String>, String> {
    let mut header = [0u8; HEADER_LEN];
    match control.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading the control socket: {e}")),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_BECOME {
        return Err(format!("a {len}-byte frame where Become was expected"));
    }
    let mut body = vec![0u8; len];
    control
        .read_exact(&mut body)
        .map_err(|e| format!("reading Become: {e}"))?;
    match proto::message::from_json::<ToWorker>(&body) {
        Ok(ToWorker::Become { instance }) if valid_id(&instance) => Ok(Some(instance)),
        Ok(ToWorker::Become { instance }) => Err(format!("bad instance id {instance:?}")),
        Ok(other) => Err(format!("expected Become, got {}", kind(&other))),
        Err(e) => Err(format!("control protocol: {e}")),
    }
}

/// Instance ids are short and alphanumeric (they end up on argv).
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn kind(msg: &ToWorker) -> &'static str {
    use proto::Message;
    msg.kind()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn frames(msgs: &[ToWorker]) -> Vec<u8> {
        msgs.iter()
            .flat_map(|m| proto::frame::encode(m).expect("encode"))
            .collect()
    }

    fn read_from(bytes: &[u8]) -> (Result<Option<String>, String>, Vec<u8>) {
        let (mut a, b) = UnixStream::pair().expect("pair");
        a.write_all(bytes).expect("write");
        drop(a);
        let mut file = File::from(OwnedFd::from(b));
        let got = read_become(&mut file);
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).expect("rest");
        (got, rest)
    }

    /// Become is read and the frame behind it is left for the next image.
    #[test]
    fn reads_exactly_one_frame() {
        let become_ = ToWorker::Become {
            instance: "a1b2c3d4".into(),
        };
        let next = ToWorker::Ping { seq: 7 };
        let (got, rest) = read_from(&frames(&[become_, next.clone()]));
        assert_eq!(got, Ok(Some("a1b2c3d4".into())));
        assert_eq!(rest, frames(&[next]));
    }

    /// EOF is a quiet exit; anything else but a well-formed Become is an error.
    #[test]
    fn refuses_everything_else() {
        assert_eq!(read_from(b"").0, Ok(None));
        assert!(read_from(&frames(&[ToWorker::Ping { seq: 1 }])).0.is_err());
        let dash = ToWorker::Become {
            instance: "--version".into(),
        };
        assert!(read_from(&frames(&[dash])).0.is_err());
        assert!(read_from(&[0, 0, 0, 0]).0.is_err());
        assert!(read_from(&[0xff, 0xff, 0xff, 0xff]).0.is_err());
        assert!(read_from(&[0, 0, 0, 9, b'{']).0.is_err());
    }
}
