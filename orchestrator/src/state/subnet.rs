//! IPv4 subnets and address allocation: pure functions, no host state.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::StateError;

/// An IPv4 subnet: its base address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `10.88.0.0/16` as a network's subnet: `parse_cidr`'s rules, and /8
    /// to /29 (a gateway and at least one workload address besides
    /// network and broadcast).
    pub fn parse(s: &str) -> Result<Self, StateError> {
        if !s.contains('/') {
            return Err(StateError::Input(format!(
                "subnet {s:?}: write it as ADDRESS/PREFIX, e.g. 10.89.0.0/16"
            )));
        }
        let net = Self::parse_cidr(s)?;
        if !(8..=29).contains(&net.prefix) {
            return Err(StateError::Input(format!(
                "subnet {s:?}: the prefix length must be 8 to 29"
            )));
        }
        Ok(net)
    }

    /// Any IPv4 CIDR, /0 to /32, written ADDRESS/PREFIX with no host bits
    /// set; a bare address is its /32.
    pub fn parse_cidr(s: &str) -> Result<Self, StateError> {
        let bad = |why: &str| StateError::Input(format!("subnet {s:?}: {why}"));
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l),
            None if s.parse::<Ipv4Addr>().is_ok() => (s, "32"),
            None => return Err(bad("write it as ADDRESS/PREFIX, e.g. 10.89.0.0/16")),
        };
        let base: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let digits = !len.is_empty() && len.len() <= 2 && len.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|_| digits)
            .ok_or_else(|| bad("the prefix length is not a number"))?;
        if prefix > 32 {
            return Err(bad("the prefix length must be 0 to 32"));
        }
        let net = Subnet { base, prefix };
        if u32::from(base) & !net.mask() != 0 {
            let fixed = Ipv4Addr::from(u32::from(base) & net.mask());
            return Err(bad(&format!(
                "host bits are set (did you mean {fixed}/{prefix}?)"
            )));
        }
        Ok(net)
    }

    /// (A /0, from a host address, masks nothing in.)
    pub fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix.min(32)))
            .unwrap_or(0)
    }

    /// How many addresses (a /0's 2^32 does not fit: it saturates; only
    /// networks, /8 to /29, are sized).
    pub fn size(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.prefix.min(32)))
            .unwrap_or(u32::MAX)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.base)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The first host address: the bridge's own.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// The address at `offset` from the base.
    pub fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The first of `candidates` that overlaps none of `taken`.
pub fn first_free(
    mut candidates: impl Iterator<Item = Subnet>,
    taken: &[Subnet],
) -> Option<Subnet> {
    candidates.find(|c| !taken.iter().any(|t| t.overlaps(c)))
}

/// The subnet an interface address lies in (`192.168.1.5/24` -> `192.168.1.0/24`).
pub fn of_address(addr: Ipv4Addr, prefix: u8) -> Subnet {
    let prefix = prefix.min(32);
    Subnet {
        base: Ipv4Addr::from(
            u32::from(addr) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0),
        ),
        prefix,
    }
}

/// The next free workload address at or after offset `cursor` (wrapping):
/// offsets 2..size-1, skipping the network, the gateway (1) and broadcast.
/// Rolling forward instead of taking the lowest free address keeps a just
/// released address (and stale ARP or conntrack entries for it) unused for
/// as long as possible. Returns the address and the cursor after it.
pub fn allocate(
    subnet: &Subnet,
    taken: &BTreeSet<Ipv4Addr>,
    cursor: u32,
) -> Option<(Ipv4Addr, u32)> {
    let first = 2u32;
    let end = subnet.size() - 1; // broadcast
    let span = end - first;
    let start = if (first..end).contains(&cursor) {
        cursor
    } else {
        first
    };
    (0..span)
        .map(|i| first + (start - first + i) % span)
        .map(|o| (subnet.at(o), o))
        .find(|(a, _)| !taken.contains(a))
        .map(|(a, o)| (a, o + 1))
}

/// A locally administered MAC derived from the address: unique per host
/// as long as addresses are (subnets never overlap).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:b4:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        Subnet::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn subnets_parse_strictly() {
        let n = net("10.88.0.0/16");
        assert_eq!(
            (n.gateway(), n.size()),
            (Ipv4Addr::new(10, 88, 0, 1), 65536)
        );
        for bad in [
            "10.88.0.0",
            "10.88.0.1/16",
            "10.88.0.0/30",
            "10.0.0.0/7",
            "10.88.0.0/x",
            "nope/16",
            "10.88.0.0/16/1",
            "",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
        let e = Subnet::parse("10.88.1.0/16")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("10.88.0.0/16"), "{e}");
    }

    #[test]
    fn cidrs_parse_any_prefix_and_refuse_malformed_ones() {
        assert_eq!(
            Subnet::parse_cidr("0.0.0.0/0")
                .map(|n| (n.prefix, n.contains(Ipv4Addr::new(8, 8, 8, 8))))
                .ok(),
            Some((0, true))
        );
        assert_eq!(
            Subnet::parse_cidr("192.168.1.5").ok(),
            Some(Subnet {
                base: Ipv4Addr::new(192, 168, 1, 5),
                prefix: 32
            })
        );
        assert_eq!(
            Subnet::parse_cidr("172.16.0.0/12")
                .map(|n| n.to_string())
                .ok()
                .as_deref(),
            Some("172.16.0.0/12")
        );
        for bad in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "::1/128",
            "1.2.3/8",
            "1.2.3.4.5/32",
            "256.0.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.0/0x8",
            "10.0.0.0/+8",
        ] {
            assert!(Subnet::parse_cidr(bad).is_err(), "{bad:?}");
        }
        assert!(
            Subnet::parse("0.0.0.0/0").is_err() && Subnet::parse("10.0.0.0/30").is_err(),
            "networks stay /8 to /29"
        );
    }

    #[test]
    fn overlaps_both_ways() {
        assert!(net("10.88.0.0/16").overlaps(&net("10.88.4.0/24")));
        assert!(net("10.88.4.0/24").overlaps(&net("10.88.0.0/16")));
        assert!(!net("10.88.0.0/16").overlaps(&net("10.89.0.0/16")));
        assert!(net("10.0.0.0/8").overlaps(&net("10.200.0.0/29")));
    }

    #[test]
    fn allocation_rolls_forward_skips_taken_and_ends_when_full() {
        let n = net("192.168.5.0/29"); // .2 .. .6
        let mut taken = BTreeSet::new();
        let mut cursor = 0;
        let mut got = Vec::new();
        while let Some((a, c)) = allocate(&n, &taken, cursor) {
            assert!(taken.insert(a), "{a} handed out twice");
            got.push(a.octets()[3]);
            cursor = c;
        }
        assert_eq!(
            got,
            vec![2, 3, 4, 5, 6],
            "never the network, gateway or broadcast address"
        );
        taken.remove(&Ipv4Addr::new(192, 168, 5, 4));
        assert_eq!(
            allocate(&n, &taken, cursor).map(|(a, _)| a),
            Some(Ipv4Addr::new(192, 168, 5, 4)),
            "a released address comes back"
        );
        taken.remove(&Ipv4Addr::new(192, 168, 5, 3));
        // Released .3 and .4; the cursor sits after .6: .3 comes first when wrapping.
        assert_eq!(
            allocate(&n, &taken, 7).map(|(a, _)| a),
            Some(Ipv4Addr::new(192, 168, 5, 3))
        );
        assert_eq!(
            allocate(&n, &taken, 4).map(|(a, _)| a),
            Some(Ipv4Addr::new(192, 168, 5, 4)),
            "from the cursor on"
        );
    }

    #[test]
    fn free_subnets_skip_taken_ones_and_host_addresses() {
        let candidates = || {
            (89..=91u8).map(|b| Subnet {
                base: Ipv4Addr::new(10, b, 0, 0),
                prefix: 16,
            })
        };
        let taken = [
            net("10.89.0.0/16"),
            of_address(Ipv4Addr::new(10, 90, 3, 7), 24),
        ];
        assert_eq!(first_free(candidates(), &taken), Some(net("10.91.0.0/16")));
        assert_eq!(first_free(candidates(), &[net("10.0.0.0/8")]), None);
        assert_eq!(
            of_address(Ipv4Addr::new(192, 168, 1, 5), 24),
            net("192.168.1.0/24")
        );
        let everything = of_address(Ipv4Addr::new(10, 1, 2, 3), 0);
        assert!(
            everything.overlaps(&net("10.89.0.0/16"))
                && everything.contains(Ipv4Addr::new(1, 2, 3, 4)),
            "a /0 covers everything"
        );
    }

    #[test]
    fn macs_are_local_unicast_and_follow_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 88, 0, 2)), "02:b4:0a:58:00:02");
    }
}
