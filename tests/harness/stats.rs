//! The `CHECK_POINT|MODE=…|PING=…ms|POOL=…|TCPS=…|UDPS=…|TCPRX=…|TCPTX=…|UDPRX=…|UDPTX=…`
//! stats line, parsed.

/// One parsed `CHECK_POINT` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub mode: u64,
    pub ping_ms: u64,
    pub pool: u64,
    pub tcps: u64,
    pub udps: u64,
    pub tcprx: u64,
    pub tcptx: u64,
    pub udprx: u64,
    pub udptx: u64,
}

impl Stats {
    /// Parses the `CHECK_POINT|…` part of a log line; `None` when the line has
    /// none or a field is missing or not a number.
    pub fn parse(line: &str) -> Option<Stats> {
        let start = line.find("CHECK_POINT|")?;
        let text = line[start..].split_whitespace().next()?;
        let mut s = Stats::default();
        let mut seen = 0;
        for field in text.split('|').skip(1) {
            let (key, value) = field.split_once('=')?;
            let value = value.strip_suffix("ms").unwrap_or(value);
            let n: u64 = value.parse().ok()?;
            let slot = match key {
                "MODE" => &mut s.mode,
                "PING" => &mut s.ping_ms,
                "POOL" => &mut s.pool,
                "TCPS" => &mut s.tcps,
                "UDPS" => &mut s.udps,
                "TCPRX" => &mut s.tcprx,
                "TCPTX" => &mut s.tcptx,
                "UDPRX" => &mut s.udprx,
                "UDPTX" => &mut s.udptx,
                _ => continue,
            };
            *slot = n;
            seen += 1;
        }
        (seen == 9).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NodePass-shaped line parses into every field.
    #[test]
    fn parses_check_point() {
        let line = "2026-01-01T00:00:00Z EVENT CHECK_POINT|MODE=1|PING=3ms|POOL=64|TCPS=1|UDPS=2|TCPRX=10|TCPTX=20|UDPRX=30|UDPTX=40";
        let s = Stats::parse(line).unwrap();
        assert_eq!(
            (s.mode, s.ping_ms, s.pool, s.tcps, s.udps),
            (1, 3, 64, 1, 2)
        );
        assert_eq!((s.tcprx, s.tcptx, s.udprx, s.udptx), (10, 20, 30, 40));
        assert_eq!(Stats::parse("CHECK_POINT|MODE=1"), None);
    }
}
