//! The master URL: `master://[HOST]:PORT[/PREFIX]?log=&tls=&crt=&key=&gateway=&gateway_default=&lru=&tenant_mem=&tenant_pids=&grace=&retry_failed=`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proto::spec::LogLevel;
use proto::url;

/// Default when `drover` is started without an argument.
pub const DEFAULT_URL: &str = "master://127.0.0.1:9090/api";

/// The parsed master URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Host as written (`""` = all interfaces), for `/info.name`.
    pub host: String,
    pub port: u16,
    /// API prefix without trailing slash, e.g. `/api`.
    pub prefix: String,
    pub log: LogLevel,
    /// Raw `log` value for `/info.log`.
    pub log_text: String,
    pub tls: u8,
    pub crt: Option<String>,
    pub key: Option<String>,
    /// Gateway listener address (issue 6).
    pub gateway: Option<String>,
    pub gateway_default: Option<String>,
    pub lru: usize,
    /// Per-tenant cgroup limits (`tenant_mem`, `tenant_pids`).
    pub tenant_limits: crate::supervisor::isolation::LimitsConfig,
    /// How long a stopped worker may drain before SIGTERM (`grace`).
    pub grace: Duration,
    /// How often a `failed` instance is tried again (`retry_failed`).
    pub retry_failed: Duration,
}

/// Default of `grace=`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Longest `grace=` accepted.
const MAX_GRACE: Duration = Duration::from_secs(600);
/// Bounds of `retry_failed=`.
const RETRY_FAILED_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(86_400);

/// A master URL that cannot be used, naming the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses a `master://` URL.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |m: String| ConfigError(m);
        let raw = url::split(text).map_err(|e| bad(e.0))?;
        if raw.scheme != "master" {
            return Err(bad(format!("scheme: {:?} is not master", raw.scheme)));
        }
        if raw.userinfo.is_some() {
            return Err(bad(
                "address: the master URL takes no user/key before '@'".into()
            ));
        }
        let port: u16 = match raw.port.parse() {
            Ok(p) => p,
            Err(_) => {
                return Err(bad(format!(
                    "address: port {:?} is not a number in 0..65535",
                    raw.port
                )));
            }
        };
        if !raw.host.is_empty() && raw.host.parse::<IpAddr>().is_err() && raw.host != "localhost" {
            return Err(bad(format!("address: {:?} is not an IP address", raw.host)));
        }
        let path = raw.path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            "/api".to_string()
        } else {
            format!("/{path}")
        };
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
            || prefix.contains("//")
        {
            return Err(bad(format!(
                "prefix: {prefix:?} may contain only letters, digits, '/', '-', '_', '.'"
            )));
        }
        let mut cfg = Config {
            host: raw.host.to_string(),
            port,
            prefix,
            log: LogLevel::Info,
            log_text: "info".into(),
            tls: 0,
            crt: None,
            key: None,
            gateway: None,
            gateway_default: None,
            lru: 10_000,
            tenant_limits: Default::default(),
            grace: DEFAULT_GRACE,
            retry_failed: crate::supervisor::backoff::FAILED_RETRY,
        };
        for (name, value) in form_pairs(raw.query) {
            let value = value.as_str();
            match name.as_str() {
                "log" => {
                    cfg.log = value.parse().map_err(|e| bad(format!("param log: {e}")))?;
                    cfg.log_text = value.to_string();
                }
                "tls" => {
                    cfg.tls = match value {
                        "0" => 0,
                        "1" => 1,
                        "2" => 2,
                        _ => return Err(bad(format!("param tls: {value:?} is not 0, 1 or 2"))),
                    }
                }
                "crt" => cfg.crt = Some(value.to_string()),
                "key" => cfg.key = Some(value.to_string()),
                "gateway" => cfg.gateway = Some(value.to_string()),
                "gateway_default" => cfg.gateway_default = Some(value.to_string()),
                "lru" => {
                    cfg.lru = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=10_000_000).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "param lru: {value:?} is not an integer in 1..=10000000"
                            ))
                        })?
                }
                "tenant_mem" => {
                    let (tenant, size) = tenant_value(value, "tenant_mem").map_err(bad)?;
                    let bytes = parse_bytes(size).ok_or_else(|| {
                        bad(format!(
                            "param tenant_mem: {size:?} is not a size like 64M or 1G"
                        ))
                    })?;
                    cfg.tenant_limits_mut(tenant).memory = Some(bytes);
                }
                "tenant_pids" => {
                    let (tenant, n) = tenant_value(value, "tenant_pids").map_err(bad)?;
                    let n = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(format!("param tenant_pids: {n:?} is not a positive integer"))
                    })?;
                    cfg.tenant_limits_mut(tenant).pids = Some(n);
                }
                "grace" => {
                    cfg.grace = proto::duration::parse(value)
                        .ok()
                        .filter(|d| *d <= MAX_GRACE)
                        .ok_or_else(|| {
                            bad(format!(
                                "param grace: {value:?} is not a duration up to 10m (e.g. 10s)"
                            ))
                        })?
                }
                "retry_failed" => {
                    cfg.retry_failed = proto::duration::parse(value)
                        .ok()
                        .filter(|d| RETRY_FAILED_RANGE.contains(d))
                        .ok_or_else(|| {
                            bad(format!(
                                "param retry_failed: {value:?} is not a duration from 1s to 24h (e.g. 5m)"
                            ))
                        })?
                }
                other => {
                    return Err(bad(format!(
                        "param {other}: unknown parameter (known: log tls crt key gateway gateway_default lru tenant_mem tenant_pids grace retry_failed)"
                    )));
                }
            }
        }
        if cfg.tls == 2 && (cfg.crt.is_none() || cfg.key.is_none()) {
            return Err(bad(
                "param tls: tls=2 needs crt=<file> and key=<file>".into()
            ));
        }
        Ok(cfg)
    }

    /// The limits `tenant_mem`/`tenant_pids` set: the default, or `tenant`'s own.
    fn tenant_limits_mut(
        &mut self,
        tenant: Option<&str>,
    ) -> &mut crate::supervisor::isolation::TenantLimits {
        match tenant {
            None => &mut self.tenant_limits.default,
            Some(t) => self.tenant_limits.tenants.entry(t.to_string()).or_default(),
        }
    }

    /// Where the API listens.
    pub fn listen_addr(&self) -> SocketAddr {
        let ip = match self.host.as_str() {
            "" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        SocketAddr::new(ip, self.port)
    }
}

/// `VALUE` (for every tenant) or `TENANT:VALUE` (that tenant's own).
fn tenant_value<'a>(v: &'a str, param: &str) -> Result<(Option<&'a str>, &'a str), String> {
    match v.split_once(':') {
        None => Ok((None, v)),
        Some((t, _)) if !crate::supervisor::valid_tenant(t) => Err(format!(
            "param {param}: tenant {t:?} is not [a-z0-9_-]{{1,32}}"
        )),
        Some((t, rest)) => Ok((Some(t), rest)),
    }
}

/// `1048576`, `64K`, `64M`, `1G` (powers of 1024).
fn parse_bytes(v: &str) -> Option<u64> {
    let (num, mult) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&v[..i], 1 << 20),
        (i, 'G' | 'g') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|b| *b >= 1 << 20)
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NodePass master URLs parse; the prefix defaults to /api.
    #[test]
    fn parses() {
        let c = Config::parse("master://0.0.0.0:9090/api?log=info&tls=1").unwrap();
        assert_eq!((c.port, c.prefix.as_str(), c.tls), (9090, "/api", 1));
        let c = Config::parse("master://:9090").unwrap();
        assert_eq!((c.host.as_str(), c.prefix.as_str()), ("", "/api"));
        let c = Config::parse("master://127.0.0.1:0/admin/").unwrap();
        assert_eq!(c.prefix, "/admin");
        assert_eq!(
            Config::parse(DEFAULT_URL)
                .unwrap()
                .listen_addr()
                .to_string(),
            "127.0.0.1:9090"
        );
    }

    /// `tenant_mem`/`tenant_pids` set the default, or with `tenant:` one
    /// tenant's own; repeatable.
    #[test]
    fn tenant_limits() {
        let c = Config::parse(
            "master://:9090?tenant_mem=64M&tenant_pids=100&tenant_mem=alice:1G&tenant_pids=bob:5",
        )
        .unwrap();
        let l = &c.tenant_limits;
        assert_eq!(l.of("carol").memory, Some(64 << 20));
        assert_eq!(l.of("alice").memory, Some(1 << 30));
        assert_eq!(l.of("alice").pids, Some(100));
        assert_eq!(l.of("bob").pids, Some(5));
        assert_eq!(l.of("bob").memory, Some(64 << 20));
    }

    /// `retry_failed=` takes a duration; 5 min without it.
    #[test]
    fn retry_failed() {
        let c = Config::parse("master://:9090").unwrap();
        assert_eq!(c.retry_failed, Duration::from_secs(300));
        let c = Config::parse("master://:9090?retry_failed=2s").unwrap();
        assert_eq!(c.retry_failed, Duration::from_secs(2));
    }

    /// `grace=` takes a duration; 10 s without it.
    #[test]
    fn grace() {
        let c = Config::parse("master://:9090").unwrap();
        assert_eq!(c.grace, DEFAULT_GRACE);
        let c = Config::parse("master://:9090?grace=1500ms").unwrap();
        assert_eq!(c.grace, Duration::from_millis(1500));
        let c = Config::parse("master://:9090?grace=0").unwrap();
        assert_eq!(c.grace, Duration::ZERO);
    }

    /// Bad URLs name the part.
    #[test]
    fn rejects() {
        for (u, part) in [
            ("http://:9090", "scheme"),
            ("master://:x", "address"),
            ("master://:9090?tls=2", "param tls"),
            ("master://:9090?bogus=1", "param bogus"),
            ("master://:9090?log=loud", "param log"),
            ("master://:9090/a b", "prefix"),
            ("master://:9090?grace=forever", "param grace"),
            ("master://:9090?grace=11m", "param grace"),
            ("master://:9090?retry_failed=0", "param retry_failed"),
            ("master://:9090?tenant_mem=Alice:1G", "param tenant_mem"),
            ("master://:9090?tenant_mem=alice:lots", "param tenant_mem"),
            ("master://:9090?tenant_pids=alice:0", "param tenant_pids"),
            ("master://:9090?retry_failed=25h", "param retry_failed"),
            ("master://:9090?retry_failed=", "param retry_failed"),
        ] {
            let e = Config::parse(u).unwrap_err();
            assert!(e.0.starts_with(part), "{u}: {e}");
        }
    }
}
