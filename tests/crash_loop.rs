//! Crash loop: the leader of a real 3-server cluster is killed with SIGKILL 20 times
//! (`BEACON_CRASH_CYCLES`; `benches/faults.sh` runs 100) while four writers keep writing, and each
//! time it is restarted on its own ports and data dir.
//!
//! Proves that (1) every write acknowledged with `200 true` (by a leader killed a moment later,
//! or by the survivors while it was down) is present with its value on every server afterwards,
//! the restarted ones included, whose state was rebuilt from their data dirs (latest snapshot
//! plus the log after it); (2) every restart opens the data dir its predecessor was killed over
//! and serves again (a restarted process that exits on its own fails the test with its log);
//! (3) the three servers end with the same keys, unacknowledged writes included.
//!
//! This binary holds a single test, so it never runs beside another cluster: cargo runs test
//! binaries one after another, and `tests/cluster.rs` serialises the tests inside its own.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

const SERVERS: usize = 3;
/// Leader kills: `BEACON_CRASH_CYCLES` if set (`benches/faults.sh` runs 100), else 20.
fn cycles() -> usize {
    std::env::var("BEACON_CRASH_CYCLES")
        .ok()
        .map(|n| n.parse().expect("BEACON_CRASH_CYCLES is a number"))
        .unwrap_or(20)
}
const WRITERS: usize = 4;
/// Deadline per condition. An election takes about a second and a restart a few; the margin is
/// for a loaded 2-core CI machine.
const WAIT: Duration = Duration::from_secs(30);
/// Acknowledged writes, sent after the kill, that each failover must let through before the
/// killed server comes back: the survivors alone have to be writable.
const ACKS_AFTER_KILL: usize = 10;
/// Overall floor, so the durability check cannot pass on next to nothing. The per-kill waits
/// already guarantee it; it is asserted again where the result is checked.
const MIN_ACKED: usize = 200;
/// A writer's client timeout: without a leader a write is held up to 7 s, and an answer that
/// late is worth no more than none (the write is "unknown" either way).
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// Snapshots every 50 applied entries, keeping 20 behind: a few hundred writes then take a
/// dozen snapshots and log truncations per server, so restarts load "latest snapshot + the log
/// after it" (not just a log from index 1), and a restarted server that fell behind a
/// truncation is caught up from a snapshot.
const CONFIG: &str = "raft_snapshot_threshold = 50\nraft_trailing_logs = 20\n";

struct Member {
    name: String,
    rpc: String,
    args: Vec<String>,
    dir: PathBuf,
    server: Server,
    /// The logs of this member's killed processes, for the report at the end.
    earlier_logs: Vec<String>,
}

/// Three servers on fixed ports (so a restart comes back at the same addresses), each with its
/// own data dir, forming one cluster with `--bootstrap-expect 3`, as `tests/cluster.rs` does.
fn start_cluster(root: &Path) -> Vec<Member> {
    let config = root.join("beacon.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let rpcs: Vec<String> = (0..SERVERS)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let serfs: Vec<String> = (0..SERVERS)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let mut spawned = Vec::new();
    for (i, rpc) in rpcs.iter().enumerate() {
        let name = format!("n{i}");
        let dir = root.join(&name);
        let mut args: Vec<String> = [
            "agent",
            "--server",
            "--node",
            &name,
            "--data-dir",
            &dir.display().to_string(),
            "--rpc-addr",
            rpc,
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--dns-addr",
            "127.0.0.1:0",
            "--bootstrap-expect",
            &SERVERS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--config".to_string(), config.display().to_string()]);
        args.extend(["--serf-lan-addr".to_string(), serfs[i].clone()]);
        for r in &serfs {
            args.extend(["--retry-join".to_string(), r.clone()]);
        }
        let server = Server::spawn(&args, &dir);
        spawned.push((name, rpc.clone(), args, dir, server));
    }
    spawned
        .into_iter()
        .map(|(name, rpc, args, dir, mut server)| {
            server.wait_ready();
            Member {
                name,
                rpc,
                args,
                dir,
                server,
                earlier_logs: Vec::new(),
            }
        })
        .collect()
}

/// What the writers learned: acknowledged keys (each written with its own name as value), and
/// how many writes ended any other way.
#[derive(Default)]
struct Ledger {
    /// (key, when its PUT was sent), in the order the acknowledgements arrived.
    acked: Mutex<Vec<(String, Instant)>>,
    unknown: AtomicU64,
}

impl Ledger {
    fn acked_sent_after(&self, t: Instant) -> usize {
        let acked = self.acked.lock().unwrap();
        acked.iter().filter(|(_, sent)| *sent > t).count()
    }

    fn latest(&self) -> Option<String> {
        self.acked.lock().unwrap().last().map(|(k, _)| k.clone())
    }

    fn len(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// One writer: `PUT /v1/kv/crash/<id>-<n>` with the key as value, n = 0, 1, …, each to the next
/// server in turn, until `stop`.
async fn writer(id: usize, urls: Vec<String>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(WRITE_TIMEOUT)
        .build()
        .unwrap();
    let mut target = id % urls.len();
    let mut refused = 0usize;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("crash/{id}-{n}");
        let url = format!("{}/v1/kv/{key}", urls[target]);
        target = (target + 1) % urls.len();
        let sent = Instant::now();
        let outcome = client.put(&url).body(key.clone()).send().await;
        if let Err(e) = &outcome
            && e.is_connect()
        {
            // Nothing was sent: that server is down (killed, or not listening yet). The same key
            // goes to the next server; a short pause only if every server refused in turn.
            refused += 1;
            if refused.is_multiple_of(urls.len()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        refused = 0;
        n += 1;
        let acknowledged = match outcome {
            Ok(r) if r.status().as_u16() == 200 => r.text().await.is_ok_and(|t| t == "true"),
            _ => false,
        };
        if acknowledged {
            ledger.acked.lock().unwrap().push((key, sent));
        } else {
            // 5xx (no leader), 429, timeout, reset by a kill: it may or may not have been
            // applied; the check below only relies on acknowledged writes.
            ledger.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The leader `m` names, if it names one.
async fn named_leader(probe: &reqwest::Client, m: &Member) -> Option<String> {
    let r = probe
        .get(m.server.url("/v1/status/leader"))
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// The member every server in `among` names as leader, if they all name the same one of
/// themselves (the leader included, so a deposed leader's stale view does not count).
async fn agreed_leader(
    probe: &reqwest::Client,
    members: &[Member],
    among: &[usize],
) -> Option<usize> {
    let mut agreed: Option<String> = None;
    for &i in among {
        let named = named_leader(probe, &members[i]).await?;
        if agreed.get_or_insert_with(|| named.clone()) != &named {
            return None;
        }
    }
    let agreed = agreed?;
    among.iter().copied().find(|&i| members[i].rpc == agreed)
}

/// `m`'s own value of `key` (`?stale`: from its local state, not via the leader).
async fn stale_value(probe: &reqwest::Client, m: &Member, key: &str) -> Option<String> {
    let r = probe
        .get(m.server.url(&format!("/v1/kv/{key}?stale&raw")))
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    r.text().await.ok()
}

/// `m`'s whole `crash/` prefix from its local state, key → value.
async fn stale_prefix(
    probe: &reqwest::Client,
    m: &Member,
) -> Result<BTreeMap<String, String>, String> {
    let r = probe
        .get(m.server.url("/v1/kv/crash/?recurse&stale"))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    match r.status().as_u16() {
        200 => {}
        404 => return Ok(BTreeMap::new()),
        other => return Err(format!("status {other}")),
    }
    let entries: serde_json::Value = r.json().await.map_err(|e| format!("body: {e}"))?;
    let mut out = BTreeMap::new();
    for e in entries.as_array().ok_or("not a JSON array")? {
        let key = e["Key"].as_str().ok_or("entry without Key")?.to_string();
        let value = match e["Value"].as_str() {
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|err| format!("{key}: bad base64: {err}"))?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => String::new(),
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// `m`'s `Stats.raft.<field>` from `/v1/agent/self`, as a number.
async fn raft_stat(probe: &reqwest::Client, m: &Member, field: &str) -> Option<u64> {
    let r = probe
        .get(m.server.url("/v1/agent/self"))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["Stats"]["raft"][field].as_str()?.parse().ok()
}

/// `line` without its timestamp, every run of digits as `#`, cut to 200 characters.
fn without_numbers(line: &str) -> String {
    let message = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
    let mut out = String::new();
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out.chars().take(200).collect()
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the restarted `m` serves again: it has finished starting (`beacon agent ready`:
/// a leader known and itself registered), it names a leader, and its local state has caught up
/// to `key`, a write acknowledged while it was down. Fails at once if the process exits on its
/// own, which is how a data dir that cannot be opened shows.
///
/// Waiting for `ready` matters: the start-up registration is one forwarded write, and if the
/// leader dies while it is in flight the server gives up and exits 1 ("registering this server
/// in the catalog: raft write failed: forwarding to the leader …"). Killing the next leader
/// before that write is through would fail this test on that, not on durability.
async fn wait_serving(probe: &reqwest::Client, m: &mut Member, key: Option<&str>) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = m.server.exited() {
            panic!(
                "{} exited ({status}) after its restart on data dir {}; its log ends:\n{}",
                m.name,
                m.dir.display(),
                tail(&m.server.log_text(), 40)
            );
        }
        let caught_up = match key {
            Some(k) => stale_value(probe, m, k).await.as_deref() == Some(k),
            None => true,
        };
        let ready = m.server.log_text().contains("beacon agent ready");
        if ready && caught_up && named_leader(probe, m).await.is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "{} not serving {WAIT:?} after its restart (ready, leader known, {key:?} read back)",
            m.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_leader_kills_during_writes_lose_no_acknowledged_write() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let mut members = start_cluster(root.path());
    // Probes fail fast: a killed server refuses at once, a stuck one must not stall the loop.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = members.iter().map(|m| m.server.url("")).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, urls.clone(), ledger.clone(), stop.clone())))
        .collect();

    let all: Vec<usize> = (0..SERVERS).collect();
    let mut slowest_election = Duration::ZERO;
    let mut slowest_restart = Duration::ZERO;
    let mut restarted_with_snapshot = 0;
    let cycles = cycles();
    for cycle in 1..=cycles {
        let leader = eventually_within(WAIT, "all three servers agree on a leader", || {
            agreed_leader(&probe, &members, &all)
        })
        .await;

        let killed_at = Instant::now();
        members[leader].server.kill();
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        let new_leader = eventually_within(WAIT, "the two survivors elect a leader", || {
            agreed_leader(&probe, &members, &survivors)
        })
        .await;
        let election = killed_at.elapsed();
        // This wait is the "acknowledged after every kill" assertion: it fails at the deadline.
        eventually_within(WAIT, "writes acknowledged by the survivors", || async {
            (ledger.acked_sent_after(killed_at) >= ACKS_AFTER_KILL).then_some(())
        })
        .await;
        let recent = ledger.latest();

        let m = &mut members[leader];
        m.earlier_logs.push(m.server.log_text());
        // Spawning waits for the listening lines with blocking sleeps: keep the writers' worker
        // free meanwhile.
        m.server = tokio::task::block_in_place(|| Server::spawn(&m.args, &m.dir));
        let restart = wait_serving(&probe, m, recent.as_deref()).await;
        // What the restart started from (or was sent by the leader while catching up).
        let snapshot = raft_stat(&probe, m, "last_snapshot_index").await;
        restarted_with_snapshot += usize::from(snapshot.is_some_and(|i| i > 0));

        slowest_election = slowest_election.max(election);
        slowest_restart = slowest_restart.max(restart);
        eprintln!(
            "cycle {cycle:2}: killed leader {}, {} elected in {:4} ms, {} restarted and serving in \
             {:5} ms (snapshot at {snapshot:?}); {} acknowledged so far",
            members[leader].name,
            members[new_leader].name,
            election.as_millis(),
            members[leader].name,
            restart.as_millis(),
            ledger.len(),
        );
    }

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for m in &mut members {
        assert!(
            m.server.exited().is_none(),
            "{} exited on its own during the crash loop; its log ends:\n{}",
            m.name,
            tail(&m.server.log_text(), 40)
        );
    }
    let acked: BTreeSet<String> = ledger
        .acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    let unknown = ledger.unknown.load(Ordering::Relaxed);
    eprintln!(
        "{} writes acknowledged, {unknown} unknown; slowest election {} ms, slowest restart {} ms; \
         {restarted_with_snapshot} of {cycles} restarts had a snapshot",
        acked.len(),
        slowest_election.as_millis(),
        slowest_restart.as_millis()
    );
    // CONFIG is in effect: restarts did go through snapshots, not only through a full log.
    assert!(
        restarted_with_snapshot > 0,
        "no restart had a snapshot to start from"
    );
    assert!(
        acked.len() >= MIN_ACKED,
        "only {} writes acknowledged in {cycles} cycles",
        acked.len()
    );

    // Durability: each server's own state (?stale) must hold every acknowledged key with its
    // value. A server still applying gets until the deadline; a lost write never shows up.
    for m in &members {
        let since = Instant::now();
        let state = loop {
            let problem = match stale_prefix(&probe, m).await {
                Ok(state) => {
                    let missing: Vec<&String> =
                        acked.iter().filter(|k| state.get(*k) != Some(*k)).collect();
                    if missing.is_empty() {
                        break state;
                    }
                    format!(
                        "{} of {} acknowledged writes missing or wrong, e.g. {:?}",
                        missing.len(),
                        acked.len(),
                        &missing[..missing.len().min(10)]
                    )
                }
                Err(e) => e,
            };
            assert!(
                since.elapsed() < WAIT,
                "{} lost acknowledged writes: {problem}",
                m.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Unacknowledged writes may be there or not, but never with another write's value.
        for (k, v) in &state {
            assert_eq!(k, v, "{}: crash/ key holds another key's value", m.name);
        }
    }

    // The replicas converge: a write whose client gave up may still commit (held up to 7 s for
    // a leader), so wait for the same keys everywhere rather than compare once.
    eventually_within(
        WAIT,
        "the three servers hold the same crash/ keys",
        || async {
            let mut sets = Vec::new();
            for m in &members {
                sets.push(stale_prefix(&probe, m).await.ok()?);
            }
            sets.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    )
    .await;

    // For the report: what the servers logged at WARN and ERROR through the loop, grouped with
    // the numbers (times, terms, ids, ports) left out.
    let mut notable: BTreeMap<String, usize> = BTreeMap::new();
    for m in &members {
        let current = m.server.log_text();
        for log in m.earlier_logs.iter().chain([&current]) {
            for line in log.lines() {
                if line.contains(" ERROR ") || line.contains(" WARN ") {
                    *notable.entry(without_numbers(line)).or_default() += 1;
                }
            }
        }
    }
    let mut notable: Vec<(usize, String)> = notable.into_iter().map(|(l, n)| (n, l)).collect();
    notable.sort_by(|a, b| b.cmp(a));
    eprintln!("WARN/ERROR log lines, by kind:");
    for (count, line) in notable.iter().take(20) {
        eprintln!("  {count:4} × {line}");
    }
    eprintln!(
        "crash loop done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
