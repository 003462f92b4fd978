//! `beacon kv get|put|delete|export|import`, with `consul kv`'s flags and output.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Args)]
pub struct KvArgs {
    #[command(flatten)]
    http: super::HttpArgs,
    #[command(flatten)]
    server: super::ServerArgs,
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
    /// Write a key. DATA is literal, @file, or - for stdin; without DATA the value is empty.
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
        /// A DATA starting with `-` is literal (as in Consul); `--` ends the flags.
        #[arg(allow_hyphen_values = true)]
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

/// A key as `consul kv` takes it: keys never start with `/`, so a leading one is dropped.
fn cli_key(key: String) -> String {
    match key.strip_prefix('/') {
        Some(rest) => rest.to_string(),
        None => key,
    }
}

/// Bytes kept as they are in a key's path segments: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URL path for a key: each `/`-separated segment percent-encoded, so that `?`, `#`, `%`
/// and spaces are part of the key. The `url` crate (under reqwest) drops `.` and `..`
/// segments even when spelt `%2E`/`%2E%2E`, so such a segment is joined to its neighbours
/// with `%2F`, which the server's `{*key}` route decodes back to `/`.
pub(super) fn key_path(key: &str) -> Result<String, String> {
    let is_dot = |s: &str| s == "." || s == "..";
    if is_dot(key) {
        return Err(format!(
            "Error! The key {key:?} cannot be addressed over Consul's HTTP API"
        ));
    }
    let segments: Vec<&str> = key.split('/').collect();
    let mut path = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            let joined = is_dot(segments[i - 1]) || is_dot(segment);
            path.push_str(if joined { "%2F" } else { "/" });
        }
        if is_dot(segment) {
            path.push_str(&"%2E".repeat(segment.len()));
        } else {
            path.extend(utf8_percent_encode(segment, SEGMENT));
        }
    }
    Ok(path)
}

/// Writes bytes to stdout as they are (values need not be UTF-8).
fn write_stdout(bytes: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| format!("Error! Writing to stdout: {e}"))
}

/// DATA: `-` for stdin, `@file` for a file's contents, else the literal text.
fn read_data(data: &str) -> Result<Vec<u8>, String> {
    match data {
        "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
            Ok(buf)
        }
        d if d.starts_with('@') => {
            std::fs::read(&d[1..]).map_err(|e| format!("reading {}: {e}", &d[1..]))
        }
        d => Ok(d.as_bytes().to_vec()),
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
    /// `-datacenter` on every call, `-stale` on reads.
    server: super::ServerArgs,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut all = if method == reqwest::Method::GET {
            self.server.read_query()
        } else {
            self.server.write_query()
        };
        all.extend(query.iter().cloned());
        let url = format!(
            "{}/v1/kv/{}{}",
            self.base,
            key_path(path)?,
            super::query_string(&all)
        );
        let request = self.http.request(method, &url);
        let response =
            request.body(body).send().await.map_err(|e| {
                format!("Error querying Consul agent: {}", beacon::report::chain(&e))
            })?;
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
            _ => Err(query_error(status, &body)),
        }
    }
}

/// Consul's error for a read the agent refused (`-datacenter` of another one, say).
fn query_error(status: u16, body: &[u8]) -> String {
    format!(
        "Error querying Consul agent: Unexpected response code: {status} ({})",
        String::from_utf8_lossy(body).trim()
    )
}

fn value_of(entry: &Value) -> Vec<u8> {
    entry["Value"]
        .as_str()
        .and_then(|v| STANDARD.decode(v).ok())
        .unwrap_or_default()
}

/// A value and a newline, as `consul kv get` prints it: the raw bytes, or with -base64 their
/// base64.
fn value_line(bytes: &[u8], base64: bool) -> Vec<u8> {
    let mut line = if base64 {
        STANDARD.encode(bytes).into_bytes()
    } else {
        bytes.to_vec()
    };
    line.push(b'\n');
    line
}

pub async fn run(args: KvArgs) -> CliResult {
    let (base, http) = args.http.connect()?;
    let client = Client {
        base,
        http,
        server: args.server,
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
            let key = cli_key(key);
            if keys {
                let (status, body) = client
                    .send(
                        reqwest::Method::GET,
                        &key,
                        &[("keys", String::new()), ("separator", separator)],
                        Vec::new(),
                    )
                    .await?;
                match status {
                    200 => {
                        let list: Vec<String> =
                            serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                        for k in list {
                            println!("{k}");
                        }
                    }
                    404 => {}
                    _ => return Err(query_error(status, &body)),
                }
                return Ok(());
            }
            if recurse {
                let mut out = Vec::new();
                for entry in client.entries(&key).await? {
                    let k = entry["Key"].as_str().unwrap_or_default();
                    out.extend_from_slice(k.as_bytes());
                    out.push(b':');
                    out.extend(value_line(&value_of(&entry), base64));
                }
                return write_stdout(&out);
            }
            let (status, body) = client
                .send(reqwest::Method::GET, &key, &[], Vec::new())
                .await?;
            match status {
                200 => {}
                404 => return Err(format!("Error! No key exists at: {key}")),
                _ => return Err(query_error(status, &body)),
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
            write_stdout(&value_line(&value_of(entry), base64))
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
            let key = cli_key(key);
            // As `consul kv put KEY`: no DATA is an empty value (stdin only with `-`).
            let mut value = match data {
                None => Vec::new(),
                Some(data) => read_data(&data)?,
            };
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
            let key = cli_key(key);
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
            let prefix = cli_key(prefix);
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
            let raw = read_data(data.as_deref().unwrap_or("-"))?;
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
