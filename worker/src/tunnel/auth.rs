//! Key proofs for the tunnel handshake.
//!
//! Both sides prove they know the tunnel key with HMAC-SHA256 over fresh
//! nonces from both ends plus the TLS channel binding (when TLS is on), so a
//! captured handshake replays to nothing and a TLS relay cannot reuse it.
//! Pool connections prove the session key derived from the control handshake.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const NONCE: usize = 16;
pub const PROOF: usize = 32;

/// Which statement a proof is about; keeps proofs of different roles apart.
#[derive(Clone, Copy)]
pub enum Purpose {
    ClientControl,
    ServerControl,
    Session,
    Pool,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::ClientControl => b"drover/1 control client",
            Purpose::ServerControl => b"drover/1 control server",
            Purpose::Session => b"drover/1 session key",
            Purpose::Pool => b"drover/1 pool",
        }
    }
}

fn mac(key: &[u8], purpose: Purpose, parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(purpose.label());
    for p in parts {
        // Length-prefix each part so no two inputs concatenate alike.
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    m
}

/// HMAC(key, purpose ‖ parts).
pub fn prove(key: &[u8], purpose: Purpose, parts: &[&[u8]]) -> [u8; PROOF] {
    mac(key, purpose, parts).finalize().into_bytes().into()
}

/// Constant-time check of a proof.
pub fn verify(key: &[u8], purpose: Purpose, parts: &[&[u8]], proof: &[u8]) -> bool {
    mac(key, purpose, parts).verify_slice(proof).is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proof verifies only with the same key, purpose and nonces.
    #[test]
    fn proofs_bind_everything() {
        let (a, b) = (nonce(), nonce());
        let p = prove(b"k", Purpose::ClientControl, &[&a, &b]);
        assert!(verify(b"k", Purpose::ClientControl, &[&a, &b], &p));
        assert!(!verify(b"x", Purpose::ClientControl, &[&a, &b], &p));
        assert!(!verify(b"k", Purpose::ServerControl, &[&a, &b], &p));
        assert!(!verify(b"k", Purpose::ClientControl, &[&b, &a], &p));
        assert!(!verify(b"k", Purpose::ClientControl, &[&a, &b], &p[..31]));
    }
}
