//! A strict parser for the OpenMetrics text that prometheus-client writes
//! (metadata, samples, `# EOF`), and the cross-check with Python's
//! `prometheus_client` parser when it is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};

pub(super) type Labels = BTreeMap<String, String>;

#[derive(Debug)]
pub(super) struct Sample {
    pub(super) name: String,
    pub(super) labels: Labels,
    pub(super) value: f64,
}

#[derive(Debug, Default)]
pub(super) struct Exposition {
    /// Family name → type.
    pub(super) types: BTreeMap<String, String>,
    pub(super) samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the series `name` with exactly these labels.
    pub(super) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    pub(super) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }

    /// Every sample of `name` whose labels include `having`.
    pub(super) fn matching(&self, name: &str, having: (&str, &str)) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && s.labels.get(having.0).map(String::as_str) == Some(having.1)
            })
            .collect()
    }

    /// `(le, cumulative count)` of a label-less histogram, in order.
    pub(super) fn buckets(&self, family: &str) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.labels["le"].parse().expect("le"), s.value))
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

/// Parses `name{l="v",…} value`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            let eq = after[start..].find('=').ok_or("label without =")? + start;
            let key = &after[start..eq];
            if !valid_name(key, false) {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.next_if(|(i, _)| *i <= eq).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("newline in label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("duplicate label {key}"));
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &after[i + 1..];
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err(format!("unexpected text after the value: {value:?}"));
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

/// OpenMetrics metric types.
const TYPES: [&str; 7] = [
    "counter",
    "gauge",
    "histogram",
    "info",
    "stateset",
    "summary",
    "unknown",
];

/// The sample names a family of `kind` may have.
fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        _ => &[""],
    }
}

/// Parses and checks an exposition: metadata before samples, one block per
/// family, sample names that fit the family's type, no duplicate series,
/// histogram buckets cumulative up to `+Inf` = `_count`, and `# EOF` last.
pub(super) fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("does not end with \"# EOF\\n\"")?;
    let mut out = Exposition::default();
    let mut current: Option<(String, String)> = None; // family, type
    let mut seen_series = BTreeSet::new();
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
                "HELP" if !same => {
                    if out.types.contains_key(name) {
                        return Err(at("family appears twice".into()));
                    }
                    current = Some((name.into(), "unknown".into()));
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
        if line.starts_with('#') || line.is_empty() {
            return Err(at("stray line".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let (family, kind) = current
            .as_ref()
            .ok_or_else(|| at("sample before TYPE".into()))?;
        let suffix = sample
            .name
            .strip_prefix(family.as_str())
            .filter(|s| allowed_suffixes(kind).contains(s))
            .ok_or_else(|| at(format!("not a sample name of {kind} {family}")))?;
        if suffix == "_bucket" && !sample.labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("counter below zero or NaN".into()));
        }
        if !seen_series.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

fn check_histograms(out: &Exposition) -> Result<(), String> {
    for (family, _) in out.types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in out.samples.iter().filter(|s| s.name == bucket) {
            let mut rest = s.labels.clone();
            let le: f64 = rest
                .remove("le")
                .expect("checked")
                .parse()
                .map_err(|_| "bad le")?;
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

/// One sample as Python read it: family, type, sample name, labels, value.
pub(super) type PySample = (String, String, String, Labels, f64);

/// Python's verdict: `None` when python3 or its `prometheus_client` is missing.
pub(super) fn python_parse(text: &str) -> Option<Vec<PySample>> {
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
    // A python3 without the module exits before reading: its status says so.
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().expect("python3 output");
    if out.status.code() == Some(3) {
        println!(
            "note: python3 has no prometheus_client (pip install prometheus-client); skipping the cross-check"
        );
        return None;
    }
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("python JSON"))
}
