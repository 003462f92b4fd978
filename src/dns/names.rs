//! Parsing query names inside the Beacon domain (pure, no I/O).
//!
//! Consul parses right to left: the first label from the right that names a kind (`service`,
//! `node`, `addr`) splits the name into query parts (left) and locality (right: `<dc>` or
//! `<dc>.dc`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a name inside the domain asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself.
    Apex,
    Service {
        name: String,
        tag: Option<String>,
    },
    Node {
        name: String,
    },
    Addr {
        ip: IpAddr,
    },
    /// A shape Beacon does not serve: NXDOMAIN.
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub lookup: Lookup,
    /// The datacenter named in the query, if any.
    pub datacenter: Option<String>,
}

impl Parsed {
    fn invalid() -> Self {
        Parsed {
            lookup: Lookup::Invalid,
            datacenter: None,
        }
    }
}

/// Parses the labels in front of the domain (already lower-cased, left to right).
/// `is_srv` enables Consul's SRV-only form without the `.service` label (`_web._tcp.consul`).
pub fn parse(labels: &[&str], is_srv: bool) -> Parsed {
    if labels.is_empty() {
        return Parsed {
            lookup: Lookup::Apex,
            datacenter: None,
        };
    }
    let kind_at = labels
        .iter()
        .rposition(|l| matches!(*l, "service" | "node" | "addr"));
    let (kind, parts, locality) = match kind_at {
        Some(i) => (labels[i], &labels[..i], &labels[i + 1..]),
        None if is_srv
            && labels.len() >= 2
            && labels[0].starts_with('_')
            && labels[1].starts_with('_') =>
        {
            ("service", &labels[..2], &labels[2..])
        }
        None => return Parsed::invalid(),
    };
    let datacenter = match locality {
        [] => None,
        [dc] | [dc, "dc"] => Some(dc.to_string()),
        _ => return Parsed::invalid(),
    };
    if parts.is_empty() {
        return Parsed::invalid();
    }
    let lookup = match kind {
        "service" => service(parts),
        "node" => Lookup::Node {
            name: parts.join("."),
        },
        "addr" => match parts {
            [hex] => decode_hex_ip(hex).map_or(Lookup::Invalid, |ip| Lookup::Addr { ip }),
            _ => Lookup::Invalid,
        },
        _ => Lookup::Invalid,
    };
    Parsed { lookup, datacenter }
}

fn service(parts: &[&str]) -> Lookup {
    match parts {
        [name] => Lookup::Service {
            name: name.to_string(),
            tag: None,
        },
        // RFC 2782: _<service>._<protocol or tag>; `_tcp` means "no tag".
        [svc, proto] if svc.starts_with('_') && proto.starts_with('_') => {
            let name = &svc[1..];
            let tag = &proto[1..];
            if name.is_empty() || tag.is_empty() {
                return Lookup::Invalid;
            }
            Lookup::Service {
                name: name.to_string(),
                tag: (tag != "tcp").then(|| tag.to_string()),
            }
        }
        // <tag>.<service>: a tag may itself contain dots.
        [tag @ .., name] => Lookup::Service {
            name: name.to_string(),
            tag: Some(tag.join(".")),
        },
        [] => Lookup::Invalid,
    }
}

/// `0a000001` → 10.0.0.1; 32 hex digits → an IPv6 address.
pub fn decode_hex_ip(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The `.addr.` label for an IP, as used for SRV targets of services with their own address.
pub fn encode_hex_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, srv: bool) -> Parsed {
        let labels: Vec<&str> = if name.is_empty() {
            vec![]
        } else {
            name.split('.').collect()
        };
        parse(&labels, srv)
    }

    fn svc(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, bool, Lookup, Option<&str>)] = &[
            ("", false, Lookup::Apex, None),
            ("web.service", false, svc("web", None), None),
            ("web.service.dc1", false, svc("web", None), Some("dc1")),
            ("web.service.dc1.dc", false, svc("web", None), Some("dc1")),
            ("v1.web.service", false, svc("web", Some("v1")), None),
            ("a.b.web.service", false, svc("web", Some("a.b")), None),
            ("_web._tcp.service", true, svc("web", None), None),
            (
                "_web._v1.service.dc1",
                true,
                svc("web", Some("v1")),
                Some("dc1"),
            ),
            ("_web._tcp", true, svc("web", None), None),
            ("_web._tcp.dc2", true, svc("web", None), Some("dc2")),
            ("_web._tcp", false, Lookup::Invalid, None),
            ("n1.node", false, Lookup::Node { name: "n1".into() }, None),
            (
                "my.host.node.dc1",
                false,
                Lookup::Node {
                    name: "my.host".into(),
                },
                Some("dc1"),
            ),
            (
                "0a000001.addr.dc1",
                false,
                Lookup::Addr {
                    ip: "10.0.0.1".parse().unwrap(),
                },
                Some("dc1"),
            ),
            (
                "20010db8000000000000000000000001.addr",
                false,
                Lookup::Addr {
                    ip: "2001:db8::1".parse().unwrap(),
                },
                None,
            ),
            ("zz000001.addr", false, Lookup::Invalid, None),
            ("0a0001.addr", false, Lookup::Invalid, None),
            ("service", false, Lookup::Invalid, None),
            ("node", false, Lookup::Invalid, None),
            ("web.service.dc1.extra.more", false, Lookup::Invalid, None),
            ("foo", false, Lookup::Invalid, None),
        ];
        for (name, srv, lookup, dc) in cases {
            let got = p(name, *srv);
            assert_eq!(&got.lookup, lookup, "{name}");
            if *lookup != Lookup::Invalid {
                assert_eq!(got.datacenter.as_deref(), *dc, "{name}");
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        for ip in ["10.0.0.1", "192.168.255.7", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(decode_hex_ip(&encode_hex_ip(ip)), Some(ip));
        }
    }
}

/// The address a reverse-lookup name (`4.3.2.1.in-addr.arpa.`, nibbles under `ip6.arpa.`)
/// stands for. `labels` are the lower-cased labels of the whole name, left to right.
pub fn reverse_ip(labels: &[&str]) -> Option<IpAddr> {
    match labels {
        [octets @ .., "in-addr", "arpa"] if octets.len() == 4 => {
            let mut bytes = [0u8; 4];
            for (i, o) in octets.iter().rev().enumerate() {
                bytes[i] = o.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(bytes)))
        }
        [nibbles @ .., "ip6", "arpa"] if nibbles.len() == 32 => {
            let hex: String = nibbles.iter().rev().map(|n| n.to_string()).collect();
            if nibbles.iter().any(|n| n.len() != 1) {
                return None;
            }
            u128::from_str_radix(&hex, 16)
                .ok()
                .map(|v| IpAddr::V6(Ipv6Addr::from(v)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod reverse_tests {
    use super::*;

    #[test]
    fn reverse_names() {
        let v4: Vec<&str> = "1.0.0.10.in-addr.arpa".split('.').collect();
        assert_eq!(reverse_ip(&v4), Some("10.0.0.1".parse().unwrap()));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        let v6: Vec<&str> = v6.split('.').collect();
        assert_eq!(reverse_ip(&v6), Some("2001:db8::1".parse().unwrap()));
        for bad in [
            "1.0.10.in-addr.arpa",
            "x.0.0.10.in-addr.arpa",
            "256.0.0.10.in-addr.arpa",
            "example.com",
        ] {
            let labels: Vec<&str> = bad.split('.').collect();
            assert_eq!(reverse_ip(&labels), None, "{bad}");
        }
    }
}
