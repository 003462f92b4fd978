//! Cluster and operator subcommands: `leave`, `join`, `members`, `force-leave`, `keyring`,
//! `operator raft …`, `snapshot save|restore`.

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
