//! Answer encoding, shared by the two paths a query can take: the UDP cache's pre-encoded
//! bytes (`udp_bytes`) and the full handler's response through hickory (`send`). Both build
//! the header (`local_metadata`) and the OPT record (`response_edns`) the same way, so a cached
//! answer and a freshly computed one are byte-for-byte the same message.
//!
//! Every answer is fitted to its transport's limit *before* hickory encodes it (`fit`): hickory
//! 0.26 rolls back a record that overflows but leaves its bytes in the buffer, so a message it
//! cuts itself has counts that do not match its bytes. Fitting keeps whole records only, keeps the
//! address glue of every SRV record it keeps (an SRV record is dropped rather than its target's
//! address), fills what room is left with the optional additional records (node meta TXT), and
//! sets TC over UDP when an answer record was dropped (RFC 2181 section 9). Static-zone answers,
//! which hickory's `Catalog` builds, are fitted by the `Fitted` response handler.

use std::collections::HashSet;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::{LowerName, RData, Record};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};

use super::MAX_UDP_PAYLOAD;
use super::zone::Reply;

/// The UDP answer to `request` from one of our zones, as wire bytes cut to the client's UDP
/// limit; None if it cannot be encoded.
pub(super) fn udp_bytes(request: &Request, mut reply: Reply, recursion: bool) -> Option<Vec<u8>> {
    let edns = response_edns(request);
    let mut metadata = local_metadata(request, &reply, recursion);
    let limit = udp_limit(edns.as_ref());
    metadata.truncation = fit(&request.queries, edns.as_ref(), metadata, &mut reply, limit);
    let soa = reply.soa.take();
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        soa.iter(),
        reply.additionals.iter(),
    );
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(limit);
    response.destructive_emit(&mut encoder).ok()?;
    Some(bytes)
}

/// The largest message `request`'s transport carries: the client's UDP limit, else 65,535 bytes
/// (the TCP length prefix, RFC 1035 section 4.2.2).
pub(super) fn transport_limit(request: &Request, edns: Option<&Edns>) -> u16 {
    match request.protocol() {
        Protocol::Udp => udp_limit(edns),
        _ => u16::MAX,
    }
}

/// Cuts `reply` so that its message fits in `limit` bytes; returns whether TC must be set
/// (an answer record was dropped and the transport is UDP-sized, i.e. `limit` < 65,535).
///
/// The answer records are a prefix of those given, each with the additional records that
/// belong to it (the address of an SRV target, and so on); when not even the authority section
/// fits, it goes too. Sizes are measured by encoding, since name compression makes them
/// depend on what came before.
pub(super) fn fit(
    queries: &Queries,
    edns: Option<&Edns>,
    metadata: Metadata,
    reply: &mut Reply,
    limit: u16,
) -> bool {
    let fits = |answers: &[Record],
                authorities: &[Record],
                soa: Option<&Record>,
                additionals: &[Record]| {
        let response = MessageResponseBuilder::new(queries, edns).build(
            metadata,
            answers.iter(),
            authorities.iter(),
            soa,
            additionals.iter(),
        );
        let mut bytes = Vec::with_capacity(usize::from(limit).min(4096));
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let expected =
            answers.len() + authorities.len() + usize::from(soa.is_some()) + additionals.len();
        match response.destructive_emit(&mut encoder) {
            Ok(header) => {
                let counts = header.counts();
                let written = usize::from(counts.answers)
                    + usize::from(counts.authorities)
                    + usize::from(counts.additionals)
                    - usize::from(edns.is_some());
                !header.truncation && written == expected
            }
            Err(_) => false,
        }
    };
    // Most answers fit with room to spare: say so without encoding when an upper bound of the
    // size already does.
    if size_bound(queries, edns.is_some(), reply).is_some_and(|b| b <= usize::from(limit))
        || fits(
            &reply.answers,
            &reply.authorities,
            reply.soa.as_ref(),
            &reply.additionals,
        )
    {
        return false;
    }
    // Required glue: the addresses of the names kept answers point at (an SRV target's A/AAAA).
    // Everything else in the additional section (node meta TXT, …) is optional: it goes in only
    // where room is left once the answers and their addresses fit.
    let targets = |answers: &[Record]| -> HashSet<LowerName> {
        answers.iter().filter_map(|r| target(&r.data)).collect()
    };
    let glue_of = |answers: &[Record]| -> Vec<Record> {
        let names = targets(answers);
        reply
            .additionals
            .iter()
            .filter(|r| is_address(r) && names.contains(&LowerName::from(&r.name)))
            .cloned()
            .collect()
    };
    let optional_of = |answers: &[Record]| -> Vec<Record> {
        let mut names = targets(answers);
        names.extend(answers.iter().map(|r| LowerName::from(&r.name)));
        reply
            .additionals
            .iter()
            .filter(|r| !is_address(r) && names.contains(&LowerName::from(&r.name)))
            .cloned()
            .collect()
    };
    let (authorities, soa) = if fits(&[], &reply.authorities, reply.soa.as_ref(), &[]) {
        (std::mem::take(&mut reply.authorities), reply.soa.take())
    } else {
        (Vec::new(), None)
    };
    // The largest prefix of the answers that fits with its glue (the size grows with the
    // prefix, so a binary search finds it), then as many optional records as still fit.
    let kept = largest(reply.answers.len(), |k| {
        let answers = &reply.answers[..k];
        fits(answers, &authorities, soa.as_ref(), &glue_of(answers))
    });
    let answers = &reply.answers[..kept];
    let glue = glue_of(answers);
    let optional = optional_of(answers);
    let extra = largest(optional.len(), |n| {
        let mut additionals = glue.clone();
        additionals.extend_from_slice(&optional[..n]);
        fits(answers, &authorities, soa.as_ref(), &additionals)
    });
    let dropped = kept < reply.answers.len();
    reply.answers.truncate(kept);
    reply.additionals = glue;
    reply.additionals.extend_from_slice(&optional[..extra]);
    reply.authorities = authorities;
    reply.soa = soa;
    dropped && limit < u16::MAX
}

/// The largest `k` in `0..=n` for which `fits_with(k)` holds, given that it holds for every
/// smaller `k` when it holds for `k` (binary search).
fn largest(n: usize, fits_with: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits_with(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// An upper bound of `reply`'s encoded size, without name compression, when every record's
/// data has a size known here; None otherwise (then only encoding tells).
fn size_bound(queries: &Queries, edns: bool, reply: &Reply) -> Option<usize> {
    // `Name::len` is the presentation length; the wire form is at most two bytes longer.
    let name = |n: &hickory_proto::rr::Name| n.len() + 2;
    let data = |d: &RData| -> Option<usize> {
        Some(match d {
            RData::A(_) => 4,
            RData::AAAA(_) => 16,
            RData::SRV(srv) => 6 + name(&srv.target),
            RData::CNAME(c) => name(&c.0),
            RData::NS(ns) => name(&ns.0),
            RData::PTR(p) => name(&p.0),
            RData::MX(mx) => 2 + name(&mx.exchange),
            RData::TXT(txt) => txt.txt_data.iter().map(|s| 1 + s.len()).sum(),
            RData::SOA(soa) => name(&soa.mname) + name(&soa.rname) + 20,
            _ => return None,
        })
    };
    // Header, the question as the client sent it, and our OPT record (no options).
    let mut total = 12 + queries.as_bytes().len() + if edns { 11 } else { 0 };
    let records = reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(reply.soa.iter())
        .chain(&reply.additionals);
    for record in records {
        total += name(&record.name) + 10 + data(&record.data)?;
    }
    Some(total)
}

fn is_address(record: &Record) -> bool {
    matches!(record.data, RData::A(_) | RData::AAAA(_))
}

/// The name an answer record points at, whose addresses belong in the additional section.
fn target(data: &RData) -> Option<LowerName> {
    match data {
        RData::SRV(srv) => Some(LowerName::from(&srv.target)),
        RData::CNAME(c) => Some(LowerName::from(&c.0)),
        RData::MX(mx) => Some(LowerName::from(&mx.exchange)),
        RData::NS(ns) => Some(LowerName::from(&ns.0)),
        _ => None,
    }
}

pub(super) fn error_info(request: &Request, rcode: ResponseCode) -> ResponseInfo {
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

/// The OPT record of an answer: echoes EDNS, with our payload limit.
pub(super) fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        e
    })
}

/// The largest UDP message a client accepts: its EDNS buffer, else 512 (RFC 1035 4.2.1).
pub(super) fn udp_limit(edns: Option<&Edns>) -> u16 {
    edns.map_or(512, Edns::max_payload)
}

/// The header of an answer from one of our zones.
fn local_metadata(request: &Request, reply: &Reply, recursion: bool) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.recursion_available = recursion;
    metadata.response_code = reply.rcode;
    metadata
}

/// Sends the full path's answer from one of our zones (any transport; the response handler
/// cuts it to the transport's limit).
pub(super) async fn send_local<R: ResponseHandler>(
    handle: &mut R,
    builder: MessageResponseBuilder<'_>,
    request: &Request,
    mut reply: Reply,
    recursion: bool,
) -> ResponseInfo {
    let mut metadata = local_metadata(request, &reply, recursion);
    let edns = response_edns(request);
    let limit = transport_limit(request, edns.as_ref());
    metadata.truncation = fit(&request.queries, edns.as_ref(), metadata, &mut reply, limit);
    let soa = reply.soa.take();
    let response = builder.build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        soa.iter(),
        reply.additionals.iter(),
    );
    send(handle, response, request).await
}

/// Sends a built response; a failure to send is logged and reported as SERVFAIL.
pub(super) async fn send<'a, R: ResponseHandler>(
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

/// A response handler that fits what another handler (hickory's `Catalog` for static zones)
/// sends to the transport's limit before `inner` encodes it: the response is encoded whole,
/// decoded back and rebuilt from whole records (`fit`). Only the static-zone path pays for this.
#[derive(Clone)]
pub(super) struct Fitted<R> {
    inner: R,
    queries: Arc<Queries>,
    edns: Option<Edns>,
    limit: u16,
}

impl<R> Fitted<R> {
    /// None if the request's questions cannot be read back (they were read once already).
    pub(super) fn new(inner: R, request: &Request) -> Option<Self> {
        let edns = response_edns(request);
        let bytes = request.queries.as_bytes();
        let queries = Queries::read(&mut BinDecoder::new(bytes), request.queries.len()).ok()?;
        Some(Fitted {
            inner,
            queries: Arc::new(queries),
            limit: transport_limit(request, edns.as_ref()),
            edns,
        })
    }
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for Fitted<R> {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        response.destructive_emit(&mut encoder)?;
        let message = Message::from_vec(&bytes).map_err(hickory_proto::ProtoError::from)?;
        let mut metadata = message.metadata;
        let mut reply = Reply {
            rcode: metadata.response_code,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
            ..Reply::default()
        };
        metadata.truncation |= fit(
            &self.queries,
            self.edns.as_ref(),
            metadata,
            &mut reply,
            self.limit,
        );
        let response = MessageResponseBuilder::new(&self.queries, self.edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        self.inner.send_response(response).await
    }
}
