//! How a worker is confined, as `/proc` and the kernel show it: uid/gid,
//! `NoNewPrivs`, rlimits, working directory, cgroups; and what another
//! tenant's uid may do to it ([`probe_as`]: a forked helper that drops to
//! that uid and tries to signal, ptrace and read it).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Whether this test process runs as root (isolation needs a root master).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A field of `/proc/<pid>/status` (`Uid`, `Gid`, `Groups`, `NoNewPrivs`, …),
/// its value with surrounding whitespace trimmed.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}

/// `Uid:`/`Gid:` of `/proc/<pid>/status` as (real, effective, saved, fs).
pub fn ids(pid: u32, field: &str) -> Option<[u32; 4]> {
    let v = status_field(pid, field)?;
    let n: Vec<u32> = v
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    n.try_into().ok()
}

/// (soft, hard) of one `/proc/<pid>/limits` row, e.g. `Max core file size`;
/// `u64::MAX` for `unlimited`.
pub fn limit(pid: u32, name: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut vals = line[name.len()..].split_whitespace().map(|v| match v {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    });
    Some((vals.next()??, vals.next()??))
}

/// Where `/proc/<pid>/cwd` points.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// `/proc/<pid>/cgroup` as (controllers, path) lines.
pub fn cgroups(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctl.to_string(), path.to_string()))
        })
        .collect()
}

/// The cgroup path of `pid` in the v1 hierarchy holding `controller`
/// (`memory`, `pids`), or in the v2 hierarchy for `""`.
pub fn cgroup_path(pid: u32, controller: &str) -> Option<String> {
    cgroups(pid).into_iter().find_map(|(ctl, path)| {
        let hit = if controller.is_empty() {
            ctl.is_empty()
        } else {
            ctl.split(',').any(|c| c == controller)
        };
        hit.then_some(path)
    })
}

/// What a helper running as another uid got when it tried things on a
/// target process: `Ok(())` or the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The helper's real and effective uid after dropping (proves the drop).
    pub uid: (u32, u32),
    pub gid: (u32, u32),
    /// `kill(target, 0)`.
    pub kill0: Result<(), i32>,
    /// `kill(target, SIGTERM)`.
    pub sigterm: Result<(), i32>,
    /// `ptrace(PTRACE_ATTACH, target)` (detached at once if it worked).
    pub ptrace: Result<(), i32>,
    /// `open("/proc/<target>/environ")` …
    pub environ_open: Result<(), i32>,
    /// … and, if that worked, `read` of it (`None`: not tried).
    pub environ_read: Option<Result<(), i32>>,
    /// `kill(control, 0)`: a process of the helper's own uid, which it may
    /// signal (shows the refusals above are about the uid).
    pub control_kill0: Result<(), i32>,
}

/// Results the child writes to the pipe: 8 × i32 (the errno, 0 = success,
/// -1 = not tried) plus uid, euid, gid, egid.
const PROBE_WORDS: usize = 12;

/// Forks a helper that drops to `uid`/`gid` (no supplementary groups) and
/// tries, on `target`: signal 0, SIGTERM, `PTRACE_ATTACH`, reading
/// `/proc/<target>/environ`; and signal 0 on `control`. Needs root.
///
/// The child runs only raw system calls (no allocation, no locks): the test
/// process has other threads, and after `fork` only async-signal-safe calls
/// are allowed.
pub fn probe_as(uid: u32, gid: u32, target: u32, control: u32) -> Probe {
    let environ = CString::new(format!("/proc/{target}/environ")).expect("path");
    // Close-on-exec: a process another thread spawns meanwhile must not
    // inherit the write end (the read below would wait for it to exit).
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only makes raw system calls and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw system calls on values prepared before the fork.
        unsafe {
            let errno = || *libc::__errno_location();
            let res = |r: libc::c_long| if r < 0 { errno() } else { 0 };
            let mut out = [-1i32; PROBE_WORDS];
            let dropped = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                == 0
                && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if dropped {
                out[0] = res(libc::syscall(libc::SYS_kill, target, 0));
                out[1] = res(libc::syscall(libc::SYS_kill, target, libc::SIGTERM));
                let attached = libc::syscall(
                    libc::SYS_ptrace,
                    libc::PTRACE_ATTACH,
                    target,
                    0usize,
                    0usize,
                );
                out[2] = res(attached);
                if attached == 0 {
                    libc::syscall(
                        libc::SYS_ptrace,
                        libc::PTRACE_DETACH,
                        target,
                        0usize,
                        0usize,
                    );
                }
                let fd = libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    environ.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                out[3] = res(fd);
                if fd >= 0 {
                    let mut buf = [0u8; 256];
                    out[4] = res(libc::syscall(
                        libc::SYS_read,
                        fd,
                        buf.as_mut_ptr(),
                        buf.len(),
                    ));
                    libc::syscall(libc::SYS_close, fd);
                }
                out[5] = res(libc::syscall(libc::SYS_kill, control, 0));
            }
            out[8] = libc::syscall(libc::SYS_getuid) as i32;
            out[9] = libc::syscall(libc::SYS_geteuid) as i32;
            out[10] = libc::syscall(libc::SYS_getgid) as i32;
            out[11] = libc::syscall(libc::SYS_getegid) as i32;
            libc::syscall(
                libc::SYS_write,
                wr.as_raw_fd(),
                out.as_ptr(),
                std::mem::size_of_val(&out),
            );
            libc::_exit(0);
        }
    }
    drop(wr);
    let mut file = std::fs::File::from(rd);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut raw).expect("reading the probe's results");
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        raw.len(),
        PROBE_WORDS * 4,
        "the probe process wrote {} bytes (status {status})",
        raw.len()
    );
    let w: Vec<i32> = raw
        .chunks(4)
        .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert!(
        w[0] != -1,
        "the probe could not drop to uid {uid}/gid {gid} (it runs as {}/{})",
        w[8],
        w[10]
    );
    let r = |v: i32| if v == 0 { Ok(()) } else { Err(v) };
    Probe {
        uid: (w[8] as u32, w[9] as u32),
        gid: (w[10] as u32, w[11] as u32),
        kill0: r(w[0]),
        sigterm: r(w[1]),
        ptrace: r(w[2]),
        environ_open: r(w[3]),
        environ_read: (w[4] != -1).then(|| r(w[4])),
        control_kill0: r(w[5]),
    }
}

/// Where the master puts the tenants' working directories (its
/// `tenant_root`): `DROVER_TENANT_DIR`, else `$RUNTIME_DIRECTORY/tenants`,
/// else `<tmp>/drover-tenants`.
pub fn tenant_root() -> PathBuf {
    if let Some(d) = std::env::var_os("DROVER_TENANT_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first).join("tenants");
    }
    std::env::temp_dir().join("drover-tenants")
}

/// The cgroup directories a master started by this process makes for
/// `tenant` (cgroup v1 memory and pids, v2 unified), whether or not they exist.
pub fn tenant_cgroup_dirs(tenant: &str) -> Vec<PathBuf> {
    let me = std::process::id();
    let mut out = Vec::new();
    for ctl in ["memory", "pids"] {
        if let Some(p) = cgroup_path(me, ctl) {
            out.push(
                PathBuf::from(format!("/sys/fs/cgroup/{ctl}"))
                    .join(p.trim_start_matches('/'))
                    .join(format!("drover-{tenant}")),
            );
        }
    }
    if let Some(p) = cgroup_path(me, "") {
        out.push(
            PathBuf::from("/sys/fs/cgroup")
                .join(p.trim_start_matches('/'))
                .join("tenants")
                .join(tenant),
        );
    }
    out
}

/// Removes what a master left for `tenant` (its working directory and
/// empty cgroups), best effort; true when nothing is left. Call after the
/// master and its workers are gone (a cgroup holding even a zombie cannot
/// be removed).
pub fn cleanup_tenant(tenant: &str) -> bool {
    let _ = std::fs::remove_dir_all(tenant_root().join(tenant));
    let mut clean = !tenant_root().join(tenant).exists();
    for dir in tenant_cgroup_dirs(tenant) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
        clean &= !dir.exists();
    }
    clean
}

/// [`cleanup_tenant`], retried for a few seconds (an exited worker leaves
/// its cgroup only once reaped); prints a note if something is left.
pub async fn cleanup_tenant_soon(tenant: &str) {
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cleanup_tenant(tenant) {
        if tokio::time::Instant::now() >= end {
            println!(
                "note: could not remove everything of tenant {tenant}: {:?}",
                tenant_cgroup_dirs(tenant)
                    .into_iter()
                    .filter(|d| d.exists())
                    .collect::<Vec<_>>()
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A fresh `[a-z0-9]` suffix, so tenants of concurrent tests (and of other
/// masters on this machine, which share cgroup and directory names) differ.
pub fn unique_suffix() -> String {
    hex::encode(rand::random::<[u8; 3]>())
}
