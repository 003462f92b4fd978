//! DNS beyond `dig`: authority data, reverse lookups, hostnames, static zones with reload,
//! recursors, protocol edges, and real resolvers (unbound, dnsmasq) forwarding `consul.`.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use support::*;

fn config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("beacon.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn names_of(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| match &r.data {
            RData::NS(ns) => ns.0.to_string(),
            RData::PTR(p) => p.0.to_string(),
            RData::CNAME(c) => c.0.to_string(),
            RData::TXT(t) => t.to_string(),
            other => other.to_string(),
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn soa_ns_and_any() {
    let s = Server::start(&[]);
    let soa = ask(s.dns, "consul.", RecordType::SOA).await;
    assert!(soa.metadata.authoritative);
    let serial = match &soa.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(
                (soa.refresh, soa.retry, soa.expire, soa.minimum),
                (3600, 600, 86400, 0)
            );
            soa.serial
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(names_of(&soa.authorities), ["test-node.node.dc1.consul."]);
    assert!(
        soa.additionals
            .iter()
            .any(|r| matches!(r.data, RData::A(_))),
        "glue A"
    );
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let later = ask(s.dns, "consul.", RecordType::SOA).await;
    match &later.answers[0].data {
        RData::SOA(soa) => assert!(soa.serial > serial, "the serial follows the Raft index"),
        other => panic!("{other:?}"),
    }
    let ns = ask(s.dns, "consul.", RecordType::NS).await;
    assert_eq!(names_of(&ns.answers), ["test-node.node.dc1.consul."]);
    let mut glue = Message::query();
    glue.answers = ns.additionals.clone();
    assert_eq!(a_records(&glue), ["127.0.0.1"]);

    // RFC 8482: one synthesized HINFO instead of every record.
    let any = ask(s.dns, "web.service.consul.", RecordType::ANY).await;
    assert_eq!(any.answers.len(), 1);
    assert!(
        matches!(&any.answers[0].data, RData::HINFO(h) if &*h.cpu == b"RFC8482"),
        "{any:?}"
    );
    let missing = ask(s.dns, "nope.service.consul.", RecordType::ANY).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn reverse_lookups() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "web", "Address": "10.0.0.1", "Port": 80}),
    )
    .await;
    register(
        &s,
        json!({"Name": "v6", "Address": "2001:db8::5", "Port": 80}),
    )
    .await;
    let node = ask(s.dns, "1.0.0.127.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(names_of(&node.answers), ["test-node.node.dc1.consul."]);
    assert_eq!(node.answers[0].ttl, 0);
    let svc = ask(s.dns, "1.0.0.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(names_of(&svc.answers), ["web.service.dc1.consul."]);
    let v6 = ask(
        s.dns,
        "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(names_of(&v6.answers), ["v6.service.dc1.consul."]);
    let unknown = ask(s.dns, "9.9.9.9.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        unknown
            .authorities
            .iter()
            .any(|r| matches!(r.data, RData::SOA(_)))
    );
}

#[tokio::test]
async fn hostnames_node_meta_weights_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "[dns_config]\na_record_limit = 2\n");
    let s = Server::start(&["--config", &cfg]);
    register(&s, json!({"Name": "web", "ID": "w1", "Address": "10.0.0.1", "Port": 80, "Weights": {"Passing": 7, "Warning": 2}})).await;
    register(
        &s,
        json!({"Name": "alias", "Address": "web.service.consul", "Port": 80}),
    )
    .await;
    register(
        &s,
        json!({"Name": "ext", "Address": "db.example.org", "Port": 5432}),
    )
    .await;

    let alias = ask(s.dns, "alias.service.consul.", RecordType::A).await;
    assert!(
        matches!(&alias.answers[0].data, RData::CNAME(c) if c.0.to_string() == "web.service.consul."),
        "{alias:?}"
    );
    assert_eq!(
        a_records(&alias),
        ["10.0.0.1"],
        "a CNAME inside our zone is followed"
    );
    let ext_srv = ask(s.dns, "ext.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&ext_srv),
        [(5432, "db.example.org.".to_string())]
    );

    let srv = ask(s.dns, "web.service.consul.", RecordType::SRV).await;
    match &srv.answers[0].data {
        RData::SRV(s) => assert_eq!((s.priority, s.weight), (1, 7)),
        other => panic!("{other:?}"),
    }

    // Node meta rides along as TXT (RFC 1464) in node and SRV answers.
    let body = json!({"Node": "meta-node", "Address": "10.9.9.9", "NodeMeta": {"rack": "r1", "rfc1035-raw": "v=spf1"},
                      "Service": {"Service": "metasvc", "Port": 1}});
    let (st, _) = put(&s.url("/v1/catalog/register"), body.to_string()).await;
    assert_eq!(st, 200);
    let node = ask(s.dns, "meta-node.node.consul.", RecordType::A).await;
    assert_eq!(names_of(&node.additionals), ["rack=r1", "v=spf1"]);
    let txt = ask(s.dns, "meta-node.node.consul.", RecordType::TXT).await;
    assert_eq!(names_of(&txt.answers), ["rack=r1", "v=spf1"]);
    let metasrv = ask(s.dns, "metasvc.service.consul.", RecordType::SRV).await;
    assert!(
        metasrv
            .additionals
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(_)))
    );

    // a_record_limit caps A answers on UDP and TCP.
    for i in 0..5 {
        register(&s, json!({"Name": "many", "ID": format!("m{i}"), "Address": format!("10.8.0.{}", i + 1), "Port": 1})).await;
    }
    assert_eq!(
        ask(s.dns, "many.service.consul.", RecordType::A)
            .await
            .answers
            .len(),
        2
    );
    let over_tcp = tcp(
        s.dns,
        &query_message("many.service.consul.", RecordType::A, None),
    )
    .await;
    assert_eq!(over_tcp.answers.len(), 2);
    assert_eq!(
        ask(s.dns, "many.service.consul.", RecordType::SRV)
            .await
            .answers
            .len(),
        5,
        "SRV is not capped"
    );
}

#[tokio::test]
async fn alt_domain_answers_the_same_data() {
    let s = Server::start(&["--alt-domain", "beacon."]);
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let alt = ask(s.dns, "web.service.beacon.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&alt),
        [(80, "test-node.node.dc1.beacon.".to_string())]
    );
    let primary = ask(s.dns, "web.service.consul.", RecordType::SRV).await;
    assert_eq!(
        srv_records(&primary),
        [(80, "test-node.node.dc1.consul.".to_string())]
    );
    // PTR answers use the primary domain.
    let ptr = ask(s.dns, "1.0.0.127.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(names_of(&ptr.answers), ["test-node.node.dc1.consul."]);
}

#[tokio::test]
async fn protocol_edges() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "web", "Address": "10.0.0.1", "Port": 80}),
    )
    .await;
    // EDNS: an OPT record comes back only when the client sent one.
    let with = udp(
        s.dns,
        &query_message("web.service.consul.", RecordType::A, Some(1232)),
    )
    .await;
    assert_eq!(with.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let without = ask(s.dns, "web.service.consul.", RecordType::A).await;
    assert!(without.edns.is_none());
    // Unsupported opcode: NOTIMP.
    let mut status = query_message("web.service.consul.", RecordType::A, None);
    status.metadata.op_code = OpCode::Status;
    assert_eq!(
        udp(s.dns, &status).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // No question: FORMERR.
    let empty = Message::new(77, MessageType::Query, OpCode::Query);
    assert_eq!(
        udp(s.dns, &empty).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // Several pipelined queries on one TCP connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(s.dns).await.unwrap();
    let names = [
        "web.service.consul.",
        "test-node.node.consul.",
        "nope.service.consul.",
    ];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut m = query_message(name, RecordType::A, None);
        m.metadata.id = 1000 + i as u16;
        ids.push(m.metadata.id);
        let bytes = m.to_vec().unwrap();
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        got.push((m.metadata.id, u16::from(m.metadata.response_code)));
    }
    got.sort();
    assert_eq!(
        got,
        [(1000, 0), (1001, 0), (1002, 3)],
        "NOERROR, NOERROR, NXDOMAIN"
    );
}

const ZONE: &str = "$ORIGIN example.com.\n$TTL 60\n@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60\n@ IN NS ns1.example.com.\nns1 IN A 127.0.0.1\nwww IN A 192.0.2.10\n";

#[tokio::test]
async fn static_zone_is_served_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.com.zone"), ZONE).unwrap();
    let cfg = config(
        &dir,
        "[[zone_files]]\norigin = \"example.com.\"\npath = \"example.com.zone\"\n",
    );
    let s = Server::start(&["--config", &cfg]);
    let www = ask(s.dns, "www.example.com.", RecordType::A).await;
    assert!(www.metadata.authoritative);
    assert_eq!(a_records(&www), ["192.0.2.10"]);
    let api = ask(s.dns, "api.example.com.", RecordType::A).await;
    assert_eq!(api.metadata.response_code, ResponseCode::NXDomain);

    std::fs::write(
        dir.path().join("example.com.zone"),
        format!("{ZONE}api IN A 192.0.2.20\n").replace(" 1 3600", " 2 3600"),
    )
    .unwrap();
    let pid = s.pid();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually("the edited zone is served after SIGHUP", || async {
        (a_records(&ask(s.dns, "api.example.com.", RecordType::A).await) == ["192.0.2.20"])
            .then_some(())
    })
    .await;
    // The consul. domain kept answering throughout.
    assert_eq!(
        ask(s.dns, "test-node.node.consul.", RecordType::A)
            .await
            .answers
            .len(),
        1
    );
}

#[tokio::test]
async fn recursors_answer_outside_names_and_servfail_when_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.com.zone"), ZONE).unwrap();
    let cfg = config(
        &dir,
        "[[zone_files]]\norigin = \"example.com.\"\npath = \"example.com.zone\"\n",
    );
    let mut upstream = Server::start(&["--config", &cfg]);
    let cfg2 = config(&tempfile::tempdir().unwrap(), "");
    let _ = cfg2;
    let s = Server::start(&[
        "--recursor",
        &upstream.dns.to_string(),
        "--recursor",
        "127.0.0.1:1",
    ]);
    let www = ask(s.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(a_records(&www), ["192.0.2.10"]);
    assert!(www.metadata.recursion_available);
    assert!(!www.metadata.authoritative);
    let nx = ask(s.dns, "nothing.example.com.", RecordType::A).await;
    assert_eq!(
        nx.metadata.response_code,
        ResponseCode::NXDomain,
        "NXDOMAIN passes through"
    );
    // Our own domain says RA too, since recursion is offered.
    assert!(
        ask(s.dns, "test-node.node.consul.", RecordType::A)
            .await
            .metadata
            .recursion_available
    );

    upstream.kill();
    let started = std::time::Instant::now();
    let fail = udp_with_timeout(
        s.dns,
        &query_message("www.example.com.", RecordType::A, None),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "bounded by recursor_timeout per upstream"
    );
}

async fn udp_with_timeout(server: SocketAddr, msg: &Message, wait: Duration) -> Message {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .expect("a reply in time")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

/// A resolver process started by a test, killed on drop.
struct Resolver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until_answering(addr: SocketAddr, child: &mut Child) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("resolver exited early: {status}");
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let q = query_message("version.bind.", RecordType::TXT, None)
            .to_vec()
            .unwrap();
        let _ = sock.send_to(&q, addr);
        let mut buf = [0u8; 512];
        if sock.recv_from(&mut buf).is_ok() {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "resolver on {addr} never answered"
        );
    }
}

fn unbound(beacon: SocketAddr, dir: &std::path::Path) -> Resolver {
    let port = free_port();
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  do-ip6: no\n  do-not-query-localhost: no\n  domain-insecure: \"consul\"\n  qname-minimisation: no\n  module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  cache-max-negative-ttl: 0\nforward-zone:\n  name: \"consul.\"\n  forward-addr: 127.0.0.1@{}\n",
            beacon.port(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("unbound")
        .args(["-d", "-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unbound is required (apt-get install unbound); .ci/run installs it");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until_answering(addr, &mut child);
    Resolver { child, addr }
}

fn dnsmasq(beacon: SocketAddr) -> Resolver {
    let port = free_port();
    let mut child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            &format!("--server=/consul/127.0.0.1#{}", beacon.port()),
            "--cache-size=0",
            "--pid-file=",
            "--user=root",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq is required (apt-get install dnsmasq-base); .ci/run installs it");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until_answering(addr, &mut child);
    Resolver { child, addr }
}

async fn resolves_through(resolver: SocketAddr, s: &Server) {
    let srv = udp(
        resolver,
        &query_message("web.service.consul.", RecordType::SRV, Some(1232)),
    )
    .await;
    assert_eq!(
        srv_records(&srv),
        [(8080, "0a000001.addr.dc1.consul.".to_string())],
        "{srv:?}"
    );
    let a = udp(
        resolver,
        &query_message("web.service.consul.", RecordType::A, Some(1232)),
    )
    .await;
    assert_eq!(a_records(&a), ["10.0.0.1"]);
    fail(s, "service:w1").await;
    eventually(
        "the failed instance disappears through the resolver",
        || async {
            let a = udp(
                resolver,
                &query_message("web.service.consul.", RecordType::A, Some(1232)),
            )
            .await;
            a.answers.is_empty().then_some(())
        },
    )
    .await;
    pass(s, "service:w1").await;
    eventually("and comes back", || async {
        let a = udp(
            resolver,
            &query_message("web.service.consul.", RecordType::A, Some(1232)),
        )
        .await;
        (a_records(&a) == ["10.0.0.1"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unbound_forwarding_consul_resolves_healthy_instances() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "web", "ID": "w1", "Address": "10.0.0.1", "Port": 8080, "Check": {"TTL": "1h", "Status": "passing"}})).await;
    let dir = tempfile::tempdir().unwrap();
    let resolver = unbound(s.dns, dir.path());
    resolves_through(resolver.addr, &s).await;
}

#[tokio::test]
async fn dnsmasq_forwarding_consul_resolves_healthy_instances() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "web", "ID": "w1", "Address": "10.0.0.1", "Port": 8080, "Check": {"TTL": "1h", "Status": "passing"}})).await;
    let resolver = dnsmasq(s.dns);
    resolves_through(resolver.addr, &s).await;
}
