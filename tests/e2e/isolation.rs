//! Tenant isolation (DESIGN §2) when the master runs as root; each test
//! prints a note and passes when not root.
//!
//! 1. Workers of two tenants run under different uids/gids (neither root, no
//!    supplementary groups), with `NoNewPrivs: 1`, `RLIMIT_CORE` 0, the
//!    worker's `RLIMIT_NOFILE`, an empty environment and the tenant's
//!    private working directory (0700, owned by the tenant's uid); with
//!    cgroups, each in its own cgroup below its tenant's.
//! 2. A process with one tenant's uid cannot signal, ptrace or read the
//!    environment of the other tenant's worker (EPERM/EACCES), but can signal
//!    its own tenant's worker (so the refusals are about the uid).
//! 3. With cgroups, the tenant's limits are written and enforced: of two
//!    workers of one tenant, the one that exceeds the memory limit is
//!    OOM-killed alone and restarted; the other keeps serving.
//!
//! 4. A master that is not root (run as `nobody` when the tests are root)
//!    reports isolation unavailable (`/info`, a log line) and still runs
//!    instances that carry bytes.
//!
//! Tenant names carry a random suffix: every master on this machine shares
//! the tenants' directories and cgroups by name.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use drover_e2e::api::{id_of, worker_pid};
use drover_e2e::confine::{
    cgroup_path, cleanup_tenant_soon, cwd, ids, is_root, limit, probe_as, status_field,
    tenant_cgroup_dirs, unique_suffix,
};
use drover_e2e::evil::{Behaviour, evil_worker_bin};
use drover_e2e::io::assert_echo;
use drover_e2e::lifecycle::{echo_attempt, wait_instance, wait_ready, worker_processes};
use drover_e2e::master::DEFAULT_URL;
use drover_e2e::procs::{proc_alive, proc_environ};
use drover_e2e::{Api, DEADLINE, EchoServer, Master, free_addr, pattern, wait_until};

/// The worker's `RLIMIT_NOFILE` (the master's `WORKER_NOFILE`).
const WORKER_NOFILE: u64 = 65536;
/// Until the hog is OOM-killed, or back after its back-off. Only catches hangs.
const OOM_DEADLINE: Duration = Duration::from_secs(60);

const EPERM: i32 = libc::EPERM;
const EACCES: i32 = libc::EACCES;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!(
        "note: {test} skipped: isolation needs a root master and this test runs as uid {}",
        nix::unistd::geteuid()
    );
    true
}

/// Waits until no worker of `ids` is alive (before removing their cgroups).
async fn gone(ids: &[String]) {
    wait_until(DEADLINE, "the workers are gone", || {
        worker_processes(ids).is_empty()
    })
    .await;
}

/// `/info.isolation`.
async fn isolation_info(api: &Api) -> Value {
    api.get("/info").await.ok_json(200)["isolation"].clone()
}

/// A single-end client instance of `tenant` on a fresh entrance to `backend`;
/// returns (id, entrance).
async fn create_for(api: &Api, tenant: &str, backend: SocketAddr) -> (String, SocketAddr) {
    let entrance = free_addr();
    let v = api
        .create(json!({
            "url": format!("client://{entrance}/{backend}?mode=1"),
            "alias": tenant,
            "tenant": tenant,
        }))
        .await;
    assert_eq!(v["tenant"], tenant, "tenant in the answer: {v}");
    (id_of(&v), entrance)
}

/// What `/proc` shows of one tenant's worker; asserts everything that does
/// not depend on the other tenant. Returns its uid.
fn check_confined(pid: u32, tenant: &str, id: &str, cgroups: Option<&str>) -> u32 {
    let uid = ids(pid, "Uid").unwrap_or_else(|| panic!("no Uid for worker {pid}"));
    let gid = ids(pid, "Gid").unwrap_or_else(|| panic!("no Gid for worker {pid}"));
    assert!(
        uid.iter().all(|u| *u == uid[0]) && uid[0] != 0,
        "{tenant}'s worker {pid}: real/effective/saved/fs uids {uid:?} (want one non-root uid)"
    );
    assert!(
        gid.iter().all(|g| *g == gid[0]) && gid[0] != 0,
        "{tenant}'s worker {pid}: gids {gid:?} (want one non-root gid)"
    );
    assert_eq!(
        status_field(pid, "Groups").as_deref(),
        Some(""),
        "{tenant}'s worker {pid}: supplementary groups"
    );
    assert_eq!(
        status_field(pid, "NoNewPrivs").as_deref(),
        Some("1"),
        "{tenant}'s worker {pid}: NoNewPrivs"
    );
    assert_eq!(
        limit(pid, "Max core file size"),
        Some((0, 0)),
        "{tenant}'s worker {pid}: RLIMIT_CORE"
    );
    // The master asks for WORKER_NOFILE; it cannot raise the hard limit it
    // inherited (from this test process) without CAP_SYS_RESOURCE.
    let (_, our_hard) = limit(std::process::id(), "Max open files").expect("our RLIMIT_NOFILE");
    let want = WORKER_NOFILE.min(our_hard);
    assert_eq!(
        limit(pid, "Max open files"),
        Some((want, want)),
        "{tenant}'s worker {pid}: RLIMIT_NOFILE (soft, hard); ours has hard {our_hard}"
    );
    assert_eq!(
        proc_environ(pid),
        Some(Vec::new()),
        "{tenant}'s worker {pid}: environment"
    );
    let dir = cwd(pid).unwrap_or_else(|| panic!("no cwd for worker {pid}"));
    assert_eq!(
        dir.file_name().and_then(|n| n.to_str()),
        Some(tenant),
        "{tenant}'s worker {pid}: working directory {}",
        dir.display()
    );
    let meta = std::fs::metadata(&dir).expect("stat the working directory");
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "{tenant}'s working directory {} mode",
        dir.display()
    );
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid[0], gid[0]),
        "{tenant}'s working directory {} owner",
        dir.display()
    );
    match cgroups {
        Some("v1") => {
            for ctl in ["memory", "pids"] {
                let path = cgroup_path(pid, ctl).unwrap_or_default();
                assert!(
                    path.ends_with(&format!("/drover-{tenant}/{id}")),
                    "{tenant}'s worker {pid}: {ctl} cgroup {path:?}"
                );
            }
        }
        Some("v2") => {
            let path = cgroup_path(pid, "").unwrap_or_default();
            assert!(
                path.ends_with(&format!("/tenants/{tenant}/{id}")),
                "{tenant}'s worker {pid}: cgroup {path:?}"
            );
        }
        Some(other) => panic!("unknown isolation.cgroups {other:?}"),
        None => println!("note: no writable cgroup hierarchy: cgroup placement not checked"),
    }
    uid[0]
}

/// Asserts that a helper with `from`'s uid/gid can signal `own` (same
/// tenant) but cannot signal, ptrace or read the environment of `victim`.
fn check_cannot_touch(from: &str, uid: u32, own: u32, to: &str, victim: u32) {
    let p = probe_as(uid, uid, victim, own);
    let what = format!("a process of {from} (uid {uid}) on {to}'s worker {victim}");
    println!("{what}: {p:?}");
    assert_eq!(p.uid, (uid, uid), "{what}: the helper's uid");
    assert_eq!(p.gid, (uid, uid), "{what}: the helper's gid");
    assert_eq!(p.control_kill0, Ok(()), "{what}: kill(own worker {own}, 0)");
    assert_eq!(p.kill0, Err(EPERM), "{what}: kill(0)");
    assert_eq!(p.sigterm, Err(EPERM), "{what}: kill(SIGTERM)");
    assert_eq!(p.ptrace, Err(EPERM), "{what}: ptrace(PTRACE_ATTACH)");
    assert!(
        p.environ_open == Err(EACCES)
            || p.environ_open == Err(EPERM)
            || (p.environ_open.is_ok() && matches!(p.environ_read, Some(Err(EACCES | EPERM)))),
        "{what}: reading /proc/{victim}/environ: open {:?}, read {:?}",
        p.environ_open,
        p.environ_read
    );
}

/// Two tenants' workers: different uids, confined, and neither can signal,
/// ptrace or read the other; both still serve afterwards, unrestarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_run_confined_and_cannot_touch_each_other() {
    if skip_unless_root("tenants_run_confined_and_cannot_touch_each_other") {
        return;
    }
    let master = Master::start().await;
    let api = master.api();
    let iso = isolation_info(&api).await;
    assert_eq!(iso["enabled"], true, "/info isolation as root: {iso}");
    let cgroups = iso["cgroups"].as_str().map(str::to_string);
    let suffix = unique_suffix();
    let (alice, bob) = (format!("alice-{suffix}"), format!("bob-{suffix}"));
    let echo = EchoServer::start().await;
    let (a_id, a_entr) = create_for(&api, &alice, echo.addr).await;
    let (b_id, b_entr) = create_for(&api, &bob, echo.addr).await;
    let (a_pid, _) = wait_ready(&api, &a_id, None, DEADLINE).await;
    let (b_pid, _) = wait_ready(&api, &b_id, None, DEADLINE).await;
    // Confined workers still do their job.
    assert_echo(a_entr, b"alice's traffic").await;
    assert_echo(b_entr, b"bob's traffic").await;

    let a_uid = check_confined(a_pid, &alice, &a_id, cgroups.as_deref());
    let b_uid = check_confined(b_pid, &bob, &b_id, cgroups.as_deref());
    assert_ne!(a_uid, b_uid, "alice and bob run under the same uid");
    assert_ne!(
        cwd(a_pid),
        cwd(b_pid),
        "alice and bob share a working directory"
    );

    check_cannot_touch(&alice, a_uid, a_pid, &bob, b_pid);
    check_cannot_touch(&bob, b_uid, b_pid, &alice, a_pid);

    // Nothing reached them: same processes, no restart, still serving.
    for (id, pid) in [(&a_id, a_pid), (&b_id, b_pid)] {
        assert!(proc_alive(pid), "worker {pid} of {id} is gone");
        let v = api.instance(id).await;
        assert_eq!(v["worker"]["pid"], pid, "{id}: {v}");
        assert_eq!(v["worker"]["restarts"], 0, "{id}: {v}");
    }
    assert_echo(a_entr, b"alice's traffic, after").await;
    assert_echo(b_entr, b"bob's traffic, after").await;

    // A graceful stop: the master reaps its workers, so their cgroups empty.
    master.stop().await;
    gone(&[a_id, b_id]).await;
    for t in [&alice, &bob] {
        cleanup_tenant_soon(t).await;
    }
}

/// The tenant's cgroup dir holding `file` (v1: `drover-<tenant>` in that
/// controller's hierarchy; v2: `tenants/<tenant>`).
fn tenant_file(tenant: &str, file: &str) -> std::path::PathBuf {
    let dirs = tenant_cgroup_dirs(tenant);
    dirs.iter()
        .map(|d| d.join(file))
        .find(|f| f.is_file())
        .unwrap_or_else(|| panic!("no {file} among the tenant cgroups {dirs:?}"))
}

/// `key N` of a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
fn keyed(path: &std::path::Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or(0)
}

/// With cgroups, `master://…?tenant_mem=64M&tenant_pids=64` (the memory
/// limit given as the tenant's own override): two instances of one tenant,
/// a bystander forwarding echo traffic and a worker that hogs memory
/// (`evil-hog`). The tenant's limits are written; the hog is OOM-killed
/// (`last_exit` `signal 9 (SIGKILL)`, the tenant's OOM-kill count up) and
/// restarted, while the bystander keeps its worker and serves every
/// connection throughout. Skipped (with a note) when `/info` shows no
/// cgroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_over_the_tenant_memory_limit_is_oom_killed_alone() {
    const TEST: &str = "worker_over_the_tenant_memory_limit_is_oom_killed_alone";
    if skip_unless_root(TEST) {
        return;
    }
    let tenant = format!("hog-{}", unique_suffix());
    let master = Master::start_with_worker(
        &format!("{DEFAULT_URL}?grace=1s&tenant_mem=1G&tenant_mem={tenant}:64M&tenant_pids=64"),
        &evil_worker_bin(),
    )
    .await;
    let api = master.api();
    let iso = isolation_info(&api).await;
    assert_eq!(iso["enabled"], true, "/info isolation as root: {iso}");
    let Some(kind) = iso["cgroups"].as_str().map(str::to_string) else {
        println!(
            "note: {TEST}: /info isolation.cgroups is null (no writable cgroup hierarchy); limits not checked: {iso}"
        );
        return;
    };
    let echo = EchoServer::start().await;
    let (calm, calm_entr) = create_for(&api, &tenant, echo.addr).await;
    let (calm_pid, _) = wait_ready(&api, &calm, None, DEADLINE).await;

    // The bystander's traffic: one fresh connection after another.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let payload = pattern(4096, n);
                if let Err(e) = echo_attempt(calm_entr, &payload, DEADLINE).await {
                    return Err(format!("attempt #{n}: {e}"));
                }
                n += 1;
            }
            Ok(n)
        }
    });

    let hog = id_of(
        &api.create(json!({
            "url": format!("server://{}@{}/127.0.0.1:1?mode=2", Behaviour::Hog.key(), free_addr()),
            "tenant": tenant,
        }))
        .await,
    );
    let killed = wait_instance(&api, &hog, OOM_DEADLINE, "has lost a worker", |v| {
        v["worker"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(
        killed["worker"]["last_exit"], "signal 9 (SIGKILL)",
        "the hog's end: {killed}"
    );
    let oom_kills = if kind == "v1" {
        // v1 counts an OOM kill in the victim's own cgroup only: sum the leaves.
        let file = tenant_file(&tenant, "memory.oom_control");
        let dir = file.parent().expect("the tenant's dir");
        std::fs::read_dir(dir)
            .expect("list the tenant's cgroup")
            .flatten()
            .map(|e| e.path().join("memory.oom_control"))
            .filter(|f| f.is_file())
            .map(|f| keyed(&f, "oom_kill "))
            .sum::<u64>()
            + keyed(&file, "oom_kill ")
    } else {
        keyed(&tenant_file(&tenant, "memory.events"), "oom_kill ")
    };
    assert!(oom_kills >= 1, "the tenant's cgroup counts no OOM kill");
    // And it comes back (to be killed again: it hogs at every start).
    wait_instance(&api, &hog, OOM_DEADLINE, "runs a new worker", |v| {
        worker_pid(v).is_some() || v["worker"]["restarts"].as_u64() >= Some(2)
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let served = traffic
        .await
        .expect("traffic task")
        .unwrap_or_else(|e| panic!("the bystander failed while the hog was killed: {e}"));
    assert!(served > 0, "the bystander served nothing");
    let v = api.instance(&calm).await;
    assert_eq!(
        worker_pid(&v),
        Some(calm_pid),
        "the bystander changed worker: {v}"
    );
    assert_eq!(v["worker"]["restarts"], 0, "{v}");
    assert!(
        proc_alive(calm_pid),
        "the bystander's worker {calm_pid} is gone"
    );

    // The limits are the tenant's: its override of memory, the default pids.
    let (mem_file, pids_file) = if kind == "v1" {
        ("memory.limit_in_bytes", "pids.max")
    } else {
        ("memory.max", "pids.max")
    };
    let read = |f: &str| {
        std::fs::read_to_string(tenant_file(&tenant, f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(read(mem_file), (64u64 << 20).to_string(), "{mem_file}");
    assert_eq!(read(pids_file), "64", "{pids_file}");
    let current: u64 = read("pids.current").parse().unwrap_or(0);
    assert!(
        (1..=64).contains(&current),
        "the tenant's pids.current {current} (its workers' tasks, at most pids.max)"
    );
    println!(
        "hog OOM-killed ({oom_kills} OOM kills in the tenant); bystander served {served} connections meanwhile"
    );

    api.delete(&format!("/instances/{hog}")).await.expect(204);
    master.stop().await;
    gone(&[calm, hog]).await;
    cleanup_tenant_soon(&tenant).await;
}

/// A master that is not root: `/info` reports isolation unavailable with
/// the reason, the log says so, and an instance still runs (as the master's
/// user) and carries bytes. As root the master is started as `nobody`;
/// otherwise it is unprivileged already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_master_reports_isolation_unavailable_and_works() {
    let master = if is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("a `nobody` user");
        Master::start_as(DEFAULT_URL, nobody.uid.as_raw(), nobody.gid.as_raw()).await
    } else {
        Master::start().await
    };
    let master_uid = ids(master.pid(), "Uid").expect("the master's uid")[0];
    assert_ne!(master_uid, 0, "the master runs as root");
    let api = master.api();
    let iso = isolation_info(&api).await;
    assert_eq!(iso["enabled"], false, "/info isolation: {iso}");
    assert!(iso["cgroups"].is_null(), "/info isolation: {iso}");
    assert!(
        iso["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not running as root")),
        "/info isolation.reason: {iso}"
    );
    master
        .wait_for_line("tenant isolation unavailable", DEADLINE)
        .await;

    let echo = EchoServer::start().await;
    let (id, entrance) = create_for(&api, "default", echo.addr).await;
    let (pid, _) = wait_ready(&api, &id, None, DEADLINE).await;
    assert_echo(entrance, b"through an unprivileged master").await;
    assert_eq!(
        ids(pid, "Uid").map(|u| u[0]),
        Some(master_uid),
        "the worker runs as the master's user"
    );
    master.stop().await;
}
