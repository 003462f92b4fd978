//! Beacon: DNS-based service discovery with a Consul-compatible HTTP API, replicated with Raft.
//!
//! Layout. Dependencies point one way:
//! `server → {http, dns, leader} → {agent, raft, remote} → {cluster, store} → view → catalog → model`;
//! `config`, `gossip`, `logs`, `metrics`, `report`, `tasks`, `tls` and `transport` are leaves anyone
//! may use (`transport` uses `tls`). `http`, `dns` and `agent` never
//! name `raft` or `store` items (nor openraft or redb): they read the view, write through
//! `cluster::Writer` and ask `cluster::Cluster` the rest.
//! - `main.rs`, `cli/` (the binary): clap, exit codes, logging; `cli::{kv, catalog, agent, ops,
//!   lock, watch}` are the client subcommands, plain HTTP clients of a running agent (`lock` and
//!   `watch` run child processes, `cli::process`).
//! - [`config`]: one validated `Config` from flags (clap derives [`config::Flags`]) and config
//!   files with Consul's key names (`sources`: JSON, HCL, TOML, `-config-dir`, Consul's merge);
//!   Raft `Timing`; every default written once.
//! - [`server`]: the composition root: bind → start → serve → drain;
//!   `server::port` implements the cluster port over the Raft node, `server::pool` its `Gossip`
//!   over the gossip pool (Serf tags, `retry_join`), `server::client` composes a client agent.
//! - [`http`]: the Consul-compatible HTTP API (axum): `agent`, `catalog`, `health`, `kv`,
//!   `session`, `operator` (Raft status, autopilot health, backups), `metrics` (the scrape and
//!   the request recorder); `read` (consistency modes, blocking queries), `dto` (Consul's JSON,
//!   decoded once into `model` specs), `error`, `ui` (the embedded web UI).
//! - [`dns`]: the `consul.` zone answered from the view (`zone`, `names`; on a client agent,
//!   service names from its `remote::views`), static zones and forwarding (`forward`); UDP receive loops (`udp`, their system calls in `sys`) with
//!   pre-encoded answers (`cache`); `encode` builds answers for both paths.
//! - [`agent`]: services and checks owned by this agent and the health runner (`probe`); on a
//!   client agent, its own state (`local`) and anti-entropy with the servers (`sync`); the
//!   config files' definitions (`definitions`).
//! - [`leader`]: one supervised task while this server leads: cluster naming, session expiry
//!   (`leader::sessions`, the leader's TTL timers), autopilot, and the catalog and Raft following
//!   the gossip pool (`leader::reconcile`).
//! - [`cluster`]: the cluster port: `Writer`, `Cluster` (status, members, join/leave, read
//!   barrier, session renew, backup) and their typed errors; no Raft or store types.
//! - [`raft`]: openraft glue: `RaftNode`, server RPC (`rpc`: its messages and handler, `client`,
//!   `network` for Raft's own calls), `formation` and membership, group commit (`batch`).
//! - [`remote`]: a client agent's calls to the servers over server RPC: forwarded writes and
//!   HTTP requests, the long poll keeping its catalog copy current; materialized per-service
//!   views fed by the servers' event stream (`views`).
//! - [`store`]: redb: the Raft log with its recent entries in memory (`log`), the in-memory
//!   catalog state machine persisted by snapshots (`state_machine`), `schema` (data dir
//!   format 2); the openraft type configuration (`store::types`).
//! - [`view`]: the published catalog (lock-free reads), the watchers of blocking queries, and
//!   the event stream's server side (`stream`: one service name's snapshots as it changes).
//! - [`catalog`]: the pure, deterministic state machine (`command`, `kv`; `topic`: a service
//!   name's snapshot, and a client's copy taking one in): no tokio, clock or I/O.
//! - [`model`]: domain types once: node, service and check specs, stored records, durations,
//!   and the one MessagePack decoder (with a nesting bound) for what other processes wrote.
//! - [`metrics`]: counters and prometheus-client timings written by one module and read by
//!   `/v1/agent/metrics`.
//! - [`logs`]: the agent's log as a stream for `/v1/agent/monitor`; the rotated log file
//!   (`file`).
//! - [`report`]: one-line error reports (an error and its causes, each once) for logs and
//!   check output.
//! - [`tasks`]: one tracker that owns every spawned task; essential tasks stop the agent if they end.
//! - [`gossip`]: the LAN gossip pool (SWIM with suspicion, via foca): members, Serf statuses,
//!   leave and force-leave, the AES-GCM keyring.
//! - [`transport`]: the binary server-RPC transport: framed MessagePack over persistent,
//!   multiplexed connections with a version/cluster handshake; opaque bodies; TLS when
//!   configured.
//! - `fuzz`: entry points for the fuzz targets in `fuzz/` and their replay as tests (DNS
//!   packets, HTTP bodies, config files, Go durations, `?filter=`, server-RPC frames); not API.
//! - [`tls`]: certificates and rustls configs for HTTPS, server RPC and DNS over TLS, swapped
//!   on reload; who counts as a server (`verify_server_hostname`).

pub mod agent;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod dns;
#[doc(hidden)]
pub mod fuzz;
pub mod gossip;
pub mod http;
pub mod leader;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod raft;
pub mod remote;
pub mod report;
pub mod server;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod transport;
pub mod view;
