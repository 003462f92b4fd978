//! Cluster and operator subcommands: `leave`, `join`, `members`, `operator raft …`,
//! `snapshot save|restore`.

use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct AddrArgs {
    /// The agent's HTTP address (else BEACON_HTTP_ADDR, CONSUL_HTTP_ADDR, 127.0.0.1:8500).
    #[arg(long, global = true, value_name = "ADDR")]
    http_addr: Option<String>,
}

#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    addr: AddrArgs,
    /// The RPC address of a server in the cluster to join.
    address: String,
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
    Save { file: String },
    /// Replace the catalog with the snapshot in FILE.
    Restore { file: String },
}

async fn request(
    addr: &AddrArgs,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let url = format!("{}{path}", super::base_url(addr.http_addr.as_deref()));
    let response = reqwest::Client::new()
        .request(method, &url)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("Error connecting to Beacon agent: {e}"))?;
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

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn members(args: AddrArgs) -> Result<(), String> {
    let body = request(&args, reqwest::Method::GET, "/v1/agent/members", Vec::new()).await?;
    let members: Vec<Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut rows = vec![
        ["Node", "Address", "Status", "Type", "DC"]
            .map(String::from)
            .to_vec(),
    ];
    for m in members {
        rows.push(vec![
            m["Name"].as_str().unwrap_or("").to_string(),
            format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
            if m["Status"] == 1 {
                "alive".into()
            } else {
                "failed".into()
            },
            "server".into(),
            m["Tags"]["dc"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{}", table(rows));
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
            println!("{}", table(rows));
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
        SnapshotCommand::Save { file } => {
            let body =
                request(&args.addr, reqwest::Method::GET, "/v1/snapshot", Vec::new()).await?;
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
