//! A string that never reaches a log: `Debug` and `Display` print a redaction.
//!
//! On the wire (serde) it is the plain string: the control protocol must carry
//! the tunnel key and TLS private key to the worker, only logs must not.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value (tunnel key, API key). Compare with [`Secret::ct_eq`].
/// Serializes as the bare string (`#[serde(transparent)]`).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; callers take care where it goes.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (length leaks, content does not).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        let a = self.0.as_bytes();
        if a.len() != other.len() {
            return false;
        }
        a.iter().zip(other).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(***, {} bytes)", self.0.len())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug and Display never show the value.
    #[test]
    fn redacts() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}{s}").contains("hunter2"));
        assert!(s.ct_eq(b"hunter2"));
        assert!(!s.ct_eq(b"hunter3"));
        assert!(!s.ct_eq(b"hunter"));
    }

    /// On the wire a secret is its bare string, both ways.
    #[test]
    fn serde_is_transparent() {
        let s = Secret::new("hunter2");
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json, r#""hunter2""#);
        let back: Secret = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }
}
