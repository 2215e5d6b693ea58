//! Which addresses a connection a user caused may go to.
//!
//! Users name hosts (an IRC server in a room's address, an IMAP or SMTP server at
//! registration); the gateway connects from inside the admin's network. Unless the
//! admin configured that exact host, it must be on the public Internet: every address
//! it resolves to must be global unicast, and the connection goes to an address that
//! was checked (resolved once, checked, connected to: no second lookup that DNS
//! rebinding could answer differently).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where a connection may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A host the admin configured: trusted as written (this is how a local server stays
    /// usable for a demo or the tests).
    Configured,
    /// A host a user named: only global unicast addresses.
    PublicOnly,
}

/// Why an address is not one a user may make the gateway connect to; `None` for a
/// global unicast address. The text names the rule, for the user's error.
#[must_use]
pub fn non_global(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => non_global_v4(v4),
        IpAddr::V6(v6) => non_global_v6(v6),
    }
}

fn non_global_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    match (a, b, c) {
        (0, _, _) => Some("an unspecified (0.0.0.0/8) address"),
        (127, _, _) => Some("a loopback address"),
        (10, _, _) | (192, 168, _) => Some("a private (RFC 1918) address"),
        (172, b, _) if (16..32).contains(&b) => Some("a private (RFC 1918) address"),
        (100, b, _) if (64..128).contains(&b) => Some("a shared (CGNAT, RFC 6598) address"),
        (169, 254, _) => Some("a link-local address"),
        (192, 0, 0) => Some("an IETF protocol assignment (192.0.0.0/24)"),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Some("a documentation address"),
        (198, b, _) if b == 18 || b == 19 => Some("a benchmarking address (198.18.0.0/15)"),
        (224..=239, _, _) => Some("a multicast address"),
        (240..=255, _, _) => Some("a reserved or broadcast address"),
        _ => None,
    }
}

fn non_global_v6(address: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return non_global_v4(v4);
    }
    let segments = address.segments();
    match segments {
        [0, 0, 0, 0, 0, 0, 0, 0] => Some("the unspecified address"),
        [0, 0, 0, 0, 0, 0, 0, 1] => Some("a loopback address"),
        // ::a.b.c.d (IPv4-compatible, deprecated) and the rest of ::/96.
        [0, 0, 0, 0, 0, 0, _, _] => Some("a reserved IPv6 address (::/96)"),
        // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => non_global_v4(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))),
        [0x100, 0, 0, 0, ..] => Some("a discard-only address (100::/64)"),
        [0x2001, 0xdb8, ..] => Some("a documentation address"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("a private (unique local, fc00::/7) address"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("a link-local address"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("a site-local address"),
        [first, ..] if first & 0xff00 == 0xff00 => Some("a multicast address"),
        // Global unicast is 2000::/3; the rest is unassigned.
        [first, ..] if first & 0xe000 != 0x2000 => Some("an address outside IPv6 global unicast (2000::/3)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(address: &str) -> Option<&'static str> {
        non_global(address.parse().unwrap())
    }

    #[test]
    fn global_unicast_addresses_pass() {
        for address in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1", "2001:4860:4860::8888", "2a00:1450::1"] {
            assert_eq!(rule(address), None, "{address}");
        }
    }

    #[test]
    fn every_kind_of_non_global_address_is_refused_with_its_rule() {
        for (address, words) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.0.0.2", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "CGNAT"),
            ("169.254.169.254", "link-local"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::127.0.0.1", "reserved"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("100::1", "discard"),
            ("2001:db8::1", "documentation"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("4000::1", "outside"),
        ] {
            let rule = rule(address).unwrap_or_else(|| panic!("{address} passed"));
            assert!(rule.contains(words), "{address}: {rule}");
        }
    }

    #[test]
    fn nat64_of_a_public_address_is_public() {
        assert_eq!(rule("64:ff9b::808:808"), None);
    }
}
