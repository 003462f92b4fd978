//! `beacon kv get|put|delete|export|import`, with `consul kv`'s flags and output.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Args)]
pub struct KvArgs {
    /// The agent's HTTP address (else BEACON_HTTP_ADDR, CONSUL_HTTP_ADDR, 127.0.0.1:8500).
    #[arg(long, global = true, value_name = "ADDR")]
    http_addr: Option<String>,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Read a key (or, with -recurse, every key under a prefix).
    Get {
        #[arg(long)]
        recurse: bool,
        #[arg(long)]
        keys: bool,
        #[arg(long, default_value = "/")]
        separator: String,
        #[arg(long)]
        detailed: bool,
        #[arg(long)]
        base64: bool,
        #[arg(default_value = "")]
        key: String,
    },
    /// Write a key. DATA is literal, @file, or - for stdin.
    Put {
        #[arg(long, default_value_t = 0)]
        flags: u64,
        #[arg(long)]
        cas: bool,
        #[arg(long = "modify-index", default_value_t = 0)]
        modify_index: u64,
        #[arg(long)]
        base64: bool,
        #[arg(long)]
        acquire: bool,
        #[arg(long)]
        release: bool,
        #[arg(long)]
        session: Option<String>,
        key: String,
        data: Option<String>,
    },
    /// Delete a key (or, with -recurse, every key under a prefix).
    Delete {
        #[arg(long)]
        recurse: bool,
        #[arg(long)]
        cas: bool,
        #[arg(long = "modify-index", default_value_t = 0)]
        modify_index: u64,
        key: String,
    },
    /// Print every key under a prefix as Consul's export JSON.
    Export {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Import keys from Consul's export JSON: @file, - for stdin, or the JSON itself.
    Import {
        #[arg(long)]
        prefix: Option<String>,
        data: Option<String>,
    },
}

/// One key in `consul kv export` format.
#[derive(Serialize, Deserialize)]
struct ExportedKey {
    key: String,
    flags: u64,
    value: String,
}

type CliResult = Result<(), String>;

fn read_data(data: Option<&str>) -> Result<Vec<u8>, String> {
    match data {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
            Ok(buf)
        }
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).map_err(|e| format!("reading {}: {e}", &d[1..]))
        }
        Some(d) => Ok(d.as_bytes().to_vec()),
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut url = format!("{}/v1/kv/{}", self.base, path);
        if !query.is_empty() {
            let qs: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.to_string()
                    } else {
                        format!("{k}={}", urlencode(v))
                    }
                })
                .collect();
            url = format!("{url}?{}", qs.join("&"));
        }
        let request = self.http.request(method, &url);
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| format!("Error querying Consul agent: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok((status, bytes))
    }

    async fn entries(&self, prefix: &str) -> Result<Vec<Value>, String> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                prefix,
                &[("recurse", String::new())],
                Vec::new(),
            )
            .await?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| e.to_string()),
            404 => Ok(Vec::new()),
            _ => Err(format!(
                "Error querying Consul agent: {} {}",
                status,
                String::from_utf8_lossy(&body)
            )),
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn value_of(entry: &Value) -> Vec<u8> {
    entry["Value"]
        .as_str()
        .and_then(|v| STANDARD.decode(v).ok())
        .unwrap_or_default()
}

fn print_value(bytes: &[u8], base64: bool) {
    if base64 {
        println!("{}", STANDARD.encode(bytes));
    } else {
        println!("{}", String::from_utf8_lossy(bytes));
    }
}

pub async fn run(args: KvArgs) -> CliResult {
    let client = Client {
        base: super::base_url(args.http_addr.as_deref()),
        http: reqwest::Client::new(),
    };
    match args.command {
        KvCommand::Get {
            recurse,
            keys,
            separator,
            detailed,
            base64,
            key,
        } => {
            if keys {
                let (status, body) = client
                    .send(
                        reqwest::Method::GET,
                        &key,
                        &[("keys", String::new()), ("separator", separator)],
                        Vec::new(),
                    )
                    .await?;
                if status == 200 {
                    let list: Vec<String> =
                        serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    for k in list {
                        println!("{k}");
                    }
                }
                return Ok(());
            }
            if recurse {
                for entry in client.entries(&key).await? {
                    let k = entry["Key"].as_str().unwrap_or_default();
                    let v = value_of(&entry);
                    if base64 {
                        println!("{k}:{}", STANDARD.encode(&v));
                    } else {
                        println!("{k}:{}", String::from_utf8_lossy(&v));
                    }
                }
                return Ok(());
            }
            let (status, body) = client
                .send(reqwest::Method::GET, &key, &[], Vec::new())
                .await?;
            match status {
                200 => {}
                404 => return Err(format!("Error! No key exists at: {key}")),
                _ => {
                    return Err(format!(
                        "Error querying Consul agent: {status} {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
            let entries: Vec<Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let entry = entries.first().ok_or("empty response")?;
            if detailed {
                for field in [
                    "CreateIndex",
                    "Flags",
                    "Key",
                    "LockIndex",
                    "ModifyIndex",
                    "Session",
                ] {
                    let v = &entry[field];
                    let shown = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    println!("{field:<16}{shown}");
                }
                print!("{:<16}", "Value");
            }
            print_value(&value_of(entry), base64);
            Ok(())
        }
        KvCommand::Put {
            flags,
            cas,
            modify_index,
            base64,
            acquire,
            release,
            session,
            key,
            data,
        } => {
            let mut value = read_data(data.as_deref())?;
            if base64 {
                let text = String::from_utf8_lossy(&value).trim().to_string();
                value = STANDARD
                    .decode(text)
                    .map_err(|e| format!("Error! Cannot base 64 decode data: {e}"))?;
            }
            let mut query = vec![("flags", flags.to_string())];
            if cas {
                query.push(("cas", modify_index.to_string()));
            }
            if acquire || release {
                let session = session
                    .ok_or("Error! Missing -session (required with -acquire and -release)")?;
                query.push((if acquire { "acquire" } else { "release" }, session));
            }
            let (status, body) = client
                .send(reqwest::Method::PUT, &key, &query, value)
                .await?;
            let text = String::from_utf8_lossy(&body).trim().to_string();
            match (status, text.as_str()) {
                (200, "true") => {
                    println!("Success! Data written to: {key}");
                    Ok(())
                }
                (200, _) if cas => Err(format!("Error! Did not write to {key}: CAS failed")),
                (200, _) if acquire => Err(format!(
                    "Error! Did not write to {key}: lock acquisition failed"
                )),
                (200, _) => Err(format!("Error! Did not write to {key}")),
                _ => Err(format!("Error! Failed writing data: {status} {text}")),
            }
        }
        KvCommand::Delete {
            recurse,
            cas,
            modify_index,
            key,
        } => {
            let mut query = Vec::new();
            if recurse {
                query.push(("recurse", String::new()));
            }
            if cas {
                query.push(("cas", modify_index.to_string()));
            }
            let (status, body) = client
                .send(reqwest::Method::DELETE, &key, &query, Vec::new())
                .await?;
            let text = String::from_utf8_lossy(&body).trim().to_string();
            match (status, text.as_str()) {
                (200, "true") if recurse => {
                    println!("Success! Deleted keys with prefix: {key}");
                    Ok(())
                }
                (200, "true") => {
                    println!("Success! Deleted key: {key}");
                    Ok(())
                }
                (200, _) => Err(format!("Error! Did not delete key {key}: CAS failed")),
                _ => Err(format!("Error! Failed deleting data: {status} {text}")),
            }
        }
        KvCommand::Export { prefix } => {
            let exported: Vec<ExportedKey> = client
                .entries(&prefix)
                .await?
                .iter()
                .map(|e| ExportedKey {
                    key: e["Key"].as_str().unwrap_or_default().to_string(),
                    flags: e["Flags"].as_u64().unwrap_or(0),
                    value: STANDARD.encode(value_of(e)),
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&exported).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        KvCommand::Import { prefix, data } => {
            let raw = read_data(data.as_deref())?;
            let keys: Vec<ExportedKey> = serde_json::from_slice(&raw)
                .map_err(|e| format!("Error! Cannot parse import data: {e}"))?;
            for k in keys {
                let value = STANDARD
                    .decode(&k.value)
                    .map_err(|e| format!("Error! Cannot base 64 decode value of {}: {e}", k.key))?;
                let key = format!("{}{}", prefix.as_deref().unwrap_or(""), k.key);
                let (status, body) = client
                    .send(
                        reqwest::Method::PUT,
                        &key,
                        &[("flags", k.flags.to_string())],
                        value,
                    )
                    .await?;
                if status != 200 {
                    return Err(format!(
                        "Error! Failed writing data for key {key}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                println!("Imported: {key}");
            }
            Ok(())
        }
    }
}
