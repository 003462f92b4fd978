//! The DNS server: the Beacon domain (`consul.`, and `alt_domain` if set) answered from the
//! in-memory catalog view; reverse lookups (PTR) for catalog addresses; static zone files served
//! authoritatively through hickory's `Catalog`; everything else forwarded to the recursors, or
//! REFUSED when there are none.
//!
//! UDP goes through `udp`'s receive loops, which answer plain questions for our domain from
//! `cache`'s pre-encoded answers and pass everything else to this handler; TCP is hickory's
//! server with this handler. The handler takes one lock-free load of the published catalog
//! `State` per query: no redb transaction, no disk I/O, no global lock (on a client agent, a
//! service name's question that misses the pre-encoded answers also takes the views' map lock
//! to mark its view used). Zones and settings are swapped atomically on reload (SIGHUP).
//!
//! On a client agent, service names (`<svc>.service`, tags, RFC 2782) are answered from the
//! agent's streamed views (`remote::views`) instead: a name's first question starts its view
//! and waits for its first snapshot ([`FIRST_VIEW_WAIT`], then SERVFAIL), later ones read
//! memory, through the same pre-encoded answers. Node names, PTR and the SOA read the agent's
//! copy of the catalog, and so do service names past the views' bound
//! ([`MAX_VIEWS`](crate::remote::views::MAX_VIEWS)).

mod cache;
mod encode;
mod forward;
pub mod names;
mod sys;
mod udp;
mod zone;

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::file::{FileConfig, FileZoneHandler};
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, Queries, ZoneType,
};
use tokio::net::TcpListener;

use crate::catalog::State;
use crate::config::DnsConfig;
use crate::metrics::DnsMetrics;
use crate::model::Index;
use crate::remote::views::{Views, Want};
use crate::tasks::Tasks;
use crate::view::View;
use encode::{error_info, response_edns, send};
use forward::Forwarder;
pub(crate) use udp::Harness;
pub use udp::UdpServer;
pub use zone::Reply;
use zone::{ConsulZone, Dependency, Order};

/// Idle TCP connections are closed after this long.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest UDP answer we send, whatever the client offers.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// How long a client agent's first question for a service name waits for the name's view to
/// get its first snapshot before it is answered SERVFAIL (the servers are unreachable or slow;
/// resolvers retry). A server is usually ms away.
pub const FIRST_VIEW_WAIT: Duration = Duration::from_secs(1);

/// Why the DNS zones could not be set up (at start or on reload).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("zone origin {origin:?}: {reason}")]
    ZoneOrigin { origin: String, reason: String },
    #[error("zone file {}: {reason}", path.display())]
    ZoneFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// What the DNS server needs to know to answer.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    /// e.g. `consul.`
    pub domain: String,
    pub datacenter: String,
    pub dns: DnsConfig,
}

/// Everything that answers, rebuilt as a whole on reload.
struct Handlers {
    /// The primary domain first, then `alt_domain`.
    zones: Vec<ConsulZone>,
    statics: Catalog,
    static_origins: Vec<LowerName>,
    forwarder: Option<Forwarder>,
}

impl Handlers {
    /// The Beacon zone a name belongs to (the most specific one when domains nest).
    fn zone_for(&self, qname: &LowerName) -> Option<&ConsulZone> {
        self.zones
            .iter()
            .filter(|z| z.domain.zone_of(qname))
            .max_by_key(|z| z.domain.num_labels())
    }
}

/// The request handler.
pub struct DnsHandler {
    view: View,
    /// A client agent's views, which answer service names (`None` on a server).
    views: Option<Views>,
    current: ArcSwap<Handlers>,
    /// Bumped on every reload, so pre-encoded answers built under old settings are dropped.
    generation: std::sync::atomic::AtomicU64,
}

/// A UDP answer encoded ahead of time (ID and question case are patched per query).
pub(crate) struct Prepared {
    /// `None`: the question takes the full path.
    pub bytes: Option<Vec<u8>>,
    pub depends_on: Dependency,
    /// How many instances were shuffled: how many distinct orders are worth keeping.
    pub shuffled: usize,
    /// On a client agent, the service name whose view answered, with the view's index then
    /// ([`State::recorded_service_index`]; `None`: no snapshot yet). The answer holds while that
    /// index does: views follow servers independently, so their indexes do not order one
    /// another's changes the way a server's catalog index does.
    pub view: Option<(compact_str::CompactString, Option<Index>)>,
}

/// The catalog states one batch of queries reads, each loaded once.
pub(crate) struct Loaded {
    /// The replicated catalog (on a client agent, its copy of it).
    pub catalog: Arc<State>,
    /// A client agent's views; `None` on a server.
    pub views: Option<Arc<State>>,
    /// When the batch was received, to mark views used without reading the clock per query.
    pub at: std::time::Instant,
}

impl Loaded {
    /// The state an answer came from: the views when it came from one.
    pub fn state(&self, from_view: bool) -> &State {
        match (&self.views, from_view) {
            (Some(views), true) => views,
            _ => &self.catalog,
        }
    }
}

impl DnsHandler {
    pub fn new(view: View, settings: ZoneSettings) -> Result<Self, SetupError> {
        let handlers = build(&settings)?;
        Ok(DnsHandler {
            view,
            views: None,
            current: ArcSwap::from_pointee(handlers),
            generation: Default::default(),
        })
    }

    /// A client agent's handler: service names from `views`, the rest from `view`.
    pub fn with_views(mut self, views: Views) -> Self {
        self.views = Some(views);
        self
    }

    /// The states a batch of queries reads.
    pub(crate) fn load(&self) -> Loaded {
        Loaded {
            catalog: self.view.load(),
            views: self.views.as_ref().map(|v| v.catalog().load()),
            at: std::time::Instant::now(),
        }
    }

    /// Marks `name`'s view used (a pre-encoded answer from it was sent), starting it if there
    /// is room; what the views said.
    pub(crate) fn touch(&self, name: &str) -> Want {
        match &self.views {
            Some(views) => views.want(name),
            None => Want::Full,
        }
    }

    /// How often a pre-encoded answer from a view must mark it used at least
    /// ([`Views::touch_every`]).
    pub(crate) fn touch_every(&self) -> Duration {
        self.views
            .as_ref()
            .map_or(Duration::MAX, Views::touch_every)
    }

    /// On a client agent, the service name `query` asks about, when its answer is to come
    /// from a view (lower-cased); marks that view used, starting it. `None` also when the
    /// agent holds [`MAX_VIEWS`](crate::remote::views::MAX_VIEWS) views and none of this name:
    /// the catalog copy answers then.
    fn view_name(
        &self,
        zone: &ConsulZone,
        qname: &LowerName,
        qtype: RecordType,
    ) -> Option<compact_str::CompactString> {
        self.views.as_ref()?;
        let name = crate::catalog::key(&zone.service_of(qname, qtype)?);
        (self.touch(&name) != Want::Full).then_some(name)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Encodes the UDP answer to a plain query for a name in the Beacon domain, with the
    /// instances in the given order; `bytes: None` when the question needs the full path
    /// (other zones, forwarding, answers that must be computed afresh each time).
    /// On a client agent, a service name whose view has no snapshot yet takes the full path
    /// (which waits for it) and starts the view.
    pub(crate) fn prepare(&self, loaded: &Loaded, request: &Request, order: Order) -> Prepared {
        let mut prepared = Prepared {
            bytes: None,
            depends_on: Dependency::Catalog,
            shuffled: 0,
            view: None,
        };
        let plain = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query
            && request.queries.len() == 1;
        if !plain {
            return prepared;
        }
        let query = &request.queries.queries()[0];
        let handlers = self.current.load();
        let Some(zone) = handlers.zone_for(query.name()) else {
            return prepared;
        };
        let view = self.view_name(zone, query.name(), query.query_type());
        let state = loaded.state(view.is_some());
        if let Some(name) = view {
            let index = state.recorded_service_index(&name);
            prepared.view = Some((name, index));
            if index.is_none() {
                return prepared;
            }
        }
        let reply = zone.answer(state, query.name(), query.query_type(), true, order);
        if !reply.external.is_empty() || reply.depends_on == Dependency::Never {
            return prepared;
        }
        // A view's answer is kept while its own index holds, so it must not read other names:
        // one that followed a CNAME (a service address that is a name in our domain) is
        // computed afresh each time.
        if prepared.view.is_some()
            && reply
                .answers
                .iter()
                .any(|r| r.record_type() == RecordType::CNAME)
        {
            return prepared;
        }
        prepared.depends_on = reply.depends_on.clone();
        prepared.shuffled = reply.shuffled;
        prepared.bytes = encode::udp_bytes(request, reply, handlers.forwarder.is_some());
        prepared
    }

    /// Re-reads the zone files and applies new DNS settings; on error the old ones stay.
    pub fn reload(&self, settings: ZoneSettings) -> Result<(), SetupError> {
        let handlers = build(&settings)?;
        self.current.store(Arc::new(handlers));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

fn build(settings: &ZoneSettings) -> Result<Handlers, SetupError> {
    let dns = &settings.dns;
    let mut zones = vec![ConsulZone::new(
        &settings.domain,
        &settings.datacenter,
        dns.clone(),
    )?];
    if let Some(alt) = &dns.alt_domain {
        zones.push(ConsulZone::new(alt, &settings.datacenter, dns.clone())?);
    }
    let mut statics = Catalog::new();
    let mut static_origins = Vec::new();
    for zone in &dns.zone_files {
        let origin = Name::from_str(&zone.origin).map_err(|e| SetupError::ZoneOrigin {
            origin: zone.origin.clone(),
            reason: e.to_string(),
        })?;
        let handler = load_zone(origin.clone(), &zone.path)?;
        let lower = LowerName::from(origin);
        statics.upsert(lower.clone(), vec![Arc::new(handler)]);
        static_origins.push(lower);
    }
    let forwarder = (!dns.recursors.is_empty()).then(|| Forwarder {
        servers: dns.recursors.clone(),
        timeout: dns.recursor_timeout,
        random: dns.recursor_random,
    });
    Ok(Handlers {
        zones,
        statics,
        static_origins,
        forwarder,
    })
}

fn load_zone(origin: Name, path: &Path) -> Result<FileZoneHandler, SetupError> {
    FileZoneHandler::try_from_config(
        origin,
        ZoneType::Primary,
        AxfrPolicy::Deny,
        None,
        &FileConfig {
            zone_path: path.to_path_buf(),
        },
    )
    .map_err(|e| SetupError::ZoneFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn is_reverse(name: &LowerName) -> bool {
    let text = name.to_string();
    text.ends_with("in-addr.arpa.")
        || text.ends_with("ip6.arpa.")
        || text.ends_with("in-addr.arpa")
        || text.ends_with("ip6.arpa")
}

/// Whether a name in the question section (`questions`, the section's bytes as received, which
/// starts at offset 12 of the message) has a compression pointer (RFC 1035 §4.1.4) to an offset
/// below 12, inside the header. Pointers to earlier questions keep their meaning in the reply,
/// which repeats the section at the same offset.
fn points_into_header(questions: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&len) = questions.get(at) {
        if len & 0xc0 == 0xc0 {
            let low = questions.get(at + 1).copied().unwrap_or(0xff);
            if u16::from_be_bytes([len & 0x3f, low]) < 12 {
                return true;
            }
            at += 2 + 4; // the pointer ends the name; QTYPE and QCLASS follow
        } else if len == 0 {
            at += 1 + 4;
        } else {
            at += 1 + len as usize;
        }
    }
    false
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    /// The full handler, timed (`beacon_dns_full_path_duration_seconds`).
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = std::time::Instant::now();
        let info = self.answer::<R, T>(request, response_handle).await;
        crate::metrics::RECORDED
            .dns_full_path_duration
            .observe(crate::metrics::seconds_since(started));
        info
    }
}

impl DnsHandler {
    async fn answer<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // EDNS: answer with an OPT record so EDNS clients get answers up to their buffer size.
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let metadata_with = |rcode| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = rcode;
            m
        };
        if request.metadata.message_type != MessageType::Query {
            return error_info(request, ResponseCode::FormErr);
        }
        if points_into_header(request.queries.as_bytes()) {
            // hickory echoes the question as it came, so such a pointer would point into the
            // reply's header, whose flags differ: a reply no client can decode (found by the
            // `dns_query` fuzz target). The answer carries no question.
            let none = Queries::read(&mut BinDecoder::new(&[]), 0).expect("zero questions");
            let response = MessageResponseBuilder::new(&none, None)
                .error_msg(&request.metadata, ResponseCode::FormErr);
            return send(&mut response_handle, response, request).await;
        }
        if request.metadata.op_code != OpCode::Query {
            let response = builder.build_no_records(metadata_with(ResponseCode::NotImp));
            return send(&mut response_handle, response, request).await;
        }
        if request.queries.len() != 1 {
            let response = builder.build_no_records(metadata_with(ResponseCode::FormErr));
            return send(&mut response_handle, response, request).await;
        }
        let query = &request.queries.queries()[0];
        let (qname, qtype) = (query.name(), query.query_type());
        let handlers = self.current.load_full();
        let udp = request.protocol() == Protocol::Udp;
        let view = handlers
            .zone_for(qname)
            .and_then(|z| self.view_name(z, qname, qtype));
        let _reading = match (&view, &self.views) {
            (Some(name), Some(views)) => {
                if !views.ready(name, FIRST_VIEW_WAIT).await {
                    tracing::debug!(service = %name, "no view and no server answered in time: SERVFAIL");
                    let response = builder.build_no_records(metadata_with(ResponseCode::ServFail));
                    return send(&mut response_handle, response, request).await;
                }
                views.reading(name)
            }
            _ => None,
        };
        // Loaded after the wait, so a view's first snapshot is in it.
        let state = match (&view, &self.views) {
            (Some(_), Some(views)) => views.catalog().load(),
            _ => self.view.load(),
        };
        let recursion = handlers.forwarder.is_some();

        let in_static = handlers.static_origins.iter().any(|o| o.zone_of(qname));
        let zone = handlers.zone_for(qname);

        // Our domain first; then reverse lookups of catalog addresses; then static zones; the
        // rest goes to the recursors (or is refused).
        let local = if let Some(zone) = zone {
            let mut reply = zone.answer(&state, qname, qtype, udp, Order::Random);
            if let Some(forwarder) = &handlers.forwarder {
                for host in std::mem::take(&mut reply.external) {
                    if let Some(upstream) = forwarder.resolve(&Query::query(host, qtype)).await {
                        reply.answers.extend(upstream.answers);
                    }
                }
            }
            Some(reply)
        } else if is_reverse(qname) && !in_static {
            let primary = &handlers.zones[0];
            let labels: Vec<String> = Name::from(qname.clone())
                .iter()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let ptr = matches!(qtype, RecordType::PTR | RecordType::ANY)
                .then(|| names::reverse_ip(&labels))
                .flatten()
                .and_then(|ip| primary.ptr(&state, &Name::from(qname.clone()), ip));
            match (ptr, handlers.forwarder.is_some()) {
                (Some(record), _) => Some(Reply {
                    answers: vec![record],
                    ..Reply::default()
                }),
                (None, true) => None,
                (None, false) => Some(primary.nxdomain_reply(&state)),
            }
        } else if in_static {
            return match encode::Fitted::new(response_handle, request) {
                Some(fitted) => {
                    handlers
                        .statics
                        .handle_request::<_, T>(request, fitted)
                        .await
                }
                None => error_info(request, ResponseCode::FormErr),
            };
        } else {
            None
        };
        let Some(reply) = local else {
            return match &handlers.forwarder {
                Some(forwarder) => {
                    let query = Query::query(Name::from(qname.clone()), qtype);
                    forwarded(forwarder, query, builder, request, &mut response_handle).await
                }
                None => {
                    let response = builder.build_no_records(metadata_with(ResponseCode::Refused));
                    send(&mut response_handle, response, request).await
                }
            };
        };

        encode::send_local(&mut response_handle, builder, request, reply, recursion).await
    }
}

/// Relays a recursor's answer (RA set, not authoritative); SERVFAIL when all recursors failed.
async fn forwarded<R: ResponseHandler>(
    forwarder: &Forwarder,
    query: Query,
    builder: MessageResponseBuilder<'_>,
    request: &Request,
    handle: &mut R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    match forwarder.resolve(&query).await {
        Some(upstream) => {
            metadata.response_code = upstream.metadata.response_code;
            let mut reply = Reply {
                answers: upstream.answers,
                authorities: upstream.authorities,
                additionals: upstream.additionals,
                ..Reply::default()
            };
            let edns = response_edns(request);
            let limit = encode::transport_limit(request, edns.as_ref());
            metadata.truncation =
                encode::fit(&request.queries, edns.as_ref(), metadata, &mut reply, limit);
            let response = builder.build(
                metadata,
                reply.answers.iter(),
                reply.authorities.iter(),
                std::iter::empty(),
                reply.additionals.iter(),
            );
            send(handle, response, request).await
        }
        None => {
            metadata.response_code = ResponseCode::ServFail;
            send(handle, builder.build_no_records(metadata), request).await
        }
    }
}

/// The DNS listeners, bound before the server starts so their addresses can be logged.
pub struct Listeners {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: TcpListener,
    /// DNS over TLS (RFC 7858), with the certificate to serve; bound by the caller.
    pub tls: Option<(TcpListener, Arc<dyn rustls::server::ResolvesServerCert>)>,
}

/// Binds `udp_workers` UDP sockets and a TCP listener on the same port (port 0 picks one free
/// for both).
pub async fn bind(addr: SocketAddr, udp_workers: usize) -> std::io::Result<Listeners> {
    let mut last_err = None;
    for _ in 0..10 {
        let udp = udp::bind(addr, udp_workers)?;
        let local = udp[0].local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => {
                return Ok(Listeners {
                    udp,
                    tcp,
                    tls: None,
                });
            }
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for DNS")))
}

/// The running DNS server: our UDP receive loops, and hickory's server for TCP and TLS.
pub struct DnsServer {
    udp: UdpServer,
    tcp: Server<SharedHandler>,
}

impl DnsServer {
    pub async fn shutdown(mut self) {
        if let Err(e) = self.tcp.shutdown_gracefully().await {
            tracing::warn!(error = %e, "dns tcp shutdown");
        }
        let udp = self.udp;
        let _ = tokio::task::spawn_blocking(move || udp.shutdown()).await;
    }
}

/// Starts serving on bound sockets.
pub fn serve(
    handler: Arc<DnsHandler>,
    listeners: Listeners,
    metrics: Arc<DnsMetrics>,
    max_queue_delay: Duration,
    tasks: &Tasks,
) -> std::io::Result<DnsServer> {
    let udp = UdpServer::start(
        handler.clone(),
        listeners.udp,
        metrics,
        max_queue_delay,
        tasks,
    )?;
    let mut tcp = Server::new(SharedHandler(handler));
    tcp.register_listener(listeners.tcp, TCP_IDLE_TIMEOUT, 65535);
    if let Some((listener, certs)) = listeners.tls {
        // hickory's DoT listener answers through the same handler as TCP; the resolver picks
        // the certificate per handshake, so a reload reaches new connections.
        tcp.register_tls_listener(listener, TCP_IDLE_TIMEOUT, certs)?;
    }
    Ok(DnsServer { udp, tcp })
}

/// The handler behind an `Arc`, so the server keeps serving while a reload swaps its zones.
pub struct SharedHandler(pub Arc<DnsHandler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::points_into_header;

    #[test]
    fn only_pointers_into_the_header_are_flagged() {
        let plain = b"\x03web\x07service\x06consul\x00\x00\x01\x00\x01";
        assert!(!points_into_header(plain));
        // A second question whose name points at the first (offset 12): still valid when echoed.
        let mut two = plain.to_vec();
        two.extend_from_slice(b"\x01a\xc0\x0c\x00\x01\x00\x01");
        assert!(!points_into_header(&two));
        // A name ending in a pointer to offset 2 (the flags) or 11 (inside the header).
        for target in [2u8, 11] {
            let into = [b"\x01a\xc0".as_slice(), &[target], b"\x00\x01\x00\x01"].concat();
            assert!(points_into_header(&into), "offset {target}");
        }
    }
}
