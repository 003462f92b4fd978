//! Metrics shared across modules and read by `/v1/agent/metrics`: written by their owners
//! (the DNS receive loops, the proposer, the HTTP layer), read by the HTTP API, so neither
//! names the other. Plain atomics where the hot path counts (DNS, gossip); prometheus-client
//! handles ([`RECORDED`]) for timings and labelled counts.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Counters of the write path, written by the leader's proposer (`raft::batch`).
#[derive(Default)]
pub struct WriteMetrics {
    /// Writes refused with 429 because the leader's queue was full.
    pub rejected_busy: AtomicU64,
}

/// The process's write counters: one leader queue per process, so one set of counters.
pub static WRITES: WriteMetrics = WriteMetrics {
    rejected_busy: AtomicU64::new(0),
};

/// Counters of the LAN gossip pool, written by its driver (`gossip`).
#[derive(Default)]
pub struct GossipMetrics {
    /// UDP packets and bytes sent (after encryption).
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// UDP packets and bytes received (before decryption), whether or not they were usable.
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// The process's gossip counters: one pool per agent process.
pub static GOSSIP: GossipMetrics = GossipMetrics {
    packets_sent: AtomicU64::new(0),
    bytes_sent: AtomicU64::new(0),
    packets_received: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
};

/// Counters for `/v1/agent/metrics`.
#[derive(Default)]
pub struct DnsMetrics {
    /// UDP queries received.
    pub received: AtomicU64,
    /// UDP answers sent (from the cache or the full path).
    pub answered: AtomicU64,
    /// Answered from a pre-encoded answer.
    pub cache_hits: AtomicU64,
    /// Handed to the full handler.
    pub full_path: AtomicU64,
    /// Dropped on purpose because the server was behind (queued too long, or the full-path
    /// queue was full).
    pub dropped_overload: AtomicU64,
    /// Dropped as unusable (too large, or not even a DNS header).
    pub dropped_malformed: AtomicU64,
    /// Kernel socket inodes, to read the kernel's own drop counts (receive buffer overflow).
    inodes: std::sync::Mutex<Vec<u64>>,
}

impl DnsMetrics {
    /// Counts the kernel's drops on this UDP socket (by its inode) in `kernel_drops`.
    pub fn watch_socket(&self, inode: u64) {
        if let Ok(mut inodes) = self.inodes.lock() {
            inodes.push(inode);
        }
    }

    /// Queries the kernel dropped because a receive buffer was full, from `/proc/net/udp*`.
    pub fn kernel_drops(&self) -> u64 {
        let inodes = self.inodes.lock().map(|i| i.clone()).unwrap_or_default();
        let mut total = 0;
        for table in ["/proc/net/udp", "/proc/net/udp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // ... uid timeout inode ref pointer drops
                let (Some(inode), Some(drops)) = (fields.get(9), fields.last()) else {
                    continue;
                };
                if inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                    total += drops.parse::<u64>().unwrap_or(0);
                }
            }
        }
        total
    }
}

/// Timings and counters recorded where they happen (the proposer, the HTTP layer, the DNS full
/// path, the Raft watcher) and read by `/v1/agent/metrics`: prometheus-client metrics, which
/// are shared handles, registered into a fresh registry at each scrape beside the values read
/// then (catalog sizes, Raft indexes).
///
/// Consul's names where Consul has the metric, with Consul's units (milliseconds for
/// timings), so dashboards and alerts keep working: `consul_raft_commitTime`,
/// `consul_raft_apply`, … Beacon's own are `beacon_*` in seconds.
///
/// Consul's counters (`consul_raft_apply`, `consul_raft_state_*`) are gauges that only grow:
/// Consul names them without the `_total` that OpenMetrics gives every counter.
pub struct Recorded {
    /// Writes committed by this server as leader (`consul_raft_apply`).
    pub raft_apply: Gauge,
    /// Proposal to commit on the leader, ms (`consul_raft_commitTime`).
    pub raft_commit_time: Histogram,
    /// On the leader, ms since a quorum last acknowledged it, sampled each second
    /// (`consul_raft_leader_lastContact`).
    pub raft_leader_last_contact: Histogram,
    /// Times this server became leader / candidate (`consul_raft_state_leader`,
    /// `consul_raft_state_candidate`).
    pub raft_state_leader: Gauge,
    pub raft_state_candidate: Gauge,
    /// Write endpoints' time, ms, by Consul's metric (`consul_catalog_register`, …).
    pub endpoint_time: Family<EndpointLabels, Histogram>,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request time by route, seconds.
    pub http_duration: Family<RouteLabels, Histogram>,
    /// Blocking queries waiting now.
    pub blocking_queries: Gauge,
    /// DNS answers from the full handler (TCP, DoT, and UDP queries without a pre-encoded
    /// answer), seconds. Pre-encoded UDP answers are counted, not timed: the hot path reads no
    /// clock and takes no lock.
    pub dns_full_path_duration: Histogram,
}

/// `route`, `method`, `code` of an HTTP request (`route` is the router's pattern, e.g.
/// `/v1/kv/{*key}`, so keys do not multiply the series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Which of Consul's write-endpoint timings a request belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub metric: &'static str,
}

/// Milliseconds buckets for Consul's timings: 0.1 ms to ~3.3 s.
fn ms_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.1, 2.0, 16)
}

/// Seconds buckets for Beacon's own timings: 50 µs to ~1.6 s; blocking queries land in +Inf.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

/// The process's recorded metrics: one agent per process.
pub static RECORDED: LazyLock<Recorded> = LazyLock::new(|| Recorded {
    raft_apply: Gauge::default(),
    raft_commit_time: Histogram::new(ms_buckets()),
    raft_leader_last_contact: Histogram::new(ms_buckets()),
    raft_state_leader: Gauge::default(),
    raft_state_candidate: Gauge::default(),
    endpoint_time: Family::new_with_constructor(|| Histogram::new(ms_buckets())),
    http_requests: Family::default(),
    http_duration: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
    blocking_queries: Gauge::default(),
    dns_full_path_duration: Histogram::new(seconds_buckets()),
});

/// Consul's write-endpoint metric for a request, if it has one.
pub fn consul_endpoint(route: &str, method: &str) -> Option<&'static str> {
    let write = method != "GET";
    Some(match route {
        "/v1/catalog/register" => "consul_catalog_register",
        "/v1/catalog/deregister" => "consul_catalog_deregister",
        "/v1/kv/{*key}" if write => "consul_kvs_apply",
        "/v1/txn" => "consul_txn_apply",
        "/v1/session/create" | "/v1/session/destroy/{*id}" => "consul_session_apply",
        _ => return None,
    })
}

/// Keeps `RECORDED.blocking_queries` up while a blocking query waits.
pub struct Waiting(());

impl Waiting {
    pub fn start() -> Waiting {
        RECORDED.blocking_queries.inc();
        Waiting(())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        RECORDED.blocking_queries.dec();
    }
}

/// Seconds since `start`, for the histograms.
pub fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Milliseconds since `start`, for Consul's timings.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
