//! One large catalog on a 3-server cluster: 100k service instances (20k services × 5, one
//! node per instance, each with a service check, as real hosts register them) through
//! `PUT /v1/catalog/register`. Reports, per server, RSS and data dir once the log is compacted
//! (after the 30 s interval snapshot); how long a new, empty server takes to catch up (by
//! snapshot: the log it needs is purged); how long a SIGKILLed follower takes to serve its DNS
//! again after a restart; and DNS throughput of a server holding the 100k instances against a
//! dev server holding 5k, measured alternately in the same run, each alone (the other
//! processes stopped with SIGSTOP meanwhile, the server pinned to CPU 0 and the client threads
//! to CPU 1 with `taskset`).
//!
//! Run: `cargo bench --bench scale` (release build). `SCALE_INSTANCES` (100000),
//! `SCALE_SMALL` (5000), `SCALE_DNS_ROUNDS` (7) and `SCALE_DNS_SECONDS` (3) change the sizes.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb(pid: u32) -> f64 {
    common::rss_bytes(pid) as f64 / 1e6
}

/// Bytes on disk under `dir`, as `du` counts them.
fn disk_mb(dir: &Path) -> f64 {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            (disk_mb(&entry.path()) * 1e6) as u64
        } else {
            meta.blocks() * 512
        };
    }
    total as f64 / 1e6
}

/// Instance `i`: node `n{i}`, service `svc{i/5}`, its ID and a passing service check.
fn registration(i: u64) -> String {
    let addr = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    let id = format!("svc{}-{}", i / 5, i % 5);
    serde_json::json!({
        "Node": format!("n{i}"),
        "Address": addr,
        "Service": {"ID": id, "Service": format!("svc{}", i / 5), "Address": addr,
                    "Port": 8080, "Tags": ["v1"]},
        "Check": {"CheckID": format!("service:{id}"), "Name": "alive", "ServiceID": id,
                  "Status": "passing"},
    })
    .to_string()
}

/// Registers instances `0..count` through `http` with 32 concurrent clients.
async fn register(client: &reqwest::Client, http: SocketAddr, count: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let url = format!("http://{http}/v1/catalog/register");
                for attempt in 0.. {
                    match client.put(&url).body(registration(i)).send().await {
                        Ok(r) if r.status().is_success() => break,
                        other => {
                            assert!(attempt < 20, "instance {i} not registered: {other:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// `X-Consul-Index` and service count of `/v1/catalog/services?stale` on `http`.
async fn services(client: &reqwest::Client, http: SocketAddr) -> Option<(u64, usize)> {
    let r = client
        .get(format!("http://{http}/v1/catalog/services?stale"))
        .send()
        .await
        .ok()?;
    let index = r
        .headers()
        .get("x-consul-index")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let body: serde_json::Map<String, serde_json::Value> = r.json().await.ok()?;
    Some((index, body.len()))
}

/// Waits until `http` holds at least `index` and `count` services; the time it took from `since`.
async fn caught_up(
    client: &reqwest::Client,
    http: SocketAddr,
    index: u64,
    count: usize,
    since: Instant,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some((i, n)) = services(client, http).await
            && i >= index
            && n >= count
        {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{http} did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A DNS query for `name` (type A), encoded once.
fn query(name: &str, id: u16) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    m.to_vec().unwrap()
}

/// Answers per second from `server` over `seconds`: 4 threads, each keeping 16 queries in
/// flight over all `names` in turn; an answer counts when it is NOERROR with records.
fn dns_qps(server: SocketAddr, names: &[Vec<u8>], seconds: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (stop, answered) = (stop.clone(), answered.clone());
            let names: Vec<Vec<u8>> = names.to_vec();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 1500];
                let mut at = t * names.len() / 4;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..16 {
                        sock.send_to(&names[at % names.len()], server).unwrap();
                        at += 1;
                    }
                    for _ in 0..16 {
                        let Ok((n, _)) = sock.recv_from(&mut buf) else {
                            break;
                        };
                        let ok = n >= 12 && buf[3] & 0x0f == 0 && buf[6..8] != [0, 0];
                        answered.fetch_add(ok as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let n = answered.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join().unwrap();
    }
    n as f64 / elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Arguments of cluster server `n{i}` (as `common::start_cluster` starts them, on fixed RPC
/// and gossip addresses), joining through `join`.
fn server_args(dir: &Path, i: usize, rpc: &str, serf: &str, join: &str) -> Vec<String> {
    [
        "agent",
        "--server",
        "--node",
        &format!("n{i}"),
        "--rpc-addr",
        rpc,
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
        "--data-dir",
        &dir.join(format!("n{i}")).display().to_string(),
        "--serf-lan-addr",
        serf,
        "--retry-join",
        join,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let big = env("SCALE_INSTANCES", if quick { 2_000 } else { 100_000 });
    let small = env("SCALE_SMALL", if quick { 500 } else { 5_000 });
    let rounds = env("SCALE_DNS_ROUNDS", if quick { 1 } else { 7 });
    let seconds = env("SCALE_DNS_SECONDS", if quick { 1 } else { 3 }) as f64;
    let settle = Duration::from_secs(if quick { 2 } else { 35 });
    let dir = tempfile::tempdir().unwrap();
    let mut servers = common::start_cluster(dir.path());
    let small_dir = tempfile::tempdir().unwrap();
    let dev = common::start_dev(small_dir.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();

    let (index, count) = rt.block_on(async {
        let l = common::leader(&client, &servers).await;
        let start = Instant::now();
        register(&client, servers[l].http, big).await;
        let took = start.elapsed().as_secs_f64();
        println!(
            "registered {big} instances in {took:.1} s ({:.0}/s) through the leader",
            big as f64 / took
        );
        register(&client, dev.http, small).await;
        let (index, count) = services(&client, servers[l].http).await.unwrap();
        for s in &servers {
            caught_up(&client, s.http, index, count, Instant::now()).await;
        }
        (index, count)
    });
    // The interval snapshot (30 s) compacts every server's log.
    std::thread::sleep(settle);
    println!("\n| server | RSS | data dir |\n|---|---:|---:|");
    for (i, s) in servers.iter().enumerate() {
        println!(
            "| n{i} | {:.0} MB | {:.1} MB |",
            rss_mb(s.child.id()),
            disk_mb(&dir.path().join(format!("n{i}")))
        );
    }
    println!(
        "| dev, {small} instances | {:.0} MB | {:.1} MB |",
        rss_mb(dev.child.id()),
        disk_mb(small_dir.path())
    );

    // A new server: it joins through gossip, the leader adds it, and it installs a snapshot.
    let rpc = format!("127.0.0.1:{}", common::free_port());
    let serf = format!("127.0.0.1:{}", common::free_udp_port());
    let start = Instant::now();
    let child = common::spawn_agent(&server_args(dir.path(), 3, &rpc, &serf, &servers[0].serf));
    let fresh = common::ready_agent(child, rpc);
    let took = rt.block_on(caught_up(&client, fresh.http, index, count, start));
    println!(
        "\nnew server caught up (spawn -> all {count} services at index >= {index}): {:.2} s",
        took.as_secs_f64()
    );
    println!(
        "new server: RSS {:.0} MB, data dir {:.1} MB",
        rss_mb(fresh.child.id()),
        disk_mb(&dir.path().join("n3"))
    );

    // A follower SIGKILLed and restarted on its data dir.
    let l = rt.block_on(common::leader(&client, &servers));
    let f = (l + 1) % 3;
    let (rpc, serf) = (servers[f].rpc.clone(), servers[f].serf.clone());
    let join = servers[(f + 1) % 3].serf.clone();
    {
        let victim = &mut servers[f];
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
    }
    let start = Instant::now();
    let child = common::spawn_agent(&server_args(dir.path(), f, &rpc, &serf, &join));
    let restarted = common::ready_agent(child, rpc);
    let ready = start.elapsed().as_secs_f64();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let name = format!("svc{}.service.consul", big / 5 - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let serving = loop {
        let reply = common::dns_query(
            &sock,
            restarted.dns,
            &name,
            hickory_proto::rr::RecordType::A,
            7,
        );
        if reply.is_some_and(|r| r.answers.len() == 5) {
            break start.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "restarted server never answered");
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "restarted follower: ready after {ready:.2} s, answering DNS for the last service after {serving:.2} s"
    );
    servers[f] = restarted;

    // DNS throughput, 100k against 5k, alternating. The same names (the 5k catalog's
    // services) on both, then every one of the 100k catalog's names.
    let names = |services: u64| -> Vec<Vec<u8>> {
        (0..services)
            .map(|j| query(&format!("svc{j}.service.consul"), j as u16))
            .collect()
    };
    let (big_names, small_names) = (names(big / 5), names(small / 5));
    let target = &servers[(l + 2) % 3];
    let before = rss_mb(target.child.id());
    // Only the measured server runs while it is measured: the others (and the Raft and
    // gossip traffic they would make) are stopped with SIGSTOP, on these 2 shared cores.
    let pids: Vec<u32> = servers
        .iter()
        .chain([&fresh, &dev])
        .map(|b| b.child.id())
        .collect();
    // `only(Some(pid))` runs that one alone; `only(None)` resumes every one.
    let only = |pid: Option<u32>| {
        for &other in &pids {
            let signal = if pid.is_none_or(|p| p == other) {
                "-CONT"
            } else {
                "-STOP"
            };
            let status = std::process::Command::new("kill")
                .args([signal, &other.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal} {other}");
        }
    };
    let (target_pid, dev_pid) = (Some(target.child.id()), Some(dev.child.id()));
    // The measured server on one core, the client threads on the other.
    let pin = |pid: u32, cpu: &str| {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-cp", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "taskset {pid}");
    };
    for &pid in &pids {
        pin(pid, "0");
    }
    pin(std::process::id(), "1");
    // One pass over every name first, so both servers answer from pre-encoded answers.
    only(target_pid);
    dns_qps(target.dns, &big_names, seconds);
    only(dev_pid);
    dns_qps(dev.dns, &small_names, seconds);
    let (mut small_qps, mut same_qps, mut all_qps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        only(dev_pid);
        small_qps.push(dns_qps(dev.dns, &small_names, seconds));
        only(target_pid);
        same_qps.push(dns_qps(target.dns, &small_names, seconds));
        all_qps.push(dns_qps(target.dns, &big_names, seconds));
    }
    only(None);
    let (small_m, same_m, all_m) = (
        median(small_qps.clone()),
        median(same_qps.clone()),
        median(all_qps.clone()),
    );
    println!(
        "\nDNS answers/s (4 client threads x 16 in flight, {rounds} rounds x {seconds} s, medians):"
    );
    println!("| server | names asked | answers/s | ratio | rounds |\n|---|---|---:|---:|---|");
    println!(
        "| dev, {small} instances | its {} services | {small_m:.0} | 1.00 | {small_qps:.0?} |",
        small / 5
    );
    println!(
        "| follower, {big} instances | the same {} | {same_m:.0} | {:.2} | {same_qps:.0?} |",
        small / 5,
        same_m / small_m
    );
    println!(
        "| follower, {big} instances | all {} | {all_m:.0} | {:.2} | {all_qps:.0?} |",
        big / 5,
        all_m / small_m
    );
    println!(
        "follower RSS before the DNS queries {before:.0} MB, after (answers for every name cached) {:.0} MB",
        rss_mb(target.child.id())
    );
    drop(fresh);
}
