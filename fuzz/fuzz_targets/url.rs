//! The tunnel URL grammar (`proto::spec`): any text parses or is refused
//! without a panic, and what parses round-trips: its canonical form
//! (`Display`) parses back to the same spec and is a fixed point, and its
//! config URL (`config_url`) parses back to the same spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::TunnelSpec;

/// `TunnelSpec::parse` refuses longer text.
const MAX_URL: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = TunnelSpec::parse(text) else {
        return;
    };
    let canonical = spec.to_string();
    if let Some(again) = reparse(text, &canonical) {
        assert_eq!(again, spec, "{text:?} -> {canonical:?} parsed differently");
        assert_eq!(again.to_string(), canonical, "{text:?}: not a fixed point");
    }
    // The config URL (every param at its effective value) names the same tunnel.
    let config = spec.config_url();
    if let Some(again) = reparse(text, &config) {
        assert_eq!(
            again, spec,
            "{text:?} -> config {config:?} parsed differently"
        );
    }
    let _ = spec.tunnel_key();
});

/// Parses a URL written from `text`'s spec. Escaping can lengthen it past
/// the limit (the master answers 400 for such a URL); nothing else may fail.
fn reparse(text: &str, written: &str) -> Option<TunnelSpec> {
    match TunnelSpec::parse(written) {
        Ok(spec) => Some(spec),
        Err(e) => {
            assert!(
                written.len() > MAX_URL,
                "{text:?} -> {written:?} does not parse: {e}"
            );
            None
        }
    }
}
