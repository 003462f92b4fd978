//! Answer encoding, shared by the two paths a query can take: the UDP cache's pre-encoded
//! bytes (`udp_bytes`) and the full handler's response through hickory (`send`). Both build
//! the header (`local_metadata`) and the OPT record (`response_edns`) the same way, so a cached
//! answer and a freshly computed one are byte-for-byte the same message.

use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::MAX_UDP_PAYLOAD;
use super::zone::Reply;

/// The UDP answer to `request` from one of our zones, as wire bytes cut to the client's UDP
/// limit; None if it cannot be encoded.
pub(super) fn udp_bytes(request: &Request, mut reply: Reply, recursion: bool) -> Option<Vec<u8>> {
    let edns = response_edns(request);
    let metadata = local_metadata(request, &reply, recursion);
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
    encoder.set_max_size(udp_limit(edns.as_ref()));
    response.destructive_emit(&mut encoder).ok()?;
    Some(bytes)
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
    let metadata = local_metadata(request, &reply, recursion);
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
