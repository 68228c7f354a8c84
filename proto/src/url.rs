//! A small splitter for NodePass-style URLs.
//!
//! The `url` crate rejects an empty host (`server://:10101/…`, `master://:9090`),
//! which NodePass accepts as "all interfaces", so Drover splits its URLs itself:
//! `scheme://[userinfo@]host[:port][/path][?query]`.

use std::fmt;

/// The raw parts of a URL; nothing is validated beyond the shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUrl<'a> {
    pub scheme: &'a str,
    /// Text before `@`, still percent-encoded.
    pub userinfo: Option<&'a str>,
    /// Host without IPv6 brackets; empty means "all interfaces".
    pub host: &'a str,
    /// Port text (may be empty when absent).
    pub port: &'a str,
    /// Path after the authority, without the leading `/`.
    pub path: &'a str,
    pub query: &'a str,
}

/// Where a URL failed to split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `text` into its parts.
pub fn split(text: &str) -> Result<RawUrl<'_>, UrlError> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| UrlError("url: missing \"://\" after the scheme".into()))?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(UrlError(format!("scheme: {scheme:?} is not a scheme")));
    }
    if rest.contains('#') {
        return Err(UrlError("url: fragments (#) are not allowed".into()));
    }
    if rest.chars().any(|c| c.is_control()) {
        return Err(UrlError("url: contains control characters".into()));
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (host, port) = split_host_port(hostport).map_err(|e| UrlError(format!("address: {e}")))?;
    Ok(RawUrl {
        scheme,
        userinfo,
        host,
        port,
        path,
        query,
    })
}

/// Splits `host:port` / `[v6]:port` / `:port`; the port part may be empty.
pub fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("{text:?}: unclosed '['"))?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "",
            None => return Err(format!("{text:?}: unexpected text after ']'")),
        };
        return Ok((host, port));
    }
    match text.rfind(':') {
        Some(i) if text[..i].contains(':') => Err(format!(
            "{text:?}: IPv6 addresses must be in brackets, like [::1]:80"
        )),
        Some(i) => Ok((&text[..i], &text[i + 1..])),
        None => Ok((text, "")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes NodePass accepts split as expected.
    #[test]
    fn splits() {
        let u = split("server://k%40y@:10101/127.0.0.1:8080?tls=1").unwrap();
        assert_eq!(
            (u.scheme, u.userinfo, u.host, u.port, u.path, u.query),
            (
                "server",
                Some("k%40y"),
                "",
                "10101",
                "127.0.0.1:8080",
                "tls=1"
            )
        );
        let u = split("client://[::1]:9/[::1]:80").unwrap();
        assert_eq!((u.host, u.port, u.path), ("::1", "9", "[::1]:80"));
        let u = split("master://:9090").unwrap();
        assert_eq!((u.host, u.port, u.path, u.query), ("", "9090", "", ""));
    }

    /// Broken shapes are errors naming the part.
    #[test]
    fn rejects() {
        for bad in [
            "server:/x",
            "://x",
            "s s://x",
            "server://[::1:80/x",
            "server://::1:80/x",
            "a://b#c",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
