//! Leader-kill failover on a 3-server loopback cluster of real `beacon` processes.
//!
//! Each trial: start three servers, write continuously through a follower, SIGKILL the leader,
//! and time from the kill to the first acknowledged write; meanwhile query DNS on both
//! survivors every 5 ms and count failed queries. Reports every trial, the median and the DNS
//! failures.
//!
//! Run: `cargo bench --bench failover` (release build; `FAILOVER_TRIALS=N` to change the
//! number of trials, default 10).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn dns_ok(sock: &UdpSocket, server: SocketAddr, id: u16) -> bool {
    common::dns_query(sock, server, "consul.service.consul.", RecordType::A, id).is_some_and(
        |reply| reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty(),
    )
}

struct Trial {
    failover: Duration,
    dns_queries: u64,
    dns_failures: u64,
}

async fn trial(rt_client: &reqwest::Client) -> Trial {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = common::start_cluster(dir.path());
    let leader = common::leader(rt_client, &servers).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let writer_http = servers[survivors[0]].http;

    // DNS probes on both survivors for the whole trial.
    let stop = Arc::new(AtomicBool::new(false));
    let (queries, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let probes: Vec<_> = survivors
        .iter()
        .map(|i| {
            let (dns, stop, queries, failures) = (
                servers[*i].dns,
                stop.clone(),
                queries.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut id = 0u16;
                while !stop.load(Ordering::Relaxed) {
                    id = id.wrapping_add(1);
                    queries.fetch_add(1, Ordering::Relaxed);
                    if !dns_ok(&sock, dns, id) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    let put = |i: u64| {
        let client = rt_client.clone();
        async move {
            client
                .put(format!("http://{writer_http}/v1/kv/bench/{i}"))
                .body("x")
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .is_some()
        }
    };
    for i in 0..20 {
        assert!(put(i).await, "writes succeed before the kill");
    }
    let killed_at = Instant::now();
    let _ = servers[leader].child.kill();
    let _ = servers[leader].child.wait();
    let mut i = 100;
    let failover = loop {
        if put(i).await {
            break killed_at.elapsed();
        }
        i += 1;
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no write acknowledged within 30 s"
        );
    };
    // Keep probing DNS a little after the failover too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for p in probes {
        p.join().unwrap();
    }
    Trial {
        failover,
        dns_queries: queries.load(Ordering::Relaxed),
        dns_failures: failures.load(Ordering::Relaxed),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs one quick trial.
    let quick = !std::env::args().any(|a| a == "--bench");
    let trials: usize = if quick {
        1
    } else {
        std::env::var("FAILOVER_TRIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut results = Vec::new();
    for n in 0..trials {
        let t = rt.block_on(trial(&client));
        println!(
            "trial {:>2}: failover {:>6.0} ms, DNS failures {}/{}",
            n + 1,
            t.failover.as_secs_f64() * 1000.0,
            t.dns_failures,
            t.dns_queries
        );
        results.push(t);
    }
    let mut times: Vec<f64> = results
        .iter()
        .map(|t| t.failover.as_secs_f64() * 1000.0)
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let failed: u64 = results.iter().map(|t| t.dns_failures).sum();
    let queries: u64 = results.iter().map(|t| t.dns_queries).sum();
    println!(
        "failover: {} trials, median {:.0} ms, min {:.0} ms, max {:.0} ms; DNS failures on survivors: {failed} of {queries}",
        times.len(),
        median,
        times[0],
        times[times.len() - 1]
    );
}
