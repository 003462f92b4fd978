//! What TLS costs, side by side in one run.
//!
//! Two 3-server clusters on loopback: one plaintext, one with mutual TLS on server RPC
//! (`verify_incoming`, `verify_outgoing`, `verify_server_hostname`; certificates made by
//! `beacon tls`). Both take writes over plain HTTP to their leader, so the difference is Raft
//! and forwarding over TLS. Then catalog reads on the TLS cluster's leader, over HTTPS (with a
//! client certificate) against plain HTTP, both on keep-alive connections. Rounds alternate
//! which side goes first; medians are reported.
//!
//! Run: `cargo bench --bench tls` (release build). `TLS_SECONDS` (default 5), `TLS_ROUNDS`
//! (default 3), `TLS_WRITERS` (default 64) and `TLS_READERS` (default 16) tune it.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn beacon_in(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "beacon {args:?}: {out:?}");
}

/// Requests per second over `seconds` from `workers` tasks each looping `request`.
async fn rate<F, Fut>(workers: usize, seconds: u64, request: F) -> (f64, u64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (stop, done, failed, request) =
            (stop.clone(), done.clone(), failed.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if request(w, i).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn register(client: &reqwest::Client, base: &str, worker: usize, i: u64) -> bool {
    let body = format!(
        r#"{{"Node":"bench-{worker}","Address":"10.0.0.{}","Service":{{"ID":"svc-{worker}-{}","Service":"web","Port":{}}}}}"#,
        worker % 250 + 1,
        i % 100,
        10000 + i % 50000
    );
    client
        .put(format!("{base}/v1/catalog/register"))
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn read(client: &reqwest::Client, url: &str) -> bool {
    match client.get(url).send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (seconds, rounds) = if quick {
        (1, 1)
    } else {
        (env_or("TLS_SECONDS", 5), env_or("TLS_ROUNDS", 3) as usize)
    };
    let writers = env_or("TLS_WRITERS", 64) as usize;
    let readers = env_or("TLS_READERS", 16) as usize;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    beacon_in(&pki, &["tls", "ca", "create"]);
    beacon_in(&pki, &["tls", "cert", "create", "-server"]);
    beacon_in(&pki, &["tls", "cert", "create", "-client"]);
    let file = |name: &str| pki.join(name).display().to_string();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[tls.defaults]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             verify_incoming = true\nverify_outgoing = true\n\
             [tls.internal_rpc]\nverify_server_hostname = true\n",
            file("consul-agent-ca.pem"),
            file("dc1-server-consul-0.pem"),
            file("dc1-server-consul-0-key.pem"),
        ),
    )
    .unwrap();
    let https_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let plain = common::start_cluster(&dir.path().join("plain"));
    let secure = common::start_cluster_with(&dir.path().join("tls"), |i| {
        vec![
            "--config".into(),
            config.display().to_string(),
            "--https-addr".into(),
            format!("127.0.0.1:{}", https_ports[i]),
        ]
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .unwrap();
        let mut identity = std::fs::read(file("dc1-client-consul-0.pem")).unwrap();
        identity.extend(std::fs::read(file("dc1-client-consul-0-key.pem")).unwrap());
        let https = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(
                    &std::fs::read(file("consul-agent-ca.pem")).unwrap(),
                )
                .unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .build()
            .unwrap();
        let plain_leader = format!("http://{}", plain[common::leader(&http, &plain).await].http);
        let tls_index = common::leader(&http, &secure).await;
        let tls_leader = format!("http://{}", secure[tls_index].http);
        println!(
            "3-server clusters on loopback, {rounds} rounds x {seconds} s, alternating; medians"
        );

        let mut write_rates = [Vec::new(), Vec::new()];
        let mut write_failed = 0;
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let base = Arc::new(if side == 0 {
                    plain_leader.clone()
                } else {
                    tls_leader.clone()
                });
                let client = http.clone();
                let (r, f) = rate(writers, seconds, move |w, i| {
                    let (client, base) = (client.clone(), base.clone());
                    async move { register(&client, &base, w, i).await }
                })
                .await;
                write_rates[side].push(r);
                write_failed += f;
            }
        }
        let (plain_w, tls_w) = (median(write_rates[0].clone()), median(write_rates[1].clone()));
        println!(
            "writes, concurrency {writers}: plaintext RPC {plain_w:.0}/s, mutual TLS {tls_w:.0}/s \
             ({:+.1} %), failed {write_failed}",
            (tls_w / plain_w - 1.0) * 100.0
        );

        let read_url = [
            format!("{tls_leader}/v1/catalog/service/consul?stale"),
            format!(
                "https://localhost:{}/v1/catalog/service/consul?stale",
                https_ports[tls_index]
            ),
        ];
        let mut read_rates = [Vec::new(), Vec::new()];
        let mut read_failed = 0;
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let client = if side == 0 { http.clone() } else { https.clone() };
                let url = Arc::new(read_url[side].clone());
                let (r, f) = rate(readers, seconds, move |_, _| {
                    let (client, url) = (client.clone(), url.clone());
                    async move { read(&client, &url).await }
                })
                .await;
                read_rates[side].push(r);
                read_failed += f;
            }
        }
        let (plain_r, tls_r) = (median(read_rates[0].clone()), median(read_rates[1].clone()));
        println!(
            "catalog reads (/v1/catalog/service/consul?stale: the 3 servers), concurrency {readers}: \
             HTTP {plain_r:.0}/s, HTTPS {tls_r:.0}/s ({:+.1} %), failed {read_failed}",
            (tls_r / plain_r - 1.0) * 100.0
        );
    });
}
