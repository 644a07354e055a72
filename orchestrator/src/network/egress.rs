//! Where a workload may send traffic beyond its own network (pure).
//!
//! Default deny for everything that is not the internet: private,
//! shared, loopback, link-local (cloud metadata), multicast and reserved
//! ranges, and the addresses this host uses for the control plane and its
//! store (`protected`). A workload's own network is one bridge (layer 2,
//! never routed), and what is published to it comes in through DNAT; both
//! stay open. `--allow-egress` and a service's `egress.allow` open more,
//! never a protected address, and a tenant never loopback, link-local,
//! multicast or reserved space.

pub use crate::state::net::HostPolicy;

use super::{NetError, Subnet};

/// What a workload may not reach unless allowed.
pub const DENIED: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// What no tenant's service may open: the host's loopback, link-local
/// space (the cloud metadata service at 169.254.169.254 hands out the
/// machine's credentials), multicast and reserved space.
pub const NEVER_FOR_TENANTS: [&str; 5] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The most `--allow-egress` entries one workload may have.
pub const MAX_ALLOWS: usize = 64;

/// Set by our nftables rules on every packet from a workload bridge; the
/// host's routing refuses such packets without it (`host::ensure_fail_closed`),
/// so flushing our tables cuts workloads off instead of opening the host.
pub const BRIDGE_MARK: u32 = 0x0040_0000;

fn ranges(list: &[&str]) -> Vec<Subnet> {
    list.iter()
        .filter_map(|c| Subnet::parse_cidr(c).ok())
        .collect()
}

pub fn denied() -> Vec<Subnet> {
    ranges(&DENIED)
}

/// `--allow-egress CIDR` (or a bare address).
pub fn parse_allow(s: &str) -> Result<Subnet, NetError> {
    Subnet::parse_cidr(s.trim()).map_err(|e| NetError::Input(format!("--allow-egress: {e}")))
}

/// `--deny-egress CIDR` (or a bare address): closed even where the
/// internet or `--allow-egress` would open it.
pub fn parse_deny(s: &str) -> Result<Subnet, NetError> {
    Subnet::parse_cidr(s.trim()).map_err(|e| NetError::Input(format!("--deny-egress: {e}")))
}

/// Whether `net` lies wholly in the denied (private, reserved) space: an
/// allowance that opens no part of the internet.
pub fn is_private(net: &Subnet) -> bool {
    denied()
        .iter()
        .any(|r| r.prefix <= net.prefix && r.contains(net.base))
}

/// The nftables counter of what one workload (by its host interface) sent
/// that the walls refused.
pub fn refused_counter(host_if: &str) -> String {
    format!("refused_{host_if}")
}

/// A tenant's `egress.allow` entry: a CIDR that opens none of
/// `NEVER_FOR_TENANTS`. The reason when not.
pub fn check_tenant_allow(s: &str) -> Result<Subnet, String> {
    let net = Subnet::parse_cidr(s.trim()).map_err(|e| e.to_string())?;
    match ranges(&NEVER_FOR_TENANTS).into_iter().find(|r| r.overlaps(&net)) {
        Some(r) => Err(format!("{net} overlaps {r}, which no service may reach (loopback, link-local and cloud metadata, multicast, reserved)")),
        None => Ok(net),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_denied_ranges_cover_what_the_issue_names_and_not_the_internet() {
        let d = denied();
        assert_eq!(d.len(), DENIED.len(), "every entry parses");
        for inside in [
            "10.1.2.3",
            "172.31.9.2",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
        ] {
            let a: std::net::Ipv4Addr = inside.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(d.iter().any(|r| r.contains(a)), "{inside} is not denied");
        }
        for outside in [
            "8.8.8.8",
            "1.1.1.1",
            "198.51.100.7",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
        ] {
            let a: std::net::Ipv4Addr = outside.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(!d.iter().any(|r| r.contains(a)), "{outside} is denied");
        }
    }

    #[test]
    fn tenants_may_open_private_ranges_but_never_metadata_loopback_or_multicast() {
        assert!(check_tenant_allow("10.20.0.0/16").is_ok());
        assert!(check_tenant_allow("192.168.7.9").is_ok());
        for bad in [
            "0.0.0.0/0",
            "169.254.169.254/32",
            "169.0.0.0/8",
            "127.0.0.1",
            "224.0.0.0/3",
            "240.0.0.0/4",
            "128.0.0.0/1",
            "10.0.0.0/33",
            "nope",
            "",
        ] {
            assert!(check_tenant_allow(bad).is_err(), "{bad:?}");
        }
        let why = check_tenant_allow("169.254.0.0/16")
            .err()
            .unwrap_or_default();
        assert!(why.contains("metadata"), "{why}");
        assert!(parse_allow("192.168.1.0/24").is_ok() && parse_allow("192.168.1.1/24").is_err());
    }

    #[test]
    fn private_means_wholly_inside_the_denied_space() {
        let p = |s: &str| is_private(&Subnet::parse_cidr(s).unwrap_or_else(|e| panic!("{e}")));
        assert!(p("10.20.0.0/16") && p("192.168.1.7/32") && p("10.0.0.0/8"));
        // Partly or wholly the internet.
        assert!(!p("8.8.8.8/32") && !p("0.0.0.0/0") && !p("8.0.0.0/5") && !p("172.0.0.0/8"));
        assert!(parse_deny("203.0.113.0/24").is_ok() && parse_deny("203.0.113.1/24").is_err());
        assert!(parse_deny("nope").is_err());
    }
}
