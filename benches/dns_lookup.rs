//! DNS lookup cost, measured two ways:
//! - `catalog/*`: the in-memory catalog read a DNS answer is built from (no sockets), with
//!   10,000 services registered;
//! - `udp/*`, `tcp/*`: a real query round trip over loopback to the real `beacon` binary
//!   (release build via `cargo bench`), answering for a service with 100 healthy instances.
//!
//! Run: `cargo bench --bench dns_lookup`. The side-by-side comparison with NSD belongs to the
//! DNS performance work; this bench is the baseline it starts from.

use std::net::UdpSocket;
use std::time::Duration;

mod common;

use beacon::catalog::{Command as CatalogCommand, Registration, State};
use beacon::model::{NodeSpec, ServiceSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn catalog_with(services: usize, instances: usize) -> State {
    let mut state = State::new();
    let mut changes = Vec::new();
    let mut index = 1;
    for s in 0..services {
        for i in 0..instances {
            let reg = Registration {
                node: NodeSpec {
                    name: format!("node{i}").into(),
                    address: format!("10.0.{}.{}", i / 250, i % 250 + 1).into(),
                    ..Default::default()
                },
                service: Some(ServiceSpec {
                    id: format!("svc{s}-{i}").into(),
                    name: format!("svc{s}").into(),
                    port: 80,
                    ..Default::default()
                }),
                ..Default::default()
            };
            state
                .apply(
                    index,
                    0,
                    &CatalogCommand::Register(Box::new(reg)),
                    &mut changes,
                )
                .unwrap();
            changes.clear();
            index += 1;
        }
    }
    state
}

fn bench_catalog(c: &mut Criterion) {
    let state = catalog_with(10_000, 3);
    c.bench_function(
        "catalog/instances of 1 service among 10k (3 instances)",
        |b| b.iter(|| std::hint::black_box(state.instances("svc5000").len())),
    );
    c.bench_function("catalog/clone for publish (30k instances)", |b| {
        b.iter(|| std::hint::black_box(state.clone()))
    });
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn bench_wire(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let beacon = common::start_dev(dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..100 {
            let body = format!(
                r#"{{"Name":"web","ID":"web{i}","Address":"10.1.{}.{}","Port":8080}}"#,
                i / 250,
                i % 250 + 1
            );
            let r = client
                .put(format!("http://{}/v1/agent/service/register", beacon.http))
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    });

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.connect(beacon.dns).unwrap();
    let mut buf = vec![0u8; 65535];
    for (label, rtype, edns) in [
        (
            "udp/A web.service (100 instances, 512B, truncated)",
            RecordType::A,
            false,
        ),
        (
            "udp/A web.service (100 instances, EDNS 4096)",
            RecordType::A,
            true,
        ),
        (
            "udp/SRV web.service (100 instances, EDNS 4096)",
            RecordType::SRV,
            true,
        ),
        ("udp/A node lookup", RecordType::A, false),
    ] {
        let name = if label.contains("node") {
            "bench.node.consul."
        } else {
            "web.service.consul."
        };
        let q = query(name, rtype, edns);
        c.bench_function(label, |b| {
            b.iter(|| {
                sock.send(&q).unwrap();
                let n = sock.recv(&mut buf).unwrap();
                std::hint::black_box(n)
            })
        });
    }

    let mut stream = std::net::TcpStream::connect(beacon.dns).unwrap();
    stream.set_nodelay(true).unwrap();
    let q = query("web.service.consul.", RecordType::A, false);
    c.bench_function("tcp/A web.service (100 instances, one connection)", |b| {
        use std::io::{Read, Write};
        b.iter(|| {
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            stream.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).unwrap();
            let n = u16::from_be_bytes(len) as usize;
            stream.read_exact(&mut buf[..n]).unwrap();
            std::hint::black_box(n)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_catalog, bench_wire
}
criterion_main!(benches);
