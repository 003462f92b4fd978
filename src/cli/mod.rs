//! Client subcommands that talk to a running agent over its HTTP API (`kv`, `ops`, `lock`,
//! `watch`), and the certificate tooling (`tls`, `tlsgen`).

pub mod agent;
pub mod catalog;
pub mod kv;
pub mod lock;
pub mod ops;
mod process;
pub mod tls;
mod tlsgen;
pub mod watch;

use std::path::{Path, PathBuf};

/// How every client subcommand reaches the agent's HTTP API: its address and, for HTTPS,
/// Consul's TLS flags. Each flag falls back to Consul's environment variable.
#[derive(clap::Args, Debug, Default)]
pub struct HttpArgs {
    /// The agent's HTTP address, `https://` for TLS (else BEACON_HTTP_ADDR, CONSUL_HTTP_ADDR,
    /// 127.0.0.1:8500; CONSUL_HTTP_SSL=true makes a scheme-less address HTTPS).
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// PEM file of the CA that signed the agent's certificate (else CONSUL_CACERT).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates (else CONSUL_CAPATH).
    #[arg(long, global = true, value_name = "DIR")]
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate, for agents with verify_incoming (else CONSUL_CLIENT_CERT).
    #[arg(long, global = true, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM key of --client-cert (else CONSUL_CLIENT_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// The name to verify the agent's certificate against instead of the address's host
    /// (else CONSUL_TLS_SERVER_NAME), e.g. server.dc1.consul.
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// An ACL token, sent as `X-Consul-Token` (else CONSUL_HTTP_TOKEN). Beacon has no ACLs
    /// yet and ignores it; it is accepted so Consul scripts run unchanged.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// Consul's "server flags": which datacenter answers, and whether any server may answer a read.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// The datacenter to query (sent as `?dc=`); by default the agent's own. Beacon serves one
    /// datacenter: another is answered with an error.
    #[arg(long, global = true, value_name = "DC")]
    pub datacenter: Option<String>,
    /// Let any server answer a read, even without a leader (`?stale`); no effect on writes.
    #[arg(long, global = true)]
    pub stale: bool,
}

impl ServerArgs {
    /// The `?dc=` a request carries (none for an empty `-datacenter`, as Consul).
    pub fn dc(&self) -> Option<&str> {
        self.datacenter.as_deref().filter(|dc| !dc.is_empty())
    }

    /// The query parameters of a read: `dc` and `stale`.
    pub fn read_query(&self) -> Query {
        let mut query = self.write_query();
        if self.stale {
            query.push(("stale", String::new()));
        }
        query
    }

    /// The query parameters of a write: `dc` only (`-stale` means nothing to a write).
    pub fn write_query(&self) -> Query {
        self.dc()
            .map(|dc| vec![("dc", dc.to_string())])
            .unwrap_or_default()
    }
}

/// Query parameters: (name, value), an empty value for a bare flag.
pub(crate) type Query = Vec<(&'static str, String)>;

/// A query string (`?a=b&flag`) from pairs; an empty value is a bare flag, as Consul's.
pub(crate) fn query_string(query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.to_string()
            } else {
                format!(
                    "{k}={}",
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            }
        })
        .collect();
    format!("?{}", pairs.join("&"))
}

/// An agent's answer: its status, `X-Consul-Index` (0 when absent) and body.
pub(crate) struct Reply {
    pub status: u16,
    pub index: u64,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text, trimmed (for error messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }

    /// Go's API client's error for a status it did not expect.
    pub fn unexpected(&self) -> String {
        format!(
            "Unexpected response code: {} ({})",
            self.status,
            self.text()
        )
    }
}

/// The HTTP API of one agent, for the commands that make many calls (`lock`, `watch`).
pub(crate) struct Agent {
    base: String,
    http: reqwest::Client,
}

impl Agent {
    pub fn connect(args: &HttpArgs) -> Result<Self, String> {
        let (base, http) = args
            .connect()
            .map_err(|e| format!("Error connecting to Consul agent: {e}"))?;
        Ok(Agent { base, http })
    }

    /// One request; `path` is already escaped. Only a failed exchange is an error: every
    /// status comes back in the reply.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}{}", self.base, query_string(query));
        let response = self
            .http
            .request(method, &url)
            .body(body)
            .send()
            .await
            .map_err(|e| beacon::report::chain(&e))?;
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = response
            .bytes()
            .await
            .map_err(|e| beacon::report::chain(&e))?
            .to_vec();
        Ok(Reply {
            status,
            index,
            body,
        })
    }

    /// A call that must answer 200.
    pub async fn call_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let reply = self.call(method, path, query, body).await?;
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(reply.unexpected())
        }
    }

    /// The agent's node name (`/v1/agent/self`): Consul's `lock` and `watch` ask it first, so
    /// an unreachable agent fails at once.
    pub async fn check(&self, query: &[(&str, String)]) -> Result<(), String> {
        self.call_ok(reqwest::Method::GET, "/v1/agent/self", query, Vec::new())
            .await
            .map(drop)
            .map_err(|e| format!("Error querying Consul agent: {e}"))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("Error reading {}: {e}", path.display()))
}

impl HttpArgs {
    /// The base URL (scheme, host, port) and an HTTP client set up for it. Errors name the
    /// file or setting at fault.
    pub fn connect(&self) -> Result<(String, reqwest::Client), String> {
        let ssl = env("CONSUL_HTTP_SSL").and_then(|v| go_bool(&v)) == Some(true);
        let mut base = base_url(self.http_addr.as_deref());
        if ssl && base.starts_with("http://") && !has_scheme(self.http_addr.as_deref()) {
            base = base.replacen("http://", "https://", 1);
        }
        let mut builder = reqwest::Client::builder();
        if let Some(token) = self.token.clone().or_else(|| env("CONSUL_HTTP_TOKEN")) {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = reqwest::header::HeaderValue::from_str(&token)
                .map_err(|_| "the token is not a valid header value".to_string())?;
            headers.insert("X-Consul-Token", value);
            builder = builder.default_headers(headers);
        }
        if !base.starts_with("https://") {
            return Ok((base, builder.build().map_err(|e| e.to_string())?));
        }
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| env("CONSUL_CACERT").map(PathBuf::from));
        let ca_path = self
            .ca_path
            .clone()
            .or_else(|| env("CONSUL_CAPATH").map(PathBuf::from));
        let roots = beacon::tls::read_ca_certs(ca_file.as_deref(), ca_path.as_deref())
            .map_err(|e| format!("Error loading CA: {e}"))?
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("Error loading CA: {e}"))?;
        if !roots.is_empty() {
            // As Consul: the given CA replaces the system's roots.
            builder = builder.tls_certs_only(roots);
        }
        let cert = self
            .client_cert
            .clone()
            .or_else(|| env("CONSUL_CLIENT_CERT").map(PathBuf::from));
        let key = self
            .client_key
            .clone()
            .or_else(|| env("CONSUL_CLIENT_KEY").map(PathBuf::from));
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(&cert)?;
                pem.push(b'\n');
                pem.extend(read(&key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    format!("Error loading client certificate {}: {e}", cert.display())
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err("--client-cert and --client-key go together".into()),
        }
        if env("CONSUL_HTTP_SSL_VERIFY").and_then(|v| go_bool(&v)) == Some(false) {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(name) = self
            .tls_server_name
            .clone()
            .or_else(|| env("CONSUL_TLS_SERVER_NAME"))
        {
            // reqwest verifies the URL's host: ask for `name` and resolve it to the real address.
            let url = reqwest::Url::parse(&base).map_err(|e| format!("Bad address {base}: {e}"))?;
            let port = url.port_or_known_default().unwrap_or(443);
            let host = url
                .host_str()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']']);
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .map_err(|e| format!("Cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("Cannot resolve {host}"))?;
            builder = builder.resolve(&name, addr);
            base = format!("https://{name}:{port}");
        }
        Ok((base, builder.build().map_err(|e| e.to_string())?))
    }
}

/// JSON text as Go's `encoding/json` writes it: compact, or with `indent` per level
/// (`MarshalIndent`, empty `{}` and `[]` kept on one line), and with `<`, `>`, `&`, U+2028 and
/// U+2029 escaped inside strings. The input's member order is kept.
pub(crate) fn go_json(json: &str, indent: Option<&str>) -> String {
    let chars: Vec<char> = json.chars().collect();
    let mut out = String::with_capacity(json.len());
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            match c {
                _ if escaped => {
                    escaped = false;
                    out.push(c);
                }
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                _ => out.push(c),
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let next = chars[i..].iter().position(|c| !c.is_ascii_whitespace());
                if let Some(at) = next
                    && matches!(chars[i + at], '}' | ']')
                {
                    out.push(chars[i + at]);
                    i += at + 1;
                    continue;
                }
                depth += 1;
                newline(&mut out, depth);
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => {
                out.push(c);
                if indent.is_some() {
                    out.push(' ');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Columns padded to their widest cell, two spaces apart (Consul's `columnize` output).
pub(crate) fn table(rows: Vec<Vec<String>>) -> String {
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

/// A boolean as Go's `strconv.ParseBool` reads it (Consul parses its environment so).
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn has_scheme(flag: Option<&str>) -> bool {
    let given = flag
        .map(str::to_string)
        .or_else(|| env("BEACON_HTTP_ADDR"))
        .or_else(|| env("CONSUL_HTTP_ADDR"));
    given.is_some_and(|a| a.starts_with("http://") || a.starts_with("https://"))
}

/// The agent's HTTP address: `--http-addr` > `BEACON_HTTP_ADDR` > `CONSUL_HTTP_ADDR` >
/// `127.0.0.1:8500`, with or without a scheme.
pub fn base_url(flag: Option<&str>) -> String {
    let raw = flag
        .map(str::to_string)
        .or_else(|| {
            std::env::var("BEACON_HTTP_ADDR")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .or_else(|| {
            std::env::var("CONSUL_HTTP_ADDR")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| format!("127.0.0.1:{}", beacon::config::DEFAULT_HTTP_PORT));
    let raw = raw.trim_end_matches('/');
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    }
}

/// Subcommands whose first positional argument starts a command of their own (`lock PREFIX
/// CHILD...`, `watch [HANDLER...]`): as Go's flag package, flags end there, so the child's own
/// flags reach it untouched.
const TAKES_A_COMMAND: [&str; 2] = ["lock", "watch"];

/// The arguments as clap should see them: single-dash long flags doubled ([`normalize_flags`]),
/// and for `lock` and `watch` a `--` inserted where Go's flag parsing would stop (the first
/// argument that is not a flag or a flag's value), after which nothing is rewritten.
pub fn normalize_args(args: Vec<String>, cli: &clap::Command) -> Vec<String> {
    let Some(sub) = args
        .get(1)
        .and_then(|name| cli.find_subcommand(name))
        .filter(|sub| TAKES_A_COMMAND.contains(&sub.get_name()))
    else {
        return normalize_flags(args);
    };
    let mut end = 2;
    let mut rest_from = args.len();
    while end < args.len() {
        let arg = &args[end];
        if arg == "--" {
            rest_from = end + 1;
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            rest_from = end;
            break;
        }
        let name = arg.trim_start_matches('-');
        let value_follows = !name.contains('=') && takes_value(sub, name);
        end += if value_follows { 2 } else { 1 };
    }
    let end = end.min(args.len());
    let mut out = normalize_flags(args[..end].to_vec());
    if rest_from < args.len() {
        out.push("--".into());
        out.extend(args[rest_from..].iter().cloned());
    }
    out
}

/// Whether the flag `name` of `sub` takes the next argument as its value (Go's flags other than
/// booleans do; an optional value spelt `-flag=v` does not).
fn takes_value(sub: &clap::Command, name: &str) -> bool {
    sub.get_arguments()
        .find(|a| {
            a.get_long() == Some(name)
                || (name.chars().count() == 1 && a.get_short() == name.chars().next())
        })
        .is_some_and(|a| a.get_action().takes_values() && !a.is_require_equals_set())
}

/// Consul's CLI spells long flags with one dash (`-recurse`, `-flags=1`); clap wants two.
pub fn normalize_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut after_separator = false;
    args.into_iter()
        .map(|a| {
            // After `--` every argument is data (`beacon kv put k -- -value`), as it was typed.
            let single_dash_long = !after_separator
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            after_separator |= a == "--";
            if single_dash_long { format!("-{a}") } else { a }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_addresses() {
        let args = normalize_flags(
            [
                "-recurse", "--base64", "-", "-flags=3", "-x", "key", "--", "-value",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            [
                "--recurse",
                "--base64",
                "-",
                "--flags=3",
                "-x",
                "key",
                "--",
                "-value"
            ]
        );
        assert_eq!(base_url(Some("127.0.0.1:1")), "http://127.0.0.1:1");
        assert_eq!(base_url(Some("http://h:2/")), "http://h:2");
    }

    #[test]
    fn lock_and_watch_flags_end_where_the_command_starts() {
        let mut cli = <crate::Cli as clap::CommandFactory>::command();
        cli.build();
        let normalized =
            |args: &[&str]| normalize_args(args.iter().map(|s| s.to_string()).collect(), &cli);
        assert_eq!(
            normalized(&[
                "beacon", "lock", "-timeout", "5s", "-verbose", "-n", "1", "jobs", "cmd",
                "-verbose", "--", "-x"
            ]),
            [
                "beacon",
                "lock",
                "--timeout",
                "5s",
                "--verbose",
                "-n",
                "1",
                "--",
                "jobs",
                "cmd",
                "-verbose",
                "--",
                "-x"
            ]
        );
        assert_eq!(
            normalized(&["beacon", "lock", "-shell=false", "-n=1", "--", "-p", "c"]),
            ["beacon", "lock", "--shell=false", "--n=1", "--", "-p", "c"]
        );
        assert_eq!(
            normalized(&[
                "beacon",
                "watch",
                "-type",
                "service",
                "-service",
                "web",
                "-passingonly",
                "true",
                "sh",
                "-c",
                "cat"
            ]),
            [
                "beacon",
                "watch",
                "--type",
                "service",
                "--service",
                "web",
                "--passingonly",
                "true",
                "--",
                "sh",
                "-c",
                "cat"
            ]
        );
        assert_eq!(
            normalized(&["beacon", "watch", "-type=nodes", "-stale"]),
            ["beacon", "watch", "--type=nodes", "--stale"]
        );
        // Other commands are rewritten as before.
        assert_eq!(
            normalized(&["beacon", "kv", "get", "-datacenter", "dc1", "k"]),
            ["beacon", "kv", "get", "--datacenter", "dc1", "k"]
        );
    }

    #[test]
    fn json_is_written_as_go_writes_it() {
        let compact = r#"{"a": [1, {"b":"x<y>&z"}], "e": [], "o": { }, "s": "q\"{,}:"}"#;
        assert_eq!(
            go_json(compact, None),
            r#"{"a":[1,{"b":"x\u003cy\u003e\u0026z"}],"e":[],"o":{},"s":"q\"{,}:"}"#
        );
        assert_eq!(
            go_json(compact, Some("    ")),
            "{\n    \"a\": [\n        1,\n        {\n            \"b\": \"x\\u003cy\\u003e\\u0026z\"\n        }\n    ],\n    \"e\": [],\n    \"o\": {},\n    \"s\": \"q\\\"{,}:\"\n}"
        );
        assert_eq!(go_json("null", Some("    ")), "null");
    }
}
