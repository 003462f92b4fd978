//! The UDP fast path: pre-encoded answers that still shuffle, follow every catalog change, carry
//! the client's ID and question, and shed load when the server falls behind.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use support::*;

async fn instances(s: &Server, name: &str, count: usize) {
    for n in 1..=count {
        register(
            s,
            json!({"Name": name, "ID": format!("{name}{n}"), "Address": format!("10.1.0.{n}"),
                   "Port": 8000 + n, "Check": {"TTL": "30s"}}),
        )
        .await;
        pass(s, &format!("service:{name}{n}")).await;
    }
}

/// The first answer's data, in the order the server sent it.
fn first_answer(m: &Message) -> String {
    match &m.answers.first().expect("an answer").data {
        RData::A(a) => a.0.to_string(),
        RData::SRV(srv) => srv.port.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn every_instance_comes_first_about_equally_often() {
    let s = Server::start(&[]);
    instances(&s, "web", 5).await;
    let mut firsts: HashMap<String, usize> = HashMap::new();
    let mut srv_firsts: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let a = ask(s.dns, "web.service.consul.", RecordType::A).await;
        assert_eq!(a_records(&a).len(), 5);
        *firsts.entry(first_answer(&a)).or_default() += 1;
        let srv = ask(s.dns, "web.service.consul.", RecordType::SRV).await;
        *srv_firsts.entry(first_answer(&srv)).or_default() += 1;
    }
    assert_eq!(firsts.len(), 5, "every instance comes first: {firsts:?}");
    assert!(
        firsts.values().all(|&n| (10..=30).contains(&n)),
        "about equally often: {firsts:?}"
    );
    assert_eq!(srv_firsts.len(), 5, "{srv_firsts:?}");
    assert!(
        srv_firsts.values().all(|&n| (10..=30).contains(&n)),
        "{srv_firsts:?}"
    );
}

#[tokio::test]
async fn replies_carry_the_clients_id_and_question_case() {
    let s = Server::start(&[]);
    instances(&s, "api", 1).await;
    for (id, name) in [
        (0x0102, "api.service.consul."),
        (0xfffe, "API.Service.CONSUL."),
        (0x7777, "aPi.sErViCe.cOnSuL."),
    ] {
        let mut query = query_message(name, RecordType::A, None);
        query.metadata.id = id;
        let bytes = query.to_vec().unwrap();
        let reply = udp_raw(s.dns, &bytes).await.expect("a reply");
        assert_eq!(&reply[..2], &bytes[..2], "the query's ID");
        let question_end = bytes.len();
        assert_eq!(
            &reply[12..question_end],
            &bytes[12..question_end],
            "the question as the client wrote it (0x20 resolvers compare it)"
        );
        let message = Message::from_vec(&reply).unwrap();
        assert_eq!(a_records(&message), ["10.1.0.1"]);
        assert!(
            message.metadata.recursion_desired,
            "RD copied from the query"
        );
    }
}

#[tokio::test]
async fn cached_answers_follow_catalog_changes() {
    let s = Server::start(&[]);
    instances(&s, "db", 2).await;
    instances(&s, "cache", 1).await;
    for _ in 0..5 {
        let a = ask(s.dns, "db.service.consul.", RecordType::A).await;
        let mut got = a_records(&a);
        got.sort();
        assert_eq!(got, ["10.1.0.1", "10.1.0.2"]);
    }
    // A change to another service leaves this one's answer as it was.
    fail(&s, "service:cache1").await;
    eventually("cache leaves DNS", || async {
        let a = ask(s.dns, "cache.service.consul.", RecordType::A).await;
        a.answers.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        a_records(&ask(s.dns, "db.service.consul.", RecordType::A).await).len(),
        2
    );
    // Health, registrations and deregistrations of this service show at once.
    fail(&s, "service:db1").await;
    let a = ask(s.dns, "db.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&a), ["10.1.0.2"]);
    register(
        &s,
        json!({"Name": "db", "ID": "db3", "Address": "10.1.0.3", "Port": 8003}),
    )
    .await;
    let mut got = a_records(&ask(s.dns, "db.service.consul.", RecordType::A).await);
    got.sort();
    assert_eq!(got, ["10.1.0.2", "10.1.0.3"]);
    let srv = ask(s.dns, "db.service.consul.", RecordType::SRV).await;
    let mut ports: Vec<u16> = srv_records(&srv).into_iter().map(|(p, _)| p).collect();
    ports.sort();
    assert_eq!(ports, [8002, 8003]);
    for id in ["db1", "db2", "db3"] {
        let (status, _) = put(&s.url(&format!("/v1/agent/service/deregister/{id}")), "").await;
        assert_eq!(status, 200);
    }
    let gone = ask(s.dns, "db.service.consul.", RecordType::A).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    // The SOA serial of a negative answer follows the catalog too.
    let serial = |m: &Message| {
        m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
    };
    let before = serial(&gone).expect("SOA");
    register(&s, json!({"Name": "other", "Port": 1})).await;
    let after = serial(&ask(s.dns, "db.service.consul.", RecordType::A).await).expect("SOA");
    assert!(after > before, "serial {before} then {after}");
}

async fn metric(s: &Server, name: &str) -> u64 {
    let text = http()
        .get(s.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
}

#[tokio::test]
async fn metrics_count_queries_and_cache_hits() {
    let s = Server::start(&[]);
    instances(&s, "web", 1).await;
    let hits_before = metric(&s, "beacon_dns_udp_cache_hits_total").await;
    let answered_before = metric(&s, "beacon_dns_udp_answered_total").await;
    for _ in 0..10 {
        ask(s.dns, "web.service.consul.", RecordType::A).await;
    }
    // A name outside our zones takes the full path (REFUSED: no recursors).
    let refused = ask(s.dns, "example.org.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(metric(&s, "beacon_dns_udp_cache_hits_total").await >= hits_before + 9);
    assert!(metric(&s, "beacon_dns_udp_answered_total").await >= answered_before + 11);
    assert!(metric(&s, "beacon_dns_udp_full_path_total").await >= 1);
    let (status, body) = get_json(&s.url("/v1/agent/metrics")).await;
    assert_eq!(status, 200);
    let counters = body["Counters"].as_array().expect("Counters");
    assert!(
        counters.iter().any(
            |c| c["Name"] == "beacon_dns_udp_answered_total" && c["Count"].as_u64() >= Some(11)
        )
    );
}

#[tokio::test]
async fn a_backlog_is_shed_counted_and_the_server_recovers_at_once() {
    // Zero: any query found waiting behind a full batch is too old.
    let s = Server::with_config("[dns_config]\nmax_queue_delay = \"0s\"\nudp_workers = 1\n");
    instances(&s, "web", 1).await;
    ask(s.dns, "web.service.consul.", RecordType::A).await;
    let received_before = metric(&s, "beacon_dns_udp_queries_received_total").await;
    let answered_before = metric(&s, "beacon_dns_udp_answered_total").await;

    // A stream of queries; midway the server is frozen for a moment, so it comes back to a
    // backlog while the stream goes on. What queued while it was frozen is answered (the stall
    // was the server's); what keeps arriving behind that backlog is too old and is shed.
    let query = query_message("web.service.consul.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let target = s.dns;
    let sender = std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_millis(600) {
            if sock.send_to(&query, target).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    signal(s.pid(), "STOP");
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(s.pid(), "CONT");
    let sent = tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();

    // Wait until every query sent was read or dropped by the kernel.
    let (received, answered, dropped, overflow) = eventually("the backlog is drained", || async {
        let counts = (
            metric(&s, "beacon_dns_udp_queries_received_total").await,
            metric(&s, "beacon_dns_udp_answered_total").await,
            metric(&s, "beacon_dns_udp_dropped_total{reason=\"overload\"}").await,
            metric(
                &s,
                "beacon_dns_udp_dropped_total{reason=\"receive_buffer\"}",
            )
            .await,
        );
        (counts.0 - received_before + counts.3 >= sent).then_some(counts)
    })
    .await;
    assert!(
        dropped > 0,
        "queries behind the backlog were shed (sent {sent})"
    );
    assert_eq!(
        received - received_before,
        (answered - answered_before) + dropped,
        "every query read is answered or counted as dropped (kernel overflow: {overflow})"
    );
    // Right after, queries are answered normally.
    let a = ask(s.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&a), ["10.1.0.1"]);
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
