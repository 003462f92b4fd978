//! DNS answers from a real server process, asked over real UDP and TCP sockets.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use support::*;

fn has_soa(m: &hickory_proto::op::Message) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)))
}

async fn web(server: &Server, id: &str, address: &str, tags: &[&str]) {
    register(
        server,
        json!({"Name": "web", "ID": id, "Address": address, "Port": 8080, "Tags": tags, "Check": {"TTL": "30s"}}),
    )
    .await;
}

#[tokio::test]
async fn registered_passing_instance_answers_a_and_srv() {
    let s = Server::start(&[]);
    web(&s, "web1", "10.0.0.1", &["v1"]).await;
    pass(&s, "service:web1").await;

    let a = ask(s.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    assert_eq!(a_records(&a), ["10.0.0.1"]);

    let srv = ask(s.dns, "web.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&srv),
        [(8080, "0a000001.addr.dc1.consul.".to_string())]
    );
    // The target resolves from the additional section and on its own.
    assert!(
        srv.additionals
            .iter()
            .any(|r| r.name.to_string() == "0a000001.addr.dc1.consul."
                && matches!(r.data, RData::A(a) if a.0.to_string() == "10.0.0.1"))
    );
    let addr = ask(s.dns, "0a000001.addr.dc1.consul.", RecordType::A).await;
    assert_eq!(a_records(&addr), ["10.0.0.1"]);

    // Names are case-insensitive; the datacenter may be named.
    let upper = ask(s.dns, "WEB.Service.DC1.Consul.", RecordType::A).await;
    assert_eq!(a_records(&upper), ["10.0.0.1"]);
}

#[tokio::test]
async fn srv_target_is_the_node_when_the_service_has_no_address() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "api", "Port": 9000})).await;
    let srv = ask(s.dns, "api.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&srv),
        [(9000, "test-node.node.dc1.consul.".to_string())]
    );
    assert!(
        srv.additionals
            .iter()
            .any(|r| r.name.to_string() == "test-node.node.dc1.consul.")
    );
    // A service without checks is healthy; its A answer is the node's address.
    let a = ask(s.dns, "api.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&a), ["127.0.0.1"]);
}

#[tokio::test]
async fn tag_and_rfc2782_forms() {
    let s = Server::start(&[]);
    web(&s, "web1", "10.0.0.1", &["v1"]).await;
    web(&s, "web2", "10.0.0.2", &["v2"]).await;
    pass(&s, "service:web1").await;
    pass(&s, "service:web2").await;

    let v1 = ask(s.dns, "v1.web.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&v1), ["10.0.0.1"]);
    let rfc = ask(s.dns, "_web._v2.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&rfc),
        [(8080, "0a000002.addr.dc1.consul.".to_string())]
    );
    let all = ask(s.dns, "_web._tcp.service.consul.", RecordType::SRV).await;
    assert_eq!(srv_records(&all).len(), 2);
    let unknown_tag = ask(s.dns, "v3.web.service.consul.", RecordType::A).await;
    assert_eq!(unknown_tag.metadata.response_code, ResponseCode::NXDomain);
    assert!(has_soa(&unknown_tag));
}

#[tokio::test]
async fn node_lookup_and_consul_service() {
    let s = Server::start(&[]);
    let node = ask(s.dns, "test-node.node.consul.", RecordType::A).await;
    assert_eq!(a_records(&node), ["127.0.0.1"]);
    let node_dc = ask(s.dns, "test-node.node.dc1.consul.", RecordType::A).await;
    assert_eq!(a_records(&node_dc), ["127.0.0.1"]);
    // The server registers itself as service `consul`.
    let consul = ask(s.dns, "consul.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&consul), ["127.0.0.1"]);
    // A known node asked for a type it has no record of: NODATA with the SOA.
    let aaaa = ask(s.dns, "test-node.node.consul.", RecordType::AAAA).await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty() && has_soa(&aaaa));
    let missing = ask(s.dns, "ghost.node.consul.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn failing_a_ttl_check_removes_the_instance_and_passing_restores_it() {
    let s = Server::start(&[]);
    web(&s, "web1", "10.0.0.1", &[]).await;
    web(&s, "web2", "10.0.0.2", &[]).await;

    // New checks start critical: nothing is served yet, but the service exists (NODATA).
    let none = ask(s.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(none.metadata.response_code, ResponseCode::NoError);
    assert!(none.answers.is_empty() && has_soa(&none));

    pass(&s, "service:web1").await;
    pass(&s, "service:web2").await;
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.1", "10.0.0.2"]
    );

    fail(&s, "service:web1").await;
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.2"]
    );

    // Warning is still served (only_passing is false by default).
    let (st, _) = put(&s.url("/v1/agent/check/warn/service:web2"), "").await;
    assert_eq!(st, 200);
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.2"]
    );

    pass(&s, "service:web1").await;
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.1", "10.0.0.2"]
    );
}

#[tokio::test]
async fn ttl_expiry_takes_the_instance_out() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "short", "Address": "10.1.0.1", "Port": 1, "Check": {"TTL": "1s"}}),
    )
    .await;
    pass(&s, "service:short").await;
    assert_eq!(
        a_records(&ask(s.dns, "short.service.consul.", RecordType::A).await),
        ["10.1.0.1"]
    );
    eventually("TTL expiry drops the instance", || async {
        ask(s.dns, "short.service.consul.", RecordType::A)
            .await
            .answers
            .is_empty()
            .then_some(())
    })
    .await;
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["service:short"]["Status"], "critical");
    assert_eq!(checks["service:short"]["Output"], "TTL expired");
}

#[tokio::test]
async fn http_check_against_a_closed_port_stays_critical_and_out_of_dns() {
    // Find a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "down", "Address": "10.2.0.1", "Port": 80,
               "Check": {"HTTP": format!("http://{closed}/health"), "Interval": "200ms", "Timeout": "1s"}}),
    )
    .await;
    // Wait until the probe has run (its output is recorded), then check it stayed critical.
    let output = eventually("the HTTP probe ran", || async {
        let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
        let out = checks["service:down"]["Output"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert!(output.contains(&closed.to_string()), "{output}");
    assert!(
        output.to_ascii_lowercase().contains("connection refused"),
        "the output says why, not only that the request failed: {output}"
    );
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["service:down"]["Status"], "critical");
    let reply = ask(s.dns, "down.service.consul.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
}

#[tokio::test]
async fn http_and_tcp_checks_drive_health() {
    let ok = http_target(200).await;
    let busy = http_target(429).await;
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "good", "Address": "10.3.0.1", "Port": 80,
        "Check": {"HTTP": format!("http://{ok}/"), "Interval": "200ms"}}),
    )
    .await;
    register(
        &s,
        json!({"Name": "busy", "Address": "10.3.0.2", "Port": 80,
        "Check": {"HTTP": format!("http://{busy}/"), "Interval": "200ms"}}),
    )
    .await;
    register(
        &s,
        json!({"Name": "tcp", "Address": "10.3.0.3", "Port": 80,
        "Check": {"TCP": ok.to_string(), "Interval": "200ms"}}),
    )
    .await;
    for (name, ip) in [
        ("good", "10.3.0.1"),
        ("busy", "10.3.0.2"),
        ("tcp", "10.3.0.3"),
    ] {
        eventually(&format!("{name} becomes healthy"), || async {
            let r = ask(s.dns, &format!("{name}.service.consul."), RecordType::A).await;
            (a_records(&r) == [ip]).then_some(())
        })
        .await;
    }
    // 429 is warning: served, and the agent health endpoint says 429.
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["service:busy"]["Status"], "warning");
    let r = http()
        .get(s.url("/v1/agent/health/service/name/busy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
}

#[tokio::test]
async fn only_passing_drops_warning_instances() {
    let s = Server::with_config("[dns_config]\nonly_passing = true\n");
    web(&s, "web1", "10.0.0.1", &[]).await;
    let (st, _) = put(&s.url("/v1/agent/check/warn/service:web1"), "").await;
    assert_eq!(st, 200);
    let r = ask(s.dns, "web.service.consul.", RecordType::A).await;
    assert!(r.answers.is_empty());
    pass(&s, "service:web1").await;
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.1"]
    );
}

async fn many_instances(s: &Server, n: usize) {
    for i in 0..n {
        register(
            s,
            json!({"Name": "big", "ID": format!("big{i}"), "Address": format!("10.9.0.{}", i + 1), "Port": 1000 + i}),
        )
        .await;
    }
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_are_complete_over_tcp() {
    let s = Server::start(&[]);
    many_instances(&s, 30).await;

    let udp_a = ask(s.dns, "big.service.consul.", RecordType::A).await;
    assert!(
        udp_a.metadata.truncation,
        "30 A records do not fit 512 bytes: TC must be set"
    );
    assert!(!udp_a.answers.is_empty() && udp_a.answers.len() < 30);
    assert!(udp_a.to_vec().unwrap().len() <= 512);

    let udp_srv = ask(s.dns, "big.service.consul.", RecordType::SRV).await;
    assert!(udp_srv.metadata.truncation);

    let tcp_a = tcp(
        s.dns,
        &query_message("big.service.consul.", RecordType::A, None),
    )
    .await;
    assert!(!tcp_a.metadata.truncation);
    assert_eq!(a_records(&tcp_a).len(), 30);
    let tcp_srv = tcp(
        s.dns,
        &query_message("big.service.consul.", RecordType::SRV, None),
    )
    .await;
    assert!(!tcp_srv.metadata.truncation);
    assert_eq!(srv_records(&tcp_srv).len(), 30);
    assert_eq!(tcp_srv.additionals.len(), 30);

    // An EDNS client with a big buffer gets everything over UDP, with our OPT echoed.
    let edns = udp(
        s.dns,
        &query_message("big.service.consul.", RecordType::A, Some(4096)),
    )
    .await;
    assert!(!edns.metadata.truncation);
    assert_eq!(a_records(&edns).len(), 30);
    assert!(edns.edns.is_some());
}

#[tokio::test]
async fn udp_answer_limit_returns_a_shuffled_subset_without_tc() {
    let s = Server::with_config("[dns_config]\nudp_answer_limit = 3\n");
    many_instances(&s, 10).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = ask(s.dns, "big.service.consul.", RecordType::A).await;
        assert_eq!(r.answers.len(), 3);
        assert!(!r.metadata.truncation);
        seen.extend(a_records(&r));
    }
    assert!(
        seen.len() > 3,
        "answers are shuffled per query, saw only {seen:?}"
    );
    let full = tcp(
        s.dns,
        &query_message("big.service.consul.", RecordType::A, None),
    )
    .await;
    assert_eq!(full.answers.len(), 10, "TCP is not limited");
}

#[tokio::test]
async fn unknown_names_get_nxdomain_with_soa() {
    let s = Server::start(&[]);
    for name in [
        "nothing.service.consul.",
        "web.service.dc2.consul.",
        "service.consul.",
        "foo.bar.consul.",
        "zz.addr.consul.",
    ] {
        let r = ask(s.dns, name, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(r.metadata.authoritative, "{name}");
        let soa = r.authorities.iter().find_map(|rec| match &rec.data {
            RData::SOA(soa) => Some((rec.name.to_string(), soa.clone())),
            _ => None,
        });
        let (owner, soa) = soa.unwrap_or_else(|| panic!("{name}: no SOA"));
        assert_eq!(owner, "consul.");
        assert_eq!(soa.mname.to_string(), "ns.consul.");
        assert!(soa.serial > 0, "serial follows the Raft index");
    }
    // Outside the domain, with no recursors: REFUSED.
    let out = ask(s.dns, "example.com.", RecordType::A).await;
    assert_eq!(out.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn ttls_come_from_config() {
    let s = Server::with_config(
        "[dns_config]\nnode_ttl = \"30s\"\nservice_ttl = { \"*\" = \"5s\", \"web\" = \"10s\" }\n",
    );
    register(&s, json!({"Name": "web", "Address": "10.0.0.1", "Port": 1})).await;
    register(&s, json!({"Name": "db", "Address": "10.0.0.2", "Port": 1})).await;
    assert_eq!(
        ask(s.dns, "web.service.consul.", RecordType::A)
            .await
            .answers[0]
            .ttl,
        10
    );
    assert_eq!(
        ask(s.dns, "db.service.consul.", RecordType::A)
            .await
            .answers[0]
            .ttl,
        5
    );
    assert_eq!(
        ask(s.dns, "test-node.node.consul.", RecordType::A)
            .await
            .answers[0]
            .ttl,
        30
    );
}

#[tokio::test]
async fn malformed_packets_do_not_stop_the_server() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "web", "Address": "10.0.0.1", "Port": 1})).await;
    let garbage: [&[u8]; 4] = [
        b"",
        b"\x00\x01",
        &[0xff; 40],
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07exam",
    ];
    for bytes in garbage {
        if let Some(reply) = udp_raw(s.dns, bytes).await {
            let m =
                hickory_proto::op::Message::from_vec(&reply).expect("any reply is a DNS message");
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        }
    }
    // Two questions in one message: FORMERR.
    let mut two = query_message("web.service.consul.", RecordType::A, None);
    two.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("db.service.consul.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        udp(s.dns, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // Still answering.
    assert_eq!(
        a_records(&ask(s.dns, "web.service.consul.", RecordType::A).await),
        ["10.0.0.1"]
    );
}

#[tokio::test]
async fn dig_walkthrough_from_the_readme() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        panic!("dig is required (apt-get install dnsutils); .ci/run installs it");
    }
    let s = Server::start(&[]);
    web(&s, "web1", "10.0.0.1", &["v1"]).await;
    pass(&s, "service:web1").await;
    let out = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &s.dns.port().to_string(),
            "web.service.consul",
            "SRV",
            "+short",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "1 1 8080 0a000001.addr.dc1.consul.");
}
