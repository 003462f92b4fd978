//! Counters shared across modules and read by `/v1/agent/metrics`: written by their owners
//! (the DNS receive loops), read by the HTTP API, so neither names the other.

use std::sync::atomic::AtomicU64;

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
