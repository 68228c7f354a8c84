//! The system fields of `/info` (`cpu mem_* swap_* netrx nettx diskr diskw
//! sysup`), read from `/proc` without ever sleeping in the request path.
//!
//! NodePass measures `cpu` by sleeping 100 ms inside the request; Drover keeps
//! a sampler instead:
//! 1. [`Sampler::spawn`] starts a task that reads `/proc/stat` every
//!    [`SAMPLE_INTERVAL`] and stores the CPU % of the last interval.
//! 2. [`Sampler::snapshot`] takes that figure and reads memory, network, disk
//!    and uptime fresh (a few small procfs reads).
//!
//! Each `parse_*` function takes the file's text, so odd or missing content is
//! tested with fixtures; anything unreadable counts as 0, nothing panics.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

/// How often the CPU figure is refreshed (and the window it covers).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Network interfaces left out of `netrx`/`nettx` (loopback and virtual
/// bridges/pairs, whose traffic is already counted on a real interface), as NodePass.
const VIRTUAL_NICS: [&str; 6] = ["lo", "veth", "docker", "podman", "br-", "virbr"];
/// Block devices left out of `diskr`/`diskw`: virtual (loop, RAM, zram) and
/// stacked (device mapper, md RAID) ones, whose I/O the real disks also count.
const VIRTUAL_DISKS: [&str; 5] = ["loop", "ram", "zram", "dm-", "md"];
/// `/proc/diskstats` counts 512-byte sectors whatever the device's block size.
const SECTOR: u64 = 512;

/// The system part of `/info`, with NodePass's field names and units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SysInfo {
    /// CPU use over the last sample interval, 0..=100 (0 before the first one).
    pub cpu: i64,
    /// Bytes (`MemTotal`).
    pub mem_total: u64,
    /// Bytes (`MemTotal − MemAvailable`).
    pub mem_used: u64,
    /// Bytes (`SwapTotal`).
    pub swap_total: u64,
    /// Bytes (`SwapTotal − SwapFree`).
    pub swap_used: u64,
    /// Bytes received since boot over the real interfaces.
    pub netrx: u64,
    /// Bytes sent since boot over the real interfaces.
    pub nettx: u64,
    /// Bytes read since boot from whole physical disks.
    pub diskr: u64,
    /// Bytes written since boot to whole physical disks.
    pub diskw: u64,
    /// Seconds since boot.
    pub sysup: u64,
}

/// Keeps the CPU figure fresh; dropping the last handle stops its task.
#[derive(Debug)]
pub struct Sampler {
    /// Last CPU %, written by the task every [`SAMPLE_INTERVAL`].
    cpu: Arc<AtomicI64>,
    task: AbortHandle,
}

impl Sampler {
    /// Starts the sampling task (call within a tokio runtime).
    pub fn spawn() -> Arc<Sampler> {
        let cpu = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(run(Arc::clone(&cpu))).abort_handle();
        Arc::new(Sampler { cpu, task })
    }

    /// The current figures: CPU from the sampler, the rest read now.
    pub fn snapshot(&self) -> SysInfo {
        let mem = parse_meminfo(&read("/proc/meminfo"));
        let (netrx, nettx) = parse_net_dev(&read("/proc/net/dev"));
        let (diskr, diskw) = disk_io(&read("/proc/diskstats"), Path::new("/sys/block"));
        SysInfo {
            cpu: self.cpu.load(Ordering::Relaxed),
            mem_total: mem.total,
            mem_used: mem.used,
            swap_total: mem.swap_total,
            swap_used: mem.swap_used,
            netrx,
            nettx,
            diskr,
            diskw,
            sysup: parse_uptime(&read("/proc/uptime")),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sampling loop: one `/proc/stat` read per tick; a failed read keeps
/// the previous sample, so the next figure spans the longer window.
async fn run(cpu: Arc<AtomicI64>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut prev: Option<CpuTimes> = None;
    loop {
        tick.tick().await;
        let Some(cur) = parse_cpu_times(&read("/proc/stat")) else {
            continue;
        };
        if let Some(prev) = prev {
            cpu.store(cpu_percent(prev, cur), Ordering::Relaxed);
        }
        prev = Some(cur);
    }
}

/// A procfs file's text, or "" when it cannot be read (every figure is then 0).
fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Jiffies from the aggregate `cpu ` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// The 4th field (`idle`), as NodePass counts it (iowait is busy).
    pub idle: u64,
    /// `user` through `steal`; `guest*` are left out because `user`/`nice`
    /// already include them.
    pub total: u64,
}

/// Parses the `cpu ` line of `/proc/stat`; `None` if absent or malformed.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let idle = *fields.get(3)?;
    let total = fields.iter().fold(0u64, |sum, &f| sum.saturating_add(f));
    Some(CpuTimes { idle, total })
}

/// `100 × (1 − Δidle/Δtotal)`, truncated like NodePass, within 0..=100.
pub fn cpu_percent(prev: CpuTimes, cur: CpuTimes) -> i64 {
    let total = cur.total.saturating_sub(prev.total);
    let idle = cur.idle.saturating_sub(prev.idle).min(total);
    if total == 0 {
        return 0;
    }
    let busy = u128::from(total - idle) * 100 / u128::from(total);
    i64::try_from(busy.min(100)).unwrap_or(100)
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub total: u64,
    pub used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
}

/// Parses `/proc/meminfo`. Without `MemAvailable` (kernels before 3.14)
/// free + buffers + cache stands in for it.
pub fn parse_meminfo(text: &str) -> Mem {
    let mut total = None;
    let mut available = None;
    let (mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64);
    let (mut swap_total, mut swap_free) = (0u64, 0u64);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(value) = words.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match words.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        match key {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "MemFree" => free = bytes,
            "Buffers" => buffers = bytes,
            "Cached" => cached = bytes,
            "SwapTotal" => swap_total = bytes,
            "SwapFree" => swap_free = bytes,
            _ => {}
        }
    }
    let total = total.unwrap_or(0);
    let available =
        available.unwrap_or_else(|| free.saturating_add(buffers).saturating_add(cached));
    Mem {
        total,
        used: total.saturating_sub(available),
        swap_total,
        swap_used: swap_total.saturating_sub(swap_free),
    }
}

/// Sums received and sent bytes of `/proc/net/dev`, skipping virtual
/// interfaces ([`VIRTUAL_NICS`]).
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in text.lines() {
        // Header lines have no ':'; old kernels glue the first number to it.
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if VIRTUAL_NICS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let fields: Vec<&str> = counters.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(r), Some(t)) = (field(0), field(8)) {
            rx = rx.saturating_add(r);
            tx = tx.saturating_add(t);
        }
    }
    (rx, tx)
}

/// Read and written bytes of whole physical disks. A device is a whole disk
/// when `/sys/block/<name>` exists (so `nvme0n1` and `mmcblk0` count, their
/// partitions do not); without `/sys`, by name (see [`is_partition_by_name`]).
fn disk_io(diskstats: &str, sys_block: &Path) -> (u64, u64) {
    if sys_block.is_dir() {
        parse_diskstats(diskstats, |name| {
            sys_block.join(name.replace('/', "!")).exists()
        })
    } else {
        let names: HashSet<&str> = diskstats
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        parse_diskstats(diskstats, |name| !is_partition_by_name(&names, name))
    }
}

/// Sums sectors read and written (×512) over `/proc/diskstats` lines whose
/// device is not virtual ([`VIRTUAL_DISKS`]) and passes `whole_disk`.
pub fn parse_diskstats(text: &str, whole_disk: impl Fn(&str) -> bool) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(&name) = fields.get(2) else {
            continue;
        };
        if VIRTUAL_DISKS.iter().any(|p| name.starts_with(p)) || !whole_disk(name) {
            continue;
        }
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(r), Some(w)) = (field(5), field(9)) {
            read = read.saturating_add(r.saturating_mul(SECTOR));
            written = written.saturating_add(w.saturating_mul(SECTOR));
        }
    }
    (read, written)
}

/// Whether `name` is a partition of another listed device: that device's
/// name followed by digits, or by `p` and digits (`sda1`, `nvme0n1p2`,
/// `mmcblk0p1`). `nvme0n1` is a whole disk because `nvme0` is not listed.
pub fn is_partition_by_name(names: &HashSet<&str>, name: &str) -> bool {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == name.len() {
        return false;
    }
    let parent = &name[..name.len() - digits];
    names.contains(parent)
        || parent
            .strip_suffix('p')
            .is_some_and(|p| !p.is_empty() && names.contains(p))
}

/// Whole seconds since boot from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|up| up.split('.').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  135519 0 31484 184621 1500 0 3154 1091 7 7\n\
                        cpu0 65025 0 15010 96316 387 0 1455 536 0 0\n\
                        intr 1 2 3\n";

    /// The aggregate line gives idle = 4th field and total = user..steal.
    #[test]
    fn cpu_times() {
        assert_eq!(
            parse_cpu_times(STAT),
            Some(CpuTimes {
                idle: 184_621,
                total: 135_519 + 31_484 + 184_621 + 1500 + 3154 + 1091,
            })
        );
        // Old kernels have only four fields.
        assert_eq!(
            parse_cpu_times("cpu 1 2 3 4\n"),
            Some(CpuTimes { idle: 4, total: 10 })
        );
        for bad in ["", "cpu0 1 2 3 4\n", "cpu 1 2 3\n", "cpu 1 x 3 4\n", "cpu"] {
            assert_eq!(parse_cpu_times(bad), None, "{bad:?}");
        }
    }

    /// CPU % is truncated, capped to 0..=100 and 0 when no time passed.
    #[test]
    fn cpu_percent_cases() {
        let t = |idle, total| CpuTimes { idle, total };
        let cases = [
            (t(0, 0), t(75, 100), 25),
            (t(0, 0), t(1, 3), 66),
            (t(10, 100), t(10, 200), 100),
            (t(0, 0), t(100, 100), 0),
            (t(5, 5), t(5, 5), 0),
            // Counters going backwards (never seen, but no panic, no negatives).
            (t(100, 200), t(50, 100), 0),
            (t(0, 100), t(500, 200), 0),
        ];
        for (prev, cur, want) in cases {
            assert_eq!(cpu_percent(prev, cur), want, "{prev:?} -> {cur:?}");
        }
    }

    /// Memory is in bytes, used = total − available, swap likewise.
    #[test]
    fn meminfo() {
        let text = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   12000 kB\n\
                    Buffers: 10 kB\nCached: 20 kB\nSwapTotal:  4000 kB\nSwapFree: 3000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Mem {
                total: 16_000 * 1024,
                used: 4000 * 1024,
                swap_total: 4000 * 1024,
                swap_used: 1000 * 1024,
            }
        );
        let old = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 25 kB\n";
        assert_eq!(parse_meminfo(old).used, 60 * 1024);
        assert_eq!(parse_meminfo(""), Mem::default());
        assert_eq!(parse_meminfo("MemTotal: lots\n:\n\n"), Mem::default());
        let inverted = "MemTotal: 1 kB\nMemAvailable: 2 kB\nSwapTotal: 1 kB\nSwapFree: 9 kB\n";
        assert_eq!(parse_meminfo(inverted).used, 0);
        assert_eq!(parse_meminfo(inverted).swap_used, 0);
    }

    /// Virtual interfaces are skipped; rx is field 1, tx field 9.
    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive    |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
            lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  \
            eth0: 100 5 0 0 0 0 0 0 10 3 0 0 0 0 0 0\n  \
            wlan0:200 5 0 0 0 0 0 0 20 3 0 0 0 0 0 0\n  \
            veth1a2b: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  \
            docker0: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  \
            br-0f: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  \
            virbr0: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  \
            podman1: 7 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n  \
            short: 1 2 3\n";
        assert_eq!(parse_net_dev(text), (300, 30));
        assert_eq!(parse_net_dev(""), (0, 0));
    }

    const DISKSTATS: &str = "   7       0 loop0 10 0 80 0 0 0 8 0 0 0 0\n \
        1       0 ram0 10 0 80 0 0 0 8 0 0 0 0\n \
        259     0 nvme0n1 10 0 100 0 5 0 200 0 0 0 0\n \
        259     1 nvme0n1p1 10 0 90 0 5 0 190 0 0 0 0\n \
        8       0 sda 1 0 10 0 1 0 20 0 0 0 0\n \
        8       1 sda1 1 0 10 0 1 0 20 0 0 0 0\n \
        179     0 mmcblk0 1 0 1 0 1 0 2 0 0 0 0\n \
        179     1 mmcblk0p1 1 0 1 0 1 0 2 0 0 0 0\n \
        253     0 dm-0 1 0 1000 0 1 0 1000 0 0 0 0\n \
        9       0 md0 1 0 1000 0 1 0 1000 0 0 0 0\n \
        252     0 zram0 1 0 1000 0 1 0 1000 0 0 0 0\n \
        8       16 sdb 1 0 bad\n";

    /// Whole disks count (nvme0n1 too), partitions and virtual devices not.
    #[test]
    fn diskstats_with_sys_block() {
        let whole = [
            "nvme0n1", "sda", "mmcblk0", "sdb", "loop0", "ram0", "dm-0", "md0", "zram0",
        ];
        let (r, w) = parse_diskstats(DISKSTATS, |n| whole.contains(&n));
        assert_eq!((r, w), ((100 + 10 + 1) * 512, (200 + 20 + 2) * 512));
        assert_eq!(parse_diskstats("", |_| true), (0, 0));
    }

    /// Without /sys, partitions are told apart by name and give the same sums.
    #[test]
    fn diskstats_without_sys() {
        let (r, w) = disk_io(DISKSTATS, Path::new("/nonexistent/sys/block"));
        assert_eq!((r, w), ((100 + 10 + 1) * 512, (200 + 20 + 2) * 512));
        let names: HashSet<&str> = ["sda", "sda1", "nvme0n1", "nvme0n1p1", "mmcblk0", "vd1"]
            .into_iter()
            .collect();
        for (name, partition) in [
            ("sda1", true),
            ("nvme0n1p1", true),
            ("nvme0n1", false),
            ("mmcblk0", false),
            ("sda", false),
            ("vd1", false),
            ("1", false),
            ("p1", false),
        ] {
            assert_eq!(is_partition_by_name(&names, name), partition, "{name}");
        }
    }

    /// A /sys/block directory decides what is a whole disk.
    #[test]
    fn diskstats_sys_block_dir() {
        let sys = tempfile::tempdir().unwrap();
        for disk in ["nvme0n1", "sda", "cciss!c0d0"] {
            std::fs::create_dir(sys.path().join(disk)).unwrap();
        }
        let text = format!("{DISKSTATS} 104 0 cciss/c0d0 1 0 1 0 1 0 1 0 0 0 0\n");
        assert_eq!(
            disk_io(&text, sys.path()),
            ((100 + 10 + 1) * 512, (200 + 20 + 1) * 512)
        );
    }

    /// Uptime is whole seconds; junk is 0.
    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("1793.23 1846.21\n"), 1793);
        assert_eq!(parse_uptime("42\n"), 42);
        assert_eq!(parse_uptime(""), 0);
        assert_eq!(parse_uptime("-1.0 2"), 0);
    }

    /// The sampler reports 0 CPU before its first interval, then a figure in
    /// range, and reads the host's memory without waiting.
    #[tokio::test(start_paused = true)]
    async fn sampler_snapshot() {
        let sampler = Sampler::spawn();
        let first = sampler.snapshot();
        assert_eq!(first.cpu, 0);
        if Path::new("/proc/meminfo").exists() {
            assert!(first.mem_total > 0 && first.mem_used <= first.mem_total);
            assert!(first.sysup > 0);
        }
        tokio::time::sleep(SAMPLE_INTERVAL + Duration::from_millis(300)).await;
        assert!((0..=100).contains(&sampler.snapshot().cpu));
    }
}
