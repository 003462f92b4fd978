//! One validated `Config` from command-line flags and config files (JSON, HCL or TOML, with
//! Consul's key names; `sources` reads and merges them). Flags override the files. Any unknown
//! key or bad value is a `ConfigError` naming it (and its file); the binary exits with status 64
//! on one. Consul keys for features Beacon lacks are warnings ([`Config::warnings`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::parse_duration;

pub mod sources;
pub use sources::Definition;
mod tls;
pub use tls::{TlsConfig, TlsSide, TlsVersion};

pub const DEFAULT_HTTP_PORT: u16 = 8500;
pub const DEFAULT_DNS_PORT: u16 = 8600;
pub const DEFAULT_SERVER_PORT: u16 = 8300;
pub const DEFAULT_SERF_LAN_PORT: u16 = 8301;

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub datacenter: String,
    /// Lower-case, with the trailing dot: `consul.`.
    pub domain: String,
    /// None in dev mode without `--data-dir`: the server uses a temporary directory.
    pub data_dir: Option<PathBuf>,
    /// None when `ports.http = -1` (HTTPS only, as Consul allows).
    pub http_addr: Option<SocketAddr>,
    /// The HTTPS API (`ports.https`, `--https-addr`); off by default, as Consul.
    pub https_addr: Option<SocketAddr>,
    pub dns_addr: SocketAddr,
    /// DNS over TLS (RFC 7858; `ports.dns_tls`, `--dns-tls-addr`); off by default.
    pub dns_tls_addr: Option<SocketAddr>,
    pub tls: TlsConfig,
    /// The server (RPC) address reported by `/v1/status/leader`.
    pub rpc_addr: SocketAddr,
    /// Dev mode opens no RPC listener unless `--rpc-addr` was given.
    pub rpc_listen: bool,
    pub log_level: String,
    pub log: LogConfig,
    pub dns: DnsConfig,
    pub raft: Timing,
    pub mode: Mode,
    /// Form a new cluster once this many servers know each other (0: only join).
    pub bootstrap_expect: usize,
    /// Other agents' LAN gossip addresses (`host` or `host:port`, port 8301 by default), tried
    /// with backoff until one answers (`retry_join`; `start_join` and `--join` are aliases).
    pub join: Vec<String>,
    pub autopilot: Autopilot,
    /// The LAN gossip pool; None for a dev agent without `--serf-lan-addr`.
    pub gossip: Option<Gossip>,
    /// Whether SIGTERM leaves the pool first (Consul: true on clients, false on servers).
    pub leave_on_terminate: bool,
    /// Anti-entropy: how often a client agent fully syncs its node with the servers (Consul's
    /// `ae_interval`, 60 s; scaled up with the pool's size as Consul does).
    pub ae_interval: Duration,
    /// A check whose output changes without a status change is synced at most this often
    /// (Consul's `check_update_interval`, 5 m).
    pub check_update_interval: Duration,
    /// Service definitions from the config files (Consul's `service` and `services`), as
    /// written: the agent decodes them as bodies of its registration endpoint.
    pub services: Vec<Definition>,
    /// Check definitions from the config files (Consul's `check` and `checks`).
    pub checks: Vec<Definition>,
    /// Serve the web UI at `/ui/` (`ui_config.enabled`, `ui`, `--ui`; always in `--dev`).
    pub ui: bool,
    /// One line per Consul key of the files that Beacon does not use ("FILE: KEY is …"),
    /// logged as warnings at start.
    pub warnings: Vec<String>,
}

/// Where the log goes besides stderr: Consul's `log_json`, `log_file` and `log_rotate_*`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// The active log file (a `log_file` naming a directory, or ending in `/`, gets
    /// `beacon.log` in it; a name without an extension gets `.log`).
    pub file: Option<PathBuf>,
    /// Rotate before the file passes this many bytes (0: no size limit; Consul's default).
    pub rotate_bytes: u64,
    /// Rotate when the file is this old (Consul's default 24 h).
    pub rotate_duration: Duration,
    /// Rotated files kept (0: all, Consul's default; -1: none).
    pub rotate_max_files: i64,
}

/// The LAN gossip pool's settings, with Consul's names and LAN defaults (`gossip_lan.*`,
/// memberlist's `DefaultLANConfig`).
#[derive(Clone, Debug)]
pub struct Gossip {
    /// The UDP address the pool binds: `bind_addr` + `ports.serf_lan`, or
    /// `--serf-lan-addr`.
    pub bind: SocketAddr,
    /// The address other agents are told: `advertise_addr` / `--advertise` with the bound port,
    /// else the bind address. Never unspecified.
    pub advertise: SocketAddr,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_mult: u32,
    pub gossip_interval: Duration,
    pub gossip_nodes: usize,
    pub retransmit_mult: u32,
    /// Longest pause between two attempts of a `retry_join` address (Consul's 30 s).
    pub retry_interval: Duration,
    /// How long a failed member stays in the pool before it is reaped (Consul's 72 h; Beacon
    /// accepts down to 1 s, Consul 8 h).
    pub reconnect_timeout: Duration,
    /// `encrypt`: base64 of a 16, 24 or 32-byte key, used when the data dir holds no keyring.
    pub encrypt: Option<String>,
}

impl Gossip {
    /// Consul's LAN defaults for a pool bound at `bind`.
    pub fn lan(bind: SocketAddr) -> Gossip {
        Gossip {
            bind,
            advertise: bind,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            retransmit_mult: 4,
            retry_interval: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(72 * 3600),
            encrypt: None,
        }
    }
}

/// Raft timing. Consul's default `raft_multiplier` of 5 gives ~5 s elections; Beacon's base
/// timing (multiplier 1) aims at sub-second failover.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Snapshot after this many applied entries (Consul's `raft_snapshot_threshold`).
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot for lagging followers (Consul's `raft_trailing_logs`).
    pub trailing_logs: u64,
    /// A snapshot is also taken this often when anything was applied since the last one
    /// (Consul's `raft_snapshot_interval`, 30 s), so a restart replays at most this much log.
    pub snapshot_interval: Duration,
}

impl Timing {
    pub fn with_multiplier(multiplier: u32) -> Self {
        let base = Timing::default();
        Timing {
            heartbeat: base.heartbeat * multiplier,
            election_min: base.election_min * multiplier,
            election_max: base.election_max * multiplier,
            ..base
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(60),
            election_min: Duration::from_millis(250),
            election_max: Duration::from_millis(350),
            snapshot_threshold: 16384,
            trailing_logs: 10240,
            snapshot_interval: Duration::from_secs(30),
        }
    }
}

/// How the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One server that elects itself; temporary data dir unless one is given.
    Dev,
    /// A server in a cluster of several, formed with `bootstrap_expect` / `join`.
    Server,
    /// A client agent: no Raft and no catalog of its own; its services and checks are synced
    /// to the servers, which it finds through the gossip pool.
    Client,
}

/// Dead-server clean-up, as Consul's autopilot does it.
#[derive(Clone, Debug)]
pub struct Autopilot {
    pub cleanup_dead_servers: bool,
    /// A voter the leader has not reached for this long is removed, if a healthy majority remains.
    pub dead_server_threshold: Duration,
}

impl Default for Autopilot {
    /// Clean-up on, as Consul's `cleanup_dead_servers`; a voter unreachable for 30 s is dead.
    fn default() -> Self {
        Autopilot {
            cleanup_dead_servers: true,
            dead_server_threshold: Duration::from_secs(30),
        }
    }
}

/// The DNS settings that follow Consul's `dns_config` block (plus the zones and recursors
/// around it). Everything here is reloaded on SIGHUP.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub service_ttl: ServiceTtl,
    pub node_ttl: Duration,
    /// Unset by default; when set, UDP answers carry at most this many records, without TC.
    pub udp_answer_limit: Option<usize>,
    /// Caps A/AAAA answers on UDP and TCP (0: no cap).
    pub a_record_limit: usize,
    pub only_passing: bool,
    pub enable_additional_node_meta_txt: bool,
    pub soa: SoaConfig,
    /// A second domain answering the same data (`alt_domain`), lower-case with the trailing dot.
    pub alt_domain: Option<String>,
    pub recursors: Vec<SocketAddr>,
    pub recursor_timeout: Duration,
    pub recursor_random: bool,
    /// Static zones served beside the Beacon domain.
    pub zone_files: Vec<ZoneFile>,
    /// UDP receive loops (`SO_REUSEPORT` sockets); 0: one per core available to the process.
    /// Read at start-up only.
    pub udp_workers: usize,
    /// Under overload, UDP queries that waited longer than this are dropped (and counted)
    /// rather than answered late. Read at start-up only.
    pub max_queue_delay: Duration,
    /// On a client agent, a service's materialized view is dropped after this long without
    /// use (`dns_config.view_idle`, Beacon's own key; default 10 minutes). Read at start-up
    /// only.
    pub view_idle: Duration,
}

impl DnsConfig {
    /// The number of UDP receive loops to run.
    pub fn udp_loops(&self) -> usize {
        match self.udp_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            service_ttl: ServiceTtl::default(),
            node_ttl: Duration::ZERO,
            udp_answer_limit: None,
            a_record_limit: 0,
            only_passing: false,
            enable_additional_node_meta_txt: true,
            soa: SoaConfig::default(),
            alt_domain: None,
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
            recursor_random: false,
            zone_files: Vec::new(),
            udp_workers: 0,
            max_queue_delay: DEFAULT_MAX_QUEUE_DELAY,
            view_idle: Duration::from_secs(600),
        }
    }
}

/// SOA timers (`dns_config.soa`), Consul's defaults.
#[derive(Clone, Copy, Debug)]
pub struct SoaConfig {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub min_ttl: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

/// A static zone file served authoritatively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneFile {
    /// e.g. `example.com.`
    pub origin: String,
    pub path: PathBuf,
}

/// Consul's `service_ttl` map: an exact name beats a `prefix*`, the longest prefix wins, `*` is
/// the catch-all; absent means 0.
#[derive(Clone, Debug, Default)]
pub struct ServiceTtl {
    exact: BTreeMap<String, Duration>,
    prefixes: Vec<(String, Duration)>,
}

impl ServiceTtl {
    pub fn from_map(map: BTreeMap<String, Duration>) -> Self {
        let mut ttl = ServiceTtl::default();
        for (name, d) in map {
            match name.strip_suffix('*') {
                Some(prefix) => ttl.prefixes.push((prefix.to_ascii_lowercase(), d)),
                None => {
                    ttl.exact.insert(name.to_ascii_lowercase(), d);
                }
            }
        }
        // Longest prefix first so the first match is the most specific.
        ttl.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        ttl
    }

    pub fn for_service(&self, name: &str) -> Duration {
        let name = name.to_ascii_lowercase();
        if let Some(d) = self.exact.get(&name) {
            return *d;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, d)| *d)
            .unwrap_or(Duration::ZERO)
    }
}

/// `beacon agent`'s command line; each value given overrides the file. Clap derives the
/// parser from this struct, and config resolution consumes it as is.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// One-node server that bootstraps its own cluster and elects itself.
    #[arg(long)]
    pub dev: bool,
    /// Run as a server of a cluster (with --bootstrap-expect and/or --join).
    #[arg(long)]
    pub server: bool,
    /// Form a new cluster once this many servers know each other.
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Another agent's LAN gossip address (host or host:port, port 8301 by default);
    /// repeatable; retried with backoff until one answers. `--join` is an alias.
    #[arg(long = "retry-join", visible_alias = "join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// LAN gossip address to bind (default: bind_addr:8301; dev agents gossip only with it).
    #[arg(long, value_name = "ADDR")]
    pub serf_lan_addr: Option<String>,
    /// The IP other agents are told to reach this one at (default: the bind IP).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<String>,
    /// Gossip encryption key: base64 of 16, 24 or 32 bytes (`beacon keygen` makes one).
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// A config file with Consul's key names: JSON (`.json`), HCL (`.hcl`) or TOML (any other
    /// name); repeatable, merged in order; flags override files. `--config` is Beacon's older
    /// name for it.
    #[arg(long = "config-file", visible_alias = "config", value_name = "FILE")]
    pub config_file: Vec<PathBuf>,
    /// A directory whose `.json`, `.hcl` and `.toml` files are read in lexical order, after the
    /// `--config-file`s; repeatable.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
    /// Serve the web UI at `/ui/` (`ui_config.enabled`; always on in `--dev`).
    #[arg(long)]
    pub ui: bool,
    /// Write the log as one JSON object per line (`log_json`).
    #[arg(long)]
    pub log_json: bool,
    /// Also write the log to this file, rotated (`log_file`; a directory or a path ending in
    /// `/` gets `beacon.log` in it; rotated files are `<name>-<unix ns>.log`).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Rotate the log file before it passes this many bytes (`log_rotate_bytes`; 0: no limit).
    #[arg(long, value_name = "BYTES")]
    pub log_rotate_bytes: Option<u64>,
    /// Rotate the log file this often (`log_rotate_duration`; default 24h).
    #[arg(long, value_name = "DURATION")]
    pub log_rotate_duration: Option<String>,
    /// Rotated log files kept (`log_rotate_max_files`; 0 keeps all, -1 none).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub log_rotate_max_files: Option<i64>,
    /// The IP the client interfaces (HTTP, HTTPS, DNS) bind (Consul's `-client`; the file's
    /// `client_addr`). A full `--http-addr`/`--dns-addr` wins over it.
    #[arg(long, value_name = "IP")]
    pub client: Option<String>,
    /// The IP server RPC and gossip bind (Consul's `-bind`; the file's `bind_addr`).
    #[arg(long, value_name = "IP")]
    pub bind: Option<String>,
    /// Consul's `-http-port` (`ports.http`; -1 turns it off).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    pub http_port: Option<i32>,
    /// Consul's `-https-port` (`ports.https`).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    pub https_port: Option<i32>,
    /// Consul's `-dns-port` (`ports.dns`).
    #[arg(long, value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// Consul's `-server-port` (`ports.server`).
    #[arg(long, value_name = "PORT")]
    pub server_port: Option<u16>,
    /// Consul's `-serf-lan-port` (`ports.serf_lan`).
    #[arg(long, value_name = "PORT")]
    pub serf_lan_port: Option<u16>,
    /// HTTP API address (default 127.0.0.1:8500).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// HTTPS API address (default off; needs tls cert_file and key_file).
    #[arg(long, value_name = "ADDR")]
    pub https_addr: Option<String>,
    /// DNS over TLS address (RFC 7858; default off; needs a TLS certificate).
    #[arg(long, value_name = "ADDR")]
    pub dns_tls_addr: Option<String>,
    /// DNS address for UDP and TCP (default 127.0.0.1:8600).
    #[arg(long, value_name = "ADDR")]
    pub dns_addr: Option<String>,
    /// Server RPC address reported as the leader (default 127.0.0.1:8300).
    #[arg(long, value_name = "ADDR")]
    pub rpc_addr: Option<String>,
    /// Where the Raft log and catalog persist (dev: a temporary dir unless given).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter (default dc1).
    #[arg(long)]
    pub datacenter: Option<String>,
    /// DNS domain (default consul.).
    #[arg(long)]
    pub domain: Option<String>,
    /// A second domain answering the same data.
    #[arg(long)]
    pub alt_domain: Option<String>,
    /// Upstream DNS server for names outside Beacon's zones (ip or ip:port); repeatable.
    #[arg(long = "recursor", value_name = "ADDR")]
    pub recursors: Vec<String>,
    /// trace, debug, info, warn or error (default info).
    #[arg(long)]
    pub log_level: Option<String>,
}

/// The TOML file, with Consul's key names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    datacenter: Option<String>,
    domain: Option<String>,
    data_dir: Option<PathBuf>,
    log_level: Option<String>,
    client_addr: Option<String>,
    bind_addr: Option<String>,
    #[serde(default)]
    addresses: FileAddresses,
    #[serde(default)]
    ports: FilePorts,
    #[serde(default)]
    dns_config: FileDnsConfig,
    server: Option<bool>,
    bootstrap_expect: Option<usize>,
    retry_join: Option<Vec<String>>,
    start_join: Option<Vec<String>>,
    retry_interval: Option<String>,
    advertise_addr: Option<String>,
    encrypt: Option<String>,
    leave_on_terminate: Option<bool>,
    reconnect_timeout: Option<String>,
    ae_interval: Option<String>,
    check_update_interval: Option<String>,
    #[serde(default)]
    gossip_lan: FileGossipLan,
    raft_snapshot_threshold: Option<u64>,
    raft_trailing_logs: Option<u64>,
    raft_snapshot_interval: Option<String>,
    #[serde(default)]
    performance: FilePerformance,
    #[serde(default)]
    autopilot: FileAutopilot,
    alt_domain: Option<String>,
    recursors: Option<Vec<String>>,
    #[serde(default)]
    zone_files: Vec<FileZone>,
    #[serde(default)]
    tls: tls::FileTls,
    ca_file: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    verify_incoming: Option<bool>,
    verify_incoming_rpc: Option<bool>,
    verify_incoming_https: Option<bool>,
    verify_outgoing: Option<bool>,
    verify_server_hostname: Option<bool>,
    tls_min_version: Option<String>,
    /// Consul's service definitions: `service` (one, or a list where HCL repeats the block)
    /// and `services`; checked and registered by the agent (`http::dto::service_definition`).
    service: Option<serde_json::Value>,
    services: Option<Vec<serde_json::Value>>,
    check: Option<serde_json::Value>,
    checks: Option<Vec<serde_json::Value>>,
    ui: Option<bool>,
    #[serde(default)]
    ui_config: FileUiConfig,
    log_json: Option<bool>,
    log_file: Option<PathBuf>,
    log_rotate_bytes: Option<u64>,
    log_rotate_duration: Option<String>,
    log_rotate_max_files: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUiConfig {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGossipLan {
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    suspicion_mult: Option<u32>,
    gossip_interval: Option<String>,
    gossip_nodes: Option<usize>,
    retransmit_mult: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileZone {
    origin: String,
    path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSoa {
    refresh: Option<u32>,
    retry: Option<u32>,
    expire: Option<u32>,
    min_ttl: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePerformance {
    raft_multiplier: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAutopilot {
    cleanup_dead_servers: Option<bool>,
    dead_server_threshold: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAddresses {
    http: Option<String>,
    https: Option<String>,
    dns: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePorts {
    /// -1 turns the listener off (Consul's convention).
    http: Option<i32>,
    https: Option<i32>,
    dns: Option<u16>,
    dns_tls: Option<i32>,
    server: Option<u16>,
    serf_lan: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDnsConfig {
    service_ttl: Option<BTreeMap<String, String>>,
    node_ttl: Option<String>,
    udp_answer_limit: Option<i64>,
    a_record_limit: Option<u32>,
    only_passing: Option<bool>,
    enable_additional_node_meta_txt: Option<bool>,
    recursor_timeout: Option<String>,
    recursor_strategy: Option<String>,
    soa: Option<FileSoa>,
    udp_workers: Option<u16>,
    max_queue_delay: Option<String>,
    view_idle: Option<String>,
}

/// Reads the config files and directories named by the flags (see `sources`) and resolves
/// the final config. Errors name the file and the key.
pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let loaded = sources::read(&flags.config_file, &flags.config_dir, |value| {
        file_config(value.clone()).map(drop)
    })?;
    let mut config = resolve_file(flags, file_config(loaded.value.clone())?).map_err(|e| {
        match loaded.file_setting(&e.key) {
            Some(file) => ConfigError::new(format!("{}: {}", file.display(), e.key), e.message),
            None => e,
        }
    })?;
    config.warnings = loaded.warnings;
    config.services = loaded.services;
    config.checks = loaded.checks;
    Ok(config)
}

/// A file's (or the merged files') keys as `FileConfig`; an unknown key or a wrong type is an
/// error naming its dotted path.
fn file_config(value: serde_json::Value) -> Result<FileConfig, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde lists every field it expected; the key is what the operator needs.
        let message = match message.split_once(", expected") {
            Some((unknown, _)) if unknown.starts_with("unknown field") => unknown.to_string(),
            _ => message,
        };
        ConfigError::new(if key == "." { "config".into() } else { key }, message)
    })
}

/// Builds the config from flags and one TOML file's text. Never reads the environment.
pub fn resolve(flags: &Flags, file_text: Option<&str>) -> Result<Config, ConfigError> {
    match file_text {
        Some(text) => resolve_as(flags, Path::new("config.toml"), text),
        None => resolve_file(flags, FileConfig::default()),
    }
}

/// Builds the config from flags and one file's text, in the format its name's extension says
/// (`.json`, `.hcl`, else TOML). Never reads the environment.
pub fn resolve_as(flags: &Flags, name: &Path, text: &str) -> Result<Config, ConfigError> {
    resolve_file(flags, file_config(sources::parse(name, text)?)?)
}

fn resolve_file(flags: &Flags, mut file: FileConfig) -> Result<Config, ConfigError> {
    // Consul's `-client`, `-bind` and `-*-port` flags stand for the file's keys: above the
    // file, below the full-address flags (which `listener` and the RPC and gossip addresses
    // check first).
    if let Some(ip) = &flags.client {
        parse_ip("client", Some(ip))?;
        file.client_addr = Some(ip.clone());
    }
    if let Some(ip) = &flags.bind {
        parse_ip("bind", Some(ip))?;
        file.bind_addr = Some(ip.clone());
    }
    file.ports.http = flags.http_port.or(file.ports.http);
    file.ports.https = flags.https_port.or(file.ports.https);
    file.ports.dns = flags.dns_port.or(file.ports.dns);
    file.ports.server = flags.server_port.or(file.ports.server);
    file.ports.serf_lan = flags.serf_lan_port.or(file.ports.serf_lan);
    let file_gossip = GossipFile::take(&mut file);
    let client_ip = parse_ip("client_addr", file.client_addr.as_deref())?;
    let bind_ip = parse_ip("bind_addr", file.bind_addr.as_deref())?;
    let listener = |flag: &Option<String>,
                    flag_name: &str,
                    address: &Option<String>,
                    address_key: &str,
                    port: Option<i32>,
                    port_key: &str,
                    default: Option<u16>|
     -> Result<Option<SocketAddr>, ConfigError> {
        if let Some(a) = flag {
            return parse_addr(flag_name, a).map(Some);
        }
        let port = match port {
            Some(-1) => return Ok(None),
            Some(p) => u16::try_from(p).map_err(|_| {
                ConfigError::new(
                    port_key,
                    format!("{p} is not a port (0-65535, or -1 for off)"),
                )
            })?,
            None => match default {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let ip =
            parse_ip(address_key, address.as_deref())?.unwrap_or(client_ip.unwrap_or(LOCALHOST));
        Ok(Some(SocketAddr::new(ip, port)))
    };
    let http_addr = listener(
        &flags.http_addr,
        "http-addr",
        &file.addresses.http,
        "addresses.http",
        file.ports.http,
        "ports.http",
        Some(DEFAULT_HTTP_PORT),
    )?;
    let https_addr = listener(
        &flags.https_addr,
        "https-addr",
        &file.addresses.https,
        "addresses.https",
        file.ports.https,
        "ports.https",
        None,
    )?;
    let dns_tls_addr = listener(
        &flags.dns_tls_addr,
        "dns-tls-addr",
        &file.addresses.dns,
        "addresses.dns",
        file.ports.dns_tls,
        "ports.dns_tls",
        None,
    )?;
    let tls = tls::resolve(
        &file.tls,
        &tls::LegacyTls {
            side: tls::FileTlsSide {
                ca_file: file.ca_file.take(),
                ca_path: file.ca_path.take(),
                cert_file: file.cert_file.take(),
                key_file: file.key_file.take(),
                verify_incoming: file.verify_incoming,
                verify_outgoing: file.verify_outgoing,
                tls_min_version: file.tls_min_version.take(),
                verify_server_hostname: file.verify_server_hostname,
            },
            verify_incoming_rpc: file.verify_incoming_rpc,
            verify_incoming_https: file.verify_incoming_https,
        },
    )?;
    if https_addr.is_some() && !tls.https.has_cert() {
        return Err(ConfigError::new(
            "ports.https",
            "the HTTPS API needs tls.defaults (or tls.https) cert_file and key_file",
        ));
    }
    if dns_tls_addr.is_some() && !(tls.https.has_cert() || tls.rpc.has_cert()) {
        return Err(ConfigError::new(
            "ports.dns_tls",
            "DNS over TLS needs tls.defaults cert_file and key_file",
        ));
    }
    let dns_addr = match &flags.dns_addr {
        Some(a) => parse_addr("dns-addr", a)?,
        None => SocketAddr::new(
            parse_ip("addresses.dns", file.addresses.dns.as_deref())?
                .unwrap_or(client_ip.unwrap_or(LOCALHOST)),
            file.ports.dns.unwrap_or(DEFAULT_DNS_PORT),
        ),
    };
    let (rpc_addr, rpc_given) = match &flags.rpc_addr {
        Some(a) => (parse_addr("rpc-addr", a)?, true),
        None => (
            SocketAddr::new(
                bind_ip.unwrap_or(LOCALHOST),
                file.ports.server.unwrap_or(DEFAULT_SERVER_PORT),
            ),
            false,
        ),
    };

    let node_name = flags
        .node
        .clone()
        .or(file.node_name)
        .unwrap_or_else(default_node_name);
    if node_name.is_empty() {
        return Err(ConfigError::new("node_name", "must not be empty"));
    }
    let datacenter = flags
        .datacenter
        .clone()
        .or(file.datacenter)
        .unwrap_or_else(|| "dc1".into());
    if datacenter.is_empty()
        || !datacenter
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::new(
            "datacenter",
            format!("{datacenter:?} must be letters, digits, '-' or '_'"),
        ));
    }
    let domain = normalize_domain(
        &flags
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| "consul.".into()),
    )?;
    let log_level = flags
        .log_level
        .clone()
        .or(file.log_level)
        .unwrap_or_else(|| "info".into());
    if !["trace", "debug", "info", "warn", "error"]
        .contains(&log_level.to_ascii_lowercase().as_str())
    {
        return Err(ConfigError::new(
            "log_level",
            format!("{log_level:?} is not one of trace, debug, info, warn, error"),
        ));
    }

    let d = file.dns_config;
    // Every default is written once, in the `Default` impls; resolution only overrides.
    let dns_defaults = DnsConfig::default();
    let mut ttl_map = BTreeMap::new();
    for (name, value) in d.service_ttl.unwrap_or_default() {
        ttl_map.insert(
            name.clone(),
            duration(&format!("dns_config.service_ttl.{name}"), &value)?,
        );
    }
    let node_ttl = match d.node_ttl {
        Some(v) => duration("dns_config.node_ttl", &v)?,
        None => dns_defaults.node_ttl,
    };
    let udp_answer_limit = match d.udp_answer_limit {
        None => None,
        Some(n) if n > 0 => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::new(
                "dns_config.udp_answer_limit",
                format!("must be greater than 0, got {n}"),
            ));
        }
    };

    let mode = if flags.dev {
        Mode::Dev
    } else if flags.server || file.server == Some(true) {
        Mode::Server
    } else {
        Mode::Client
    };
    let bootstrap_expect = flags
        .bootstrap_expect
        .or(file.bootstrap_expect)
        .unwrap_or(0);
    if mode == Mode::Dev && bootstrap_expect > 0 {
        // As Consul: "Bootstrap cannot be provided while in dev mode".
        return Err(ConfigError::new(
            "bootstrap_expect",
            "cannot be given with --dev (a dev agent is a one-node cluster that elects itself)",
        ));
    }
    // A dev agent advertises (as leader, and as the `consul` service's port) only an RPC
    // address it listens on: the one given, else an ephemeral loopback port it binds, so
    // several dev agents run side by side.
    let (rpc_addr, rpc_listen) = match (mode, rpc_given, file.ports.server) {
        (Mode::Dev, false, None) => (SocketAddr::new(rpc_addr.ip(), 0), true),
        (Mode::Dev, _, _) => (rpc_addr, true),
        _ => (rpc_addr, rpc_given),
    };
    let mut join = flags.join.clone();
    if join.is_empty() {
        join = file.retry_join.unwrap_or_default();
        join.extend(file.start_join.unwrap_or_default());
    }
    for addr in &join {
        if addr.trim().is_empty() {
            return Err(ConfigError::new(
                "retry_join",
                "an address must not be empty",
            ));
        }
    }
    let data_dir = flags.data_dir.clone().or(file.data_dir);
    match mode {
        Mode::Server => {
            if data_dir.is_none() {
                return Err(ConfigError::new("data_dir", "a server needs --data-dir"));
            }
            if bootstrap_expect == 0 && join.is_empty() {
                return Err(ConfigError::new(
                    "bootstrap_expect",
                    "a server needs --bootstrap-expect N (to form a cluster) or --retry-join ADDR (to join one)",
                ));
            }
        }
        Mode::Client => {
            if data_dir.is_none() {
                return Err(ConfigError::new(
                    "data_dir",
                    "a client agent needs --data-dir (or run --dev for a one-node server, or --server)",
                ));
            }
            if bootstrap_expect > 0 {
                return Err(ConfigError::new(
                    "bootstrap_expect",
                    "only servers take part in bootstrapping (add --server)",
                ));
            }
        }
        Mode::Dev => {}
    }
    let gossip = gossip_settings(mode, flags, &file_gossip, bind_ip)?;
    let leave_on_terminate = file_gossip
        .leave_on_terminate
        .unwrap_or(mode == Mode::Client);
    let ae_interval = match &file_gossip.ae_interval {
        Some(v) => positive("ae_interval", v)?,
        None => Duration::from_secs(60),
    };
    let check_update_interval = match &file_gossip.check_update_interval {
        Some(v) => duration("check_update_interval", v)?,
        None => Duration::from_secs(5 * 60),
    };
    let multiplier = file.performance.raft_multiplier.unwrap_or(1);
    if !(1..=10).contains(&multiplier) {
        return Err(ConfigError::new(
            "performance.raft_multiplier",
            format!("must be between 1 and 10, got {multiplier}"),
        ));
    }
    let mut raft = Timing::with_multiplier(multiplier);
    if let Some(n) = file.raft_snapshot_threshold {
        if n == 0 {
            return Err(ConfigError::new(
                "raft_snapshot_threshold",
                "must be greater than 0",
            ));
        }
        raft.snapshot_threshold = n;
    }
    if let Some(n) = file.raft_trailing_logs {
        raft.trailing_logs = n;
    }
    if let Some(v) = &file.raft_snapshot_interval {
        raft.snapshot_interval = duration("raft_snapshot_interval", v)?;
        if raft.snapshot_interval.is_zero() {
            return Err(ConfigError::new(
                "raft_snapshot_interval",
                "must be greater than 0",
            ));
        }
    }
    let autopilot_defaults = Autopilot::default();
    let autopilot = Autopilot {
        cleanup_dead_servers: file
            .autopilot
            .cleanup_dead_servers
            .unwrap_or(autopilot_defaults.cleanup_dead_servers),
        dead_server_threshold: match file.autopilot.dead_server_threshold {
            Some(v) => duration("autopilot.dead_server_threshold", &v)?,
            None => autopilot_defaults.dead_server_threshold,
        },
    };

    let alt_domain = match flags.alt_domain.clone().or(file.alt_domain) {
        Some(d) => {
            let d = normalize_domain(&d).map_err(|e| ConfigError::new("alt_domain", e.message))?;
            if d == domain {
                return Err(ConfigError::new("alt_domain", "must differ from domain"));
            }
            Some(d)
        }
        None => None,
    };
    let mut recursors = Vec::new();
    let raw_recursors = if flags.recursors.is_empty() {
        file.recursors.unwrap_or_default()
    } else {
        flags.recursors.clone()
    };
    for r in raw_recursors {
        recursors.push(parse_recursor(&r)?);
    }
    let recursor_random = match d.recursor_strategy.as_deref() {
        None | Some("sequential") => false,
        Some("random") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "dns_config.recursor_strategy",
                format!("{other:?} is not sequential or random"),
            ));
        }
    };
    let recursor_timeout = match d.recursor_timeout {
        Some(v) => duration("dns_config.recursor_timeout", &v)?,
        None => dns_defaults.recursor_timeout,
    };
    let max_queue_delay = match d.max_queue_delay {
        Some(v) => duration("dns_config.max_queue_delay", &v)?,
        None => dns_defaults.max_queue_delay,
    };
    let view_idle = match d.view_idle {
        Some(v) => match duration("dns_config.view_idle", &v)? {
            Duration::ZERO => {
                return Err(ConfigError::new(
                    "dns_config.view_idle",
                    "must be greater than 0",
                ));
            }
            idle => idle,
        },
        None => dns_defaults.view_idle,
    };
    let soa_defaults = dns_defaults.soa;
    let soa = d.soa.unwrap_or_default();
    let log = LogConfig {
        json: flags.log_json || file.log_json.unwrap_or(false),
        file: flags.log_file.clone().or(file.log_file).map(|p| {
            let mut p = if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') {
                p.join("beacon.log")
            } else {
                p
            };
            if p.extension().is_none() {
                p.set_extension("log");
            }
            p
        }),
        rotate_bytes: flags
            .log_rotate_bytes
            .or(file.log_rotate_bytes)
            .unwrap_or(0),
        // Zero means the default, as in Consul.
        rotate_duration: match flags
            .log_rotate_duration
            .clone()
            .or(file.log_rotate_duration)
        {
            Some(v) => Some(duration("log_rotate_duration", &v)?),
            None => None,
        }
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(24 * 3600)),
        rotate_max_files: match flags.log_rotate_max_files.or(file.log_rotate_max_files) {
            Some(n) if n < -1 => {
                return Err(ConfigError::new(
                    "log_rotate_max_files",
                    format!("{n} is not a count of files (0 keeps all, -1 none)"),
                ));
            }
            Some(n) => n,
            None => 0,
        },
    };
    let definitions = |one: Option<serde_json::Value>, many: Option<Vec<serde_json::Value>>| {
        let one = match one {
            Some(serde_json::Value::Array(many)) => many,
            Some(one) => vec![one],
            None => Vec::new(),
        };
        one.into_iter()
            .chain(many.unwrap_or_default())
            .map(|value| Definition { file: None, value })
            .collect::<Vec<_>>()
    };
    let services = definitions(file.service, file.services);
    let checks = definitions(file.check, file.checks);
    let ui = mode == Mode::Dev || flags.ui || file.ui_config.enabled.or(file.ui).unwrap_or(false);
    let mut zone_files = Vec::new();
    for z in file.zone_files {
        let origin = normalize_domain(&z.origin)
            .map_err(|e| ConfigError::new("zone_files.origin", e.message))?;
        zone_files.push(ZoneFile {
            origin,
            path: z.path,
        });
    }

    Ok(Config {
        services,
        checks,
        ui,
        warnings: Vec::new(),
        mode,
        bootstrap_expect,
        join,
        autopilot,
        gossip,
        leave_on_terminate,
        ae_interval,
        check_update_interval,
        node_name,
        datacenter,
        domain,
        data_dir,
        http_addr,
        https_addr,
        dns_addr,
        dns_tls_addr,
        tls,
        rpc_addr,
        rpc_listen,
        log_level,
        log,
        dns: DnsConfig {
            service_ttl: ServiceTtl::from_map(ttl_map),
            node_ttl,
            udp_answer_limit,
            a_record_limit: d
                .a_record_limit
                .map_or(dns_defaults.a_record_limit, |n| n as usize),
            only_passing: d.only_passing.unwrap_or(dns_defaults.only_passing),
            enable_additional_node_meta_txt: d
                .enable_additional_node_meta_txt
                .unwrap_or(dns_defaults.enable_additional_node_meta_txt),
            soa: SoaConfig {
                refresh: soa.refresh.unwrap_or(soa_defaults.refresh),
                retry: soa.retry.unwrap_or(soa_defaults.retry),
                expire: soa.expire.unwrap_or(soa_defaults.expire),
                min_ttl: soa.min_ttl.unwrap_or(soa_defaults.min_ttl),
            },
            alt_domain,
            recursors,
            recursor_timeout,
            recursor_random,
            zone_files,
            udp_workers: d.udp_workers.map_or(dns_defaults.udp_workers, usize::from),
            max_queue_delay,
            view_idle,
        },
        raft,
    })
}

/// The gossip-related keys, taken out of the file before the rest is resolved.
struct GossipFile {
    serf_lan_port: Option<u16>,
    advertise_addr: Option<String>,
    encrypt: Option<String>,
    retry_interval: Option<String>,
    leave_on_terminate: Option<bool>,
    reconnect_timeout: Option<String>,
    ae_interval: Option<String>,
    check_update_interval: Option<String>,
    lan: FileGossipLan,
}

impl GossipFile {
    fn take(file: &mut FileConfig) -> GossipFile {
        GossipFile {
            serf_lan_port: file.ports.serf_lan,
            advertise_addr: file.advertise_addr.take(),
            encrypt: file.encrypt.take(),
            retry_interval: file.retry_interval.take(),
            leave_on_terminate: file.leave_on_terminate,
            reconnect_timeout: file.reconnect_timeout.take(),
            ae_interval: file.ae_interval.take(),
            check_update_interval: file.check_update_interval.take(),
            lan: std::mem::take(&mut file.gossip_lan),
        }
    }
}

/// The gossip pool's settings: none for a dev agent unless `--serf-lan-addr` is given (so dev
/// agents run side by side); every other mode gossips.
fn gossip_settings(
    mode: Mode,
    flags: &Flags,
    file: &GossipFile,
    bind_ip: Option<IpAddr>,
) -> Result<Option<Gossip>, ConfigError> {
    // A dev agent without `--serf-lan-addr` does not gossip, but its gossip settings are
    // still checked (as if bound to an ephemeral loopback port), so a bad value is an error.
    let unused = mode == Mode::Dev && flags.serf_lan_addr.is_none();
    let bind = match &flags.serf_lan_addr {
        Some(a) => parse_addr("serf-lan-addr", a)?,
        None if unused => SocketAddr::new(LOCALHOST, 0),
        None => SocketAddr::new(
            bind_ip.unwrap_or(LOCALHOST),
            file.serf_lan_port.unwrap_or(DEFAULT_SERF_LAN_PORT),
        ),
    };
    let mut gossip = Gossip::lan(bind);
    let advertise = match flags
        .advertise
        .as_deref()
        .or(file.advertise_addr.as_deref())
    {
        Some(v) => {
            let key = if flags.advertise.is_some() {
                "advertise"
            } else {
                "advertise_addr"
            };
            parse_ip(key, Some(v))?.map(|ip| (key, ip))
        }
        None => None,
    };
    match advertise {
        Some((key, ip)) if ip.is_unspecified() => {
            return Err(ConfigError::new(
                key,
                format!("{ip} cannot be advertised: other agents need an address they can reach"),
            ));
        }
        Some((_, ip)) => gossip.advertise = SocketAddr::new(ip, bind.port()),
        None if bind.ip().is_unspecified() => {
            return Err(ConfigError::new(
                "advertise_addr",
                format!(
                    "gossip binds {bind}, which cannot be advertised: set advertise_addr (--advertise) to an address other agents can reach"
                ),
            ));
        }
        None => {}
    }
    let lan = &file.lan;
    if let Some(v) = &lan.probe_interval {
        gossip.probe_interval = positive("gossip_lan.probe_interval", v)?;
    }
    if let Some(v) = &lan.probe_timeout {
        gossip.probe_timeout = positive("gossip_lan.probe_timeout", v)?;
    }
    if gossip.probe_timeout >= gossip.probe_interval {
        return Err(ConfigError::new(
            "gossip_lan.probe_timeout",
            format!(
                "must be shorter than gossip_lan.probe_interval ({:?}), got {:?}",
                gossip.probe_interval, gossip.probe_timeout
            ),
        ));
    }
    if let Some(v) = &lan.gossip_interval {
        gossip.gossip_interval = positive("gossip_lan.gossip_interval", v)?;
    }
    for (key, value, field) in [
        (
            "gossip_lan.suspicion_mult",
            lan.suspicion_mult,
            &mut gossip.suspicion_mult,
        ),
        (
            "gossip_lan.retransmit_mult",
            lan.retransmit_mult,
            &mut gossip.retransmit_mult,
        ),
    ] {
        match value {
            Some(0) => return Err(ConfigError::new(key, "must be at least 1")),
            Some(n) => *field = n,
            None => {}
        }
    }
    match lan.gossip_nodes {
        Some(0) => {
            return Err(ConfigError::new(
                "gossip_lan.gossip_nodes",
                "must be at least 1",
            ));
        }
        Some(n) => gossip.gossip_nodes = n,
        None => {}
    }
    if let Some(v) = &file.retry_interval {
        gossip.retry_interval = positive("retry_interval", v)?;
    }
    if let Some(v) = &file.reconnect_timeout {
        gossip.reconnect_timeout = duration("reconnect_timeout", v)?;
        if gossip.reconnect_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new("reconnect_timeout", "must be at least 1s"));
        }
    }
    gossip.encrypt = flags.encrypt.clone().or(file.encrypt.clone());
    if let Some(key) = &gossip.encrypt {
        use base64::Engine;
        let key_name = "encrypt";
        match base64::engine::general_purpose::STANDARD.decode(key.trim()) {
            Ok(bytes) if matches!(bytes.len(), 16 | 24 | 32) => {}
            Ok(bytes) => {
                return Err(ConfigError::new(
                    key_name,
                    format!(
                        "the key is {} bytes; it must be 16, 24 or 32 (AES-128, -192 or -256)",
                        bytes.len()
                    ),
                ));
            }
            Err(e) => return Err(ConfigError::new(key_name, format!("not base64: {e}"))),
        }
    }
    Ok((!unused).then_some(gossip))
}

/// A duration that must be greater than zero.
fn positive(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, value)?;
    if d.is_zero() {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(d)
}

/// Long enough that a scheduling hiccup never costs a query, short enough that answered
/// queries stay fast under overload.
const DEFAULT_MAX_QUEUE_DELAY: Duration = Duration::from_millis(5);

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn parse_ip(key: &str, value: Option<&str>) -> Result<Option<IpAddr>, ConfigError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| ConfigError::new(key, format!("{v:?} is not an IP address")))
        })
        .transpose()
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(key, format!("{value:?} is not an ip:port address")))
}

/// A recursor: `ip` or `ip:port` (IPv6 as `[ip]:port`), port 53 by default.
fn parse_recursor(value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::new("recursors", format!("{value:?} is not an ip or ip:port")))
}

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|e| ConfigError::new(key, e.to_string()))
}

fn normalize_domain(raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !trimmed.is_empty()
        && trimmed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(ConfigError::new(
            "domain",
            format!("{raw:?} is not a DNS domain"),
        ));
    }
    Ok(format!("{trimmed}."))
}

fn default_node_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "beacon".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            dev: true,
            node: Some("n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_consul() {
        let c = resolve(&flags(), None).unwrap();
        assert_eq!(c.http_addr, Some("127.0.0.1:8500".parse().unwrap()));
        assert_eq!(c.dns_addr, "127.0.0.1:8600".parse().unwrap());
        // A dev agent binds its own RPC port rather than advertise one nobody listens on.
        assert_eq!(c.rpc_addr, "127.0.0.1:0".parse().unwrap());
        assert!(c.rpc_listen);
        assert_eq!(c.datacenter, "dc1");
        assert_eq!(c.domain, "consul.");
        assert_eq!(c.dns.udp_answer_limit, None);
        assert!(!c.dns.only_passing);
    }

    #[test]
    fn file_uses_consul_keys_and_flags_win() {
        let text = r#"
            datacenter = "east"
            domain = "Beacon"
            [ports]
            http = 9500
            [dns_config]
            service_ttl = { "*" = "5s", "web*" = "10s", "web-admin" = "1m" }
            node_ttl = "30s"
            udp_answer_limit = 3
            only_passing = true
        "#;
        let mut f = flags();
        f.datacenter = Some("west".into());
        let c = resolve(&f, Some(text)).unwrap();
        assert_eq!(c.datacenter, "west");
        assert_eq!(c.domain, "beacon.");
        assert_eq!(c.http_addr.map(|a| a.port()), Some(9500));
        assert_eq!(c.dns.node_ttl, Duration::from_secs(30));
        assert_eq!(c.dns.udp_answer_limit, Some(3));
        assert!(c.dns.only_passing);
        assert_eq!(c.dns.service_ttl.for_service("db"), Duration::from_secs(5));
        assert_eq!(
            c.dns.service_ttl.for_service("web-api"),
            Duration::from_secs(10)
        );
        assert_eq!(
            c.dns.service_ttl.for_service("web-admin"),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn tls_blocks_override_defaults_which_override_the_old_top_level_keys() {
        let text = r#"
            ca_file = "old-ca.pem"
            cert_file = "old.pem"
            key_file = "old-key.pem"
            verify_incoming_https = true
            verify_server_hostname = true
            [ports]
            http = -1
            https = 8501
            [tls.defaults]
            cert_file = "agent.pem"
            key_file = "agent-key.pem"
            verify_incoming = false
            [tls.internal_rpc]
            verify_incoming = true
            tls_min_version = "TLSv1_3"
        "#;
        let c = resolve(&flags(), Some(text)).unwrap();
        assert_eq!(c.http_addr, None, "ports.http = -1 turns HTTP off");
        assert_eq!(c.https_addr.map(|a| a.port()), Some(8501));
        let (https, rpc) = (&c.tls.https, &c.tls.rpc);
        assert_eq!(https.ca_file, Some("old-ca.pem".into()));
        assert_eq!(https.cert_file, Some("agent.pem".into()));
        // The old verify_incoming_https fills tls.https, above tls.defaults (as Consul).
        assert!(https.verify_incoming);
        assert!(rpc.verify_incoming);
        assert_eq!(rpc.min_version, TlsVersion::Tls13);
        assert_eq!(https.min_version, TlsVersion::Tls12);
        assert!(c.tls.verify_server_hostname);
        assert!(
            rpc.verify_outgoing,
            "verify_server_hostname implies verify_outgoing"
        );
        assert!(!https.verify_outgoing);

        for (bad, key) in [
            ("tls_min_version = \"tls10\"", "tls_min_version"),
            (
                "[tls.defaults]\ntls_min_version = \"TLSv1_1\"",
                "tls.defaults.tls_min_version",
            ),
            (
                "[tls.https]\nverify_server_hostname = true",
                "tls.https.verify_server_hostname",
            ),
            (
                "[tls.defaults]\nverify_outgoing = true",
                "tls.internal_rpc.verify_outgoing",
            ),
            ("[ports]\nhttps = 8501", "ports.https"),
            ("[ports]\nhttp = -2", "ports.http"),
        ] {
            let err = resolve(&flags(), Some(bad)).unwrap_err();
            assert_eq!(err.key, key, "{bad}: {err}");
        }
    }

    #[test]
    fn consul_agent_flags_stand_between_full_addresses_and_the_file() {
        let text = "client_addr = \"127.0.0.2\"\n[ports]\nhttp = 9000\ndns = 9600\n";
        let mut f = flags();
        f.client = Some("127.0.0.3".into());
        f.bind = Some("127.0.0.4".into());
        f.http_port = Some(9500);
        f.server_port = Some(9300);
        f.dns_addr = Some("127.0.0.9:53".into());
        f.dev = false;
        f.server = true;
        f.bootstrap_expect = Some(3);
        f.data_dir = Some("/tmp/x".into());
        let c = resolve(&f, Some(text)).unwrap();
        assert_eq!(c.http_addr, Some("127.0.0.3:9500".parse().unwrap()));
        assert_eq!(
            c.dns_addr,
            "127.0.0.9:53".parse().unwrap(),
            "a full address wins"
        );
        assert_eq!(c.rpc_addr, "127.0.0.4:9300".parse().unwrap());
        f.http_port = Some(-1);
        assert_eq!(resolve(&f, Some(text)).unwrap().http_addr, None);
        f.client = Some("nope".into());
        assert_eq!(resolve(&f, Some(text)).unwrap_err().key, "client");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = resolve(&flags(), Some("[dns_config]\nbogus_key = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = resolve(&flags(), Some("[dns_config]\nview_idle = \"0s\"\n")).unwrap_err();
        assert_eq!(err.key, "dns_config.view_idle");
        let c = resolve(&flags(), Some("[dns_config]\nview_idle = \"90s\"\n")).unwrap();
        assert_eq!(c.dns.view_idle, Duration::from_secs(90));
        let err = resolve(&flags(), Some("[dns_config]\nnode_ttl = \"soon\"\n")).unwrap_err();
        assert_eq!(err.key, "dns_config.node_ttl");
        let err = resolve(&flags(), Some("[dns_config]\nudp_answer_limit = 0\n")).unwrap_err();
        assert_eq!(err.key, "dns_config.udp_answer_limit");
        let mut f = flags();
        f.http_addr = Some("localhost".into());
        assert_eq!(resolve(&f, None).unwrap_err().key, "http-addr");
    }
}
