//! The Beacon domain (`consul.` and the optional `alt_domain`), answered from the catalog view.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HINFO, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::SetupError;
use super::names::{self, Lookup, encode_hex_ip};
use crate::catalog::{Instance, State};
use crate::config::DnsConfig;
use crate::model::{CheckStatus, Node};

/// How many servers an NS answer names at most (Consul: 3, random).
const MAX_NS: usize = 3;

/// A finished answer for one question, before encoding.
#[derive(Debug, Default)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Put the zone's SOA in the authority section (NXDOMAIN and NODATA answers).
    pub soa: Option<Record>,
    /// CNAME targets outside our zones whose records should be appended (via the recursors).
    pub external: Vec<Name>,
    /// What in the catalog this answer was computed from, so a cached copy knows when it is stale.
    pub depends_on: Dependency,
    /// How many instances were shuffled into the answer: the number of distinct orders worth
    /// keeping pre-encoded.
    pub shuffled: usize,
}

/// What a reply depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Dependency {
    /// Only the instances (and health) of this lower-cased service name.
    Service(String),
    /// Anything in the catalog (the SOA serial, nodes, several names).
    #[default]
    Catalog,
    /// Must be computed afresh every time (random order that is not an instance list).
    Never,
}

/// How the healthy instances of a service are ordered in an answer.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// A fresh shuffle (Consul's behaviour).
    Random,
    /// Variant `index` of `of`: one seeded shuffle, rotated so that across the variants every
    /// instance comes first equally often (when `of` is the number of instances).
    Variant { seed: u64, index: usize, of: usize },
}

impl Order {
    fn arrange<T>(self, items: &mut [T]) {
        match self {
            Order::Random => items.shuffle(&mut rand::rng()),
            Order::Variant { seed, index, of } => {
                items.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
                if !items.is_empty() && of > 0 {
                    let step = index * items.len() / of;
                    items.rotate_left(step % items.len());
                }
            }
        }
    }
}

pub struct ConsulZone {
    pub domain: LowerName,
    domain_name: Name,
    domain_labels: usize,
    datacenter: String,
    dns: DnsConfig,
    soa_mname: Name,
    soa_rname: Name,
}

impl ConsulZone {
    pub fn new(domain: &str, datacenter: &str, dns: DnsConfig) -> Result<Self, SetupError> {
        let bad_domain = |e: hickory_proto::ProtoError| SetupError::Domain {
            domain: domain.to_string(),
            reason: e.to_string(),
        };
        let domain_name = Name::from_str(domain).map_err(bad_domain)?;
        let label = |l: &str| {
            Name::from_str(l)
                .and_then(|n| n.append_domain(&domain_name))
                .map_err(bad_domain)
        };
        Ok(ConsulZone {
            domain: LowerName::from(domain_name.clone()),
            domain_labels: domain_name.num_labels() as usize,
            soa_mname: label("ns")?,
            soa_rname: label("hostmaster")?,
            domain_name,
            datacenter: datacenter.to_ascii_lowercase(),
            dns,
        })
    }

    pub fn soa(&self, state: &State) -> Record {
        let serial = (state.indexes().last & 0xffff_ffff) as u32;
        let s = self.dns.soa;
        let mut record = Record::from_rdata(
            self.domain_name.clone(),
            s.min_ttl,
            RData::SOA(SOA::new(
                self.soa_mname.clone(),
                self.soa_rname.clone(),
                serial,
                s.refresh as i32,
                s.retry as i32,
                s.expire as i32,
                s.min_ttl,
            )),
        );
        record.ttl = s.min_ttl;
        record
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(relative)
            .ok()?
            .append_domain(&self.domain_name)
            .ok()
    }

    fn node_name(&self, node: &Node) -> Option<Name> {
        self.name(&format!("{}.node.{}", node.name, self.datacenter))
    }

    /// Answers one question whose name is inside the zone, from the catalog `state` the caller
    /// loaded once for this query.
    pub fn answer(
        &self,
        state: &State,
        qname: &LowerName,
        qtype: RecordType,
        udp: bool,
        order: Order,
    ) -> Reply {
        self.answer_in(state, qname, qtype, udp, order, 0)
    }

    /// The service a question for `qname` (inside the zone) asks about, in this datacenter:
    /// `web` for `web.service.consul`, `v1.web.service.dc1.consul` or `_web._tcp.consul` SRV.
    pub fn service_of(&self, qname: &LowerName, qtype: RecordType) -> Option<String> {
        let parsed = self.parse(&Name::from(qname.clone()), qtype)?;
        if parsed.datacenter.is_some_and(|dc| dc != self.datacenter) {
            return None;
        }
        match parsed.lookup {
            Lookup::Service { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The labels in front of the domain, parsed (`None` when one is not UTF-8).
    fn parse(&self, name: &Name, qtype: RecordType) -> Option<names::Parsed> {
        let total = name.num_labels() as usize;
        let labels: Vec<String> = name
            .iter()
            .take(total.saturating_sub(self.domain_labels))
            .map(|l| std::str::from_utf8(l).ok().map(|s| s.to_ascii_lowercase()))
            .collect::<Option<_>>()?;
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        Some(names::parse(&labels, qtype == RecordType::SRV))
    }

    fn answer_in(
        &self,
        state: &State,
        qname: &LowerName,
        qtype: RecordType,
        udp: bool,
        order: Order,
        depth: u8,
    ) -> Reply {
        let name = Name::from(qname.clone());
        let Some(parsed) = self.parse(&name, qtype) else {
            return self.nxdomain(state);
        };
        if let Some(dc) = &parsed.datacenter
            && *dc != self.datacenter
        {
            // Another datacenter: "No path to datacenter" is NXDOMAIN in Consul.
            return self.nxdomain(state);
        }
        // RFC 8482: ANY gets one synthesized HINFO for a name that exists, not every record.
        let lookup_type = if qtype == RecordType::ANY {
            RecordType::A
        } else {
            qtype
        };
        let is_apex = matches!(parsed.lookup, Lookup::Apex);
        let mut reply = match parsed.lookup {
            Lookup::Apex => self.apex(state, qtype),
            Lookup::Service { name: svc, tag } => {
                let wanted = ServiceQuery {
                    service: &svc,
                    tag: tag.as_deref(),
                    qtype: lookup_type,
                    udp,
                    order,
                    depth,
                };
                self.service(state, &name, wanted)
            }
            Lookup::Node { name: node } => self.node(state, &name, &node, lookup_type),
            Lookup::Addr { ip } => {
                let ttl = secs(self.dns.node_ttl);
                match address_record(&name, ip, lookup_type, ttl).or_else(|| {
                    address_record(&name, ip, RecordType::ANY, ttl)
                        .filter(|_| qtype == RecordType::ANY)
                }) {
                    Some(r) => Reply {
                        answers: vec![r],
                        ..Reply::default()
                    },
                    None => self.nodata(state),
                }
            }
            Lookup::Invalid => self.nxdomain(state),
        };
        if qtype == RecordType::ANY && reply.rcode == ResponseCode::NoError && !is_apex {
            reply = Reply {
                answers: vec![Record::from_rdata(
                    name,
                    0,
                    RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
                )],
                depends_on: std::mem::take(&mut reply.depends_on),
                ..Reply::default()
            };
        }
        reply
    }

    fn nxdomain(&self, state: &State) -> Reply {
        Reply {
            rcode: ResponseCode::NXDomain,
            soa: Some(self.soa(state)),
            ..Reply::default()
        }
    }

    fn nodata(&self, state: &State) -> Reply {
        Reply {
            soa: Some(self.soa(state)),
            ..Reply::default()
        }
    }

    /// The servers (nodes running the `consul` service), shuffled, at most `MAX_NS`.
    fn name_servers(&self, state: &State) -> (Vec<Record>, Vec<Record>) {
        let mut nodes: Vec<&Node> = state
            .instances("consul")
            .into_iter()
            .map(|i| i.node)
            .collect();
        nodes.dedup_by(|a, b| a.name == b.name);
        nodes.shuffle(&mut rand::rng());
        let ttl = secs(self.dns.node_ttl);
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for node in nodes.into_iter().take(MAX_NS) {
            let Some(target) = self.node_name(node) else {
                continue;
            };
            ns.push(Record::from_rdata(
                self.domain_name.clone(),
                ttl,
                RData::NS(NS(target.clone())),
            ));
            if let Ok(ip) = node.address.parse::<IpAddr>()
                && let Some(r) = address_record(&target, ip, RecordType::ANY, ttl)
            {
                glue.push(r);
            }
        }
        (ns, glue)
    }

    fn apex(&self, state: &State, qtype: RecordType) -> Reply {
        let mut reply = self.apex_records(state, qtype);
        reply.depends_on = Dependency::Never;
        reply
    }

    fn apex_records(&self, state: &State, qtype: RecordType) -> Reply {
        match qtype {
            RecordType::SOA => {
                let (ns, glue) = self.name_servers(state);
                Reply {
                    answers: vec![self.soa(state)],
                    authorities: ns,
                    additionals: glue,
                    ..Reply::default()
                }
            }
            RecordType::NS => {
                let (ns, glue) = self.name_servers(state);
                Reply {
                    answers: ns,
                    additionals: glue,
                    ..Reply::default()
                }
            }
            _ => self.nodata(state),
        }
    }

    fn healthy(&self, status: CheckStatus) -> bool {
        match status {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !self.dns.only_passing,
            CheckStatus::Critical => false,
        }
    }

    fn service(&self, state: &State, qname: &Name, wanted: ServiceQuery<'_>) -> Reply {
        let ServiceQuery {
            service,
            tag,
            qtype,
            udp,
            order,
            depth,
        } = wanted;
        let instances: Vec<Instance<'_>> = state
            .instances(service)
            .into_iter()
            .filter(|i| {
                tag.is_none_or(|t| i.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
            })
            .collect();
        if instances.is_empty() {
            // Nothing registered carries this name (or tag): no such name.
            return self.nxdomain(state);
        }
        let mut healthy: Vec<(Instance<'_>, CheckStatus)> = instances
            .into_iter()
            .map(|i| {
                let status = i.status();
                (i, status)
            })
            .filter(|(_, s)| self.healthy(*s))
            .collect();
        order.arrange(&mut healthy);
        let ttl = secs(self.dns.service_ttl.for_service(service));
        let mut reply = Reply {
            depends_on: Dependency::Service(crate::catalog::key(service).to_string()),
            shuffled: healthy.len(),
            ..Reply::default()
        };
        match qtype {
            RecordType::A | RecordType::AAAA => self.service_addresses(
                state,
                qname,
                &healthy,
                (qtype, ttl, udp, order, depth),
                &mut reply,
            ),
            RecordType::SRV => self.service_srv(qname, &healthy, ttl, &mut reply),
            _ => {}
        }
        if let (true, Some(limit)) = (udp, self.dns.udp_answer_limit)
            && reply.answers.len() > limit
        {
            // A deliberate subset: the answers were shuffled, keep the first `limit` and only
            // the additional records that still belong to one of them.
            reply.answers.truncate(limit);
            let targets: Vec<Name> = reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.target.clone()),
                    _ => None,
                })
                .collect();
            reply.additionals.retain(|r| targets.contains(&r.name));
        }
        if reply.answers.is_empty() {
            // The SOA's serial is the catalog's last index.
            reply.soa = Some(self.soa(state));
            reply.depends_on = Dependency::Catalog;
        }
        reply
    }

    fn service_addresses(
        &self,
        state: &State,
        qname: &Name,
        healthy: &[(Instance<'_>, CheckStatus)],
        (qtype, ttl, udp, order, depth): (RecordType, u32, bool, Order, u8),
        reply: &mut Reply,
    ) {
        let mut seen_ips = Vec::new();
        let mut seen_hosts = Vec::new();
        for (i, _) in healthy {
            if self.dns.a_record_limit > 0 && reply.answers.len() >= self.dns.a_record_limit {
                break;
            }
            let addr = if i.service.address.is_empty() {
                &i.node.address
            } else {
                &i.service.address
            };
            match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    if !seen_ips.contains(&ip)
                        && let Some(r) = address_record(qname, ip, qtype, ttl)
                    {
                        seen_ips.push(ip);
                        reply.answers.push(r);
                    }
                }
                // A hostname: answer with a CNAME to it, plus its records when we know them.
                Err(_) => {
                    let Ok(mut host) = Name::from_ascii(addr) else {
                        continue;
                    };
                    host.set_fqdn(true);
                    if seen_hosts.contains(&host) {
                        continue;
                    }
                    seen_hosts.push(host.clone());
                    // The answer now also depends on the records of another name.
                    reply.depends_on = Dependency::Catalog;
                    reply.answers.push(Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::CNAME(CNAME(host.clone())),
                    ));
                    let lower = LowerName::from(host.clone());
                    if self.domain.zone_of(&lower) {
                        if depth < 3 {
                            let inner = self.answer_in(state, &lower, qtype, udp, order, depth + 1);
                            reply.answers.extend(inner.answers);
                        }
                    } else {
                        reply.external.push(host);
                    }
                }
            }
        }
    }

    fn service_srv(
        &self,
        qname: &Name,
        healthy: &[(Instance<'_>, CheckStatus)],
        ttl: u32,
        reply: &mut Reply,
    ) {
        let mut seen = Vec::new();
        for (i, status) in healthy {
            let ident = (
                i.node.name.as_str(),
                i.service.address.as_str(),
                i.service.port,
            );
            if seen.contains(&ident) {
                continue;
            }
            seen.push(ident);
            let weight = match status {
                CheckStatus::Passing => i.service.weights.passing,
                _ => i.service.weights.warning,
            }
            .min(u16::MAX as u32) as u16;
            let Some((target, ip, node_target)) = self.srv_target(i) else {
                continue;
            };
            reply.answers.push(Record::from_rdata(
                qname.clone(),
                ttl,
                RData::SRV(SRV::new(1, weight, i.service.port, target.clone())),
            ));
            if let Some(ip) = ip
                && let Some(r) = address_record(&target, ip, RecordType::ANY, ttl)
            {
                reply.additionals.push(r);
            }
            if node_target && self.dns.enable_additional_node_meta_txt {
                reply.additionals.extend(meta_txt(&target, i.node, ttl));
            }
        }
    }

    /// The SRV target of an instance, the address for the additional section, and whether the
    /// target is the node (whose meta then rides along as TXT).
    fn srv_target(&self, i: &Instance<'_>) -> Option<(Name, Option<IpAddr>, bool)> {
        let dc = &self.datacenter;
        if !i.service.address.is_empty() {
            return match i.service.address.parse::<IpAddr>() {
                Ok(ip) => Some((
                    self.name(&format!("{}.addr.{dc}", encode_hex_ip(ip)))?,
                    Some(ip),
                    false,
                )),
                // A hostname is its own target.
                Err(_) => {
                    let mut host = Name::from_ascii(&i.service.address).ok()?;
                    host.set_fqdn(true);
                    Some((host, None, false))
                }
            };
        }
        let target = self.node_name(i.node)?;
        Some((target, i.node.address.parse().ok(), true))
    }
}

/// A service lookup: what was asked and how to answer it.
struct ServiceQuery<'a> {
    service: &'a str,
    tag: Option<&'a str>,
    qtype: RecordType,
    udp: bool,
    order: Order,
    depth: u8,
}

impl ConsulZone {
    fn node(&self, state: &State, qname: &Name, node: &str, qtype: RecordType) -> Reply {
        let Some(node) = state.node(node) else {
            return self.nxdomain(state);
        };
        let ttl = secs(self.dns.node_ttl);
        if qtype == RecordType::TXT {
            let txt = meta_txt(qname, node, ttl);
            return if txt.is_empty() {
                self.nodata(state)
            } else {
                Reply {
                    answers: txt,
                    ..Reply::default()
                }
            };
        }
        match node
            .address
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| address_record(qname, ip, qtype, ttl))
        {
            Some(r) => {
                let additionals = if self.dns.enable_additional_node_meta_txt {
                    meta_txt(qname, node, ttl)
                } else {
                    Vec::new()
                };
                Reply {
                    answers: vec![r],
                    additionals,
                    ..Reply::default()
                }
            }
            None => self.nodata(state),
        }
    }

    /// PTR for an address: a node with that address, else a service instance with it.
    /// Answers always use the primary domain (the caller passes the primary zone).
    pub fn ptr(&self, state: &State, qname: &Name, ip: IpAddr) -> Option<Record> {
        let wanted = ip.to_string();
        let target = match state
            .nodes()
            .find(|n| n.address.parse::<IpAddr>().is_ok_and(|a| a == ip))
        {
            Some(node) => self.node_name(node)?,
            None => {
                let (_, service) = state.all_services().find(|(_, s)| {
                    s.address
                        .parse::<IpAddr>()
                        .is_ok_and(|a| a.to_string() == wanted)
                })?;
                self.name(&format!("{}.service.{}", service.name, self.datacenter))?
            }
        };
        Some(Record::from_rdata(
            qname.clone(),
            0,
            RData::PTR(PTR(target)),
        ))
    }

    pub fn nxdomain_reply(&self, state: &State) -> Reply {
        self.nxdomain(state)
    }
}

/// Node meta as TXT: `key=value` (RFC 1464), or the raw value for `rfc1035-` keys. A text
/// longer than one character-string (255 bytes, RFC 1035 section 3.3) is split over several
/// strings of the same record, as Consul's DNS library does (a meta value may be 512 bytes).
fn meta_txt(owner: &Name, node: &Node, ttl: u32) -> Vec<Record> {
    node.meta
        .iter()
        .map(|(k, v)| {
            let text = match k.strip_prefix("rfc1035-") {
                Some(_) => v.clone(),
                None => format!("{}={}", k.replace('=', "`="), v),
            };
            Record::from_rdata(
                owner.clone(),
                ttl,
                RData::TXT(TXT::new(character_strings(&text))),
            )
        })
        .collect()
}

/// `text` in pieces of at most 255 bytes, cut at character boundaries.
fn character_strings(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > 255 {
        let mut cut = 255;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    pieces.push(rest.to_string());
    pieces
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

/// An A or AAAA record for `ip` when the question's type asks for that family.
pub fn address_record(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let data = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, data))
}
