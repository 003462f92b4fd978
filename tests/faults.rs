//! Linearizability under faults: a real 3-server cluster, each server in its own network
//! namespace, while clients run KV operations through every server and a seeded schedule injects
//! at least 5 faults of each kind: SIGKILL and restart of the leader, of a random server, SIGSTOP
//! pauses longer than the election timeout, and partitions (leader isolated, a minority/majority
//! split, a bridge of two halves sharing one server) made of nftables rules that drop the
//! packets.
//!
//! Checks afterwards:
//! - every key's history (`PUT`, `?cas=` writes, `DELETE`, `GET ?consistent`, with call and
//!   return times, an operation without an answer recorded as possibly applied) is
//!   linearizable as a register with compare-and-set (`support/linearizability.rs`), final
//!   reads after healing included, so an acknowledged write lost is a violation;
//! - every lock's history (`?acquire=`, `?release=`, session destroy with lock-delay, reads of
//!   the holder) is linearizable as a lock: never held by two sessions at once;
//! - blocking-query indexes (`X-Consul-Index`, `?stale`, from each server's own state) never go
//!   backwards while a server process lives;
//! - DNS on every live server (running, not paused; partitions do not cut the test off) answered
//!   every query.
//!
//! It also reports the share of reads answered with an error and the p99 latency of the reads
//! issued while the leader was paused.
//!
//! The schedule's seed is printed; `BEACON_FAULT_SEED=<seed>` replays it. The run lasts about
//! 75 s. Needs root, iproute2 and nftables (`.ci/run` installs nftables). This binary holds a
//! single test, so no other cluster shares the machine with it.

#[path = "support/faults.rs"]
mod faults;
#[path = "support/linearizability.rs"]
mod linearizability;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use faults::{Cluster, Liveness};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use linearizability::{Lock, LockOp, Operation, RegisterOp, Verdict, check, check_register};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SERVERS: usize = 3;
const KEYS: usize = 8;
/// Clients doing every kind of operation through random servers; besides them, one reader
/// per server.
const CLIENTS: usize = 6;
/// Faults of each kind: `BEACON_FAULTS_PER_KIND` if set, else 5 (CI's run). The leader kills
/// alone: `BEACON_LEADER_KILLS` if set (`benches/faults.sh` runs 100).
fn faults_of(kind: Fault) -> usize {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|n| n.parse::<usize>().expect("a number of faults"))
    };
    let per_kind = env("BEACON_FAULTS_PER_KIND").unwrap_or(5);
    match kind {
        Fault::KillLeader => env("BEACON_LEADER_KILLS").unwrap_or(per_kind),
        _ => per_kind,
    }
}
/// Lock keys, and the clients taking them with sessions.
const LOCKS: usize = 2;
const LOCKERS: usize = 4;
/// How long a fault lasts: well over the election timeout (250–350 ms).
const HOLD_MS: std::ops::Range<u64> = 1_000..2_000;
/// A client's timeout. A write without an answer by then is recorded as possibly applied.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for the cluster to agree on a leader after a fault healed.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// Distinct (linearized set, value) pairs the checker may visit per key.
const CHECK_BUDGET: usize = 1_000_000;
/// Snapshots every 200 entries keeping 50: restarts load a snapshot and the log after it.
const CONFIG: &str = "raft_snapshot_threshold = 200\nraft_trailing_logs = 50\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillRandom,
    Pause,
    IsolateLeader,
    SplitMinority,
    Bridge,
}

const KINDS: [Fault; 6] = [
    Fault::KillLeader,
    Fault::KillRandom,
    Fault::Pause,
    Fault::IsolateLeader,
    Fault::SplitMinority,
    Fault::Bridge,
];

/// What the clients saw, on one clock (nanoseconds since the run began).
struct Recorder {
    t0: Instant,
    ops: Mutex<Vec<(usize, Operation<RegisterOp>)>>,
    /// Every read that reached a server.
    reads: Mutex<Vec<Read>>,
    locks: Mutex<Vec<(usize, Operation<LockOp>)>>,
    /// Session IDs by number (the lock model's session numbers).
    sessions: Mutex<Vec<String>>,
    acquired: AtomicU64,
    writes_acked: AtomicU64,
    writes_unknown: AtomicU64,
    next_value: AtomicU64,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn session_number(&self, id: &str) -> u64 {
        let mut sessions = self.sessions.lock().unwrap();
        let n = sessions.iter().position(|s| s == id).unwrap_or_else(|| {
            sessions.push(id.to_string());
            sessions.len() - 1
        });
        n as u64
    }

    /// Records a lock operation called at `call`, returned now if `definite`.
    fn lock_op(&self, lock: usize, op: LockOp, call: u64, definite: bool) {
        let ret = definite.then(|| self.now());
        self.locks
            .lock()
            .unwrap()
            .push((lock, Operation { op, call, ret }));
    }
}

/// How a `true`/`false` write ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Yes,
    No,
    /// A 5xx, a timeout, a reset: it may or may not have been applied.
    Unknown,
    /// Refused at connect: nothing was sent.
    NotSent,
}

impl Answer {
    fn ok(self) -> Option<bool> {
        match self {
            Answer::Yes => Some(true),
            Answer::No => Some(false),
            _ => None,
        }
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(_) => Answer::Unknown,
        Ok(r) => {
            let status = r.status().as_u16();
            match (status, r.text().await.as_deref()) {
                (200, Ok("true")) => Answer::Yes,
                (200, Ok("false")) => Answer::No,
                _ => Answer::Unknown,
            }
        }
    }
}

fn lock_path(lock: usize) -> String {
    format!("/v1/kv/lin-lock/l{lock}")
}

/// The session holding `lock` (`GET ?consistent`), or None for an error.
async fn lock_holder(
    http: &reqwest::Client,
    rec: &Recorder,
    base: &str,
    lock: usize,
) -> Option<Option<u64>> {
    let r = http
        .get(format!("{base}{}?consistent", lock_path(lock)))
        .send()
        .await
        .ok()?;
    match r.status().as_u16() {
        404 => Some(None),
        200 => {
            let v: serde_json::Value = r.json().await.ok()?;
            Some(v[0]["Session"].as_str().map(|id| rec.session_number(id)))
        }
        _ => None,
    }
}

/// `PUT path` on random servers until an answer is definite (or `stop`), so no lock stays taken
/// by a lost request; `record` gets each answer that was sent (refused ones are not) with its
/// call time.
async fn until_definite(
    http: &reqwest::Client,
    urls: &[String],
    rng: &mut StdRng,
    stop: &AtomicBool,
    rec: &Recorder,
    path: &str,
    mut record: impl FnMut(Answer, u64),
) {
    while !stop.load(Ordering::Relaxed) {
        let base = &urls[rng.random_range(0..urls.len())];
        let call = rec.now();
        match answer(http.put(format!("{base}{path}"))).await {
            Answer::NotSent => {}
            Answer::Unknown => {
                record(Answer::Unknown, call);
                let wait = rng.random_range(100..200);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            definite => return record(definite, call),
        }
    }
}

/// One lock client: a session without health checks (only its destroy ends it), then acquire,
/// hold a moment, read the holder, and release (or, one time in five, destroy the session and
/// start a new one), on random locks through random servers, until `stop`. A release or destroy
/// without an answer is repeated until one comes, so no lock stays taken by a lost client.
async fn locker(seed: u64, urls: Vec<String>, rec: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let pause = |ms: std::ops::Range<u64>, rng: &mut StdRng| {
        tokio::time::sleep(Duration::from_millis(rng.random_range(ms)))
    };
    'session: while !stop.load(Ordering::Relaxed) {
        let base = &urls[rng.random_range(0..urls.len())];
        let created = http
            .put(format!("{base}/v1/session/create"))
            .body(r#"{"LockDelay":"500ms","NodeChecks":[],"Behavior":"release"}"#)
            .send()
            .await;
        let id = match created {
            Ok(r) if r.status().as_u16() == 200 => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                v["ID"].as_str().map(str::to_string)
            }
            _ => None,
        };
        let Some(id) = id else {
            pause(50..100, &mut rng).await;
            continue;
        };
        let session = rec.session_number(&id);
        while !stop.load(Ordering::Relaxed) {
            let lock = rng.random_range(0..LOCKS);
            let base = &urls[rng.random_range(0..urls.len())];
            let call = rec.now();
            let url = format!("{base}{}?acquire={id}", lock_path(lock));
            let acquired = answer(http.put(url).body(format!("s{session}"))).await;
            if acquired == Answer::NotSent {
                continue;
            }
            let op = LockOp::Acquire {
                session,
                ok: acquired.ok(),
            };
            rec.lock_op(lock, op, call, acquired != Answer::Unknown);
            if acquired == Answer::Yes {
                rec.acquired.fetch_add(1, Ordering::Relaxed);
                pause(5..30, &mut rng).await;
                let call = rec.now();
                if let Some(holder) = lock_holder(&http, &rec, base, lock).await {
                    rec.lock_op(lock, LockOp::Read(holder), call, true);
                }
            }
            if acquired == Answer::Yes && rng.random_bool(0.2) {
                // Destroy the session: the lock is freed, with lock-delay. Into every lock's
                // history: an acquire of another lock that timed out may still have been
                // applied, and the destroy frees that too.
                let path = format!("/v1/session/destroy/{id}");
                until_definite(
                    &http,
                    &urls,
                    &mut rng,
                    &stop,
                    &rec,
                    &path,
                    |answer, call| {
                        for l in 0..LOCKS {
                            let definite = answer != Answer::Unknown;
                            rec.lock_op(l, LockOp::Destroy { session }, call, definite);
                        }
                    },
                )
                .await;
                continue 'session;
            } else if acquired != Answer::No {
                let path = format!("{}?release={id}", lock_path(lock));
                until_definite(
                    &http,
                    &urls,
                    &mut rng,
                    &stop,
                    &rec,
                    &path,
                    |answer, call| {
                        let op = LockOp::Release {
                            session,
                            ok: answer.ok(),
                        };
                        rec.lock_op(lock, op, call, answer != Answer::Unknown);
                    },
                )
                .await;
            }
            pause(5..20, &mut rng).await;
        }
    }
}

struct Read {
    server: usize,
    call: u64,
    ret: u64,
    answered: bool,
}

fn key_path(key: usize) -> String {
    format!("/v1/kv/lin/k{key}")
}

/// What a `GET ?consistent` answered: (value, ModifyIndex), or None for an error.
async fn read_key(
    http: &reqwest::Client,
    url: &str,
) -> Result<Option<(Option<u64>, u64)>, reqwest::Error> {
    let r = http.get(url).send().await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    Ok(match status {
        404 => Some((None, 0)),
        200 => {
            let v: serde_json::Value = serde_json::from_str(&body).expect("KV JSON");
            let entry = &v[0];
            let value = entry["Value"].as_str().map(|b| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .expect("base64 value");
                String::from_utf8(raw)
                    .unwrap()
                    .parse::<u64>()
                    .expect("a value we wrote")
            });
            Some((value, entry["ModifyIndex"].as_u64().expect("ModifyIndex")))
        }
        _ => None,
    })
}

/// One client: random operations on random keys through random servers until `stop`; or,
/// `pinned` to a server, only reads through that one (so that reads keep arriving at every
/// server while another is paused).
async fn client(
    seed: u64,
    urls: Vec<String>,
    pinned: Option<usize>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    // The last value and ModifyIndex this client read of each key, for `?cas=`.
    let mut seen: BTreeMap<usize, (Option<u64>, u64)> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = rng.random_range(0..KEYS);
        let server = pinned.unwrap_or_else(|| rng.random_range(0..urls.len()));
        let base = &urls[server];
        let roll = if pinned.is_some() {
            0
        } else {
            rng.random_range(0..100)
        };
        if roll < 40 {
            let url = format!("{base}{}?consistent", key_path(key));
            let call = rec.now();
            let outcome = read_key(&http, &url).await;
            let ret = rec.now();
            match outcome {
                Err(e) if e.is_connect() => {}
                Ok(Some((value, index))) => {
                    rec.reads.lock().unwrap().push(Read {
                        server,
                        call,
                        ret,
                        answered: true,
                    });
                    seen.insert(key, (value, index));
                    let op = Operation {
                        op: RegisterOp::Read(value),
                        call,
                        ret: Some(ret),
                    };
                    rec.ops.lock().unwrap().push((key, op));
                }
                // An error or a timeout: a read changes nothing, so it leaves the history.
                _ => rec.reads.lock().unwrap().push(Read {
                    server,
                    call,
                    ret,
                    answered: false,
                }),
            }
        } else {
            let value = rec.next_value.fetch_add(1, Ordering::Relaxed);
            let (request, op) = if roll < 65 || (roll < 90 && !seen.contains_key(&key)) {
                let url = format!("{base}{}", key_path(key));
                (
                    http.put(url).body(value.to_string()),
                    RegisterOp::Write(value),
                )
            } else if roll < 90 {
                let (expect, index) = seen[&key];
                let url = format!("{base}{}?cas={index}", key_path(key));
                let op = RegisterOp::Cas {
                    expect,
                    new: value,
                    ok: None,
                };
                (http.put(url).body(value.to_string()), op)
            } else {
                let url = format!("{base}{}", key_path(key));
                (http.delete(url), RegisterOp::Delete)
            };
            let call = rec.now();
            let answer = match answer(request).await {
                // Refused: nothing was sent (a killed server); no operation happened.
                Answer::NotSent => continue,
                // Unknown: this client identity is retired. Its next operation is concurrent
                // with this one for ever, as the checker treats an operation without a return.
                definite => definite.ok(),
            };
            let ret = rec.now();
            let op = match (op, answer) {
                (RegisterOp::Cas { expect, new, .. }, Some(ok)) => RegisterOp::Cas {
                    expect,
                    new,
                    ok: Some(ok),
                },
                (other, Some(false)) => panic!("{other:?} answered false"),
                (other, _) => other,
            };
            if answer.is_some() {
                rec.writes_acked.fetch_add(1, Ordering::Relaxed);
            } else {
                rec.writes_unknown.fetch_add(1, Ordering::Relaxed);
            }
            let op = Operation {
                op,
                call,
                ret: answer.map(|_| ret),
            };
            rec.ops.lock().unwrap().push((key, op));
        }
        let think = rng.random_range(0..20);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// Asks server `i` its own node name over DNS while it stays live; counts queries and failures.
async fn dns_probe(
    i: usize,
    server: std::net::SocketAddr,
    liveness: Arc<Vec<Liveness>>,
    stop: Arc<AtomicBool>,
    asked: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let name = format!("n{i}.node.consul.");
    let mut buf = vec![0u8; 4096];
    let mut id: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        let mut query = support::query_message(&name, RecordType::A, None);
        query.metadata.id = id;
        let (live_before, epoch) = liveness[i].now();
        let started = Instant::now();
        sock.send_to(&query.to_vec().unwrap(), server)
            .await
            .unwrap();
        // Replies to earlier, timed-out queries are skipped by their ID.
        // 2 s: a server just continued or restarted may be busy catching up on 2 cores.
        let reply = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let (n, _) = sock.recv_from(&mut buf).await.unwrap();
                if let Ok(m) = Message::from_vec(&buf[..n])
                    && m.metadata.id == id
                {
                    return m;
                }
            }
        })
        .await;
        let (live_after, epoch_after) = liveness[i].now();
        if live_before && live_after && epoch == epoch_after {
            asked.fetch_add(1, Ordering::Relaxed);
            let failure = match &reply {
                Err(_) => Some("no reply within 2 s".to_string()),
                Ok(m) if m.metadata.response_code != ResponseCode::NoError => {
                    Some(format!("{:?}", m.metadata.response_code))
                }
                Ok(m) if support::a_records(m).is_empty() => Some("no A record".to_string()),
                Ok(_) => None,
            };
            if let Some(f) = failure {
                failures.lock().unwrap().push(format!(
                    "n{i}: {f} (query sent {:?} ago)",
                    started.elapsed()
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows a blocking query on server `i`'s own state (`?stale`) and records any index that
/// is lower than the one before it from the same process.
async fn index_watch(
    i: usize,
    base: String,
    liveness: Arc<Vec<Liveness>>,
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    backwards: Arc<Mutex<Vec<String>>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut last: Option<(u64, u64)> = None; // (incarnation, index)
    while !stop.load(Ordering::Relaxed) {
        let incarnation = liveness[i].incarnation();
        let index = match last {
            Some((inc, index)) if inc == incarnation => index,
            _ => 0,
        };
        let url = format!("{base}/v1/kv/lin/?recurse&stale&index={index}&wait=1s");
        let Ok(r) = http.get(&url).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let got: Option<u64> = r
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if liveness[i].incarnation() != incarnation {
            continue;
        }
        let Some(got) = got else { continue };
        answers.fetch_add(1, Ordering::Relaxed);
        if let Some((inc, before)) = last
            && inc == incarnation
            && got < before
        {
            backwards.lock().unwrap().push(format!(
                "n{i} (process {incarnation}): index {before} then {got}"
            ));
        }
        last = Some((incarnation, got));
    }
}

async fn wait_leader(http: &reqwest::Client, cluster: &Cluster) -> usize {
    let started = Instant::now();
    loop {
        if let Some(l) = cluster.agreed_leader(http).await {
            return l;
        }
        assert!(
            started.elapsed() < LEADER_DEADLINE,
            "no agreed leader within {LEADER_DEADLINE:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_is_linearizable_under_kills_pauses_and_partitions() {
    let seed: u64 = std::env::var("BEACON_FAULT_SEED")
        .ok()
        .map(|s| s.parse().expect("BEACON_FAULT_SEED is a number"))
        .unwrap_or_else(rand::random);
    println!("fault schedule seed: {seed} (replay with BEACON_FAULT_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = blocking(|| Cluster::start(SERVERS, CONFIG));
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    wait_leader(&probe, &cluster).await;
    // Every server's node is in the catalog before DNS is probed for it.
    for i in 0..SERVERS {
        support::eventually(&format!("n{i} in the catalog"), || {
            let url = format!("{}/v1/catalog/node/n{i}?stale", cluster.url(0));
            let probe = probe.clone();
            async move {
                let r = probe.get(url).send().await.ok()?;
                (r.status().as_u16() == 200 && !r.text().await.ok()?.contains("null")).then_some(())
            }
        })
        .await;
    }

    let rec = Arc::new(Recorder {
        t0: Instant::now(),
        ops: Mutex::default(),
        reads: Mutex::default(),
        locks: Mutex::default(),
        sessions: Mutex::default(),
        acquired: AtomicU64::new(0),
        writes_acked: AtomicU64::new(0),
        writes_unknown: AtomicU64::new(0),
        next_value: AtomicU64::new(1),
    });
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_probes = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..SERVERS).map(|i| cluster.url(i)).collect();
    let mut clients = Vec::new();
    for c in 0..CLIENTS + SERVERS {
        clients.push(tokio::spawn(client(
            seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            urls.clone(),
            c.checked_sub(CLIENTS),
            rec.clone(),
            stop_clients.clone(),
        )));
    }
    for l in 0..LOCKERS {
        clients.push(tokio::spawn(locker(
            seed ^ (l as u64 + 101).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            urls.clone(),
            rec.clone(),
            stop_clients.clone(),
        )));
    }
    let dns_asked = Arc::new(AtomicU64::new(0));
    let dns_failures = Arc::new(Mutex::new(Vec::new()));
    let index_answers = Arc::new(AtomicU64::new(0));
    let backwards = Arc::new(Mutex::new(Vec::new()));
    let mut probes = Vec::new();
    for i in 0..SERVERS {
        probes.push(tokio::spawn(dns_probe(
            i,
            cluster.dns(i),
            cluster.liveness.clone(),
            stop_probes.clone(),
            dns_asked.clone(),
            dns_failures.clone(),
        )));
        probes.push(tokio::spawn(index_watch(
            i,
            cluster.url(i),
            cluster.liveness.clone(),
            stop_probes.clone(),
            index_answers.clone(),
            backwards.clone(),
        )));
    }

    let mut schedule: Vec<Fault> = KINDS
        .iter()
        .flat_map(|k| std::iter::repeat_n(*k, faults_of(*k)))
        .collect();
    schedule.shuffle(&mut rng);
    let mut done: BTreeMap<Fault, usize> = BTreeMap::new();
    // (server, start, end) of each pause of the leader.
    let mut leader_paused: Vec<(usize, u64, u64)> = Vec::new();
    for fault in schedule {
        let leader = wait_leader(&probe, &cluster).await;
        let hold = Duration::from_millis(rng.random_range(HOLD_MS));
        let mut others: Vec<usize> = (0..SERVERS).filter(|&i| i != leader).collect();
        others.shuffle(&mut rng);
        let any = rng.random_range(0..SERVERS);
        let what = match fault {
            Fault::KillLeader | Fault::KillRandom => {
                let victim = if fault == Fault::KillLeader {
                    leader
                } else {
                    any
                };
                cluster.kill(victim);
                tokio::time::sleep(hold).await;
                blocking(|| cluster.restart(victim));
                format!("killed n{victim} for {hold:?}")
            }
            Fault::Pause => {
                // Every other pause is the leader's (the reads during those are reported).
                let pauses = done.get(&Fault::Pause).copied().unwrap_or(0);
                let victim = if pauses % 2 == 0 { leader } else { any };
                let start = rec.now();
                cluster.pause(victim);
                tokio::time::sleep(hold).await;
                cluster.resume(victim);
                if victim == leader {
                    leader_paused.push((victim, start, rec.now()));
                }
                format!("paused n{victim} for {hold:?}")
            }
            Fault::IsolateLeader => {
                blocking(|| cluster.net.partition(&[vec![leader], others.clone()]));
                tokio::time::sleep(hold).await;
                blocking(|| cluster.net.heal());
                format!("isolated leader n{leader} for {hold:?}")
            }
            Fault::SplitMinority => {
                let mut all: Vec<usize> = (0..SERVERS).collect();
                all.shuffle(&mut rng);
                let minority = all.split_off(SERVERS.div_ceil(2));
                let sides = [minority, all];
                blocking(|| cluster.net.partition(&sides));
                tokio::time::sleep(hold).await;
                blocking(|| cluster.net.heal());
                format!("split {:?} from {:?} for {hold:?}", sides[0], sides[1])
            }
            Fault::Bridge => {
                let mut all: Vec<usize> = (0..SERVERS).collect();
                all.shuffle(&mut rng);
                let half = SERVERS / 2;
                let sides = [all[..=half].to_vec(), all[half..].to_vec()];
                blocking(|| cluster.net.partition(&sides));
                tokio::time::sleep(hold).await;
                blocking(|| cluster.net.heal());
                format!("bridge {:?} | {:?} for {hold:?}", sides[0], sides[1])
            }
        };
        println!("{:>7.2}s {what}", rec.t0.elapsed().as_secs_f64());
        *done.entry(fault).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..700))).await;
    }

    // Healed and settled: the clients stop, then every key is read once through every server,
    // so a lost acknowledged write shows as a violation.
    wait_leader(&probe, &cluster).await;
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for key in 0..KEYS {
        for base in &urls {
            let url = format!("{base}{}?consistent", key_path(key));
            // A read that fails changes nothing: it is asked again, and only the answered one
            // enters the history.
            let (call, value, ret) = support::eventually("a final read", || async {
                let call = rec.now();
                let (value, _) = read_key(&http, &url).await.ok()??;
                Some((call, value, rec.now()))
            })
            .await;
            rec.ops.lock().unwrap().push((
                key,
                Operation {
                    op: RegisterOp::Read(value),
                    call,
                    ret: Some(ret),
                },
            ));
        }
    }
    for lock in 0..LOCKS {
        for base in &urls {
            let call = rec.now();
            let holder = lock_holder(&http, &rec, base, lock)
                .await
                .expect("final lock read answered");
            rec.lock_op(lock, LockOp::Read(holder), call, true);
        }
    }
    stop_probes.store(true, Ordering::Relaxed);
    for p in probes {
        p.await.unwrap();
    }
    let elapsed = rec.t0.elapsed();

    // Figures.
    let ops = std::mem::take(&mut *rec.ops.lock().unwrap());
    let definite = ops.iter().filter(|(_, o)| o.ret.is_some()).count();
    let acked = rec.writes_acked.load(Ordering::Relaxed);
    let unknown = rec.writes_unknown.load(Ordering::Relaxed);
    let reads = std::mem::take(&mut *rec.reads.lock().unwrap());
    let read_errors = reads.iter().filter(|r| !r.answered).count();
    // Reads sent to the other servers while the leader was paused: they must find the new
    // leader (those sent to the paused server itself wait for it to resume).
    let mut paused_latency: Vec<u64> = reads
        .iter()
        .filter(|r| {
            leader_paused
                .iter()
                .any(|&(victim, s, e)| r.server != victim && r.call >= s && r.call <= e)
        })
        .map(|r| r.ret - r.call)
        .collect();
    paused_latency.sort_unstable();
    let p99 = paused_latency
        .get((paused_latency.len() * 99 / 100).min(paused_latency.len().saturating_sub(1)))
        .map(|ns| Duration::from_nanos(*ns));
    let dns_failures = dns_failures.lock().unwrap().clone();
    let backwards = backwards.lock().unwrap().clone();
    println!(
        "{elapsed:.1?}: {} operations, {definite} with a definite outcome; writes {acked} \
         acknowledged, {unknown} unknown; faults {done:?}",
        ops.len()
    );
    println!(
        "reads: {} answered with an error or timed out of {} ({:.2} %); reads issued while the \
         leader was paused, through the other servers: {}, p99 {p99:?}",
        read_errors,
        reads.len(),
        100.0 * read_errors as f64 / reads.len().max(1) as f64,
        paused_latency.len()
    );
    println!(
        "DNS: {} queries to live servers, {} failed; blocking-query answers: {}, {} went backwards",
        dns_asked.load(Ordering::Relaxed),
        dns_failures.len(),
        index_answers.load(Ordering::Relaxed),
        backwards.len()
    );

    // Linearizability, key by key.
    let mut by_key: BTreeMap<usize, Vec<Operation<RegisterOp>>> = BTreeMap::new();
    for (key, op) in ops {
        by_key.entry(key).or_default().push(op);
    }
    let mut violations = Vec::new();
    for (key, history) in &by_key {
        let started = Instant::now();
        let verdict = blocking(|| check_register(history, CHECK_BUDGET));
        println!(
            "key k{key}: {} operations, {:?}, checked in {:.1?}",
            history.len(),
            match &verdict {
                Verdict::Violation { .. } => "NOT linearizable",
                Verdict::Linearizable => "linearizable",
                Verdict::Inconclusive { .. } => "inconclusive",
            },
            started.elapsed()
        );
        if verdict != Verdict::Linearizable {
            violations.push(describe(&format!("key k{key}"), history, &verdict));
        }
    }

    let lock_ops = std::mem::take(&mut *rec.locks.lock().unwrap());
    let acquired = rec.acquired.load(Ordering::Relaxed);
    println!(
        "locks: {} operations, {acquired} acquisitions, {} sessions",
        lock_ops.len(),
        rec.sessions.lock().unwrap().len()
    );
    for lock in 0..LOCKS {
        let history: Vec<Operation<LockOp>> = lock_ops
            .iter()
            .filter(|(l, _)| *l == lock)
            .map(|(_, o)| o.clone())
            .collect();
        let started = Instant::now();
        let verdict = blocking(|| check(&Lock, &history, CHECK_BUDGET));
        println!(
            "lock l{lock}: {} operations, {verdict:?}, checked in {:.1?}",
            history.len(),
            started.elapsed()
        );
        if verdict != Verdict::Linearizable {
            violations.push(describe(&format!("lock l{lock}"), &history, &verdict));
        }
    }

    let failed = !violations.is_empty() || !dns_failures.is_empty() || !backwards.is_empty();
    if failed {
        eprintln!("{}", cluster.logs());
    }
    assert!(
        violations.is_empty(),
        "seed {seed}:\n{}",
        violations.join("\n")
    );
    assert!(
        dns_failures.is_empty(),
        "seed {seed}: DNS failed on live servers:\n{}",
        dns_failures.join("\n")
    );
    assert!(
        backwards.is_empty(),
        "seed {seed}: blocking-query indexes went backwards:\n{}",
        backwards.join("\n")
    );
    for kind in KINDS {
        assert!(
            done.get(&kind).copied().unwrap_or(0) >= faults_of(kind),
            "{done:?}"
        );
    }
    assert!(
        definite >= 2_000,
        "only {definite} operations with a definite outcome"
    );
    assert!(
        index_answers.load(Ordering::Relaxed) > 500,
        "the blocking-query indexes were hardly watched"
    );
    assert!(acquired >= 100, "only {acquired} lock acquisitions");
    assert!(
        acked >= unknown,
        "only {acked} of {} writes acknowledged",
        acked + unknown
    );
    assert!(
        dns_asked.load(Ordering::Relaxed) > 1_000,
        "DNS was hardly asked"
    );
}

/// A violation's report: the verdict and the operations around where the search got stuck.
fn describe<O: std::fmt::Debug>(what: &str, history: &[Operation<O>], verdict: &Verdict) -> String {
    let mut out = format!("{what}: ");
    if let Verdict::Inconclusive { explored } = verdict {
        out.push_str(&format!("inconclusive after {explored} states\n"));
    }
    if let Verdict::Violation { longest, stuck } = verdict {
        out.push_str(&format!(
            "not linearizable: {} of {} operations linearized at most; stuck at {stuck:?}\n",
            longest.len(),
            history.len()
        ));
        let from = stuck
            .iter()
            .map(|&i| history[i].call)
            .min()
            .unwrap_or(0)
            .saturating_sub(2_000_000_000);
        let mut near: Vec<(usize, &Operation<O>)> = history
            .iter()
            .enumerate()
            .filter(|(_, o)| o.ret.is_none_or(|r| r >= from) && o.call <= from + 4_000_000_000)
            .collect();
        near.sort_by_key(|(_, o)| o.call);
        let last_linearized = longest.last();
        for (i, o) in near {
            out.push_str(&format!(
                "  #{i} {:?} call {:.3}s ret {:?}{}{}\n",
                o.op,
                o.call as f64 / 1e9,
                o.ret.map(|r| r as f64 / 1e9),
                if stuck.contains(&i) { "  <- stuck" } else { "" },
                if Some(&i) == last_linearized {
                    "  <- last linearized"
                } else {
                    ""
                },
            ));
        }
    }
    out
}
