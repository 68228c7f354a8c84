//! Tenant isolation (DESIGN §2), available when the master runs as root.
//!
//! Each tenant gets its own uid/gid, allocated once from the DynamicUser range
//! and kept in the store, so a worker of tenant A cannot signal, ptrace or
//! read `/proc/<pid>/environ` of tenant B's workers. Workers also get
//! `no_new_privs`, an empty environment (see `spawn`), `RLIMIT_NOFILE`,
//! `RLIMIT_CORE=0` and a private working directory. When a cgroup
//! hierarchy is writable (v2 with `Delegate=yes`, or v1 memory/pids
//! controllers), each instance's worker runs in its own cgroup below its
//! tenant's, which carries `memory.max`/`pids.max`: a worker over the limit
//! is OOM-killed alone and restarted like any crash.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::Store;

/// First and last uid handed to tenants (systemd's DynamicUser range).
pub const UID_FIRST: u32 = 61184;
pub const UID_LAST: u32 = 65519;
/// Open files a worker may hold.
pub const WORKER_NOFILE: u64 = 65536;

/// Limits of one tenant's cgroup (bounding the sum of its workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Bytes; `None` = no limit.
    pub memory: Option<u64>,
    /// Tasks; `None` = no limit.
    pub pids: Option<u64>,
}

/// The master URL's `tenant_mem=`/`tenant_pids=`: limits for every tenant,
/// and per-tenant overrides (`tenant_mem=alice:1G`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    pub default: TenantLimits,
    /// Per tenant; a `None` field keeps the default.
    pub tenants: BTreeMap<String, TenantLimits>,
}

impl LimitsConfig {
    /// The limits of `tenant`.
    pub fn of(&self, tenant: &str) -> TenantLimits {
        let own = self.tenants.get(tenant).copied().unwrap_or_default();
        TenantLimits {
            memory: own.memory.or(self.default.memory),
            pids: own.pids.or(self.default.pids),
        }
    }
}

/// How one worker is confined; applied between fork and exec.
#[derive(Debug)]
pub struct Confinement {
    pub uid: u32,
    pub gid: u32,
    pub workdir: PathBuf,
    /// `cgroup.procs` files to join (opened here, written in the child).
    pub cgroups: Vec<OwnedFd>,
}

/// Where cgroups can be made.
#[derive(Debug)]
enum Cgroups {
    /// Unified hierarchy: our own cgroup directory (delegated to us).
    V2(PathBuf),
    /// Legacy memory and pids hierarchies: our directory in each.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The master's isolation setup.
pub struct Isolation {
    enabled: bool,
    why_not: Option<String>,
    cgroups: Option<Cgroups>,
    limits: LimitsConfig,
    uids: Mutex<BTreeMap<String, u32>>,
    root: PathBuf,
}

impl Isolation {
    /// Detects what this master can do; logs what is unavailable and why.
    pub fn detect(store: &Store, root: PathBuf, limits: LimitsConfig) -> Self {
        let is_root = nix::unistd::geteuid().is_root();
        if !is_root {
            let why = "the master is not running as root: workers run as the master's user, without cgroups".to_string();
            tracing::warn!("tenant isolation unavailable: {why}");
            return Self {
                enabled: false,
                why_not: Some(why),
                cgroups: None,
                limits,
                uids: Mutex::new(BTreeMap::new()),
                root,
            };
        }
        let cgroups = detect_cgroups();
        match &cgroups {
            Some(c) => {
                tracing::info!(cgroups = ?c, "tenant isolation on: per-tenant uids and cgroups")
            }
            None => tracing::warn!(
                "tenant isolation on, but no writable cgroup hierarchy: memory and pids limits are not enforced"
            ),
        }
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&root)
        {
            tracing::error!(dir = %root.display(), cause = %e, "cannot create the tenants' working directory root");
        }
        let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o711));
        Self {
            enabled: true,
            why_not: None,
            cgroups,
            limits,
            uids: Mutex::new(store.tenant_uids()),
            root,
        }
    }

    /// For `/info`: whether isolation is on, and why not.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled,
            "cgroups": self.cgroups.as_ref().map(|c| match c { Cgroups::V2(_) => "v2", Cgroups::V1 { .. } => "v1" }),
            "reason": self.why_not,
        })
    }

    /// The uid of `tenant`, allocating (and persisting) one if new.
    async fn uid(&self, store: &Store, tenant: &str) -> Result<u32, String> {
        let map = {
            let mut uids = self.uids.lock().expect("uids lock");
            if let Some(uid) = uids.get(tenant) {
                return Ok(*uid);
            }
            let used: std::collections::HashSet<u32> = uids.values().copied().collect();
            let uid = (UID_FIRST..=UID_LAST)
                .find(|u| {
                    !used.contains(u)
                        && nix::unistd::User::from_uid((*u).into())
                            .ok()
                            .flatten()
                            .is_none()
                })
                .ok_or("no free uid left for a new tenant")?;
            uids.insert(tenant.to_string(), uid);
            uids.clone()
        };
        store
            .put_tenant_uids(&map)
            .await
            .map_err(|e| format!("saving tenant uids: {e}"))?;
        Ok(map[tenant])
    }

    /// How to confine the next worker of `instance` (tenant `tenant`);
    /// `None` when isolation is off.
    pub async fn confine(
        &self,
        store: &Store,
        tenant: &str,
        instance: &str,
    ) -> Result<Option<Confinement>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let uid = self.uid(store, tenant).await?;
        let workdir = self.root.join(tenant);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&workdir)
            .map_err(|e| format!("working dir {}: {e}", workdir.display()))?;
        nix::unistd::chown(&workdir, Some(uid.into()), Some(uid.into()))
            .map_err(|e| format!("chown {}: {e}", workdir.display()))?;
        let cgroups = match &self.cgroups {
            Some(c) => self.cgroup_files(c, tenant, instance).unwrap_or_else(|e| {
                tracing::warn!(tenant, instance, cause = %e, "cannot place the worker in a cgroup; running it without limits");
                Vec::new()
            }),
            None => Vec::new(),
        };
        Ok(Some(Confinement {
            uid,
            gid: uid,
            workdir,
            cgroups,
        }))
    }

    /// Renames a tenant's cgroup leaf (a spare's, when it becomes `to`'s
    /// worker); a stale `to` leaf of an earlier worker is removed first.
    /// Best effort: on failure the worker keeps its leaf, limits unchanged.
    pub fn rename_leaf(&self, tenant: &str, from: &str, to: &str) {
        let tenant_dirs = match &self.cgroups {
            Some(Cgroups::V2(base)) => vec![base.join("tenants").join(tenant)],
            Some(Cgroups::V1 { memory, pids }) => vec![
                memory.join(format!("drover-{tenant}")),
                pids.join(format!("drover-{tenant}")),
            ],
            None => return,
        };
        for dir in tenant_dirs {
            let _ = fs::remove_dir(dir.join(to));
            if let Err(e) = fs::rename(dir.join(from), dir.join(to)) {
                tracing::debug!(tenant, from, to, cause = %e, "cgroup leaf kept its spare name");
            }
        }
    }

    /// Creates `tenant/instance` cgroups with the tenant's limits; returns the
    /// `cgroup.procs` files to join. The tenant's cgroup bounds the sum of its
    /// workers; each worker has a leaf of its own, so an OOM kill in the
    /// tenant takes the worker the kernel picks (the largest: the one over its
    /// share) and, with `memory.oom.group` on the leaf only, its whole leaf —
    /// never the tenant's other workers.
    fn cgroup_files(
        &self,
        c: &Cgroups,
        tenant: &str,
        instance: &str,
    ) -> Result<Vec<OwnedFd>, String> {
        let limits = self.limits.of(tenant);
        let pids = limits.pids.map_or("max".to_string(), |n| n.to_string());
        match c {
            Cgroups::V2(base) => {
                let tenant_dir = base.join("tenants").join(tenant);
                mkdir(&tenant_dir)?;
                // Controllers must be enabled on every level above a leaf.
                for dir in [base.clone(), base.join("tenants"), tenant_dir.clone()] {
                    let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
                }
                let mem = limits.memory.map_or("max".to_string(), |b| b.to_string());
                write(&tenant_dir.join("memory.max"), &mem)?;
                write(&tenant_dir.join("pids.max"), &pids)?;
                // Off at the tenant: one worker's OOM must not take the others.
                let _ = fs::write(tenant_dir.join("memory.oom.group"), "0");
                let leaf = tenant_dir.join(instance);
                mkdir(&leaf)?;
                // A worker's children (none today) go with it.
                let _ = fs::write(leaf.join("memory.oom.group"), "1");
                Ok(vec![open_procs(&leaf)?])
            }
            Cgroups::V1 {
                memory,
                pids: pids_root,
            } => {
                let mem_tenant = memory.join(format!("drover-{tenant}"));
                mkdir(&mem_tenant)?;
                let _ = fs::write(mem_tenant.join("memory.use_hierarchy"), "1");
                let limit = limits.memory.map_or("-1".to_string(), |b| b.to_string());
                write(&mem_tenant.join("memory.limit_in_bytes"), &limit)?;
                let mem_leaf = mem_tenant.join(instance);
                mkdir(&mem_leaf)?;
                let pids_tenant = pids_root.join(format!("drover-{tenant}"));
                mkdir(&pids_tenant)?;
                write(&pids_tenant.join("pids.max"), &pids)?;
                let pids_leaf = pids_tenant.join(instance);
                mkdir(&pids_leaf)?;
                Ok(vec![open_procs(&mem_leaf)?, open_procs(&pids_leaf)?])
            }
        }
    }
}

fn mkdir(p: &Path) -> Result<(), String> {
    match fs::create_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("mkdir {}: {e}", p.display())),
    }
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    fs::write(p, v).map_err(|e| format!("write {v} to {}: {e}", p.display()))
}

fn open_procs(dir: &Path) -> Result<OwnedFd, String> {
    let p = dir.join("cgroup.procs");
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// Our cgroup paths from `/proc/self/cgroup`, if a hierarchy is writable.
fn detect_cgroups() -> Option<Cgroups> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut v2 = None;
    let (mut mem, mut pids) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        match controllers {
            "" => v2 = Some(path.to_string()),
            c if c.split(',').any(|x| x == "memory") => mem = Some(path.to_string()),
            c if c.split(',').any(|x| x == "pids") => pids = Some(path.to_string()),
            _ => {}
        }
    }
    let writable = |dir: &Path| {
        let probe = dir.join(format!("drover-probe-{}", std::process::id()));
        let ok = fs::create_dir(&probe).is_ok();
        let _ = fs::remove_dir(&probe);
        ok
    };
    if let (Some(m), Some(p)) = (&mem, &pids) {
        let (m, p) = (
            Path::new("/sys/fs/cgroup/memory").join(m),
            Path::new("/sys/fs/cgroup/pids").join(p),
        );
        if writable(&m) && writable(&p) {
            return Some(Cgroups::V1 { memory: m, pids: p });
        }
    }
    let v2 = Path::new("/sys/fs/cgroup").join(v2?);
    let has_controllers = fs::read_to_string(v2.join("cgroup.controllers"))
        .map(|c| c.contains("memory") && c.contains("pids"))
        .unwrap_or(false);
    if has_controllers && writable(&v2) && move_master_to_leaf(&v2) {
        return Some(Cgroups::V2(v2));
    }
    None
}

/// cgroup v2 forbids processes in a cgroup whose children use controllers:
/// the master moves itself into `<ours>/master` first.
fn move_master_to_leaf(base: &Path) -> bool {
    let leaf = base.join("master");
    fs::create_dir_all(&leaf).is_ok() && fs::write(leaf.join("cgroup.procs"), "0").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant's own limits override the default field by field.
    #[test]
    fn per_tenant_limits_override_the_default() {
        let mut cfg = LimitsConfig {
            default: TenantLimits {
                memory: Some(64 << 20),
                pids: None,
            },
            tenants: BTreeMap::new(),
        };
        cfg.tenants.insert(
            "alice".into(),
            TenantLimits {
                memory: None,
                pids: Some(10),
            },
        );
        cfg.tenants.insert(
            "bob".into(),
            TenantLimits {
                memory: Some(1 << 30),
                pids: None,
            },
        );
        assert_eq!(
            cfg.of("alice"),
            TenantLimits {
                memory: Some(64 << 20),
                pids: Some(10)
            }
        );
        assert_eq!(
            cfg.of("bob"),
            TenantLimits {
                memory: Some(1 << 30),
                pids: None
            }
        );
        assert_eq!(cfg.of("carol"), cfg.default);
    }
}
