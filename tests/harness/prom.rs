//! `GET {prefix}/metrics` as a scraper sees it: a strict OpenMetrics text
//! parser, and a cross-check with Python's `prometheus_client` parser (the
//! reference implementation) when `python3` has it.
//!
//! 1. [`parse`] checks the whole exposition: `# HELP`/`# TYPE`/`# UNIT`
//!    before each family's samples, sample names that fit the family's type
//!    (`_total` for counters, `_bucket`/`_sum`/`_count` for histograms), label
//!    syntax and escapes, no duplicate series, cumulative histogram buckets
//!    ending at `+Inf` = `_count`, and `# EOF` as the last line.
//! 2. [`python_parse`] feeds the same text to
//!    `prometheus_client.openmetrics.parser`; `None` (with a printed note)
//!    when python3 or the module is missing.
//! 3. [`Exposition::get`] / [`Exposition::value`] look a series up by name
//!    and exact label set.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Label name → value.
pub type Labels = BTreeMap<String, String>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

/// `[("k", "v"), …]` as [`Labels`].
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Exposition {
    /// The value of the series `name` with exactly these labels.
    pub fn get(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        let want = labels(pairs);
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Exposition::get`]; panics naming the series when it is missing.
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> f64 {
        self.get(name, pairs)
            .unwrap_or_else(|| panic!("/metrics has no series {name}{pairs:?}"))
    }

    /// Every sample of `name` whose labels include `having`.
    pub fn matching(&self, name: &str, having: (&str, &str)) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && s.labels.get(having.0).map(String::as_str) == Some(having.1)
            })
            .collect()
    }
}

fn valid_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// `name{l="v",…} value` (no timestamps, no exemplars: the master writes none).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(after) = rest.strip_prefix('{') {
        let bytes: Vec<char> = after.chars().collect();
        let mut i = 0;
        loop {
            let start = i;
            while i < bytes.len() && bytes[i] != '=' {
                i += 1;
            }
            let key: String = bytes
                .get(start..i)
                .ok_or("unterminated labels")?
                .iter()
                .collect();
            if !valid_name(&key, false) {
                return Err(format!("bad label name {key:?}"));
            }
            i += 1;
            if bytes.get(i) != Some(&'"') {
                return Err(format!("label {key}: value not quoted"));
            }
            i += 1;
            let mut value = String::new();
            loop {
                match bytes.get(i).ok_or("unterminated label value")? {
                    '"' => break,
                    '\\' => {
                        i += 1;
                        match bytes.get(i).ok_or("dangling escape")? {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        }
                    }
                    '\n' => return Err("newline in a label value".into()),
                    c => value.push(*c),
                }
                i += 1;
            }
            i += 1;
            if labels.insert(key.clone(), value).is_some() {
                return Err(format!("duplicate label {key}"));
            }
            match bytes.get(i).ok_or("unterminated labels")? {
                ',' => i += 1,
                '}' => {
                    let consumed: String = bytes[..=i].iter().collect();
                    rest = &after[consumed.len()..];
                    break;
                }
                c => return Err(format!("unexpected {c:?} after a label")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err(format!("text after the value: {value:?}"));
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v if v.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
            v.parse().map_err(|_| format!("bad value {v:?}"))?
        }
        v => return Err(format!("bad value {v:?}")),
    };
    Ok(Sample {
        name: name.into(),
        labels,
        value,
    })
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "info",
    "stateset",
    "summary",
    "unknown",
];

fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses and checks an OpenMetrics exposition (see the module docs).
pub fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("does not end with \"# EOF\\n\"")?;
    let mut out = Exposition::default();
    let mut current: Option<(String, String)> = None;
    let mut helped = BTreeSet::new();
    let mut series = BTreeSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts
                .next()
                .ok_or_else(|| at("metadata without text".into()))?;
            if !valid_name(name, true) {
                return Err(at(format!("bad family name {name:?}")));
            }
            let same = current.as_ref().is_some_and(|(f, _)| f == name);
            match keyword {
                "HELP" => {
                    if !helped.insert(name.to_string()) {
                        return Err(at("second HELP for a family".into()));
                    }
                    if !same {
                        if out.types.contains_key(name) {
                            return Err(at("family appears twice".into()));
                        }
                        current = Some((name.into(), "unknown".into()));
                    }
                }
                "TYPE" => {
                    if !TYPES.contains(&arg) {
                        return Err(at(format!("bad type {arg:?}")));
                    }
                    if out.types.contains_key(name) {
                        return Err(at("family typed twice".into()));
                    }
                    current = Some((name.into(), arg.into()));
                    out.types.insert(name.into(), arg.into());
                }
                "UNIT" if same => {
                    if !name.ends_with(&format!("_{arg}")) {
                        return Err(at("family name does not end with its unit".into()));
                    }
                }
                _ => return Err(at("unexpected metadata".into())),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("stray line".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let (family, kind) = current
            .as_ref()
            .ok_or_else(|| at("sample before any TYPE".into()))?;
        let suffix = sample
            .name
            .strip_prefix(family.as_str())
            .filter(|s| allowed_suffixes(kind).contains(s))
            .ok_or_else(|| at(format!("not a sample name of {kind} {family}")))?;
        if suffix == "_bucket" && !sample.labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if (kind == "counter" || suffix == "_count" || suffix == "_bucket")
            && (sample.value.is_nan() || sample.value < 0.0)
        {
            return Err(at("negative or NaN count".into()));
        }
        if !series.insert((sample.name.clone(), format!("{:?}", sample.labels))) {
            return Err(at("duplicate series".into()));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

fn check_histograms(out: &Exposition) -> Result<(), String> {
    for family in out
        .types
        .iter()
        .filter(|(_, k)| *k == "histogram")
        .map(|(f, _)| f)
    {
        let bucket = format!("{family}_bucket");
        let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out.samples.iter().filter(|s| s.name == bucket) {
            let mut rest = s.labels.clone();
            let le: f64 = rest
                .remove("le")
                .expect("checked")
                .parse()
                .map_err(|_| format!("{family}: bad le"))?;
            groups.entry(rest).or_default().push((le, s.value));
        }
        for (labels, buckets) in groups {
            let ordered = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().ok_or("no buckets")?;
            let count = out
                .samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                .ok_or_else(|| format!("{family}: no _count"))?;
            if !ordered || last.0 != f64::INFINITY || last.1 != count.value {
                return Err(format!("{family}{labels:?}: bad buckets {buckets:?}"));
            }
        }
    }
    Ok(())
}

const PYTHON_CHECK: &str = r#"
import json, sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    sys.exit(3)
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([family.name, family.type, s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// One sample as Python read it.
#[derive(Debug, Clone, PartialEq)]
pub struct PySample {
    pub family: String,
    pub kind: String,
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// What `prometheus_client`'s OpenMetrics parser reads from `text`; panics
/// if it rejects the text; `None` (after a printed note) when python3 or its
/// `prometheus_client` is missing.
pub fn python_parse(text: &str) -> Option<Vec<PySample>> {
    let child = Command::new("python3")
        .args(["-c", PYTHON_CHECK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("note: python3 not found; skipping the prometheus_client cross-check");
        return None;
    };
    // A python3 without the module exits before reading; its status says so.
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().expect("python3 output");
    if out.status.code() == Some(3) {
        println!(
            "note: python3 has no prometheus_client (pip install prometheus-client); \
             skipping the cross-check"
        );
        return None;
    }
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, String, String, Labels, f64)> =
        serde_json::from_slice(&out.stdout).expect("python JSON");
    Some(
        rows.into_iter()
            .map(|(family, kind, name, labels, value)| PySample {
                family,
                kind,
                name,
                labels,
                value,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed exposition parses; escapes are decoded.
    #[test]
    fn parses_a_small_exposition() {
        let text = "# HELP a Things.\n# TYPE a counter\na_total 3\n\
                    # HELP g A gauge.\n# TYPE g gauge\ng{x=\"q\\\"z\",y=\"2\"} 1.5\n# EOF\n";
        let e = parse(text).expect("parses");
        assert_eq!(e.value("a_total", &[]), 3.0);
        assert_eq!(e.value("g", &[("x", "q\"z"), ("y", "2")]), 1.5);
    }

    /// Missing `# EOF`, a sample of the wrong family, duplicates: rejected.
    #[test]
    fn rejects_malformed() {
        for bad in [
            "# TYPE g gauge\ng 1\n",
            "# TYPE g gauge\nh 1\n# EOF\n",
            "# TYPE g gauge\ng 1\ng 2\n# EOF\n",
            "# TYPE g gauge\ng{x=1} 1\n# EOF\n",
            "g 1\n# EOF\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
