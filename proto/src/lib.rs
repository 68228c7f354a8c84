//! The one link between the Drover master and its workers.
//!
//! Everything both sides must agree on lives here: the NodePass tunnel URL
//! grammar ([`spec`]), durations as NodePass writes them ([`duration`]) and
//! the redacting [`Secret`] wrapper, and the control protocol: framing
//! ([`frame`]), messages ([`message`]), fd passing ([`fdpass`]) and the
//! socketpair channel that carries them ([`channel`]), with its errors
//! ([`error`]).

pub mod certs;
pub mod channel;
pub mod clock;
pub mod congestion;
pub mod duration;
pub mod error;
pub mod fdpass;
pub mod frame;
pub mod listen;
pub mod message;
pub mod secret;
pub mod spec;
pub mod url;

pub use channel::{
    ControlChannel, ControlReceiver, ControlSender, MasterChannel, WorkerChannel, socketpair,
};
pub use error::ProtoError;
pub use message::{Message, ToMaster, ToWorker};
pub use secret::Secret;
pub use spec::{Role, SpecError, TunnelSpec};

/// Control protocol version, sent in `Hello` and checked by the worker.
/// Bump it on every wire change (and refresh `tests/data/`).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame body in bytes (1 MiB); a header claiming more ends the
/// channel.
pub const MAX_FRAME: usize = 1 << 20;
