//! Dialling targets: the target list with `lbs` (round-robin with failover,
//! lowest latency, primary then backups), a DNS cache with the `dns` TTL, and
//! the `dial` source address (dropped for good after it fails once, as
//! NodePass does).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use proto::spec::HostPort;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::error::TunnelError;

/// Per-attempt connect timeout.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Chooses and dials targets.
pub struct Dialer {
    targets: Vec<HostPort>,
    lbs: u8,
    next: AtomicUsize,
    source: Option<IpAddr>,
    source_failed: AtomicBool,
    dns_ttl: Duration,
    cache: Mutex<HashMap<usize, (Vec<SocketAddr>, Instant)>>,
    /// Last connect time per target in µs (0 = not measured yet).
    latency: Vec<AtomicU64>,
}

impl Dialer {
    pub fn new(targets: Vec<HostPort>, lbs: u8, source: Option<IpAddr>, dns_ttl: Duration) -> Self {
        let latency = targets.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            targets,
            lbs,
            next: AtomicUsize::new(0),
            source,
            source_failed: AtomicBool::new(false),
            dns_ttl,
            cache: Mutex::new(HashMap::new()),
            latency,
        }
    }

    /// The first target, for logs.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        all.join(",")
    }

    /// Indices in the order to try them.
    fn order(&self) -> Vec<usize> {
        let n = self.targets.len();
        match self.lbs {
            1 => {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by_key(|&i| self.latency[i].load(Relaxed));
                idx
            }
            2 => (0..n).collect(),
            _ => {
                let start = self.next.fetch_add(1, Relaxed) % n;
                (0..n).map(|i| (start + i) % n).collect()
            }
        }
    }

    async fn resolve(&self, i: usize) -> io::Result<Vec<SocketAddr>> {
        let t = &self.targets[i];
        if t.host.is_empty() {
            return Ok(vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                t.port,
            )]);
        }
        if let Some(ip) = t.ip() {
            return Ok(vec![SocketAddr::new(ip, t.port)]);
        }
        if let Some((addrs, at)) = self.cache.lock().expect("dns cache lock").get(&i)
            && at.elapsed() < self.dns_ttl
        {
            return Ok(addrs.clone());
        }
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(it) => {
                let addrs: Vec<SocketAddr> = it.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
                }
                self.cache
                    .lock()
                    .expect("dns cache lock")
                    .insert(i, (addrs.clone(), Instant::now()));
                Ok(addrs)
            }
            // A resolver hiccup should not take down a working target: use the stale entry.
            Err(e) => match self.cache.lock().expect("dns cache lock").get(&i) {
                Some((addrs, _)) => Ok(addrs.clone()),
                None => Err(e),
            },
        }
    }

    /// Runs `attempt` on each address of each target in `lbs` order until
    /// one succeeds; returns its value, address and target index.
    async fn first_ok<T, F, Fut>(
        &self,
        mut attempt: F,
    ) -> Result<(T, SocketAddr, usize), TunnelError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = io::Result<T>>,
    {
        let mut last = String::from("no target");
        for i in self.order() {
            let addrs = match self.resolve(i).await {
                Ok(a) => a,
                Err(e) => {
                    last = format!("{}: resolve: {e}", self.targets[i]);
                    continue;
                }
            };
            for addr in addrs {
                match attempt(addr).await {
                    Ok(v) => return Ok((v, addr, i)),
                    Err(e) => {
                        // Unreachable targets sort last for lbs=1 until they answer again.
                        self.latency[i].store(u64::MAX / 2, Relaxed);
                        last = format!("{addr}: {e}");
                        tracing::debug!(target = %addr, cause = %e, "target dial failed, trying the next");
                    }
                }
            }
        }
        Err(TunnelError::Target {
            addr: self.describe(),
            reason: last,
        })
    }

    /// Connects to the first reachable target in `lbs` order.
    pub async fn tcp(&self) -> Result<(TcpStream, SocketAddr, Duration), TunnelError> {
        let ((s, took), addr, i) = self
            .first_ok(|addr| async move {
                let started = Instant::now();
                let s = self.connect(addr).await?;
                Ok((s, started.elapsed()))
            })
            .await?;
        self.latency[i].store(took.as_micros().max(1) as u64, Relaxed);
        let _ = s.set_nodelay(true);
        Ok((s, addr, took))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        proto::congestion::tune_loopback(&sock, addr.ip());
        if let Some(src) = self.source
            && !self.source_failed.load(Relaxed)
            && src.is_ipv4() == addr.is_ipv4()
            && let Err(e) = sock.bind(SocketAddr::new(src, 0))
        {
            tracing::warn!(dial = %src, cause = %e, "dial source address unusable; using automatic source from now on");
            self.source_failed.store(true, Relaxed);
            return Box::pin(self.connect(addr)).await;
        }
        tokio::time::timeout(DIAL_TIMEOUT, sock.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// A UDP socket connected to the first target that resolves.
    pub async fn udp(&self) -> Result<(UdpSocket, SocketAddr), TunnelError> {
        let (s, addr, _) = self
            .first_ok(|addr| async move {
                let local = match self.source {
                    Some(src)
                        if src.is_ipv4() == addr.is_ipv4() && !self.source_failed.load(Relaxed) =>
                    {
                        SocketAddr::new(src, 0)
                    }
                    _ if addr.is_ipv4() => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                    _ => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
                };
                let s = UdpSocket::bind(local).await?;
                s.connect(addr).await?;
                Ok(s)
            })
            .await?;
        Ok((s, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(lbs: u8, n: u16) -> Dialer {
        let t = (1..=n)
            .map(|p| HostPort {
                host: "127.0.0.1".into(),
                port: p,
            })
            .collect();
        Dialer::new(t, lbs, None, Duration::from_secs(1))
    }

    /// lbs=0 rotates the starting target; lbs=2 always starts at the primary.
    #[test]
    fn orders() {
        let d = dialer(0, 3);
        assert_eq!(d.order(), vec![0, 1, 2]);
        assert_eq!(d.order(), vec![1, 2, 0]);
        let d = dialer(2, 3);
        assert_eq!(d.order(), vec![0, 1, 2]);
        assert_eq!(d.order(), vec![0, 1, 2]);
        let d = dialer(1, 3);
        d.latency[0].store(500, Relaxed);
        d.latency[1].store(100, Relaxed);
        d.latency[2].store(300, Relaxed);
        assert_eq!(d.order(), vec![1, 2, 0]);
    }

    /// A dead first target fails over to the live second one.
    #[tokio::test]
    async fn fails_over() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let t = vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: dead_port,
            },
            HostPort {
                host: "127.0.0.1".into(),
                port: live.local_addr().unwrap().port(),
            },
        ];
        let d = Dialer::new(t, 2, None, Duration::from_secs(1));
        let (_s, addr, _) = d.tcp().await.unwrap();
        assert_eq!(addr, live.local_addr().unwrap());
    }
}
