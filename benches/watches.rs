//! 10,000 idle blocking queries against one real `beacon` server: its CPU and RSS while they
//! wait, and how long one write takes to wake the 100 watchers of the changed service (while
//! the other 9,900 keep waiting).
//!
//! Run: `cargo bench --bench watches` (release build; `WATCHES=N` to change the count).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

/// (user+system CPU seconds, RSS bytes) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    (common::cpu_seconds(pid), common::rss_bytes(pid))
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let watches: usize = if quick {
        200
    } else {
        std::env::var("WATCHES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    };
    let services = 100usize;
    let dir = tempfile::tempdir().unwrap();
    let envs: Vec<(&str, String)> = std::env::var("BEACON_MALLOC_ARENA_MAX")
        .map(|v| vec![("MALLOC_ARENA_MAX", v)])
        .unwrap_or_default();
    let beacon = common::start_dev(dir.path(), &envs);
    let pid = beacon.child.id();
    let base = format!("http://{}", beacon.http);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        for s in 0..services {
            let r = client
                .put(format!("{base}/v1/agent/service/register"))
                .body(format!(r#"{{"Name":"svc{s}","Port":80}}"#))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        let mut indexes = Vec::new();
        for svc in 0..services {
            let r = client.get(format!("{base}/v1/health/service/svc{svc}")).send().await.unwrap();
            let index: u64 = r.headers()["X-Consul-Index"].to_str().unwrap().parse().unwrap();
            indexes.push(index);
        }
        let (cpu0, rss0) = usage(pid);
        let returned = Arc::new(AtomicUsize::new(0));
        let returned_svc7 = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..watches {
            // Open connections in waves so the listen backlog is not overrun.
            if w % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let svc = w % services;
            let index = indexes[svc];
            let (client, base, returned, returned_svc7) = (client.clone(), base.clone(), returned.clone(), returned_svc7.clone());
            tasks.push(tokio::spawn(async move {
                let url = format!("{base}/v1/health/service/svc{svc}?index={index}&wait=10m");
                let result = client.get(url).timeout(Duration::from_secs(900)).send().await;
                if let Err(e) = &result {
                    eprintln!("watch error: {e:?}");
                }
                let ok = result.is_ok();
                returned.fetch_add(1, Ordering::Relaxed);
                if ok && svc == 7 {
                    returned_svc7.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Let every query reach the server and settle.
        tokio::time::sleep(Duration::from_secs(if quick { 2 } else { 10 })).await;
        let early = returned.load(Ordering::Relaxed);
        assert_eq!(early, 0, "all queries are blocked, but {early} returned");
        let (cpu1, rss1) = usage(pid);
        let idle = Duration::from_secs(if quick { 2 } else { 10 });
        tokio::time::sleep(idle).await;
        let (cpu2, rss2) = usage(pid);
        let idle_cpu = (cpu2 - cpu1) / idle.as_secs_f64() * 100.0;

        let wrote = Instant::now();
        let r = client
            .put(format!("{base}/v1/agent/service/register"))
            .body(r#"{"Name":"svc7","ID":"svc7-b","Port":81}"#)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let per_service = watches / services;
        while returned_svc7.load(Ordering::Relaxed) < per_service {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(wrote.elapsed() < Duration::from_secs(60), "watchers of svc7 never woke");
        }
        let woke = wrote.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let others = returned.load(Ordering::Relaxed) - returned_svc7.load(Ordering::Relaxed);
        println!("watches: {watches} blocking queries on {services} services ({per_service} per service)");
        println!("  server RSS: {:.1} MB before, {:.1} MB with the queries open (+{:.1} MB), {:.1} MB after {:?} idle",
            rss0 as f64 / 1e6, rss1 as f64 / 1e6, (rss1 as f64 - rss0 as f64) / 1e6, rss2 as f64 / 1e6, idle);
        println!("  server CPU while idle: {idle_cpu:.2}% of one core over {idle:?} (setup used {:.2} s of CPU)", cpu1 - cpu0);
        println!("  one write to svc7 woke its {per_service} watchers in {:.1} ms; other watchers woken: {others}", woke.as_secs_f64() * 1000.0);
        for t in tasks {
            t.abort();
        }
    });
}
