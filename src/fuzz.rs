//! Fuzzing entry points. Each takes arbitrary bytes and must return without panicking; where an
//! answer comes out (a DNS reply), it must also hold the invariants a client relies on. The
//! cargo-fuzz targets in `fuzz/` call them, and `tests/fuzz_corpus.rs` replays the saved corpus
//! and every input that ever crashed one as ordinary tests. Not part of Beacon's API.

use std::cell::RefCell;
use std::path::Path;

use hickory_proto::op::{Message, MessageType};

use crate::catalog::{Command, Registration, State};
use crate::config::{DnsConfig, Flags};
use crate::dns::{DnsHandler, Harness, ZoneSettings};
use crate::model::{NodeSpec, ServiceSpec};
use crate::view::View;

/// A catalog with a few nodes and services (tags, meta, an IPv6 address), so queries have
/// something to find.
fn sample_catalog() -> State {
    let mut state = State::new();
    let mut changes = Vec::new();
    let nodes = [("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "fd00::3")];
    for (i, (node, address)) in nodes.iter().enumerate() {
        for service in ["web", "db"] {
            let registration = Registration {
                node: NodeSpec {
                    name: (*node).into(),
                    address: (*address).into(),
                    ..Default::default()
                },
                service: Some(ServiceSpec {
                    id: format!("{service}-{i}").into(),
                    name: service.into(),
                    tags: vec!["primary".into(), format!("v{i}")],
                    port: 8000 + i as u16,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let command = Command::Register(Box::new(registration));
            let _ = state.apply(i as u64 * 2 + 1, 0, &command, &mut changes);
        }
    }
    state
}

thread_local! {
    static DNS: RefCell<Harness> = RefCell::new(Harness::new(
        DnsHandler::new(
            View::new(sample_catalog()),
            ZoneSettings {
                domain: "consul.".into(),
                datacenter: "dc1".into(),
                dns: DnsConfig::default(),
            },
        )
        .expect("the default DNS settings are valid"),
    ));
}

/// A UDP packet to the DNS server, answered by the pre-encoded path or the full handler as a
/// receive loop would. A reply must decode, be a response, and carry the query's ID.
///
/// # Panics
/// When a reply breaks those rules (or the server code panics).
pub fn dns_query(data: &[u8]) {
    let Some(reply) = dns_reply(data) else {
        return;
    };
    let message = Message::from_vec(&reply).expect("a reply decodes");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(&reply[..2], &data[..2], "a reply carries the query's ID");
}

/// The reply the DNS server sends to `data` as a UDP query (from a catalog of nodes `n1`–`n3`
/// with services `web` and `db`, tagged `primary`), if it sends one.
pub fn dns_reply(data: &[u8]) -> Option<Vec<u8>> {
    DNS.with(|dns| dns.borrow_mut().answer(data))
}

/// A request body for every JSON body decoder of the HTTP API.
pub fn http_body(data: &[u8]) {
    crate::http::decode_bodies(data);
}

/// A config file, in the format the first byte picks (JSON, HCL, TOML), resolved as the agent
/// resolves its files (without flags).
pub fn config_file(data: &[u8]) {
    let Some((format, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let name = match format % 3 {
        0 => "config.json",
        1 => "config.hcl",
        _ => "config.toml",
    };
    let _ = crate::config::resolve_as(&Flags::default(), Path::new(name), text);
}

/// A Go duration (`1h2m3.5s`), as flags, config files and JSON bodies give them.
pub fn go_duration(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::model::parse_duration(text);
        let _ = serde_json::from_value::<crate::http::GoDuration>(text.into());
        let _ = serde_json::from_str::<crate::http::GoDuration>(text);
    }
}

/// A `?filter=` expression, parsed for every endpoint's schema and matched against an item.
pub fn filter_expression(data: &[u8]) {
    if let Ok(expr) = std::str::from_utf8(data) {
        crate::http::parse_filters(expr);
    }
}

/// Bytes on a server-RPC connection: frames cut and decoded as a connection does, and each
/// call's body decoded as its method's request (with the proposals inside appended entries).
/// Returns how many calls decoded whole.
pub fn rpc_frames(data: &[u8]) -> usize {
    crate::transport::calls_in(data)
        .into_iter()
        .filter(|(method, body)| crate::raft::rpc::decode_request(*method, body))
        .count()
}
