//! Cluster and operator subcommands: `leave`, `join`, `members`, `force-leave`, `keyring`,
//! `operator raft …`, `snapshot save|restore|inspect`.

use clap::{Args, Subcommand};
use serde_json::Value;

pub use super::HttpArgs as AddrArgs;

#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// The gossip address (host or host:port, port 8301 by default) of any agent of the pool.
    address: String,
}

#[derive(Args)]
pub struct ForceLeaveArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// Also forget the member at once instead of listing it as left for 24 h.
    #[arg(long)]
    prune: bool,
    /// The failed member's node name.
    node: String,
}

#[derive(Args)]
pub struct KeyringArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// List the keys installed in the pool and how many members hold each.
    #[arg(long)]
    list: bool,
    /// Install a new key on every member.
    #[arg(long, value_name = "KEY")]
    install: Option<String>,
    /// Make an installed key the primary (encrypting) key everywhere.
    #[arg(long = "use", value_name = "KEY")]
    use_key: Option<String>,
    /// Remove a key that is not the primary from every member.
    #[arg(long, value_name = "KEY")]
    remove: Option<String>,
}

#[derive(Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    addr: AddrArgs,
    #[command(subcommand)]
    command: OperatorCommand,
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Raft subcommands.
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
}

#[derive(Subcommand)]
enum RaftCommand {
    /// List the Raft peers.
    ListPeers,
    /// Remove a server from the Raft configuration.
    RemovePeer {
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    addr: AddrArgs,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Write the catalog to FILE.
    Save {
        #[command(flatten)]
        server: super::ServerArgs,
        file: String,
    },
    /// Replace the catalog with the snapshot in FILE.
    Restore { file: String },
    /// Print what a snapshot file holds: its ID, size, index, term and format version, and
    /// how many records of each type (reads the file only).
    Inspect {
        /// Output format: pretty or json.
        #[arg(long, default_value = "pretty")]
        format: String,
        file: String,
    },
}

pub(super) async fn request(
    addr: &AddrArgs,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let (base, client) = addr.connect()?;
    let url = format!("{base}{path}");
    let response = client
        .request(method, &url)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "Error connecting to Beacon agent: {}",
                beacon::report::chain(&e)
            )
        })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
    if !status.is_success() {
        return Err(format!(
            "Unexpected response code: {} ({})",
            status.as_u16(),
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    Ok(bytes)
}

pub async fn leave(args: AddrArgs) -> Result<(), String> {
    request(&args, reqwest::Method::PUT, "/v1/agent/leave", Vec::new()).await?;
    println!("Graceful leave complete");
    Ok(())
}

pub async fn join(args: JoinArgs) -> Result<(), String> {
    request(
        &args.addr,
        reqwest::Method::PUT,
        &format!("/v1/agent/join/{}", args.address),
        Vec::new(),
    )
    .await?;
    println!("Successfully joined cluster by contacting 1 nodes.");
    Ok(())
}

pub async fn force_leave(args: ForceLeaveArgs) -> Result<(), String> {
    let query = if args.prune { "?prune=1" } else { "" };
    request(
        &args.addr,
        reqwest::Method::PUT,
        &format!("/v1/agent/force-leave/{}{query}", args.node),
        Vec::new(),
    )
    .await?;
    Ok(())
}

pub async fn keyring(args: KeyringArgs) -> Result<(), String> {
    let given = [
        args.list,
        args.install.is_some(),
        args.use_key.is_some(),
        args.remove.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("Exactly one of -list, -install, -use, or -remove must be provided".into());
    }
    let body =
        |key: &str| serde_json::to_vec(&serde_json::json!({ "Key": key })).unwrap_or_default();
    let (method, key, done) = match (&args.install, &args.use_key, &args.remove) {
        (Some(k), _, _) => (
            reqwest::Method::POST,
            k,
            "Installing new gossip encryption key...",
        ),
        (_, Some(k), _) => (
            reqwest::Method::PUT,
            k,
            "Changing primary gossip encryption key...",
        ),
        (_, _, Some(k)) => (
            reqwest::Method::DELETE,
            k,
            "Removing gossip encryption key...",
        ),
        _ => {
            let reply = request(
                &args.addr,
                reqwest::Method::GET,
                "/v1/operator/keyring",
                Vec::new(),
            )
            .await?;
            let pools: Vec<Value> = serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
            println!("==> Gathering installed encryption keys...");
            for pool in pools {
                let dc = pool["Datacenter"].as_str().unwrap_or("");
                let members = pool["NumNodes"].as_u64().unwrap_or(0);
                println!("\n{dc} (LAN):");
                if let Some(keys) = pool["Keys"].as_object() {
                    for (key, count) in keys {
                        println!("  {key} [{count}/{members}]");
                    }
                }
                if let Some(primary) = pool["PrimaryKeys"].as_object() {
                    println!("Primary keys:");
                    for (key, count) in primary {
                        println!("  {key} [{count}/{members}]");
                    }
                }
            }
            return Ok(());
        }
    };
    println!("==> {done}");
    request(&args.addr, method, "/v1/operator/keyring", body(key)).await?;
    Ok(())
}

pub async fn members(args: AddrArgs) -> Result<(), String> {
    let body = request(&args, reqwest::Method::GET, "/v1/agent/members", Vec::new()).await?;
    let members: Vec<Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut rows = vec![
        [
            "Node", "Address", "Status", "Type", "Build", "Protocol", "DC",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for m in members {
        let tags = &m["Tags"];
        rows.push(vec![
            m["Name"].as_str().unwrap_or("").to_string(),
            format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
            match m["Status"].as_u64() {
                Some(1) => "alive",
                Some(2) => "leaving",
                Some(3) => "left",
                Some(4) => "failed",
                _ => "none",
            }
            .into(),
            if tags["role"] == "node" {
                "client"
            } else {
                "server"
            }
            .into(),
            tags["build"]
                .as_str()
                .and_then(|b| b.split(':').next())
                .unwrap_or("")
                .to_string(),
            tags["vsn"].as_str().unwrap_or("2").to_string(),
            tags["dc"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{}", super::table(rows));
    Ok(())
}

pub async fn operator(args: OperatorArgs) -> Result<(), String> {
    match args.command {
        OperatorCommand::Raft {
            command: RaftCommand::ListPeers,
        } => {
            let body = request(
                &args.addr,
                reqwest::Method::GET,
                "/v1/operator/raft/configuration",
                Vec::new(),
            )
            .await?;
            let config: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let mut rows = vec![
                ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]
                    .map(String::from)
                    .to_vec(),
            ];
            for s in config["Servers"].as_array().cloned().unwrap_or_default() {
                rows.push(vec![
                    s["Node"].as_str().unwrap_or("").to_string(),
                    s["ID"].as_str().unwrap_or("").to_string(),
                    s["Address"].as_str().unwrap_or("").to_string(),
                    if s["Leader"] == true {
                        "leader".into()
                    } else {
                        "follower".into()
                    },
                    s["Voter"].to_string(),
                    "3".into(),
                ]);
            }
            println!("{}", super::table(rows));
            Ok(())
        }
        OperatorCommand::Raft {
            command: RaftCommand::RemovePeer { address, id },
        } => {
            let query = match (address, id) {
                (Some(a), _) => format!("address={a}"),
                (None, Some(i)) => format!("id={i}"),
                (None, None) => return Err("Error! Must specify -address or -id".into()),
            };
            request(
                &args.addr,
                reqwest::Method::DELETE,
                &format!("/v1/operator/raft/peer?{query}"),
                Vec::new(),
            )
            .await?;
            println!("Removed peer with {query}");
            Ok(())
        }
    }
}

pub async fn snapshot(args: SnapshotArgs) -> Result<(), String> {
    match args.command {
        SnapshotCommand::Save { server, file } => {
            let path = format!("/v1/snapshot{}", super::query_string(&server.read_query()));
            let body = request(&args.addr, reqwest::Method::GET, &path, Vec::new())
                .await
                .map_err(|e| format!("Error saving snapshot: {e}"))?;
            let index = snapshot_index(&body)
                .ok_or("Error verifying snapshot: the agent did not send a Beacon backup")?;
            std::fs::write(&file, &body).map_err(|e| format!("Error writing {file}: {e}"))?;
            println!("Saved and verified snapshot to index {index}");
            Ok(())
        }
        SnapshotCommand::Restore { file } => {
            let body = std::fs::read(&file).map_err(|e| format!("Error reading {file}: {e}"))?;
            request(&args.addr, reqwest::Method::PUT, "/v1/snapshot", body).await?;
            println!("Restored snapshot");
            Ok(())
        }
        SnapshotCommand::Inspect { format, file } => {
            if format != "pretty" && format != "json" {
                return Err(format!(
                    "Error outputting enhanced snapshot data: Unknown format: {format}"
                ));
            }
            let bytes =
                std::fs::read(&file).map_err(|e| format!("Error opening snapshot file: {e}"))?;
            let modified = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis());
            let info = inspect(&bytes, modified)
                .map_err(|e| format!("Error reading snapshot: {file}: {e}"))?;
            println!(
                "{}",
                if format == "json" {
                    info.json()
                } else {
                    info.pretty()
                }
            );
            Ok(())
        }
    }
}

/// What `snapshot inspect` shows of a backup.
#[derive(Debug)]
struct SnapshotInfo {
    /// Consul's `<term>-<index>-<unix ms>`; Beacon's backups record no term and no time, so
    /// the term is 0 and the time is the file's modification time.
    id: String,
    size: usize,
    index: u64,
    term: u64,
    version: u64,
    /// (type, count, bytes) by Consul's record type names, largest first.
    stats: Vec<(String, usize, usize)>,
}

/// Reads a backup written by `snapshot save` (or `GET /v1/snapshot`). Errors say why the bytes
/// are not one.
fn inspect(bytes: &[u8], modified_ms: u128) -> Result<SnapshotInfo, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(
            "a gzip archive (Consul's snapshot format?), not a Beacon snapshot; \
             Beacon's snapshots are its JSON backups"
                .into(),
        );
    }
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a Beacon snapshot (not JSON: {e})"))?;
    let (catalog, version) = match doc.get("Version") {
        // Earlier Beacons wrote the bare catalog, without a version.
        None => (&doc, 0),
        Some(v) => (
            &doc["Catalog"],
            v.as_u64()
                .ok_or("not a Beacon snapshot (its Version is not a number)")?,
        ),
    };
    let index = catalog["indexes"]["last"]
        .as_u64()
        .ok_or("not a Beacon snapshot (no catalog index)")?;
    let term = 0;
    let size_of = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len());
    let rows = |field: &str| catalog[field].as_array().cloned().unwrap_or_default();
    let mut stats: Vec<(String, usize, usize)> = Vec::new();
    let mut add = |name: &str, items: Vec<Value>| {
        if !items.is_empty() {
            let size = items.iter().map(size_of).sum();
            match stats.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => {
                    entry.1 += items.len();
                    entry.2 += size;
                }
                None => stats.push((name.to_string(), items.len(), size)),
            }
        }
    };
    // Consul's snapshot holds a node, each of its services and each of its checks as one
    // "Register" record.
    add("Register", rows("nodes"));
    add("Register", rows("services"));
    add("Register", rows("checks"));
    add("KVS", rows("kv"));
    add("Session", rows("sessions"));
    add("Tombstone", rows("kv_tombstones"));
    add("Index", rows("service_indexes"));
    stats.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    Ok(SnapshotInfo {
        id: format!("{term}-{index}-{modified_ms}"),
        size: bytes.len(),
        index,
        term,
        version,
        stats,
    })
}

/// Consul's `ByteSize`: one decimal, `.0` dropped, "0" for nothing.
fn byte_size(bytes: usize) -> String {
    const UNITS: [(usize, &str); 4] = [
        (1 << 40, "TB"),
        (1 << 30, "GB"),
        (1 << 20, "MB"),
        (1 << 10, "KB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    let (divisor, unit) = UNITS
        .iter()
        .find(|(size, _)| bytes >= *size)
        .copied()
        .unwrap_or((1, "B"));
    let text = format!("{:.1}", bytes as f64 / divisor as f64);
    format!("{}{unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// Go's `tabwriter` (min width 8, padding 6, spaces) over rows of tab-terminated cells: each
/// column as wide as its widest cell plus 6; the last piece of a row, not tab-terminated, is
/// not padded.
fn tab_block(rows: &[Vec<&str>]) -> Vec<String> {
    let columns = rows
        .iter()
        .map(|r| r.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = rows
                .iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0);
            (widest + 6).max(8)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 < row.len() {
                    line.push_str(&format!("{cell:<w$}", w = widths[c]));
                } else {
                    line.push_str(cell);
                }
            }
            line
        })
        .collect()
}

impl SnapshotInfo {
    /// Consul's pretty format: the metadata, then the records by type.
    fn pretty(&self) -> String {
        let (size, index, term, version) = (
            self.size.to_string(),
            self.index.to_string(),
            self.term.to_string(),
            self.version.to_string(),
        );
        let meta = tab_block(&[
            vec![" ID", &self.id],
            vec![" Size", &size],
            vec![" Index", &index],
            vec![" Term", &term],
            vec![" Version", &version],
        ]);
        let counts: Vec<(String, String, String)> = self
            .stats
            .iter()
            .map(|(name, count, bytes)| (format!(" {name}"), count.to_string(), byte_size(*bytes)))
            .collect();
        let total = byte_size(self.stats.iter().map(|s| s.2).sum());
        let mut rows: Vec<Vec<&str>> = vec![
            vec![" Type", "Count", "Size", ""],
            vec![" ----", "----", "----", ""],
        ];
        for (name, count, size) in &counts {
            rows.push(vec![name, count, size, ""]);
        }
        rows.push(vec![" ----", "----", "----", ""]);
        rows.push(vec![" Total", "", &total, ""]);
        let mut lines = meta;
        lines.push(String::new());
        lines.extend(tab_block(&rows));
        lines.join("\n")
    }

    /// Consul's `-format=json` (its `OutputFormat`, fields in its order, indented by 3).
    fn json(&self) -> String {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Meta<'a> {
            #[serde(rename = "ID")]
            id: &'a str,
            size: usize,
            index: u64,
            term: u64,
            version: u64,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Stat<'a> {
            name: &'a str,
            sum: usize,
            count: usize,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Output<'a> {
            meta: Meta<'a>,
            stats: Vec<Stat<'a>>,
            #[serde(rename = "StatsKV")]
            stats_kv: Option<Vec<Stat<'a>>>,
            total_size: usize,
            #[serde(rename = "TotalSizeKV")]
            total_size_kv: usize,
        }
        let output = Output {
            meta: Meta {
                id: &self.id,
                size: self.size,
                index: self.index,
                term: self.term,
                version: self.version,
            },
            stats: self
                .stats
                .iter()
                .map(|(name, count, sum)| Stat {
                    name,
                    sum: *sum,
                    count: *count,
                })
                .collect(),
            stats_kv: None,
            total_size: self.stats.iter().map(|s| s.2).sum(),
            total_size_kv: 0,
        };
        super::go_json(
            &serde_json::to_string(&output).unwrap_or_default(),
            Some("   "),
        )
    }
}

/// The index a backup was taken at: `Catalog.indexes.last` (the unversioned backups of earlier
/// Beacons: `indexes.last`). None when the body is not a backup.
fn snapshot_index(body: &[u8]) -> Option<u64> {
    let backup: Value = serde_json::from_slice(body).ok()?;
    backup["Catalog"]["indexes"]["last"]
        .as_u64()
        .or_else(|| backup["indexes"]["last"].as_u64())
}
