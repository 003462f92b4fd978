//! Every DNS reply is a well-formed message, whatever has to be left out to fit it: a sweep of
//! instance counts (1…600), name lengths and record types, with and without EDNS, over UDP and
//! TCP, from the Beacon domain, a static zone and a forwarded answer. Replies are read by a strict
//! parser: hickory's decoder, plus "no bytes after the last record" (what dig, dnspython and Go
//! reject as trailing garbage).

mod support;

use std::net::SocketAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

/// Decodes a reply strictly: every byte must belong to a record the header counts.
fn strict(bytes: &[u8], what: &str) -> Message {
    let mut decoder = BinDecoder::new(bytes);
    let message =
        Message::read(&mut decoder).unwrap_or_else(|e| panic!("{what}: undecodable: {e}"));
    assert!(
        decoder.is_empty(),
        "{what}: {} bytes after the last record",
        decoder.len()
    );
    message
}

async fn udp_bytes(server: SocketAddr, query: &Message) -> Vec<u8> {
    let bytes = query.to_vec().unwrap();
    for _ in 0..3 {
        if let Some(reply) = udp_raw(server, &bytes).await {
            return reply;
        }
    }
    panic!("no UDP reply from {server}");
}

async fn tcp_bytes(server: SocketAddr, query: &Message) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let bytes = query.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// One question asked over TCP (the whole answer) and over UDP without EDNS and with two EDNS
/// sizes; checks every reply is strict, within its limit, and cut only with TC set.
async fn check_question(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let what = format!("{name} {rtype}");
    let full = strict(
        &tcp_bytes(server, &query_message(name, rtype, None)).await,
        &format!("{what} over TCP"),
    );
    assert!(!full.metadata.truncation, "{what}: TC over TCP");
    check_glue(&full, &what);
    for edns in [None, Some(1232), Some(4096)] {
        let what = format!("{what} over UDP with EDNS {edns:?}");
        let bytes = udp_bytes(server, &query_message(name, rtype, edns)).await;
        let limit = usize::from(edns.unwrap_or(512));
        assert!(bytes.len() <= limit, "{what}: {} bytes", bytes.len());
        let reply = strict(&bytes, &what);
        assert_eq!(
            reply.metadata.response_code, full.metadata.response_code,
            "{what}"
        );
        if reply.metadata.truncation {
            assert!(
                reply.answers.len() < full.answers.len(),
                "{what}: TC set but all {} answers are there",
                full.answers.len()
            );
        } else {
            assert_eq!(
                reply.answers.len(),
                full.answers.len(),
                "{what}: answers dropped without TC"
            );
        }
        if !full.answers.is_empty() {
            assert!(
                !reply.answers.is_empty(),
                "{what}: not even one answer kept"
            );
        }
        check_glue(&reply, &what);
    }
    full
}

/// Every SRV record kept has its target's address in the additional section.
fn check_glue(reply: &Message, what: &str) {
    for r in &reply.answers {
        if let RData::SRV(srv) = &r.data {
            assert!(
                reply.additionals.iter().any(|a| a.name == srv.target
                    && matches!(a.data, RData::A(_) | RData::AAAA(_))),
                "{what}: SRV target {} kept without its address",
                srv.target
            );
        }
    }
}

/// Registers `count` instances of `service`, each on its own node with its own address.
async fn instances(s: &Server, service: &str, count: usize, node_prefix: &str, v6: bool) {
    // One client: building one per request (root certificates) costs more than the write.
    let client = http();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let address = if v6 {
            format!("2001:db8::{:x}", i + 1)
        } else {
            format!("10.{}.{}.{}", count % 250, i / 250, i % 250 + 1)
        };
        let body = json!({
            "Node": format!("{node_prefix}-{i}"),
            "Address": address,
            "Service": {"Service": service, "ID": format!("{service}-{i}"), "Port": 1000 + i},
        });
        let request = client
            .put(s.url("/v1/catalog/register"))
            .body(body.to_string());
        tasks.spawn(async move {
            let reply = request.send().await.unwrap();
            assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
        });
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn every_service_reply_is_well_formed_and_cut_only_with_tc() {
    let s = Server::start(&[]);
    let long_service = "l".repeat(63);
    let long_node = "node-with-a-long-name-".repeat(2);
    let mut cases: Vec<(String, usize, bool)> = Vec::new();
    for count in [1, 3, 8, 15, 16, 17, 30, 64, 128, 255, 600] {
        let service = format!("s{count}");
        instances(&s, &service, count, &format!("n{count}"), false).await;
        cases.push((service, count, false));
    }
    for count in [1, 5, 20, 100] {
        let service = format!("{}{count}", &long_service[..60]);
        instances(&s, &service, count, &format!("{long_node}{count}"), false).await;
        cases.push((service, count, false));
    }
    for count in [1, 20, 100] {
        let service = format!("v6-{count}");
        instances(&s, &service, count, &format!("v6n{count}"), true).await;
        cases.push((service, count, true));
    }
    assert!(cases.iter().any(|(name, _, _)| name.len() == 63));

    for (service, count, v6) in &cases {
        let name = format!("{service}.service.consul.");
        let address_type = if *v6 { RecordType::AAAA } else { RecordType::A };
        let addresses = check_question(s.dns, &name, address_type).await;
        assert_eq!(
            addresses.answers.len(),
            *count,
            "{name} {address_type} over TCP"
        );
        let srv = check_question(s.dns, &name, RecordType::SRV).await;
        assert_eq!(srv.answers.len(), *count, "{name} SRV over TCP");
        check_question(s.dns, &name, RecordType::ANY).await;
        let other = if *v6 { RecordType::A } else { RecordType::AAAA };
        check_question(s.dns, &name, other).await;
    }
}

const ZONE_HEAD: &str = "$ORIGIN example.test.\n$TTL 3600\n\
@ IN SOA ns1.example.test. hostmaster.example.test. ( 1 3600 600 86400 60 )\n\
  IN NS ns1.example.test.\nns1 IN A 127.0.0.1\n";

/// A static zone whose name `many` has 200 A records and 40 long TXT records.
fn big_zone(dir: &tempfile::TempDir) -> String {
    let mut zone = ZONE_HEAD.to_string();
    for i in 0..200 {
        zone.push_str(&format!("many IN A 192.0.{}.{}\n", i / 200, i % 200 + 1));
    }
    for i in 0..40 {
        zone.push_str(&format!("many IN TXT \"{i:03}{}\"\n", "x".repeat(150)));
    }
    std::fs::write(dir.path().join("example.test.zone"), zone).unwrap();
    let config = dir.path().join("beacon.toml");
    std::fs::write(
        &config,
        "[[zone_files]]\norigin = \"example.test.\"\npath = \"example.test.zone\"\n",
    )
    .unwrap();
    config.display().to_string()
}

#[tokio::test]
async fn static_zone_and_forwarded_replies_are_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let config = big_zone(&dir);
    let upstream = Server::start(&["--config", &config]);
    for rtype in [RecordType::A, RecordType::TXT, RecordType::ANY] {
        let full = check_question(upstream.dns, "many.example.test.", rtype).await;
        if rtype != RecordType::ANY {
            let expected = if rtype == RecordType::A { 200 } else { 40 };
            assert_eq!(full.answers.len(), expected, "static {rtype} over TCP");
        }
    }
    let upstream_dns = upstream.dns.to_string();
    let forwarding = Server::start(&["--recursor", &upstream_dns]);
    for rtype in [RecordType::A, RecordType::TXT] {
        let full = check_question(forwarding.dns, "many.example.test.", rtype).await;
        let expected = if rtype == RecordType::A { 200 } else { 40 };
        assert_eq!(full.answers.len(), expected, "forwarded {rtype} over TCP");
    }
}

#[tokio::test]
async fn node_meta_txt_is_optional_and_long_meta_values_are_split() {
    let s = Server::start(&[]);
    let register = |node: &str, meta: serde_json::Value, service: &str, id: &str, ip: &str| {
        let body = json!({
            "Node": node, "Address": ip, "NodeMeta": meta,
            "Service": {"Service": service, "ID": id, "Port": 80},
        });
        let url = s.url("/v1/catalog/register");
        async move {
            let (st, text) = put(&url, body.to_string()).await;
            assert_eq!(st, 200, "{text}");
        }
    };
    // A meta value longer than one TXT character-string (Consul allows 512 bytes).
    let long = "v".repeat(300);
    register("metan", json!({"k": long}), "metas", "m0", "10.33.0.1").await;
    for i in 1..10 {
        register(
            &format!("plain{i}"),
            json!({}),
            "metas",
            &format!("m{i}"),
            &format!("10.33.0.{}", i + 1),
        )
        .await;
    }
    let srv = check_question(s.dns, "metas.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv.answers.len(),
        10,
        "every instance, the long-meta one included"
    );
    let txt = check_question(s.dns, "metan.node.consul.", RecordType::TXT).await;
    let RData::TXT(text) = &txt.answers[0].data else {
        panic!("{txt:?}")
    };
    let joined: Vec<u8> = text
        .txt_data
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect();
    assert_eq!(joined, format!("k={long}").into_bytes());

    // A node whose meta alone overflows 512 bytes: its address still answers over UDP, without
    // TC, and the TXT records ride along only where there is room.
    let fat: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("key{i}"), json!("x".repeat(240))))
        .collect();
    register(
        "fatmeta",
        serde_json::Value::Object(fat),
        "fatsvc",
        "f",
        "10.34.0.1",
    )
    .await;
    for (name, rtype) in [
        ("fatmeta.node.consul.", RecordType::A),
        ("fatsvc.service.consul.", RecordType::SRV),
    ] {
        check_question(s.dns, name, rtype).await;
        let reply = strict(
            &udp_bytes(s.dns, &query_message(name, rtype, None)).await,
            name,
        );
        assert_eq!(reply.answers.len(), 1, "{name} {rtype}: {reply:?}");
        assert!(
            !reply.metadata.truncation,
            "{name} {rtype}: nothing required was left out"
        );
    }
}
