//! The gossip pool with real `beacon` processes on loopback: failure detection and scale.
//!
//! 1. **Failure detection** (`detect`): 3 servers + `GOSSIP_CLIENTS` client agents (default 10),
//!    each client with one service of its own. Each round SIGKILLs one client and times, from
//!    the kill, (a) until every server lists it failed (`/v1/agent/members` status 4) and (b)
//!    until its service is gone from DNS on every server; then restarts it and waits until it is
//!    back everywhere. `GOSSIP_KILLS` rounds (default 20) per timing profile: Consul's LAN
//!    defaults and the fast profile of the README (`GOSSIP_PROFILES=default,fast`).
//! 2. **Scale** (`scale`): 3 servers + `GOSSIP_SCALE_CLIENTS` client agents (default 100),
//!    started at once: the time until every agent lists every member alive; then, after
//!    `GOSSIP_SETTLE_SECONDS` (default 10) and idle for `GOSSIP_IDLE_SECONDS` (default 30), each
//!    client's RSS, CPU and gossip bytes/s.
//!
//! Run: `cargo bench --bench gossip` (release build). `GOSSIP_PARTS=detect,scale` picks parts.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{Beacon, free_port, free_udp_port, ready_agent, spawn_agent};
use hickory_proto::rr::RecordType;

const FAST: &str = r#"
[gossip_lan]
probe_interval = "200ms"
probe_timeout = "100ms"
gossip_interval = "100ms"
suspicion_mult = 2
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One agent: its arguments (to restart it) and the running process.
struct Agent {
    name: String,
    args: Vec<String>,
    process: Option<Beacon>,
}

impl Agent {
    fn beacon(&self) -> &Beacon {
        self.process.as_ref().expect("running")
    }
}

fn args(
    name: &str,
    dir: &Path,
    server: bool,
    join: &str,
    config: &Path,
    serf: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--node".into(),
        name.into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--serf-lan-addr".into(),
        serf.into(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--dns-addr".into(),
        "127.0.0.1:0".into(),
        "--retry-join".into(),
        join.into(),
        "--config".into(),
        config.display().to_string(),
    ];
    if server {
        args.extend([
            "--server".into(),
            "--bootstrap-expect".into(),
            "3".into(),
            "--rpc-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ]);
    }
    args
}

/// Three servers and `clients` client agents, all joining through the first server.
fn start_pool(dir: &Path, clients: usize, config_text: &str) -> (Vec<Agent>, Vec<Agent>) {
    let config = dir.join("beacon.toml");
    std::fs::write(&config, config_text).unwrap();
    let first = format!("127.0.0.1:{}", free_udp_port());
    let mut spawned = Vec::new();
    for i in 0..3 + clients {
        let server = i < 3;
        let name = if server {
            format!("s{i}")
        } else {
            format!("c{}", i - 3)
        };
        let serf = if i == 0 {
            first.clone()
        } else {
            format!("127.0.0.1:{}", free_udp_port())
        };
        let args = args(&name, dir, server, &first, &config, &serf);
        let rpc = args
            .iter()
            .position(|a| a == "--rpc-addr")
            .map(|p| args[p + 1].clone())
            .unwrap_or_default();
        let child = spawn_agent(&args);
        spawned.push((name, args, child, rpc));
    }
    let mut agents: Vec<Agent> = spawned
        .into_iter()
        .map(|(name, args, child, rpc)| Agent {
            name,
            args,
            process: Some(ready_agent(child, rpc)),
        })
        .collect();
    let clients = agents.split_off(3);
    (agents, clients)
}

/// Member name → status, as `agent` lists them.
async fn members(client: &reqwest::Client, agent: &Beacon) -> Vec<(String, u64)> {
    let Ok(r) = client
        .get(format!("http://{}/v1/agent/members", agent.http))
        .send()
        .await
    else {
        return Vec::new();
    };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap_or("").to_string(),
                        m["Status"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether DNS at `server` has an SRV answer for `service`.
fn resolves(sock: &UdpSocket, server: SocketAddr, service: &str, id: u16) -> bool {
    common::dns_query(
        sock,
        server,
        &format!("{service}.service.consul."),
        RecordType::SRV,
        id,
    )
    .is_some_and(|reply| !reply.answers.is_empty())
}

async fn register(client: &reqwest::Client, agent: &Beacon, service: &str) {
    let r = client
        .put(format!("http://{}/v1/agent/service/register", agent.http))
        .body(serde_json::json!({"Name": service, "Port": 80}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "register {service}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, samples: &mut [f64]) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  {label}: median {:.2} s, p99 {:.2} s, min {:.2} s, max {:.2} s (n={})",
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        samples.first().copied().unwrap_or(f64::NAN),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len()
    );
}

async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < deadline {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn detect(profile: &str, dir: &Path) {
    let clients_n = env_usize("GOSSIP_CLIENTS", 10);
    let kills = env_usize("GOSSIP_KILLS", 20);
    let config = if profile == "fast" { FAST } else { "" };
    let (servers, mut clients) = start_pool(dir, clients_n, config);
    let http = reqwest::Client::new();
    for (i, c) in clients.iter().enumerate() {
        register(&http, c.beacon(), &format!("svc{i}")).await;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut id: u16 = 0;
    let all_resolve = |service: &str, id: &mut u16| {
        servers.iter().all(|s| {
            *id = id.wrapping_add(1);
            resolves(&sock, s.beacon().dns, service, *id)
        })
    };
    for i in 0..clients_n {
        let started = Instant::now();
        while !all_resolve(&format!("svc{i}"), &mut id) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "svc{i} resolves"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "failure detection, profile {profile}: 3 servers + {clients_n} clients, {kills} kills"
    );
    let (mut failed, mut gone) = (Vec::new(), Vec::new());
    for k in 0..kills {
        let i = k % clients_n;
        let (name, service) = (clients[i].name.clone(), format!("svc{i}"));
        let killed = Instant::now();
        drop(clients[i].process.take());
        let mut failed_at = None;
        let mut gone_at = None;
        while (failed_at.is_none() || gone_at.is_none())
            && killed.elapsed() < Duration::from_secs(60)
        {
            if failed_at.is_none() {
                let mut all = true;
                for s in &servers {
                    let m = members(&http, s.beacon()).await;
                    all &= m.iter().any(|(n, st)| *n == name && *st == 4);
                }
                if all {
                    failed_at = Some(killed.elapsed());
                }
            }
            if gone_at.is_none() {
                let none = servers.iter().all(|s| {
                    id = id.wrapping_add(1);
                    !resolves(&sock, s.beacon().dns, &service, id)
                });
                if none {
                    gone_at = Some(killed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (f, g) = (
            failed_at.expect("failed everywhere within 60 s"),
            gone_at.expect("gone from DNS within 60 s"),
        );
        println!(
            "  kill {k:2} ({name}): failed everywhere {:.2} s, gone from DNS {:.2} s",
            f.as_secs_f64(),
            g.as_secs_f64()
        );
        failed.push(f.as_secs_f64());
        gone.push(g.as_secs_f64());
        // Back to a clean pool before the next kill.
        let child = spawn_agent(&clients[i].args);
        clients[i].process = Some(ready_agent(child, String::new()));
        let back = wait_until(Duration::from_secs(60), || async {
            let mut ok = true;
            for s in &servers {
                ok &= members(&http, s.beacon())
                    .await
                    .iter()
                    .any(|(n, st)| *n == name && *st == 1);
            }
            ok
        })
        .await;
        assert!(back.is_some(), "{name} alive again");
        let started = Instant::now();
        while !all_resolve(&service, &mut id) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{service} back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    summary("failed on every server", &mut failed);
    summary("gone from DNS on every server", &mut gone);
}

fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from the state at index 0 = field 3.
    let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss_kb))
}

async fn gossip_bytes(client: &reqwest::Client, agent: &Beacon) -> u64 {
    let Ok(r) = client
        .get(format!(
            "http://{}/v1/agent/metrics?format=prometheus",
            agent.http
        ))
        .send()
        .await
    else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("beacon_gossip_bytes_sent_total")
                || l.starts_with("beacon_gossip_bytes_received_total")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn scale(dir: &Path) {
    let n = env_usize("GOSSIP_SCALE_CLIENTS", 100);
    let idle = env_usize("GOSSIP_IDLE_SECONDS", 30);
    let started = Instant::now();
    let (servers, clients) = start_pool(dir, n, "");
    let ready = started.elapsed();
    let http = reqwest::Client::new();
    let total = 3 + n;
    let all: Vec<&Beacon> = servers.iter().chain(&clients).map(|a| a.beacon()).collect();
    // How many agents list every member alive; the time when all of them do.
    let in_step = || async {
        let mut n = 0;
        for a in &all {
            let m = members(&http, a).await;
            if m.len() == total && m.iter().all(|(_, s)| *s == 1) {
                n += 1;
            }
        }
        n
    };
    let converged = wait_until(Duration::from_secs(120), || async {
        in_step().await == total
    })
    .await;
    if converged.is_none() {
        println!(
            "  not converged after 120 s: {} of {total} agents list every member alive",
            in_step().await
        );
    }
    let converged_at = started.elapsed();
    println!(
        "scale: 3 servers + {n} clients: all {total} processes ready after {:.2} s; every agent lists {total} alive {:.2} s after the first start ({:.2} s after the last was ready)",
        ready.as_secs_f64(),
        converged_at.as_secs_f64(),
        converged.map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    // Idle means after the newcomers' catch-up announces (5 s after each joined) are over.
    let settle = env_usize("GOSSIP_SETTLE_SECONDS", 10);
    tokio::time::sleep(Duration::from_secs(settle as u64)).await;
    let clock = 100.0; // USER_HZ
    let pids: Vec<u32> = clients.iter().map(|c| c.beacon().child.id()).collect();
    let before: Vec<Option<(u64, u64)>> = pids.iter().map(|p| proc_stat(*p)).collect();
    let mut bytes_before = Vec::new();
    for c in &clients {
        bytes_before.push(gossip_bytes(&http, c.beacon()).await);
    }
    tokio::time::sleep(Duration::from_secs(idle as u64)).await;
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    let mut bps = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        if let (Some((t0, _)), Some((t1, rss_kb))) = (before[i], proc_stat(pids[i])) {
            cpu.push((t1 - t0) as f64 / clock / idle as f64 * 100.0);
            rss.push(rss_kb as f64 / 1024.0);
        }
        let b = gossip_bytes(&http, c.beacon()).await;
        bps.push((b.saturating_sub(bytes_before[i])) as f64 / idle as f64);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(v, 50.0), v.last().copied().unwrap_or(f64::NAN))
    };
    let (cpu_med, cpu_max) = med(&mut cpu);
    let (rss_med, rss_max) = med(&mut rss);
    let (bps_med, bps_max) = med(&mut bps);
    println!("  idle client agents over {idle} s (median / max of {n}):");
    println!("    CPU {cpu_med:.2} % / {cpu_max:.2} % of a core");
    println!("    RSS {rss_med:.1} MB / {rss_max:.1} MB");
    println!("    gossip {bps_med:.0} B/s / {bps_max:.0} B/s (sent + received)");
}

fn main() {
    let parts = env_list("GOSSIP_PARTS", "detect,scale");
    let profiles = env_list("GOSSIP_PROFILES", "default,fast");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    runtime.block_on(async {
        if parts.iter().any(|p| p == "detect") {
            for profile in &profiles {
                detect(profile, &dir(&format!("detect-{profile}"))).await;
            }
        }
        if parts.iter().any(|p| p == "scale") {
            scale(&dir("scale")).await;
        }
    });
}
