//! Beacon: DNS-based service discovery with a Consul-compatible HTTP API, replicated with Raft.
//!
//! Layout (dependencies point one way: `server → {http, dns, agent, raft} → store → catalog → model`):
//! - [`config`]: one validated `Config` from flags and a TOML file with Consul's key names.
//! - [`server`]: the composition root; binds sockets, starts Raft, spawns DNS/HTTP/agent, shuts down.
//! - [`http`]: the Consul-compatible HTTP API (axum).
//! - [`dns`]: the `consul.` DNS zone answered from the in-memory catalog view: our own UDP
//!   receive loops with pre-encoded answers in front of the hickory-server handler.
//! - [`agent`]: services and checks owned by this agent and the health runner that probes them.
//! - [`sessions`]: session TTL expiry, proposed through Raft.
//! - [`raft`]: openraft configuration, the `Writer` that proposes commands (group commit: one
//!   Raft entry per batch of concurrent writes), cluster status.
//! - [`store`]: redb persistence of the Raft log, vote and catalog state machine.
//! - [`catalog`]: the pure, deterministic state machine and its published read view.
//! - [`model`]: shared domain types.

pub mod agent;
pub mod catalog;
pub mod config;
pub mod dns;
pub mod http;
pub mod model;
pub mod raft;
pub mod server;
pub mod sessions;
pub mod store;
