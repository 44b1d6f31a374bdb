//! The HTTP settings of a package: `grants.http` (the origins it may send
//! requests to, each `scheme://host[:port]`, the host possibly `*` or
//! `*.domain`, the port possibly `*`) and the `[packages.<name>.http]`
//! limits. A grant that does not parse fails at its own line, like every
//! other value; what an address may be once resolved is decided by
//! `crate::http`, which asks [`HttpGrant::names_address`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;

use super::values::{DAY_MS, DurationIn, FromTomlStr, HOUR_MS, SizeIn};

/// The scheme of an HTTP grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpScheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

impl HttpScheme {
    /// The port a URL of this scheme without one goes to.
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }
}

/// The host part of an HTTP grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host name or public address.
    Any,
    /// `*.example.org`: any name under `example.org` (not the domain itself).
    Under(String),
    /// One host name, lower case, without a trailing dot.
    Name(String),
    /// One IP address (IPv6 written in brackets in the grant).
    Ip(IpAddr),
}

/// One origin a package may send HTTP requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGrant {
    /// The scheme.
    pub scheme: HttpScheme,
    /// The host.
    pub host: HostPattern,
    /// The port; `None` for `*` (any port).
    pub port: Option<u16>,
}

/// A request's host as the grants compare it: a name (lower case, no
/// trailing dot) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestHost {
    /// A DNS name.
    Name(String),
    /// An IP literal (an IPv4-mapped IPv6 address is read as its IPv4 one).
    Ip(IpAddr),
}

impl RequestHost {
    /// Reads the host of a URL (`example.org`, `127.0.0.1`, `[::1]`); `None`
    /// for anything that is neither a DNS name nor an IP literal.
    pub fn parse(host: &str) -> Option<RequestHost> {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: Ipv6Addr = v6.parse().ok()?;
            return Some(RequestHost::Ip(IpAddr::V6(ip).to_canonical()));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Some(RequestHost::Ip(IpAddr::V4(ip)));
        }
        if let Ok(ip) = host.parse::<Ipv6Addr>() {
            return Some(RequestHost::Ip(IpAddr::V6(ip).to_canonical()));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        is_dns_name(&name).then_some(RequestHost::Name(name))
    }
}

impl HttpGrant {
    /// Reads `scheme://host[:port]` (a trailing `/` is allowed).
    pub fn parse(text: &str) -> Result<HttpGrant, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not an HTTP grant: {why} (write \"https://api.example.com\", \
                 \"https://*.example.org:8443\" or \"http://127.0.0.1:*\")"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("only scheme, host and port are allowed"));
        }
        let (host, port) = split_port(rest).ok_or_else(|| bad("the port is not 1-65535 or *"))?;
        let host =
            parse_host_pattern(host).ok_or_else(|| bad("the host is not a name or an IP"))?;
        let port = match port {
            None => Some(scheme.default_port()),
            Some(p) => p,
        };
        Ok(HttpGrant { scheme, host, port })
    }

    /// Whether this grant lets a request to `scheme://host:port` through
    /// (before its address is resolved).
    pub fn allows(&self, scheme: HttpScheme, host: &RequestHost, port: u16) -> bool {
        if self.scheme != scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.host, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Under(domain), RequestHost::Name(name)) => name
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Name(granted), RequestHost::Name(name)) => granted == name,
            (HostPattern::Ip(granted), RequestHost::Ip(ip)) => granted == ip,
            _ => false,
        }
    }

    /// Whether this grant names `ip` itself, which is what it takes to reach
    /// a loopback, private or link-local address: the grant is that IP, or
    /// the grant is `localhost` and the address a loopback one.
    pub fn names_address(&self, ip: IpAddr) -> bool {
        match &self.host {
            HostPattern::Ip(granted) => *granted == ip.to_canonical(),
            HostPattern::Name(name) => name == "localhost" && ip.to_canonical().is_loopback(),
            HostPattern::Any | HostPattern::Under(_) => false,
        }
    }
}

/// `host[:port]` with the port `None` when absent, `Some(None)` for `*`.
fn split_port(rest: &str) -> Option<(&str, Option<Option<u16>>)> {
    let colon = match rest.rfind(':') {
        // An IPv6 literal's colons are inside its brackets.
        Some(i) if !rest[i..].contains(']') => i,
        _ => return Some((rest, None)),
    };
    let (host, port) = (&rest[..colon], &rest[colon + 1..]);
    if port == "*" {
        return Some((host, Some(None)));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host, Some(Some(port))))
}

fn parse_host_pattern(host: &str) -> Option<HostPattern> {
    if host == "*" {
        return Some(HostPattern::Any);
    }
    if let Some(domain) = host.strip_prefix("*.") {
        let domain = domain.to_ascii_lowercase();
        return is_dns_name(&domain).then_some(HostPattern::Under(domain));
    }
    if host.contains(':') && !host.starts_with('[') {
        return None;
    }
    match RequestHost::parse(host)? {
        RequestHost::Ip(ip) => Some(HostPattern::Ip(ip)),
        RequestHost::Name(name) => Some(HostPattern::Name(name)),
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1-63 bytes, at
/// most 253 in all, not all digits (that would be an address in disguise).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A grant as written in `grants.http`, checked while it is read.
pub(super) struct HttpGrantValue(pub(super) HttpGrant);

impl FromTomlStr for HttpGrantValue {
    const EXPECTING: &'static str = "an origin like \"https://api.example.com\"";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        HttpGrant::parse(text).map(HttpGrantValue)
    }
}

impl<'de> Deserialize<'de> for HttpGrantValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(super::values::StrVisitor(std::marker::PhantomData))
    }
}

/// The limits on a package's outgoing HTTP requests (`[packages.<name>.http]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Resolving the name and opening the connection (TLS included).
    pub connect_timeout: Duration,
    /// From the request sent to the response's head.
    pub first_byte_timeout: Duration,
    /// Between two chunks of the response body.
    pub between_bytes_timeout: Duration,
    /// The largest response body, in bytes.
    pub max_response_size: u64,
    /// Requests of the package (all its instances) in flight at once.
    pub max_concurrent: u32,
    /// Serving HTTP: each request on a fresh instance (`true`), as
    /// `wasmtime serve` and Spin run a component, or on pooled instances.
    pub instance_per_request: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_response_size: 16 << 20,
            max_concurrent: 16,
            instance_per_request: false,
        }
    }
}

/// `[packages.<name>.http]` as written.
#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { connect_timeout = \"5s\", max_response_size = \"16 MiB\" }"
)]
pub(super) struct RawHttpLimits {
    connect_timeout: Option<DurationIn<1, HOUR_MS>>,
    first_byte_timeout: Option<DurationIn<1, DAY_MS>>,
    between_bytes_timeout: Option<DurationIn<1, DAY_MS>>,
    max_response_size: Option<SizeIn<1, { 1 << 40 }>>,
    max_concurrent: Option<super::values::CountIn<1, 100_000>>,
    instance_per_request: Option<bool>,
}

impl RawHttpLimits {
    pub(super) fn over(&self, base: HttpLimits) -> HttpLimits {
        HttpLimits {
            connect_timeout: self.connect_timeout.map_or(base.connect_timeout, |d| d.0),
            first_byte_timeout: self
                .first_byte_timeout
                .map_or(base.first_byte_timeout, |d| d.0),
            between_bytes_timeout: self
                .between_bytes_timeout
                .map_or(base.between_bytes_timeout, |d| d.0),
            max_response_size: self
                .max_response_size
                .as_ref()
                .map_or(base.max_response_size, |s| s.0),
            max_concurrent: self
                .max_concurrent
                .as_ref()
                .map_or(base.max_concurrent, |n| n.0),
            instance_per_request: self
                .instance_per_request
                .unwrap_or(base.instance_per_request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> RequestHost {
        RequestHost::parse(h).unwrap()
    }

    #[test]
    fn grants_parse_and_match_scheme_host_and_port() {
        let g = HttpGrant::parse("https://api.example.com").unwrap();
        assert!(g.allows(HttpScheme::Https, &host("API.example.com."), 443));
        assert!(!g.allows(HttpScheme::Http, &host("api.example.com"), 443));
        assert!(!g.allows(HttpScheme::Https, &host("api.example.com"), 8443));
        assert!(!g.allows(HttpScheme::Https, &host("x.api.example.com"), 443));
        let g = HttpGrant::parse("https://*.example.org:8443").unwrap();
        assert!(g.allows(HttpScheme::Https, &host("a.b.example.org"), 8443));
        assert!(!g.allows(HttpScheme::Https, &host("example.org"), 8443));
        assert!(!g.allows(HttpScheme::Https, &host("evilexample.org"), 8443));
        let g = HttpGrant::parse("http://127.0.0.1:*").unwrap();
        assert!(g.allows(HttpScheme::Http, &host("127.0.0.1"), 1));
        assert!(!g.allows(HttpScheme::Http, &host("localhost"), 1));
        assert!(g.names_address("127.0.0.1".parse().unwrap()));
        assert!(g.names_address("::ffff:127.0.0.1".parse().unwrap()));
        let g = HttpGrant::parse("http://[::1]:8080/").unwrap();
        assert!(g.allows(HttpScheme::Http, &host("[::1]"), 8080));
        assert!(
            !HttpGrant::parse("http://*:*")
                .unwrap()
                .names_address("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bad_grants_say_why() {
        for bad in [
            "api.example.com",
            "ftp://x.org",
            "https://x.org/path",
            "https://user@x.org",
            "https://x.org:0",
            "https://x.org:70000",
            "https://x.org:",
            "https://",
            "https://*x.org",
            "https://2130706433",
            "https://x..org",
            "https://[::1",
            "https://x.org:80:80",
        ] {
            assert!(HttpGrant::parse(bad).is_err(), "{bad}");
        }
    }
}
