//! [`ProtoError`]: everything that can go wrong on the control channel.
//!
//! Each variant says what was being done, and whose fault it is:
//! [`ProtoError::is_peer_fault`] tells a misbehaving peer (bad frame, wrong
//! fds, other build) from a local I/O failure. Any of them ends that one
//! channel (and so that one worker), never the process.

use std::io;

use crate::{MAX_FRAME, PROTOCOL_VERSION};

/// A control-protocol failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A system call on the control socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`"receiving from the control socket"`).
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A frame header claimed more than [`MAX_FRAME`] bytes (or a message to
    /// send encoded to more). Nothing of that size was allocated.
    #[error("frame of {len} bytes exceeds the {MAX_FRAME} byte limit")]
    FrameTooLarge {
        /// The length the header claimed, or the encoded body's length.
        len: u64,
    },

    /// A frame header claimed a zero-length body (JSON is never empty).
    #[error("empty frame (length 0)")]
    EmptyFrame,

    /// The peer closed the socket in the middle of a frame.
    #[error("control socket closed mid-frame ({got} bytes of an unfinished frame)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        got: usize,
    },

    /// A frame body was not JSON at all.
    #[error("frame is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),

    /// A frame was JSON, but its `type` is not a message of this direction
    /// (or it has no `type`).
    #[error("unknown message type {0:?}")]
    UnknownType(String),

    /// A frame was JSON of a known `type` whose fields do not fit.
    #[error("invalid {ty} message: {source}")]
    InvalidMessage {
        /// The message type.
        ty: &'static str,
        /// What serde could not fit.
        #[source]
        source: serde_json::Error,
    },

    /// A message came (or was about to be sent) with the wrong number of fds.
    #[error("{ty} message carries {got} file descriptors, expected {expected}")]
    FdCount {
        /// The message type.
        ty: &'static str,
        /// What [`crate::message::Message::fd_count`] says.
        expected: usize,
        /// What arrived (or was passed to `send`).
        got: usize,
    },

    /// More fds than one message may carry ([`crate::fdpass::MAX_FDS`]);
    /// those that arrived were closed.
    #[error("more than {max} file descriptors with one message")]
    TooManyFds {
        /// The limit.
        max: usize,
    },

    /// The peer speaks another protocol version.
    #[error(
        "control protocol version mismatch: this side speaks {ours}, the peer {theirs}; \
         run drover and drover-worker from the same build"
    )]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`] of this build.
        ours: u32,
        /// What the peer sent.
        theirs: u32,
    },

    /// A message could not be encoded (a bug: our types always serialize).
    #[error("cannot encode {ty} message: {source}")]
    Encode {
        /// The message type.
        ty: &'static str,
        /// The serializer's complaint.
        #[source]
        source: serde_json::Error,
    },
}

impl ProtoError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: &'static str, source: io::Error) -> Self {
        Self::Io { context, source }
    }

    /// A version mismatch against this build.
    pub fn version_mismatch(theirs: u32) -> Self {
        Self::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        }
    }

    /// True when the peer sent something this build cannot accept (bad
    /// frame, bad message, wrong fds, other version); false for local I/O
    /// and encoding failures and for [`ProtoError::Truncated`], which is
    /// the peer dying as often as misbehaving.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Encode { .. } | Self::Truncated { .. } => false,
            Self::FrameTooLarge { .. }
            | Self::EmptyFrame
            | Self::NotJson(_)
            | Self::UnknownType(_)
            | Self::InvalidMessage { .. }
            | Self::FdCount { .. }
            | Self::TooManyFds { .. }
            | Self::VersionMismatch { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version error names both versions and the fix.
    #[test]
    fn version_mismatch_names_both_and_the_fix() {
        let text = ProtoError::version_mismatch(7).to_string();
        assert!(
            text.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(text.contains("peer 7"), "{text}");
        assert!(text.contains("same build"), "{text}");
    }

    /// I/O errors keep their context in front of the OS message.
    #[test]
    fn io_error_has_context() {
        let err = ProtoError::io(
            "sending to the control socket",
            io::ErrorKind::BrokenPipe.into(),
        );
        assert!(
            err.to_string()
                .starts_with("sending to the control socket: ")
        );
        assert!(!err.is_peer_fault());
    }
}
