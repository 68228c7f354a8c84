//! Durations in the Go syntax NodePass URLs use (`5m`, `1h30m`, `250ms`, `0`).

use std::time::Duration;

/// Parses `1h2m3s`, `500ms`, `1.5s`, `0`, or a bare integer (seconds).
///
/// Exact to the nanosecond (decimal arithmetic, no floating point), so a
/// duration written by [`format`] parses back to itself.
pub fn parse(text: &str) -> Result<Duration, String> {
    /// Ten years, the largest duration accepted.
    const MAX_NANOS: u128 = 10 * 365 * 86_400 * 1_000_000_000;
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let out_of_range = || format!("duration {text:?} out of range");
    if let Ok(secs) = s.parse::<u64>() {
        if u128::from(secs) * 1_000_000_000 > MAX_NANOS {
            return Err(out_of_range());
        }
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in {text:?} (use ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(format!("expected a number in {text:?}"));
        }
        let (int, frac) = rest[..num_len]
            .split_once('.')
            .unwrap_or((&rest[..num_len], ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(format!("bad number in {text:?}"));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("unknown unit {other:?} in {text:?}")),
        };
        rest = &rest[unit_len..];
        // Digits past the range only make the number larger: stop early.
        let int: u128 = if int.is_empty() {
            0
        } else if int.len() > 30 {
            return Err(out_of_range());
        } else {
            int.parse().map_err(|_| out_of_range())?
        };
        let mut nanos = int.checked_mul(unit).ok_or_else(out_of_range)?;
        // Fraction digits beyond a nanosecond of the unit cannot count.
        let mut scale = unit;
        for d in frac.bytes().take(20) {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(out_of_range)?;
        if total > MAX_NANOS {
            return Err(out_of_range());
        }
    }
    Ok(Duration::from_nanos(
        u64::try_from(total).map_err(|_| out_of_range())?,
    ))
}

/// Formats like Go's `Duration.String()` (`0s`, `1m30s`, `250ms`, `1.5us`,
/// `7ns`), exact to the nanosecond so [`parse`] reads back the same duration.
/// Microseconds are written `us`, which Go also reads, so URLs stay ASCII.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, name) = match nanos {
            ..1_000 => (1, "ns"),
            1_000..1_000_000 => (1_000, "us"),
            _ => (1_000_000, "ms"),
        };
        return format!("{}{name}", decimal(nanos, unit));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let s = u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos());
    out.push_str(&decimal(s, 1_000_000_000));
    out.push('s');
    out
}

/// `value / unit` (`unit` a power of ten) in decimal, without trailing
/// zeros, and without a point when it is whole.
fn decimal(value: u128, unit: u128) -> String {
    let (int, frac) = (value / unit, value % unit);
    if frac == 0 {
        return int.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go syntax parses and formats back to the same value.
    #[test]
    fn round_trips() {
        for (text, ms) in [
            ("0", 0),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("1.5s", 1500),
            ("10", 10_000),
            ("5m0s", 300_000),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(parse(&format(d)).unwrap(), d, "{text}");
        }
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
    }

    /// Fractions are exact: what `format` writes parses back to itself, to
    /// the nanosecond (found by the URL property test: `idle=7043h16m43.365s`
    /// read back as `…43.364999998s`, so each round trip lost a millisecond).
    #[test]
    fn fractions_are_exact() {
        for (text, nanos) in [
            ("7043h16m43.365s", 25_355_803_365_000_000u64),
            ("0.1s", 100_000_000),
            ("1.001s", 1_001_000_000),
            (".5s", 500_000_000),
            ("5.s", 5_000_000_000),
            ("1.5ms", 1_500_000),
            ("0.0000000019s", 1),
        ] {
            let d = parse(text).unwrap();
            assert_eq!(d.as_nanos(), u128::from(nanos), "{text}");
        }
        for ms in [
            1u64,
            999,
            1_001,
            61_001,
            3_600_001,
            25_355_803_365,
            315_359_999_999,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)).unwrap(), d, "{}", format(d));
        }
    }

    /// Bare seconds obey the same ten-year limit as unit syntax (found by the
    /// `url` fuzz target: `read=00003152381509154082357` parsed, but its
    /// canonical `875661530320578h25m57s` did not, so the URL did not
    /// round-trip).
    #[test]
    fn bare_seconds_are_bounded() {
        assert_eq!(
            parse("315360000").unwrap(),
            Duration::from_secs(315_360_000)
        );
        for text in [
            "315360001",
            "00003152381509154082357",
            "18446744073709551615",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        let d = parse("315360000").unwrap();
        assert_eq!(parse(&format(d)).unwrap(), d);
    }

    /// Below a millisecond nothing is lost either (found by the `url` fuzz
    /// target: `idle=1ns` was written back as `idle=0s`, so the canonical URL
    /// named another tunnel).
    #[test]
    fn formats_to_the_nanosecond() {
        for (nanos, text) in [
            (1u64, "1ns"),
            (999, "999ns"),
            (1_500, "1.5us"),
            (1_000_000, "1ms"),
            (1_500_000, "1.5ms"),
            (999_999_999, "999.999999ms"),
            (1_000_000_001, "1.000000001s"),
            (61_500_000_000, "1m1.5s"),
            (3_600_000_000_001, "1h0m0.000000001s"),
        ] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(format(d), text);
            assert_eq!(parse(text).unwrap(), d, "{text}");
        }
    }

    /// Garbage is an error, not a panic.
    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "abc",
            "5x",
            "m",
            "1..2s",
            "1.2.3s",
            ".s",
            "-1s",
            "99999999999h",
            "87601h",
            "999999999999999999999999999999999999999999s",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
