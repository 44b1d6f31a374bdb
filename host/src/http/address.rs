//! Which IP addresses a package's request may connect to: a public one
//! whenever a grant lets the request through, any other (loopback,
//! private, link-local, shared, documentation, ...) only when the grant
//! names it; never an unspecified, multicast or broadcast one. Checked on
//! every address a name resolves to, and the connection goes to the
//! address checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::manifest::HttpGrant;

/// Whether a request the `grant` let through may connect to `ip`.
pub fn may_connect(grant: &HttpGrant, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if never(ip) {
        return false;
    }
    is_public(ip) || grant.names_address(ip)
}

/// Addresses no grant opens: they do not name one host.
fn never(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// A globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // shared (carrier NAT)
        || (a == 169 && b == 254)              // link-local (cloud metadata)
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Global unicast is 2000::/3; inside it, ranges that embed or reach
    // other addresses are not public: Teredo, documentation, 6to4.
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] == 0)
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && s[0] != 0x2002
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "2001:0::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn a_grant_opens_a_private_address_only_by_naming_it() {
        let any = HttpGrant::parse("http://*:*").unwrap();
        let loopback = HttpGrant::parse("http://127.0.0.1:*").unwrap();
        let localhost = HttpGrant::parse("http://localhost:*").unwrap();
        assert!(!may_connect(&any, ip("127.0.0.1")));
        assert!(may_connect(&any, ip("8.8.8.8")));
        assert!(may_connect(&loopback, ip("127.0.0.1")));
        assert!(may_connect(&loopback, ip("::ffff:127.0.0.1")));
        assert!(!may_connect(&loopback, ip("127.0.0.2")));
        assert!(may_connect(&localhost, ip("::1")));
        assert!(!may_connect(&localhost, ip("10.0.0.1")));
        let zero = HttpGrant::parse("http://0.0.0.0:*").unwrap();
        assert!(!may_connect(&zero, ip("0.0.0.0")));
    }
}
