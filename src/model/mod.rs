//! Shared domain types: nodes, services, checks and their health, as the catalog stores them.
//!
//! These are plain data. The JSON shape clients see lives in `http::dto`; the disk encoding in
//! `store`. Everything here is serde-serializable so Raft entries and snapshots can carry it.

mod duration;
pub mod msgpack;

pub use duration::{ParseDurationError, format_duration, parse_duration};

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A Raft log index: every change to the catalog is stamped with the index of the entry that made it.
pub type Index = u64;

/// Health of a check, and of an instance as the worst of its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "passing" => Ok(CheckStatus::Passing),
            "warning" => Ok(CheckStatus::Warning),
            "critical" => Ok(CheckStatus::Critical),
            other => Err(format!("invalid check status {other:?}")),
        }
    }
}

/// A map that is usually empty, as nodes' and services' `Meta` and `TaggedAddresses` are: one
/// pointer (8 bytes) instead of a `BTreeMap`'s 24 when empty, which at 100k instances of one
/// node each saves ~6 MB. Reads through `Deref` (an empty map when there is none); a write
/// through `DerefMut` allocates it. Serializes exactly as the map does.
#[derive(Clone, Debug)]
// The box is the point: 8 bytes in the record instead of the map's 24.
#[allow(clippy::box_collection)]
pub struct SmallMap<K, V>(Option<Box<BTreeMap<K, V>>>);

/// Equal when the maps are: no map and an emptied one are the same.
impl<K: PartialEq, V: PartialEq> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        fn entries<K, V>(m: &SmallMap<K, V>) -> Option<&BTreeMap<K, V>> {
            m.0.as_deref().filter(|m| !m.is_empty())
        }
        entries(self) == entries(other)
    }
}

impl<K: Eq, V: Eq> Eq for SmallMap<K, V> {}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(None)
    }
}

impl<K, V> From<BTreeMap<K, V>> for SmallMap<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        SmallMap((!map.is_empty()).then(|| Box::new(map)))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        iter.into_iter().collect::<BTreeMap<K, V>>().into()
    }
}

macro_rules! small_map_deref {
    ($($v:ty),*) => {$(
        impl std::ops::Deref for SmallMap<String, $v> {
            type Target = BTreeMap<String, $v>;

            fn deref(&self) -> &Self::Target {
                static EMPTY: BTreeMap<String, $v> = BTreeMap::new();
                self.0.as_deref().unwrap_or(&EMPTY)
            }
        }
    )*};
}
small_map_deref!(String, TaggedAddress);

impl<K, V> std::ops::DerefMut for SmallMap<K, V>
where
    SmallMap<K, V>: std::ops::Deref<Target = BTreeMap<K, V>>,
{
    fn deref_mut(&mut self) -> &mut BTreeMap<K, V> {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V>
where
    SmallMap<K, V>: std::ops::Deref<Target = BTreeMap<K, V>>,
{
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        std::ops::Deref::deref(self).iter()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(map) => map.serialize(serializer),
            None => serializer.collect_map(std::iter::empty::<(&K, &V)>()),
        }
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SmallMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(SmallMap::from)
    }
}

/// A `{Address, Port}` pair under a node's or service's `TaggedAddresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedAddress {
    pub address: String,
    pub port: u16,
}

/// A node as registered: what a registration says about a machine (Consul's `Node` fields of
/// `RegisterRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// A UUID; empty keeps the ID the node already has.
    pub id: CompactString,
    pub name: CompactString,
    pub address: CompactString,
    pub datacenter: CompactString,
    pub tagged_addresses: SmallMap<String, String>,
    pub meta: SmallMap<String, String>,
}

/// A machine in the catalog: its spec and the indexes that stamped it. Keyed by its
/// lower-cased name: Consul matches node names case-insensitively, and so do DNS names.
/// Derefs to its spec, so `node.name` reads the spec's field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(flatten)]
    pub spec: NodeSpec,
    pub create_index: Index,
    pub modify_index: Index,
}

impl std::ops::Deref for Node {
    type Target = NodeSpec;

    fn deref(&self) -> &NodeSpec {
        &self.spec
    }
}

/// SRV weights by aggregated health (Consul's `Weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// A service instance as registered (Consul's `AgentService` without indexes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique on its node; the agent API defaults it to the name.
    pub id: CompactString,
    pub name: CompactString,
    pub tags: Vec<String>,
    /// Empty when the instance uses its node's address.
    pub address: CompactString,
    pub port: u16,
    pub meta: SmallMap<String, String>,
    pub tagged_addresses: SmallMap<String, TaggedAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub kind: CompactString,
}

/// One instance of a service on a node: its spec and the indexes that stamped it. Derefs to
/// its spec, so `service.port` reads the spec's field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    #[serde(flatten)]
    pub spec: ServiceSpec,
    pub create_index: Index,
    pub modify_index: Index,
}

impl std::ops::Deref for Service {
    type Target = ServiceSpec;

    fn deref(&self) -> &ServiceSpec {
        &self.spec
    }
}

/// How an agent runs a check. Stored in the catalog with the check so a restarted agent picks
/// up the checks it owns from its own replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    pub http: String,
    pub method: String,
    pub header: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub tls_skip_verify: bool,
    pub tcp: String,
    pub ttl: Option<Duration>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub deregister_critical_service_after: Option<Duration>,
    pub success_before_passing: u32,
    pub failures_before_critical: u32,
}

/// The definition every check without one shares (`CheckDefinition::shared`).
static NO_DEFINITION: std::sync::LazyLock<Arc<CheckDefinition>> =
    std::sync::LazyLock::new(Default::default);

impl CheckDefinition {
    /// This definition behind an `Arc`; an empty one (a check registered through the catalog
    /// API, which most are) is one allocation shared by all of them, since a definition is
    /// ~200 bytes and a large catalog holds one per check.
    pub fn shared(self) -> Arc<CheckDefinition> {
        if self == CheckDefinition::default() {
            NO_DEFINITION.clone()
        } else {
            Arc::new(self)
        }
    }

    /// Consul's check `Type` string.
    pub fn kind(&self) -> &'static str {
        if self.ttl.is_some() {
            "ttl"
        } else if !self.http.is_empty() {
            "http"
        } else if !self.tcp.is_empty() {
            "tcp"
        } else {
            ""
        }
    }
}

/// A check as registered. `status` None keeps an existing check's status, or starts a new one
/// critical, as Consul does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub check_id: CompactString,
    pub name: CompactString,
    pub status: Option<CheckStatus>,
    pub notes: String,
    pub output: String,
    /// Empty for a node check.
    pub service_id: CompactString,
    pub definition: CheckDefinition,
}

/// A health check on a node (`service_id` empty) or on one service instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub node: CompactString,
    pub check_id: CompactString,
    pub name: CompactString,
    pub status: CheckStatus,
    pub notes: String,
    pub output: String,
    pub service_id: CompactString,
    /// Shared between checks when empty (`CheckDefinition::shared`).
    #[serde(deserialize_with = "shared_definition")]
    pub definition: Arc<CheckDefinition>,
    pub create_index: Index,
    pub modify_index: Index,
}

fn shared_definition<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Arc<CheckDefinition>, D::Error> {
    CheckDefinition::deserialize(d).map(CheckDefinition::shared)
}

impl Default for CheckStatus {
    /// Consul starts new checks critical unless told otherwise, so an instance is not served
    /// before its first successful check.
    fn default() -> Self {
        CheckStatus::Critical
    }
}

/// A key/value entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    pub flags: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// The session holding the lock, empty when unlocked.
    pub session: String,
    pub create_index: Index,
    pub modify_index: Index,
}

/// What happens to the keys a session holds when it is invalidated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    #[default]
    Release,
    Delete,
}

impl SessionBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        }
    }
}

/// A session: the owner of KV locks, invalidated by destroy, TTL expiry, or a linked check
/// going critical.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
    pub ttl: Option<Duration>,
    /// Node-level check IDs on `node` that keep the session alive.
    pub node_checks: Vec<String>,
    /// Service check IDs on `node` that keep the session alive.
    pub service_checks: Vec<String>,
    pub create_index: Index,
    pub modify_index: Index,
}

/// Serde for byte values as base64 text: compact in JSON, and the form Consul's API uses.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_maps_read_write_compare_and_encode_as_maps() {
        let mut none = SmallMap::<String, String>::default();
        assert!(none.is_empty() && none.get("a").is_none());
        let emptied: SmallMap<String, String> = BTreeMap::new().into();
        assert!(emptied.0.is_none());
        none.insert("rack".into(), "r1".into());
        assert_eq!(none.get("rack").map(String::as_str), Some("r1"));
        let plain = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        assert_eq!(
            rmp_serde::to_vec_named(&none).unwrap(),
            rmp_serde::to_vec_named(&plain).unwrap()
        );
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"rack":"r1"}"#);
        assert_eq!(serde_json::to_string(&emptied).unwrap(), "{}");
        let back: SmallMap<String, String> = serde_json::from_str(r#"{"rack":"r1"}"#).unwrap();
        assert_eq!(back, none);
        none.remove("rack");
        assert_eq!(none, emptied);
        assert_eq!((&none).into_iter().count(), 0);
    }
}
