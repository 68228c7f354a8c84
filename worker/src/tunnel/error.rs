//! Tunnel engine errors, each naming whose fault it is: the peer (other
//! tunnel end), the target, or this host.

use std::io;

/// What went wrong, and on which side.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A local listener could not be bound (port taken, no permission).
    #[error("bind {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    /// The other tunnel end misbehaved, refused us, or went away.
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    /// No target could be reached.
    #[error("target {addr}: {reason}")]
    Target { addr: String, reason: String },
    /// Local configuration cannot work (missing files, bad certificate).
    #[error("config: {0}")]
    Config(String),
}

impl TunnelError {
    pub fn peer(peer: impl ToString, reason: impl ToString) -> Self {
        Self::Peer {
            peer: peer.to_string(),
            reason: reason.to_string(),
        }
    }
}
