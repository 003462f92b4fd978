//! The DNS server: the Beacon domain (`consul.` by default) answered from the in-memory catalog
//! view; every other name goes to hickory's `Catalog` (static zones and forwarding plug in there;
//! with none configured it answers REFUSED).
//!
//! The hot path takes one lock-free load of the published catalog `State` per query: no redb
//! transaction, no disk I/O, no global lock.

pub mod names;

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, UdpSocket};

use crate::catalog::{Instance, State, View};
use crate::config::DnsConfig;
use crate::model::CheckStatus;
use names::{Lookup, encode_hex_ip};

/// Idle TCP connections are closed after this long.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the Beacon zone needs to know to answer.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    /// e.g. `consul.`
    pub domain: String,
    pub datacenter: String,
    pub dns: DnsConfig,
}

/// The request handler: our zone first, everything else to hickory's `Catalog`.
pub struct DnsHandler {
    zone: ConsulZone,
    others: Catalog,
}

impl DnsHandler {
    pub fn new(view: View, settings: ZoneSettings) -> Result<Self, String> {
        Ok(DnsHandler {
            zone: ConsulZone::new(view, settings)?,
            others: Catalog::new(),
        })
    }
}

/// A finished answer for one question, before encoding.
#[derive(Debug, Default)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Put the zone's SOA in the authority section (NXDOMAIN and NODATA answers).
    pub soa: Option<Record>,
}

struct ConsulZone {
    view: View,
    domain: LowerName,
    domain_name: Name,
    domain_labels: usize,
    datacenter: String,
    dns: DnsConfig,
    soa_mname: Name,
    soa_rname: Name,
}

impl ConsulZone {
    fn new(view: View, settings: ZoneSettings) -> Result<Self, String> {
        let domain_name = Name::from_str(&settings.domain).map_err(|e| format!("domain: {e}"))?;
        let label = |l: &str| {
            Name::from_str(l)
                .and_then(|n| n.append_domain(&domain_name))
                .map_err(|e| format!("domain: {e}"))
        };
        Ok(ConsulZone {
            domain: LowerName::from(domain_name.clone()),
            domain_labels: domain_name.num_labels() as usize,
            soa_mname: label("ns")?,
            soa_rname: label("hostmaster")?,
            domain_name,
            datacenter: settings.datacenter.to_ascii_lowercase(),
            dns: settings.dns,
            view,
        })
    }

    fn soa(&self, state: &State) -> Record {
        let serial = (state.indexes().last & 0xffff_ffff) as u32;
        Record::from_rdata(
            self.domain_name.clone(),
            0,
            RData::SOA(SOA::new(
                self.soa_mname.clone(),
                self.soa_rname.clone(),
                serial,
                3600,
                600,
                86400,
                0,
            )),
        )
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(relative)
            .ok()?
            .append_domain(&self.domain_name)
            .ok()
    }

    /// Answers one question whose name is inside the zone.
    fn answer(&self, qname: &LowerName, qtype: RecordType, udp: bool) -> Reply {
        let state = self.view.load();
        let name = Name::from(qname.clone());
        let total = name.num_labels() as usize;
        let labels: Option<Vec<String>> = name
            .iter()
            .take(total.saturating_sub(self.domain_labels))
            .map(|l| std::str::from_utf8(l).ok().map(|s| s.to_ascii_lowercase()))
            .collect();
        let Some(labels) = labels else {
            return self.nxdomain(&state);
        };
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let parsed = names::parse(&labels, qtype == RecordType::SRV);
        if let Some(dc) = &parsed.datacenter
            && *dc != self.datacenter
        {
            // Another datacenter: "No path to datacenter" is NXDOMAIN in Consul.
            return self.nxdomain(&state);
        }
        match parsed.lookup {
            Lookup::Apex => {
                if qtype == RecordType::SOA {
                    Reply {
                        answers: vec![self.soa(&state)],
                        ..Reply::default()
                    }
                } else {
                    self.nodata(&state)
                }
            }
            Lookup::Service { name: svc, tag } => {
                self.service(&state, &name, &svc, tag.as_deref(), qtype, udp)
            }
            Lookup::Node { name: node } => self.node(&state, &name, &node, qtype),
            Lookup::Addr { ip } => {
                let ttl = secs(self.dns.node_ttl);
                match address_record(&name, ip, qtype, ttl) {
                    Some(r) => Reply {
                        answers: vec![r],
                        ..Reply::default()
                    },
                    None => self.nodata(&state),
                }
            }
            Lookup::Invalid => self.nxdomain(&state),
        }
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

    fn healthy(&self, status: CheckStatus) -> bool {
        match status {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !self.dns.only_passing,
            CheckStatus::Critical => false,
        }
    }

    fn service(
        &self,
        state: &State,
        qname: &Name,
        service: &str,
        tag: Option<&str>,
        qtype: RecordType,
        udp: bool,
    ) -> Reply {
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
        healthy.shuffle(&mut rand::rng());
        let ttl = secs(self.dns.service_ttl.for_service(service));
        let mut reply = Reply::default();
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut seen = Vec::new();
                for (i, _) in &healthy {
                    let Some(ip) = instance_ip(i) else { continue };
                    if seen.contains(&ip) {
                        continue;
                    }
                    if let Some(r) = address_record(qname, ip, qtype, ttl) {
                        seen.push(ip);
                        reply.answers.push(r);
                    }
                }
            }
            RecordType::SRV => {
                let mut seen = Vec::new();
                for (i, status) in &healthy {
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
                    let Some((target, ip)) = self.srv_target(i) else {
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
                }
            }
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
            reply.soa = Some(self.soa(state));
        }
        reply
    }

    /// The SRV target of an instance and the address to put in the additional section.
    fn srv_target(&self, i: &Instance<'_>) -> Option<(Name, Option<IpAddr>)> {
        let dc = &self.datacenter;
        if !i.service.address.is_empty() {
            return match i.service.address.parse::<IpAddr>() {
                Ok(ip) => Some((
                    self.name(&format!("{}.addr.{dc}", encode_hex_ip(ip)))?,
                    Some(ip),
                )),
                // A hostname is its own target.
                Err(_) => {
                    let mut host = Name::from_ascii(&i.service.address).ok()?;
                    host.set_fqdn(true);
                    Some((host, None))
                }
            };
        }
        let target = self.name(&format!("{}.node.{dc}", i.node.name))?;
        Some((target, i.node.address.parse().ok()))
    }

    fn node(&self, state: &State, qname: &Name, node: &str, qtype: RecordType) -> Reply {
        let Some(node) = state.node(node) else {
            return self.nxdomain(state);
        };
        let ttl = secs(self.dns.node_ttl);
        match node
            .address
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| address_record(qname, ip, qtype, ttl))
        {
            Some(r) => Reply {
                answers: vec![r],
                ..Reply::default()
            },
            None => self.nodata(state),
        }
    }
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

fn instance_ip(i: &Instance<'_>) -> Option<IpAddr> {
    let addr = if i.service.address.is_empty() {
        &i.node.address
    } else {
        &i.service.address
    };
    addr.parse().ok()
}

/// An A or AAAA record for `ip` when the question's type asks for that family.
fn address_record(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let data = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, data))
}

fn error_info(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // EDNS: echo an OPT record so EDNS clients get answers up to their buffer size.
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }

        let refuse = |rcode| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = rcode;
            m
        };
        if request.metadata.message_type != MessageType::Query {
            return error_info(request, ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            let response = builder.build_no_records(refuse(ResponseCode::NotImp));
            return send(&mut response_handle, response, request).await;
        }
        if request.queries.len() != 1 {
            let response = builder.build_no_records(refuse(ResponseCode::FormErr));
            return send(&mut response_handle, response, request).await;
        }
        let query = &request.queries.queries()[0];
        if !self.zone.domain.zone_of(query.name()) {
            return self
                .others
                .handle_request::<R, T>(request, response_handle)
                .await;
        }

        let reply = self.zone.answer(
            query.name(),
            query.query_type(),
            request.protocol() == Protocol::Udp,
        );
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        metadata.response_code = reply.rcode;
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            std::iter::empty(),
            reply.soa.iter(),
            reply.additionals.iter(),
        );
        send(&mut response_handle, response, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: failed to send response");
            error_info(request, ResponseCode::ServFail)
        }
    }
}

/// Binds UDP and TCP on the same port (port 0 picks one free for both).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..10 {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for DNS")))
}

/// Starts serving on bound sockets.
pub fn serve(handler: DnsHandler, udp: UdpSocket, tcp: TcpListener) -> Server<DnsHandler> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 65535);
    server
}
