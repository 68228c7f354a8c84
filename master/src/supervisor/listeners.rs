//! The listeners the master binds for an instance, before its worker starts
//! and for as long as the instance should run (DESIGN §1): a port conflict is
//! a synchronous 409, and connections wait in the backlog while a worker
//! restarts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use proto::listen;
use proto::message::{ListenerInfo, ListenerRole, Transport};
use proto::spec::{HostPort, Role, TunnelSpec};

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another instance or process holds the port.
    #[error("Instance port conflict: {addr}")]
    Conflict { addr: String },
    /// The address cannot be bound here at all (not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Unusable { addr: String, source: io::Error },
}

/// Bound sockets of one instance; the master keeps these while it runs.
/// A clone shares the sockets (a PUT keeps those its new URL still uses).
#[derive(Debug, Default, Clone)]
pub struct Listeners {
    items: Vec<(ListenerInfo, Arc<OwnedFd>)>,
}

impl Listeners {
    /// Binds what the URL names: a server's tunnel port and (reverse mode)
    /// its entrance; a single-end client's entrance. Mode 0 tries the
    /// entrance and leaves it to the worker when it does not bind.
    pub fn bind_for(spec: &TunnelSpec) -> Result<Self, BindError> {
        Self::bind_reusing(spec, &Listeners::default())
    }

    /// [`Listeners::bind_for`], sharing the sockets `held` has for the same
    /// address and transport instead of binding them again (which would
    /// fail: the instance itself holds the port). All or nothing: on an
    /// error, what was bound here is closed and `held` is as it was.
    pub fn bind_reusing(spec: &TunnelSpec, held: &Listeners) -> Result<Self, BindError> {
        let p = &spec.params;
        let mut l = Listeners::default();
        match spec.role {
            Role::Server => {
                l.take_or_bind(held, &spec.tunnel, Transport::Tcp, ListenerRole::Tunnel)?;
                if p.mode != 2 {
                    let entrance = l.bind_entrance(held, &spec.targets[0], !p.notcp, !p.noudp);
                    if p.mode == 1 {
                        entrance?;
                    }
                }
            }
            Role::Client => {
                if p.mode != 2 {
                    let entrance = l.bind_entrance(held, &spec.tunnel, !p.notcp, !p.noudp);
                    if p.mode == 1 {
                        entrance?;
                    }
                }
            }
        }
        Ok(l)
    }

    /// Binds an entrance's TCP and UDP sockets, all or nothing.
    fn bind_entrance(
        &mut self,
        held: &Listeners,
        addr: &HostPort,
        tcp: bool,
        udp: bool,
    ) -> Result<(), BindError> {
        let before = self.items.len();
        let res = (|| {
            if tcp {
                self.take_or_bind(held, addr, Transport::Tcp, ListenerRole::Entrance)?;
            }
            if udp {
                self.take_or_bind(held, addr, Transport::Udp, ListenerRole::Entrance)?;
            }
            Ok(())
        })();
        if res.is_err() {
            self.items.truncate(before);
        }
        res
    }

    /// Binds one socket and keeps it.
    pub fn bind(
        &mut self,
        addr: &HostPort,
        proto: Transport,
        role: ListenerRole,
    ) -> Result<Arc<OwnedFd>, BindError> {
        self.take_or_bind(&Listeners::default(), addr, proto, role)
    }

    /// Keeps `held`'s socket for `addr`/`proto`, or binds a new one.
    fn take_or_bind(
        &mut self,
        held: &Listeners,
        addr: &HostPort,
        proto: Transport,
        role: ListenerRole,
    ) -> Result<Arc<OwnedFd>, BindError> {
        let name = addr.to_string();
        let fd = match held.get(&name, proto) {
            Some(fd) => fd,
            None => Arc::new(bind_one(addr, proto)?),
        };
        let info = ListenerInfo {
            addr: name,
            proto,
            role,
        };
        self.items.push((info, fd.clone()));
        Ok(fd)
    }

    /// The listener for `addr`/`proto` if already bound.
    pub fn get(&self, addr: &str, proto: Transport) -> Option<Arc<OwnedFd>> {
        self.items
            .iter()
            .find(|(i, _)| i.addr == addr && i.proto == proto)
            .map(|(_, fd)| fd.clone())
    }

    /// What `Hello` lists, in the order of [`Listeners::fds`].
    pub fn infos(&self) -> Vec<ListenerInfo> {
        self.items.iter().map(|(i, _)| i.clone()).collect()
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.items.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// Duplicates of every listener (watched for traffic while parked).
    pub fn dup_fds(&self) -> Vec<OwnedFd> {
        self.items
            .iter()
            .filter_map(|(_, fd)| fd.try_clone().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn bind_one(addr: &HostPort, proto: Transport) -> Result<OwnedFd, BindError> {
    let unusable = |source| BindError::Unusable {
        addr: addr.to_string(),
        source,
    };
    let sa = listen::listen_addr(addr).map_err(unusable)?;
    let res = match proto {
        Transport::Tcp => listen::bind_tcp(sa).map(OwnedFd::from),
        Transport::Udp => listen::bind_udp(sa).map(OwnedFd::from),
    };
    res.map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => BindError::Conflict {
            addr: format!("{addr}/{}", proto.as_str()),
        },
        _ => unusable(e),
    })
}

/// Whether a worker of `spec` may ask for `addr`/`proto` (DESIGN §1: only
/// what its URL listens on, as [`Listeners::bind_for`] reads it): a server's
/// tunnel port (TCP) and, unless it runs in forward mode (2), its entrance at
/// the first target; a client's entrance at its tunnel address unless it runs
/// dual-end (mode 2), and, unless it runs single-end (mode 1), the entrance
/// at its first target that a dual-end client opens when its server runs
/// the forward flow (only the handshake tells, so only the worker can ask).
/// An entrance is TCP unless `notcp`, UDP unless `noudp`.
///
/// Anything else is an address the instance only dials (a forward server's
/// target, a client's server) or none of its business: a compromised worker
/// asking for it gets nothing, not even a UDP socket on a TCP-only port.
pub fn may_bind(spec: &TunnelSpec, addr: &str, proto: Transport) -> bool {
    let p = &spec.params;
    let transport = match proto {
        Transport::Tcp => !p.notcp,
        Transport::Udp => !p.noudp,
    };
    let entrance = transport && p.mode != 2;
    match spec.role {
        Role::Server => {
            (proto == Transport::Tcp && addr == spec.tunnel.to_string())
                || (entrance && addr == spec.targets[0].to_string())
        }
        Role::Client => {
            (entrance && addr == spec.tunnel.to_string())
                || (transport && p.mode != 1 && addr == spec.targets[0].to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second instance on the same port is a conflict naming the address.
    #[test]
    fn conflict() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let spec: TunnelSpec = format!("server://127.0.0.1:{port}/127.0.0.1:1?mode=2")
            .parse()
            .unwrap();
        let held = Listeners::bind_for(&spec).unwrap();
        assert_eq!(held.infos().len(), 1);
        let err = Listeners::bind_for(&spec).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Instance port conflict: 127.0.0.1:"),
            "{err}"
        );
    }

    /// A new URL shares the sockets held for addresses it keeps and binds
    /// the others; when one of those is taken, nothing is bound and the
    /// held set is untouched.
    #[test]
    fn bind_reusing_shares_what_stays() {
        let free = || {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let (entrance, target) = (free(), free());
        let spec = |e: std::net::SocketAddr, t: std::net::SocketAddr| -> TunnelSpec {
            format!("client://{e}/{t}?mode=1").parse().unwrap()
        };
        let held = Listeners::bind_for(&spec(entrance, target)).unwrap();
        let fresh = Listeners::bind_reusing(&spec(entrance, free()), &held).unwrap();
        assert_eq!(fresh.items.len(), held.items.len());
        for ((hi, hfd), (fi, ffd)) in held.items.iter().zip(&fresh.items) {
            assert_eq!((hi.addr.as_str(), hi.proto), (fi.addr.as_str(), fi.proto));
            assert!(Arc::ptr_eq(hfd, ffd), "{} shared, not bound again", fi.addr);
        }
        drop(fresh);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err =
            Listeners::bind_reusing(&spec(taken.local_addr().unwrap(), target), &held).unwrap_err();
        assert!(matches!(err, BindError::Conflict { .. }), "{err}");
        assert!(held.items.iter().all(|(_, fd)| Arc::strong_count(fd) == 1));
    }

    /// A worker may ask only for what its URL listens on: by role, mode,
    /// transport and `notcp`/`noudp`; never for what it dials, never by
    /// another spelling of the address.
    #[test]
    fn may_bind_only_what_the_url_listens_on() {
        use Transport::{Tcp, Udp};
        let cases: &[(&str, &str, Transport, bool)] = &[
            // A reverse server: tunnel (TCP), entrance at the target (TCP+UDP).
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1",
                "127.0.0.1:5",
                Tcp,
                true,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1",
                "127.0.0.1:5",
                Udp,
                false,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1",
                "127.0.0.1:6",
                Tcp,
                true,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1",
                "127.0.0.1:6",
                Udp,
                true,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1&noudp=1",
                "127.0.0.1:6",
                Udp,
                false,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=1&notcp=1",
                "127.0.0.1:6",
                Tcp,
                false,
            ),
            ("server://127.0.0.1:5/127.0.0.1:6", "127.0.0.1:6", Tcp, true),
            (
                "server://127.0.0.1:5/127.0.0.1:6,127.0.0.1:7",
                "127.0.0.1:7",
                Tcp,
                false,
            ),
            ("server://127.0.0.1:5/127.0.0.1:6", ":6", Tcp, false),
            ("server://127.0.0.1:5/127.0.0.1:6", "0.0.0.0:6", Tcp, false),
            // A forward server dials its target: never listens there.
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:5",
                Tcp,
                true,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:6",
                Tcp,
                false,
            ),
            (
                "server://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:6",
                Udp,
                false,
            ),
            // A single-end client listens on its tunnel address.
            ("client://:5/127.0.0.1:6?mode=1", ":5", Tcp, true),
            ("client://:5/127.0.0.1:6?mode=1", ":5", Udp, true),
            ("client://:5/127.0.0.1:6?mode=1", "127.0.0.1:6", Tcp, false),
            ("client://:5/127.0.0.1:6", ":5", Udp, true),
            // A dual-end client dials its server, never listens there; in
            // the forward flow its entrance is at its first target (the
            // soak found forward tunnels refused this).
            (
                "client://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:5",
                Tcp,
                false,
            ),
            (
                "client://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:5",
                Udp,
                false,
            ),
            (
                "client://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:6",
                Tcp,
                true,
            ),
            (
                "client://127.0.0.1:5/127.0.0.1:6?mode=2",
                "127.0.0.1:6",
                Udp,
                true,
            ),
            (
                "client://127.0.0.1:5/127.0.0.1:6?mode=2&notcp=1",
                "127.0.0.1:6",
                Tcp,
                false,
            ),
            (
                "client://127.0.0.1:5/127.0.0.1:6,127.0.0.1:7?mode=2",
                "127.0.0.1:7",
                Tcp,
                false,
            ),
            ("client://127.0.0.1:5/127.0.0.1:6", "127.0.0.1:6", Tcp, true),
        ];
        for (url, addr, proto, want) in cases {
            let spec: TunnelSpec = url.parse().unwrap();
            assert_eq!(
                may_bind(&spec, addr, *proto),
                *want,
                "{url}: {addr}/{proto}"
            );
        }
        for junk in [
            "",
            "garbage",
            "/tmp/x.sock",
            "127.0.0.1:0",
            "127.0.0.1:99999",
        ] {
            let spec: TunnelSpec = "client://:5/127.0.0.1:6?mode=1".parse().unwrap();
            assert!(!may_bind(&spec, junk, Tcp), "{junk:?}");
        }
    }
}
