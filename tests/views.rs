//! The event stream and client agents' materialized views against real servers: three
//! `beacon` servers in network namespaces (`support/faults.rs`), and three clients in this
//! process (`beacon::remote::views::Views`, the code a client agent runs), each holding a view
//! of every one of 12 services through the servers' RPC ports.
//!
//! A seeded schedule registers and deregisters instances and nodes, flips checks, SIGKILLs
//! and restarts servers (the leader among them) and pauses one. After each step, once things
//! are quiet, every client's view of every service must equal what the servers answer to
//! `GET /v1/health/service/:name?consistent` (instances, addresses, ports, tags, every check's
//! status, and the index); throughout, no view's index may ever go back. The seed is printed;
//! `BEACON_VIEWS_SEED=<seed>` replays it. Needs root, iproute2 and nftables, like the fault
//! test; this binary holds a single test, so no other cluster shares the machine with it.

#[path = "support/faults.rs"]
mod faults;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use beacon::remote::Servers;
use beacon::remote::views::Views;
use faults::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SERVERS: usize = 3;
const CLIENTS: usize = 3;
const SERVICES: usize = 12;
const NODES: usize = 5;
const STEPS: usize = 80;
/// How long a view may take to match the servers after a step (a resubscription after a
/// kill or pause waits out the silence of the old stream, about 6 s).
const CONVERGE: Duration = Duration::from_secs(30);

fn service(i: usize) -> String {
    format!("svc{i}")
}

/// One instance as compared: (node, address, service ID, port, tags, checks by ID with status).
type Row = (
    String,
    String,
    String,
    u64,
    Vec<String>,
    Vec<(String, String)>,
);

/// The servers' answer for a service: its rows and `X-Consul-Index`.
async fn server_rows(
    http: &reqwest::Client,
    url: &str,
    name: &str,
) -> Option<(u64, BTreeSet<Row>)> {
    let r = http
        .get(format!("{url}/v1/health/service/{name}?consistent"))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let index: u64 = r
        .headers()
        .get("x-consul-index")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let body: Value = r.json().await.ok()?;
    let rows = body
        .as_array()?
        .iter()
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let mut checks: Vec<(String, String)> = e["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (s(&c["CheckID"]), s(&c["Status"])))
                .collect();
            checks.sort();
            (
                s(&e["Node"]["Node"]),
                s(&e["Node"]["Address"]),
                s(&e["Service"]["ID"]),
                e["Service"]["Port"].as_u64().unwrap_or(0),
                e["Service"]["Tags"]
                    .as_array()
                    .map(|t| t.iter().map(s).collect())
                    .unwrap_or_default(),
                checks,
            )
        })
        .collect();
    Some((index, rows))
}

/// A client's view of a service, in the same shape.
fn view_rows(views: &Views, name: &str) -> (u64, BTreeSet<Row>) {
    let snapshot = views.catalog().load().service_snapshot(name);
    let rows = snapshot
        .instances
        .iter()
        .map(|i| {
            let mut checks: Vec<(String, String)> = i
                .checks
                .iter()
                .map(|c| (c.check_id.to_string(), c.status.to_string()))
                .collect();
            checks.sort();
            (
                i.node.name.to_string(),
                i.node.address.to_string(),
                i.service.id.to_string(),
                u64::from(i.service.port),
                i.service.tags.clone(),
                checks,
            )
        })
        .collect();
    (views.index(name), rows)
}

/// A live server's HTTP URL.
fn live(cluster: &Cluster, rng: &mut StdRng) -> String {
    loop {
        let i = rng.random_range(0..cluster.len());
        if cluster.is_running(i) && !cluster.is_paused(i) {
            return cluster.url(i);
        }
    }
}

/// A write through a live server, retried until it is acknowledged (a write's outcome is not
/// what this test checks; every view reflecting it is).
async fn write(
    http: &reqwest::Client,
    cluster: &Cluster,
    rng: &mut StdRng,
    path: &str,
    body: &Value,
) {
    for _ in 0..200 {
        let url = live(cluster, rng);
        if let Ok(r) = http.put(format!("{url}{path}")).json(body).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("PUT {path} never succeeded\n{}", cluster.logs());
}

fn node_name(n: usize) -> String {
    format!("host{n}")
}

fn register_body(rng: &mut StdRng) -> Value {
    let n = rng.random_range(0..NODES);
    let s = rng.random_range(0..SERVICES);
    let id = format!("{}-{n}", service(s));
    let status = ["passing", "warning", "critical"][rng.random_range(0..3)];
    json!({
        "Node": node_name(n),
        "Address": format!("10.1.0.{}", n + 1),
        "Service": {"ID": id, "Service": service(s), "Port": rng.random_range(1000..2000),
                    "Tags": [format!("t{}", rng.random_range(0..3))]},
        "Checks": [{"CheckID": format!("check:{id}"), "Name": "c", "Status": status, "ServiceID": id}],
    })
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_views_follow_the_catalog_through_kills_and_pauses() {
    let seed: u64 = std::env::var("BEACON_VIEWS_SEED")
        .ok()
        .map(|s| s.parse().expect("BEACON_VIEWS_SEED is a number"))
        .unwrap_or_else(rand::random);
    println!("views schedule seed: {seed} (replay with BEACON_VIEWS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = blocking(|| Cluster::start(SERVERS, "raft_snapshot_threshold = 100\n"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for n in 0..NODES {
        let body = json!({"Node": node_name(n), "Address": format!("10.1.0.{}", n + 1),
            "Checks": [{"CheckID": "serfHealth", "Name": "Serf", "Status": "passing"}]});
        write(&http, &cluster, &mut rng, "/v1/catalog/register", &body).await;
    }
    // Every name once (a name never registered has no index of its own: Consul answers with
    // the services table's), then more at random.
    for s in 0..SERVICES {
        let n = s % NODES;
        let id = format!("{}-{n}", service(s));
        let body = json!({"Node": node_name(n), "Address": format!("10.1.0.{}", n + 1),
            "Service": {"ID": id, "Service": service(s), "Port": 1000}});
        write(&http, &cluster, &mut rng, "/v1/catalog/register", &body).await;
    }
    for _ in 0..SERVICES {
        let body = register_body(&mut rng);
        write(&http, &cluster, &mut rng, "/v1/catalog/register", &body).await;
    }

    let rpc: Vec<SocketAddr> = (0..SERVERS)
        .map(|i| cluster.rpc(i).parse().unwrap())
        .collect();
    let stop = CancellationToken::new();
    let clients: Vec<Views> = (0..CLIENTS)
        .map(|_| {
            let list = rpc.clone();
            let servers = Servers::new(Arc::new(move || list.clone()), None);
            Views::new(
                servers,
                Default::default(),
                Duration::from_secs(600),
                stop.clone(),
            )
        })
        .collect();
    for views in &clients {
        for s in 0..SERVICES {
            assert!(
                views.ready(&service(s), Duration::from_secs(10)).await,
                "no first snapshot of {}",
                service(s)
            );
        }
        assert_eq!(views.held(), SERVICES);
    }

    // Every 5 ms, every view's published index must be at least what it was.
    let went_back = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (clients, went_back, stop) = (clients.clone(), went_back.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = vec![vec![0u64; SERVICES]; CLIENTS];
            while !stop.is_cancelled() {
                for (c, views) in clients.iter().enumerate() {
                    let state = views.catalog().load();
                    for (s, seen) in last[c].iter_mut().enumerate() {
                        let index = state.service_index(&service(s));
                        if index < *seen {
                            eprintln!("client {c} {}: index {index} after {seen}", service(s));
                            went_back.store(true, Ordering::SeqCst);
                        }
                        *seen = index;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Every 5th step is the next fault action: kill (the leader, then a random server, in
    // turn), restart, pause, resume; the other steps change the catalog.
    let (mut kills, mut pauses) = (0, 0);
    let (mut down, mut paused) = (None, None);
    for step in 0..STEPS {
        if step % 5 == 4 {
            match (step / 5) % 4 {
                0 => {
                    let i = if kills % 2 == 0 {
                        leader(&http, &cluster).await
                    } else {
                        rng.random_range(0..SERVERS)
                    };
                    println!("step {step}: SIGKILL n{i}");
                    blocking(|| cluster.kill(i));
                    down = Some(i);
                    kills += 1;
                }
                1 => blocking(|| cluster.restart(down.take().unwrap())),
                2 => {
                    let i = rng.random_range(0..SERVERS);
                    println!("step {step}: SIGSTOP n{i}");
                    cluster.pause(i);
                    paused = Some(i);
                    pauses += 1;
                }
                _ => cluster.resume(paused.take().unwrap()),
            }
        } else {
            change(&http, &cluster, &mut rng).await;
        }
        // Quiet point: every client's every view equals the servers' answer.
        let url = live(&cluster, &mut rng);
        for s in 0..SERVICES {
            let name = service(s);
            let truth =
                support::eventually_within(CONVERGE, &format!("servers answer for {name}"), || {
                    server_rows(&http, &url, &name)
                })
                .await;
            for (c, views) in clients.iter().enumerate() {
                let deadline = tokio::time::Instant::now() + CONVERGE;
                loop {
                    let seen = view_rows(views, &name);
                    if seen == truth {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "step {step} (seed {seed}): client {c}'s view of {name} is {seen:?}, the servers say {truth:?}\n{}",
                        cluster.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    stop.cancel();
    watcher.await.unwrap();
    let stop = CancellationToken::new();
    assert!(
        !went_back.load(Ordering::SeqCst),
        "a view's index went back (seed {seed})"
    );
    let moved: u64 = clients.iter().map(Views::resubscriptions).sum();
    println!("{STEPS} steps, {kills} kills, {pauses} pauses; views resubscribed {moved} times");

    // A view nobody asks for goes, and takes its rows with it.
    let list = rpc.clone();
    let servers = Servers::new(Arc::new(move || list.clone()), None);
    let short = Views::new(
        servers,
        Default::default(),
        Duration::from_millis(300),
        stop.clone(),
    );
    assert!(short.ready(&service(0), Duration::from_secs(10)).await);
    assert_eq!(short.held(), 1);
    support::eventually("the idle view dropped", || async {
        (short.held() == 0 && short.catalog().load().nodes().next().is_none()).then_some(())
    })
    .await;
    stop.cancel();
}

/// One random change to the catalog: an instance registered (or re-registered with another
/// port, tags and check status), a node's health flipped, an instance or a whole node removed.
async fn change(http: &reqwest::Client, cluster: &Cluster, rng: &mut StdRng) {
    let (path, body) = match rng.random_range(0..7) {
        0..=3 => ("/v1/catalog/register", register_body(rng)),
        4 => {
            let n = rng.random_range(0..NODES);
            let status = ["passing", "critical"][rng.random_range(0..2)];
            let body = json!({"Node": node_name(n), "Address": format!("10.1.0.{}", n + 1),
                "Checks": [{"CheckID": "serfHealth", "Name": "Serf", "Status": status}]});
            ("/v1/catalog/register", body)
        }
        5 => {
            let (n, s) = (rng.random_range(0..NODES), rng.random_range(0..SERVICES));
            let body = json!({"Node": node_name(n), "ServiceID": format!("{}-{n}", service(s))});
            ("/v1/catalog/deregister", body)
        }
        _ => {
            let body = json!({"Node": node_name(rng.random_range(0..NODES))});
            ("/v1/catalog/deregister", body)
        }
    };
    write(http, cluster, rng, path, &body).await;
}

/// The index of the server the live servers agree leads.
async fn leader(http: &reqwest::Client, cluster: &Cluster) -> usize {
    support::eventually("an agreed leader", || cluster.agreed_leader(http)).await
}
