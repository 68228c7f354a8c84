//! The one link between the Drover master and its workers.
//!
//! Everything both sides must agree on lives here: the NodePass tunnel URL
//! grammar ([`spec`]), durations as NodePass writes them ([`duration`]) and
//! the redacting [`Secret`] wrapper. The control protocol (framing, messages,
//! fd passing) joins it as the master lands.

pub mod duration;
pub mod secret;
pub mod spec;
pub mod url;

pub use secret::Secret;
pub use spec::{Role, SpecError, TunnelSpec};
