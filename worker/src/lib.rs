//! `drover-worker`: one tunnel instance per process.
//!
//! [`tunnel::Engine`] is the tunnel engine as a library (the master drives
//! it through the control protocol); [`standalone`] runs it from a URL on
//! the command line.

pub mod logging;
pub mod standalone;
pub mod stats;
pub mod tunnel;
