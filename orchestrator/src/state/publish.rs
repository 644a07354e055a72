//! `-p [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]`: a port of the workload published
//! on the host (IPv4 only: `::1` and other IPv6 addresses are refused).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::StateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// `None`: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub port: u16,
    pub proto: Proto,
    /// Never on the host's loopback (`host_ip: None` then means every
    /// address but 127/8): a cluster tenant's port, which must not reach
    /// the node's own services' view of localhost. `bulkhead run -p` on
    /// one host publishes on loopback too, as Docker does.
    #[serde(default)]
    pub public_only: bool,
}

impl Publish {
    pub fn parse(spec: &str) -> Result<Self, StateError> {
        let bad = |why: &str| {
            StateError::Input(format!("-p {spec:?}: {why} (the form is [HOSTIP:]HOSTPORT:PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8080:80/tcp)"))
        };
        let (ports, proto) = match spec.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(bad(&format!("unknown protocol {other:?}"))),
            None => (spec, Proto::Tcp),
        };
        if ports.starts_with('[') || ports.matches(':').count() > 2 {
            return Err(bad(
                "IPv6 host addresses are not supported: workloads are published on IPv4 only",
            ));
        }
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, port) = match parts.as_slice() {
            [hp, p] => (None, *hp, *p),
            [ip, hp, p] => {
                let a: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?;
                (if a.is_unspecified() { None } else { Some(a) }, *hp, *p)
            }
            [_] => return Err(bad("give the host port too")),
            _ => return Err(bad("too many parts")),
        };
        let num = |s: &str, what: &str| -> Result<u16, StateError> {
            match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(&format!("{what} {s:?} is not a port number (1-65535)"))),
            }
        };
        Ok(Publish {
            host_ip,
            host_port: num(host_port, "host port")?,
            port: num(port, "port")?,
            proto,
            public_only: false,
        })
    }

    /// Whether both claim the same host port: same protocol and port, and
    /// the same address or either on every address.
    pub fn clashes(&self, other: &Publish) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self
            .host_ip
            .map_or_else(|| "0.0.0.0".to_string(), |a| a.to_string());
        write!(f, "{ip}:{}->{}/{}", self.host_port, self.port, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let p = Publish::parse("8080:80").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p,
            Publish {
                host_ip: None,
                host_port: 8080,
                port: 80,
                proto: Proto::Tcp,
                public_only: false,
            }
        );
        let p = Publish::parse("127.0.0.1:5353:53/udp").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.host_ip, p.proto),
            (Some(Ipv4Addr::LOCALHOST), Proto::Udp)
        );
        assert_eq!(
            Publish::parse("0.0.0.0:1:2/tcp").map(|p| p.host_ip).ok(),
            Some(None)
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "70000:80",
            "a:80",
            "8080:80/sctp",
            "1.2.3:80:80",
            "[::1]:80:80",
            "::1:80:80",
            "1:2:3:4",
            "",
            ":",
            "8080:80/",
        ] {
            assert!(Publish::parse(bad).is_err(), "{bad}");
        }
        assert!(Publish::parse("80")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("HOSTPORT:PORT"));
    }

    #[test]
    fn clashes_need_same_protocol_and_port_and_overlapping_addresses() {
        let p = |s| Publish::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(p("8080:80").clashes(&p("127.0.0.1:8080:81")));
        assert!(p("127.0.0.1:8080:80").clashes(&p("127.0.0.1:8080:80")));
        assert!(!p("127.0.0.1:8080:80").clashes(&p("127.0.0.2:8080:80")));
        assert!(!p("8080:80").clashes(&p("8080:80/udp")));
        assert!(!p("8080:80").clashes(&p("8081:80")));
    }
}
