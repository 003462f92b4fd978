//! Beacon: DNS-based service discovery with a Consul-compatible HTTP API, replicated with Raft.
//!
//! Layout (dependencies point one way:
//! `server → {http, dns, agent, leader} → {cluster, raft} → store → {view, catalog} → model`;
//! `config`, `metrics` and `tasks` are leaves anyone may use):
//! - [`config`]: one validated `Config` from flags and a TOML file with Consul's key names,
//!   including Raft `Timing`.
//! - [`server`]: the composition root: bind → start → serve → drain; `server::port` implements
//!   the cluster port over the Raft node.
//! - [`http`]: the Consul-compatible HTTP API (axum); reads the view, writes through `Writer`,
//!   asks the cluster port the rest.
//! - [`dns`]: the `consul.` DNS zone answered from the view: our own UDP receive loops with
//!   pre-encoded answers in front of the hickory-server handler.
//! - [`agent`]: services and checks owned by this agent and the health runner that probes them.
//! - [`leader`]: one supervised task while this server leads: cluster naming, session expiry
//!   (the leader's TTL timers), autopilot.
//! - [`cluster`]: the cluster port: `Writer`, `Cluster` (status, members, join/leave, read
//!   barrier, session renew) and their typed errors; no Raft or store types.
//! - [`raft`]: openraft glue: `RaftNode`, server RPC, formation and membership, the `Writer`
//!   that proposes commands (group commit: one Raft entry per batch of concurrent writes).
//! - [`store`]: redb persistence of the Raft log, vote and catalog state machine; the openraft
//!   type configuration (`store::types`).
//! - [`view`]: the published catalog (lock-free reads) and the watchers of blocking queries.
//! - [`catalog`]: the pure, deterministic state machine: no tokio, clock or I/O.
//! - [`model`]: shared domain types.
//! - [`metrics`]: counters written by one module and read by `/v1/agent/metrics`.
//! - [`tasks`]: one tracker that owns every spawned task; essential tasks stop the agent if they end.

pub mod agent;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod raft;
pub mod server;
pub mod store;
pub mod tasks;
pub mod view;
