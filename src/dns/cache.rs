//! Pre-encoded UDP answers for the Beacon domain, one cache per receive loop (so no locks).
//!
//! An entry holds a few encodings of the same answer with the instances in different orders;
//! each hit copies the next one and patches in the query's ID and the question exactly as the
//! client wrote it (case included). An entry stays valid while the catalog has not changed what
//! it was computed from: for a service answer, that service's index; for anything else, any
//! catalog change; on a client agent, for an answer from a view, that view's index. A reload
//! (SIGHUP) empties the cache.

use std::collections::HashMap;
use std::net::SocketAddr;

use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use compact_str::CompactString;

use super::zone::{Dependency, Order};
use super::{DnsHandler, Loaded};
use crate::model::Index;

/// At most this many orders per answer. With more instances than this, the orders are redrawn
/// (a new shuffle) after `REDRAW_AFTER` answers so every instance still comes first in turn.
const MAX_VARIANTS: usize = 16;
const REDRAW_AFTER: u32 = 64 * MAX_VARIANTS as u32;
/// Entries kept before the cache starts over (bounds memory on huge catalogs).
const MAX_ENTRIES: usize = 1 << 16;
/// Bytes kept (keys, encodings and bookkeeping, estimated) before the cache starts over: a
/// server of 20k services asked for every one holds ~20 MB per receive loop.
const MAX_BYTES: usize = 32 << 20;
/// What an entry costs besides its key and encodings: the map slot, the entry, the
/// allocations' headers.
const ENTRY_OVERHEAD: usize = 160;
/// Flags, EDNS presence, EDNS payload size, then the lower-cased question.
const KEY_PREFIX: usize = 4;
const MAX_KEY: usize = KEY_PREFIX + 255 + 4;

/// Where the question of a plain query ends, as found by a quick scan of the packet.
struct Question {
    /// End of the query name (the question starts at 12).
    name_end: usize,
}

struct Entry {
    /// The orders encoded so far (each is built the first time it is due, so a new name costs
    /// one encoding, not `wanted`). Empty: this question always takes the full path (until the
    /// catalog changes).
    /// Exactly sized: an encoder's buffer has room for a full UDP payload (512 to 4,096
    /// bytes) and a typical answer is ~150, so keeping the buffers cost ~2.5 KB per name.
    variants: Vec<Box<[u8]>>,
    /// How many orders this answer is worth.
    wanted: usize,
    seed: u64,
    next: usize,
    depends_on: Dependency,
    /// The catalog's last index when the entry was built (or last found still valid).
    built_at: Index,
    served: u32,
    /// On a client agent, the view it came from and that view's index ([`super::Prepared`]).
    view: Option<(CompactString, Option<Index>)>,
    /// When it last marked its view used.
    touched: std::time::Instant,
}

impl Entry {
    fn is_fresh(&mut self, loaded: &Loaded) -> bool {
        if let Some((name, index)) = &self.view {
            return loaded.state(true).recorded_service_index_of_key(name) == *index;
        }
        let state = loaded.state(false);
        let last = state.indexes().last;
        if self.built_at == last {
            return true;
        }
        let unchanged = match &self.depends_on {
            Dependency::Service(name) => state.service_index_of_key(name) <= self.built_at,
            Dependency::Catalog | Dependency::Never => false,
        };
        if unchanged {
            self.built_at = last;
        }
        unchanged
    }
}

pub(crate) struct AnswerCache {
    entries: HashMap<Box<[u8]>, Entry>,
    /// Estimated bytes held (`MAX_BYTES`).
    bytes: usize,
    generation: u64,
    /// The clusters of the catalog and of the views the entries were built from.
    clusters: (String, String),
    seed: u64,
}

impl AnswerCache {
    pub fn new() -> Self {
        AnswerCache {
            entries: HashMap::new(),
            bytes: 0,
            generation: 0,
            clusters: Default::default(),
            seed: rand::random(),
        }
    }

    /// Drops everything when the DNS settings were reloaded, or when the catalog (or a client
    /// agent's views) now comes from another cluster: the servers lost their data and formed
    /// a new one, whose indexes do not compare with those the entries were checked against.
    /// Once per batch: two short string comparisons.
    pub fn sync(&mut self, generation: u64, loaded: &Loaded) {
        let catalog = loaded.catalog.cluster_id();
        let views = loaded.views.as_ref().map_or("", |v| v.cluster_id());
        if generation != self.generation || catalog != self.clusters.0 || views != self.clusters.1 {
            self.entries.clear();
            self.bytes = 0;
            self.generation = generation;
            self.clusters = (catalog.to_string(), views.to_string());
        }
    }

    /// Writes the answer to `packet` into `out` and returns true, or returns false when the
    /// query must take the full path (not a plain query for our domain, or not cacheable).
    pub fn answer(
        &mut self,
        handler: &DnsHandler,
        loaded: &Loaded,
        packet: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut key = [0u8; MAX_KEY];
        let Some((question, key_len)) = scan(packet, &mut key) else {
            return false;
        };
        let key = &key[..key_len];
        let stale = match self.entries.get_mut(key) {
            Some(entry) => !entry.is_fresh(loaded) || entry.served >= REDRAW_AFTER,
            None => true,
        };
        if stale && !self.build(handler, loaded, packet, src, key) {
            return false;
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.variants.is_empty() {
            return false;
        }
        let index = entry.next;
        entry.next = (entry.next + 1) % entry.wanted;
        if index == entry.variants.len() {
            let order = Order::Variant {
                seed: entry.seed,
                index,
                of: entry.wanted,
            };
            match prepare(handler, loaded, packet, src, order).and_then(|p| p.bytes) {
                Some(bytes) => {
                    self.bytes += bytes.len() + 16;
                    entry.variants.push(bytes.into_boxed_slice());
                }
                None => return false,
            }
        }
        if let Some((name, _)) = &entry.view
            // Often enough that a name asked only through this cache is not dropped as idle
            // (`dns_config.view_idle`), seldom enough to keep the views' lock off most hits.
            && loaded.at.saturating_duration_since(entry.touched) >= handler.touch_every()
        {
            entry.touched = loaded.at;
            handler.touch(name);
        }
        if entry.wanted == MAX_VARIANTS {
            entry.served += 1;
        }
        out.clear();
        out.extend_from_slice(&entry.variants[index]);
        out[..2].copy_from_slice(&packet[..2]);
        out[12..question.name_end].copy_from_slice(&packet[12..question.name_end]);
        true
    }

    /// Encodes the first order of an answer and records how many it is worth; false when the
    /// question takes the full path.
    fn build(
        &mut self,
        handler: &DnsHandler,
        loaded: &Loaded,
        packet: &[u8],
        src: SocketAddr,
        key: &[u8],
    ) -> bool {
        // Built from a catalog at least this new, so changes after it are seen as changes.
        let built_at = loaded.state(false).indexes().last;
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let seed = self.seed;
        let first = prepare(
            handler,
            loaded,
            packet,
            src,
            Order::Variant {
                seed,
                index: 0,
                of: 1,
            },
        );
        let (view, first) = match first {
            Some(p) => (p.view, p.bytes.map(|b| (b, p.depends_on, p.shuffled))),
            None => (None, None),
        };
        if matches!(&view, Some((_, None))) {
            // A view without its first snapshot: the full path waits for it; nothing to keep.
            return false;
        }
        let entry = match first {
            None => Entry {
                variants: Vec::new(),
                wanted: 1,
                seed,
                next: 0,
                depends_on: Dependency::Catalog,
                built_at,
                served: 0,
                view,
                touched: loaded.at,
            },
            Some((bytes, depends_on, shuffled)) => Entry {
                variants: vec![bytes.into_boxed_slice()],
                wanted: shuffled.clamp(1, MAX_VARIANTS),
                seed,
                // The first query is answered with the order just built.
                next: 0,
                depends_on,
                built_at,
                served: 0,
                view,
                touched: loaded.at,
            },
        };
        if self.entries.len() >= MAX_ENTRIES || self.bytes >= MAX_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        let cacheable = !entry.variants.is_empty();
        self.bytes += entry_bytes(key, &entry);
        if let Some(old) = self.entries.insert(key.into(), entry) {
            self.bytes = self.bytes.saturating_sub(entry_bytes(key, &old));
        }
        cacheable
    }
}

fn entry_bytes(key: &[u8], entry: &Entry) -> usize {
    let encoded: usize = entry.variants.iter().map(|v| v.len() + 16).sum();
    key.len() + ENTRY_OVERHEAD + encoded
}

/// One order of the answer to `packet`, through the handler.
fn prepare(
    handler: &DnsHandler,
    loaded: &Loaded,
    packet: &[u8],
    src: SocketAddr,
    order: Order,
) -> Option<super::Prepared> {
    let request = Request::from_bytes(packet.to_vec(), src, Protocol::Udp).ok()?;
    Some(handler.prepare(loaded, &request, order))
}

/// Recognizes a plain query (one question, no answer or authority records, at most an EDNS
/// version 0 OPT record, nothing after it) and writes its cache key. Anything else — including
/// compression pointers in the question — returns `None` and is left to hickory's full parser.
fn scan(packet: &[u8], key: &mut [u8; MAX_KEY]) -> Option<(Question, usize)> {
    if packet.len() < 12 {
        return None;
    }
    let (flags, flags2) = (packet[2], packet[3]);
    let is_query = flags & 0x80 == 0;
    let opcode = (flags >> 3) & 0x0f;
    let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    if !is_query || opcode != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return None;
    }
    let additional = count(10);
    if additional > 1 {
        return None;
    }
    let mut at = 12;
    loop {
        let len = *packet.get(at)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
        if at - 12 > 255 {
            return None;
        }
        if len == 0 {
            break;
        }
    }
    let name_end = at;
    let question_end = name_end + 4;
    if packet.len() < question_end {
        return None;
    }
    // The answer copies RD and CD from the query.
    key[0] = flags & 0x01;
    key[1] = flags2 & 0x10;
    if additional == 1 {
        // An OPT record: root owner, type 41, class = payload size, version 0.
        let opt = packet.get(question_end..question_end + 11)?;
        let is_opt = opt[0] == 0 && opt[1..3] == [0, 41];
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
        if !is_opt || opt[6] != 0 || packet.len() != question_end + 11 + rdlen {
            return None;
        }
        key[1] |= 0x01;
        key[2..4].copy_from_slice(&opt[3..5]);
    } else if packet.len() != question_end {
        return None;
    }
    let question = &packet[12..question_end];
    let key_len = KEY_PREFIX + question.len();
    key[KEY_PREFIX..key_len].copy_from_slice(question);
    key[KEY_PREFIX..KEY_PREFIX + (name_end - 12)].make_ascii_lowercase();
    Some((Question { name_end }, key_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, opt: Option<u16>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            opt.is_some() as u8,
        ];
        for label in name {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if let Some(size) = opt {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn keys_ignore_case_and_id_but_not_type_or_edns() {
        let key_of = |p: &[u8]| {
            let mut k = [0u8; MAX_KEY];
            scan(p, &mut k).map(|(_, n)| k[..n].to_vec())
        };
        let a = key_of(&query(&["web", "service", "consul"], 1, None)).unwrap();
        let mut other_id = query(&["WEB", "Service", "consul"], 1, None);
        other_id[0] = 0x99;
        assert_eq!(key_of(&other_id).unwrap(), a);
        assert_ne!(
            key_of(&query(&["web", "service", "consul"], 33, None)).unwrap(),
            a
        );
        let edns = key_of(&query(&["web", "service", "consul"], 1, Some(4096))).unwrap();
        assert_ne!(edns, a);
        assert_ne!(
            key_of(&query(&["web", "service", "consul"], 1, Some(1232))).unwrap(),
            edns
        );
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_parser() {
        let mut k = [0u8; MAX_KEY];
        let plain = query(&["web", "service", "consul"], 1, None);
        assert!(scan(&plain, &mut k).is_some());
        let mut response = plain.clone();
        response[2] |= 0x80;
        assert!(scan(&response, &mut k).is_none());
        let mut update = plain.clone();
        update[2] |= 5 << 3;
        assert!(scan(&update, &mut k).is_none());
        let mut two_questions = plain.clone();
        two_questions[5] = 2;
        assert!(scan(&two_questions, &mut k).is_none());
        let mut trailing = plain.clone();
        trailing.push(0);
        assert!(scan(&trailing, &mut k).is_none());
        assert!(scan(&plain[..plain.len() - 1], &mut k).is_none());
        let mut pointer = plain.clone();
        pointer[12] = 0xc0;
        assert!(scan(&pointer, &mut k).is_none());
        let mut edns1 = query(&["web", "service", "consul"], 1, Some(4096));
        let version_at = edns1.len() - 5;
        edns1[version_at] = 1;
        assert!(scan(&edns1, &mut k).is_none());
    }
}
