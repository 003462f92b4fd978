//! `beacon catalog datacenters|nodes|services`, with the flags and output of Consul's
//! `command/catalog/*`.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{HttpArgs, ServerArgs};

#[derive(Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// List the known datacenters.
    Datacenters,
    /// List the nodes (Node, ID, Address, DC).
    Nodes {
        /// Only the nodes that provide this service.
        #[arg(long)]
        service: Option<String>,
        /// Also the tagged addresses and node meta.
        #[arg(long)]
        detailed: bool,
    },
    /// List the services (with -node, those on one node).
    Services {
        /// Only the services of this node.
        #[arg(long)]
        node: Option<String>,
        /// Also each service's tags.
        #[arg(long)]
        tags: bool,
    },
}

pub(super) async fn get(http: &HttpArgs, path: &str) -> Result<Value, String> {
    read(http, &ServerArgs::default(), path).await
}

/// A read with `-datacenter` and `-stale` as query parameters.
async fn read(http: &HttpArgs, server: &ServerArgs, path: &str) -> Result<Value, String> {
    let path = format!("{path}{}", super::query_string(&server.read_query()));
    let body = super::ops::request(http, reqwest::Method::GET, &path, Vec::new()).await?;
    serde_json::from_slice(&body).map_err(|e| format!("Error decoding the agent's answer: {e}"))
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `k1=v1, k2=v2` in key order, as Consul prints maps.
fn pairs(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub async fn catalog(args: CatalogArgs) -> Result<(), String> {
    let (http, server) = (&args.http, &args.server);
    let get = |path: String| async move { read(http, server, &path).await };
    match args.command {
        CatalogCommand::Datacenters => {
            let dcs = get("/v1/catalog/datacenters".into()).await?;
            for dc in dcs.as_array().into_iter().flatten() {
                println!("{}", text(dc));
            }
        }
        CatalogCommand::Nodes { service, detailed } => {
            let nodes = match &service {
                // A service's instances carry their node's fields.
                Some(name) => get(format!("/v1/catalog/service/{name}")).await?,
                None => get("/v1/catalog/nodes".into()).await?,
            };
            let mut seen = std::collections::BTreeSet::new();
            let mut rows = vec![vec![
                "Node".to_string(),
                "ID".into(),
                "Address".into(),
                "DC".into(),
            ]];
            if detailed {
                rows[0].extend(["TaggedAddresses".into(), "Meta".into()]);
            }
            for n in nodes.as_array().into_iter().flatten() {
                let name = text(&n["Node"]);
                if !seen.insert(name.clone()) {
                    continue;
                }
                let id = text(&n["ID"]);
                // Consul shows the first 8 characters of the ID unless -detailed.
                let id = if detailed {
                    id
                } else {
                    id.chars().take(8).collect()
                };
                let mut row = vec![name, id, text(&n["Address"]), text(&n["Datacenter"])];
                if detailed {
                    row.push(pairs(&n["TaggedAddresses"]));
                    let meta = if n.get("NodeMeta").is_some() {
                        &n["NodeMeta"]
                    } else {
                        &n["Meta"]
                    };
                    row.push(pairs(meta));
                }
                rows.push(row);
            }
            if rows.len() == 1 {
                return Err("No nodes match the given query.".into());
            }
            println!("{}", super::table(rows));
        }
        CatalogCommand::Services { node, tags } => {
            let services: BTreeMap<String, Vec<String>> = match &node {
                Some(node) => {
                    let listed = get(format!("/v1/catalog/node-services/{node}")).await?;
                    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for s in listed["Services"].as_array().into_iter().flatten() {
                        let entry = by_name.entry(text(&s["Service"])).or_default();
                        for t in s["Tags"].as_array().into_iter().flatten() {
                            entry.push(text(t));
                        }
                    }
                    by_name
                }
                None => serde_json::from_value(get("/v1/catalog/services".into()).await?)
                    .map_err(|e| format!("Error decoding the agent's answer: {e}"))?,
            };
            if services.is_empty() {
                return Err("No services match the given query.".into());
            }
            if tags {
                let rows: Vec<Vec<String>> = services
                    .into_iter()
                    .map(|(name, mut tags)| {
                        tags.sort();
                        tags.dedup();
                        vec![name, tags.join(",")]
                    })
                    .collect();
                println!("{}", super::table(rows));
            } else {
                for name in services.keys() {
                    println!("{name}");
                }
            }
        }
    }
    Ok(())
}
