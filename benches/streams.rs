//! Event-stream fan-out (issue 15, benchmark 2): one real `beacon` server feeding 1,000
//! subscriptions (100 clients × 10 services, each client the `Views` a client agent runs, in
//! this process) while 1,000 check changes per second are applied. Reports the server's CPU
//! share, its memory per subscription, and the delivery latency from a write's acknowledgment
//! to each subscribed view holding it (p50, p99, max).
//!
//! Run: `cargo bench --bench streams` (release build; `SECONDS=N`, `RATE=N` change the load).
//! Without `--bench` (as `cargo test --benches` runs it) it does a 2-second smoke run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beacon::remote::Servers;
use beacon::remote::views::Views;
use beacon::view::watch::Topic;
use tokio_util::sync::CancellationToken;

mod common;

const CLIENTS: usize = 100;
const SERVICES: usize = 100;
const PER_CLIENT: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Puts `total` check updates at `rate` per second through 32 concurrent writers: write `n`
/// (from `first`) sets service `n % SERVICES`'s check output to `n`, and `sent`/`acked` record
/// when its call went out and was acknowledged. Returns how long the load took.
async fn write_load(
    http: &reqwest::Client,
    base: &str,
    total: u64,
    rate: u64,
    first: u64,
    sent: &Times,
    acked: &Times,
) -> Duration {
    let started = Instant::now();
    let writers = 32u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, base, sent, acked) =
            (http.clone(), base.to_string(), sent.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < total {
                // Paced: write i is due at i / rate seconds.
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let (n, s) = (first + i, (i as usize) % SERVICES);
                let body = serde_json::json!({
                    "Node": "bench-host", "Address": "10.0.0.1",
                    "Service": {"ID": format!("svc{s}"), "Service": format!("svc{s}"), "Port": 80},
                    "Check": {"CheckID": format!("check:svc{s}"), "Name": "c", "Status": "passing",
                              "ServiceID": format!("svc{s}"), "Output": n.to_string()},
                });
                sent.lock().unwrap().insert(n, Instant::now());
                let r = http
                    .put(format!("{base}/v1/catalog/register"))
                    .json(&body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    acked.lock().unwrap().insert(n, Instant::now());
                }
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// Write number → when it happened.
type Times = Arc<Mutex<HashMap<u64, Instant>>>;

/// The first write number of the baseline load (no view follows those).
const BASELINE: u64 = 1 << 40;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seconds = if quick { 2 } else { env("SECONDS", 20) };
    let rate = env("RATE", 1000);
    let dir = tempfile::tempdir().unwrap();
    let rpc = format!("127.0.0.1:{}", common::free_port());
    let beacon = common::start_dev_with(dir.path(), &[], Some(&rpc));
    let pid = beacon.child.id();
    let base = format!("http://{}", beacon.http);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let register = |s: usize, output: String| {
            let body = serde_json::json!({
                "Node": "bench-host", "Address": "10.0.0.1",
                "Service": {"ID": format!("svc{s}"), "Service": format!("svc{s}"), "Port": 80},
                "Check": {"CheckID": format!("check:svc{s}"), "Name": "c", "Status": "passing",
                          "ServiceID": format!("svc{s}"), "Output": output},
            });
            http.put(format!("{base}/v1/catalog/register")).json(&body).send()
        };
        for s in 0..SERVICES {
            assert!(register(s, String::new()).await.unwrap().status().is_success());
        }

        // The same write load without subscribers first: the server's CPU for the writes
        // alone. Its writes are numbered from BASELINE, which no view is asked about.
        let (base_sent, base_acked) = (Arc::default(), Arc::default());
        let cpu_start = common::cpu_seconds(pid);
        let base_elapsed =
            write_load(&http, &base, seconds * rate, rate, BASELINE, &base_sent, &base_acked).await;
        let base_cpu = common::cpu_seconds(pid) - cpu_start;

        let rss_before = common::rss_bytes(pid);
        let stop = CancellationToken::new();
        let addr: std::net::SocketAddr = rpc.parse().unwrap();
        let clients: Vec<Views> = (0..CLIENTS)
            .map(|_| {
                let servers = Servers::new(Arc::new(move || vec![addr]), None);
                Views::new(servers, Default::default(), Duration::from_secs(600), stop.clone())
            })
            .collect();
        // Client c follows services c*PER_CLIENT .. +PER_CLIENT (mod SERVICES): each service
        // has CLIENTS*PER_CLIENT/SERVICES subscribers.
        let mut subscriptions = Vec::new();
        for (c, views) in clients.iter().enumerate() {
            for k in 0..PER_CLIENT {
                let s = (c * PER_CLIENT + k) % SERVICES;
                assert!(views.ready(&format!("svc{s}"), Duration::from_secs(30)).await);
                subscriptions.push((c, s));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = common::rss_bytes(pid);

        // Write n carries output "n"; sent[n] and acked[n] are when its PUT went out and was
        // acknowledged; seen_at holds (n, when a view first held it), matched afterwards (a
        // view may hold a write before its acknowledgment reaches the writer).
        let (sent, acked): (Times, Times) = (Arc::default(), Arc::default());
        let seen_at: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let mut watchers = Vec::new();
        for (c, s) in subscriptions.iter().copied() {
            let (views, seen_at, stop) = (clients[c].clone(), seen_at.clone(), stop.clone());
            watchers.push(tokio::spawn(async move {
                let name = format!("svc{s}");
                let notify = views.catalog().watchers().subscribe(Topic::Service(name.clone()));
                let mut seen = String::new();
                while !stop.is_cancelled() {
                    let changed = notify.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    let output = views
                        .catalog()
                        .load()
                        .check("bench-host", &format!("check:svc{s}"))
                        .map(|c| c.output.clone())
                        .unwrap_or_default();
                    if output != seen {
                        if let Ok(n) = output.parse::<u64>() {
                            seen_at.lock().unwrap().push((n, Instant::now()));
                        }
                        seen = output;
                    }
                    tokio::select! {
                        _ = changed => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }));
        }

        let cpu_start = common::cpu_seconds(pid);
        let elapsed = write_load(&http, &base, seconds * rate, rate, 0, &sent, &acked).await;
        let cpu = common::cpu_seconds(pid) - cpu_start;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        for w in watchers {
            let _ = w.await;
        }
        let (sent, acked) = (sent.lock().unwrap(), acked.lock().unwrap());
        let mut from_ack = Vec::new();
        let mut from_call = Vec::new();
        for (n, at) in seen_at.lock().unwrap().iter() {
            if let (Some(s), Some(a)) = (sent.get(n), acked.get(n)) {
                from_ack.push(at.saturating_duration_since(*a));
                from_call.push(at.saturating_duration_since(*s));
            }
        }
        from_ack.sort();
        from_call.sort();
        let writes = acked.len();
        println!(
            "streams: {} subscriptions ({CLIENTS} clients x {PER_CLIENT} of {SERVICES} services), {writes} writes in {:.1} s ({:.0}/s)",
            subscriptions.len(),
            elapsed.as_secs_f64(),
            writes as f64 / elapsed.as_secs_f64()
        );
        println!(
            "server CPU {:.0} % of a core ({:.0} % for the same writes without subscribers); RSS {:.1} MB before subscriptions, {:.1} MB after ({:.1} KB per subscription)",
            100.0 * cpu / elapsed.as_secs_f64(),
            100.0 * base_cpu / base_elapsed.as_secs_f64(),
            rss_before as f64 / 1e6,
            rss_after as f64 / 1e6,
            (rss_after as f64 - rss_before as f64) / 1e3 / subscriptions.len() as f64
        );
        assert!(!from_ack.is_empty(), "no change reached a view");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (what, l) in [("acknowledgment", &from_ack), ("the call", &from_call)] {
            println!(
                "delivery after {what}: {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.len(),
                ms(percentile(l, 0.5)),
                ms(percentile(l, 0.99)),
                ms(*l.last().unwrap())
            );
        }
    });
}
