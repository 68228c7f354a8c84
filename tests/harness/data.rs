//! Payloads and their SHA-256.

use sha2::{Digest, Sha256};

/// `len` random bytes: [`pattern`] under a random seed (`rand::fill` takes
/// most of a second per 8 MiB in a debug build).
pub fn random_bytes(len: usize) -> Vec<u8> {
    pattern(len, rand::random())
}

/// `len` deterministic pseudo-random bytes for `seed` (xorshift64*), cheap
/// enough in debug builds to make megabytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}
