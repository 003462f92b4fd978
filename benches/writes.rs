//! Replicated write throughput and latency of a 3-server loopback Beacon cluster: KV PUTs of a
//! 128-byte value at concurrency 1, 16, 64 and 256, sent to the leader, for a fixed time each.
//! Reports acknowledged writes/s, p50 and p99.
//!
//! Run: `cargo bench --bench writes` (release build; `WRITES_SECONDS=N` per level, default 5).
//! The etcd side of the comparison the issue asks for is not wired in yet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn level(
    client: &reqwest::Client,
    target: SocketAddr,
    concurrency: usize,
    seconds: u64,
) -> (f64, Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let value = "x".repeat(128);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, stop, value) = (client.clone(), stop.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = client
                    .put(format!("http://{target}/v1/kv/bench/{w}/{i}"))
                    .body(value.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push(t.elapsed());
                }
                i += 1;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds: u64 = if quick {
        1
    } else {
        std::env::var("WRITES_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
    };
    let levels: &[usize] = if quick { &[4] } else { &[1, 16, 64, 256] };
    let dir = tempfile::tempdir().unwrap();
    let servers = common::start_cluster(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .unwrap();
        let target = servers[common::leader(&client, &servers).await].http;
        println!("beacon, 3 servers, KV PUT of 128 bytes to the leader, {seconds} s per level");
        println!(
            "{:>11}  {:>10}  {:>9}  {:>9}",
            "concurrency", "writes/s", "p50", "p99"
        );
        for &c in levels {
            let (rate, p50, p99) = level(&client, target, c, seconds).await;
            println!(
                "{c:>11}  {rate:>10.0}  {:>7.2}ms  {:>7.2}ms",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0
            );
        }
    });
}
