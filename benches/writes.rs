//! Replicated writes, Beacon against etcd, side by side in the same run.
//!
//! Starts a 3-server Beacon cluster and a 3-member etcd cluster (Debian's `etcd-server`, default
//! settings) on loopback. At each concurrency (1, 16, 64, 256) it alternates the two for
//! `WRITES_ROUNDS` rounds (default 3) of `WRITES_SECONDS` (default 5) each, every worker writing
//! in a loop, and reports acknowledged writes/s, p50 and p99 (medians of the rounds) and the ratio.
//!
//! - Beacon: `PUT /v1/catalog/register` of one service instance (a JSON body of about 130 bytes)
//!   to the leader over HTTP/1.1 (one connection per worker). Each worker cycles through 100
//!   service IDs on its own node, changing the port each time.
//! - etcd: a put of the same bytes under `/services/<node>/<id>` to the leader, through etcd's
//!   gRPC gateway (JSON over HTTP/1.1 on the client port: `POST /v3/kv/put` with base64 key and
//!   value, etcd v3.4+), on the same kind of keep-alive `reqwest` client (one connection per
//!   worker). The gateway hands it to etcd's own gRPC `Put`, so it is acknowledged, as before,
//!   once committed by a quorum and applied on the leader; the gateway's JSON and its internal
//!   gRPC hop cost etcd some CPU that a native gRPC client would not. No protobuf code (and no
//!   `protoc`) is needed to build this bench.
//!
//! Run: `cargo bench --bench writes` (release build; needs `etcd` on the PATH:
//! `apt-get install etcd-server`). `WRITES_LEVELS=64` picks the concurrencies;
//! `WRITES_ONLY=beacon` leaves etcd out (for profiling).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

mod common;

/// A 3-member etcd cluster, killed on drop.
struct Etcd {
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_etcd(dir: &Path) -> Etcd {
    let peers: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let clients: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let cluster = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for i in 0..3 {
        let peer = format!("http://127.0.0.1:{}", peers[i]);
        let client = format!("http://127.0.0.1:{}", clients[i]);
        let child = Command::new("etcd")
            .args([
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &dir.join(format!("e{i}")).display().to_string(),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "beacon-bench",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd on the PATH (apt-get install etcd-server)");
        children.push(child);
    }
    Etcd {
        children,
        clients: clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    }
}

/// The client URL of etcd's leader (as Beacon's writes go to its leader), asked of each member
/// through the gateway's `POST /v3/maintenance/status`. The gateway writes 64-bit integers as
/// JSON strings and leaves out zero fields (`leader` while there is none).
async fn etcd_leader(client: &reqwest::Client, etcd: &Etcd) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for endpoint in &etcd.clients {
            let Ok(response) = client
                .post(format!("{endpoint}/v3/maintenance/status"))
                .body("{}")
                .send()
                .await
            else {
                continue;
            };
            let Ok(status) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let leader = &status["leader"];
            let member = &status["header"]["member_id"];
            if leader.is_string() && leader == member {
                return endpoint.clone();
            }
        }
        assert!(Instant::now() < deadline, "no etcd leader within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Clone)]
enum Target {
    Beacon(reqwest::Client, SocketAddr),
    /// The shared client and `<leader client URL>/v3/kv/put`.
    Etcd(reqwest::Client, Arc<str>),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Beacon(..) => "beacon",
            Target::Etcd(..) => "etcd",
        }
    }

    /// One acknowledged registration (true) or a failure.
    async fn write(&mut self, worker: usize, i: u64) -> bool {
        // Each worker's node carries at most 100 services (as a real node would), so the
        // catalog stays the same size while every write changes one (its port).
        let node = format!("bench-{worker}");
        let id = format!("svc-{worker}-{}", i % 100);
        let body = format!(
            r#"{{"Node":"{node}","Address":"10.0.{}.{}","Service":{{"ID":"{id}","Service":"web","Port":{},"Tags":["v1"]}}}}"#,
            worker / 250,
            worker % 250 + 1,
            10000 + i % 50000
        );
        match self {
            Target::Beacon(client, addr) => client
                .put(format!("http://{addr}/v1/catalog/register"))
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Target::Etcd(client, put) => {
                // Base64 has no characters that JSON would escape.
                let request = format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    BASE64.encode(format!("/services/{node}/{id}")),
                    BASE64.encode(body)
                );
                match client.post(&**put).body(request).send().await {
                    // The body (the response header with the new revision) is read to the end
                    // so the connection goes back to the pool.
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    failed: usize,
}

async fn run(target: &Target, concurrency: usize, seconds: u64, round: usize) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (mut target, stop) = (target.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            let mut i = (round as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if target.write(w, i).await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
                i += 1;
            }
            (latencies, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (latencies, f) = t.await.unwrap();
        all.extend(latencies);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Run {
        rate: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        failed,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (seconds, rounds) = if quick {
        (1, 1)
    } else {
        (
            env_or("WRITES_SECONDS", 5),
            env_or("WRITES_ROUNDS", 3) as usize,
        )
    };
    let levels: Vec<usize> = match std::env::var("WRITES_LEVELS") {
        Ok(list) => list
            .split(',')
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        Err(_) if quick => vec![4],
        Err(_) => vec![1, 16, 64, 256],
    };
    // WRITES_ONLY=beacon skips etcd (to profile Beacon alone).
    let only_beacon = std::env::var("WRITES_ONLY").is_ok_and(|v| v == "beacon");
    let with_etcd = !only_beacon && (!quick || which_etcd());
    let dir = tempfile::tempdir().unwrap();
    let servers = common::start_cluster(&dir.path().join("beacon"));
    let etcd = with_etcd.then(|| start_etcd(&dir.path().join("etcd")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .unwrap();
        let leader = servers[common::leader(&client, &servers).await].http;
        let mut targets = vec![Target::Beacon(client.clone(), leader)];
        if let Some(etcd) = &etcd {
            let put = format!("{}/v3/kv/put", etcd_leader(&client, etcd).await);
            targets.push(Target::Etcd(client, put.into()));
        }
        println!(
            "3-member clusters on loopback, one service registration per write (~130 B), \
             {rounds} rounds x {seconds} s per level, alternating; medians"
        );
        println!(
            "{:>11}  {:>7}  {:>9}  {:>8}  {:>8}  {:>6}",
            "concurrency", "server", "writes/s", "p50 ms", "p99 ms", "failed"
        );
        for &c in &levels {
            let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..targets.len()).collect()
                } else {
                    (0..targets.len()).rev().collect()
                };
                for t in order {
                    results[t].push(run(&targets[t], c, seconds, round).await);
                }
            }
            let mut rates = Vec::new();
            for (target, runs) in targets.iter().zip(&results) {
                let rate = median(runs.iter().map(|r| r.rate).collect());
                let p50 = median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect());
                let p99 = median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect());
                let failed: usize = runs.iter().map(|r| r.failed).sum();
                println!(
                    "{c:>11}  {:>7}  {rate:>9.0}  {p50:>8.2}  {p99:>8.2}  {failed:>6}",
                    target.name()
                );
                rates.push(rate);
            }
            if rates.len() == 2 {
                println!(
                    "{:>11}  beacon/etcd writes/s ratio {:.2}",
                    "",
                    rates[0] / rates[1]
                );
            }
        }
    });
}

fn which_etcd() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
