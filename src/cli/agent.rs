//! Commands about the local agent: `beacon info`, `reload`, `version`, `maint`, `services
//! register|deregister`, `monitor` and `validate`, with the flags and output of Consul's
//! `command/info`, `reload`, `version`, `maint`, `services`, `monitor` and `validate`.

use clap::Args;

use super::HttpArgs;
use super::catalog::{get, text};

/// `beacon info`: the agent's `Stats`, one block per section, as `consul info` prints them.
pub async fn info(http: HttpArgs) -> Result<(), String> {
    let this = get(&http, "/v1/agent/self").await?;
    let Some(stats) = this["Stats"].as_object() else {
        return Err("the agent's answer has no Stats".into());
    };
    for (section, values) in stats {
        println!("{section}:");
        for (key, value) in values.as_object().into_iter().flatten() {
            println!("\t{key} = {}", text(value));
        }
    }
    Ok(())
}

/// `beacon reload`: `PUT /v1/agent/reload`.
pub async fn reload(http: HttpArgs) -> Result<(), String> {
    super::ops::request(&http, reqwest::Method::PUT, "/v1/agent/reload", Vec::new()).await?;
    println!("Configuration reload triggered");
    Ok(())
}

/// `beacon version`.
pub fn version() {
    println!("Beacon v{}", env!("CARGO_PKG_VERSION"));
    println!("Protocol {} (server RPC)", beacon::transport::VERSION);
}

#[derive(Args)]
pub struct MaintArgs {
    #[command(flatten)]
    http: HttpArgs,
    /// Put the node (or, with -service, one service) in maintenance.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Take it out of maintenance.
    #[arg(long)]
    disable: bool,
    /// A service ID instead of the whole node.
    #[arg(long)]
    service: Option<String>,
    /// Why (shown in the maintenance check's notes).
    #[arg(long)]
    reason: Option<String>,
}

use beacon::agent::{
    NODE_MAINTENANCE_CHECK as NODE_MAINT, SERVICE_MAINTENANCE_PREFIX as SERVICE_MAINT,
};

/// `beacon maint`: without -enable/-disable, lists what is in maintenance.
pub async fn maint(args: MaintArgs) -> Result<(), String> {
    if !args.enable && !args.disable {
        if args.service.is_some() || args.reason.is_some() {
            return Err("-service and -reason need -enable or -disable".into());
        }
        let checks = get(&args.http, "/v1/agent/checks").await?;
        for (id, check) in checks.as_object().into_iter().flatten() {
            if id == NODE_MAINT {
                println!("Node:");
                println!("  Name:   {}", text(&check["Node"]));
                println!("  Reason: {}", text(&check["Notes"]));
                println!();
            } else if let Some(service) = id.strip_prefix(SERVICE_MAINT) {
                println!("Service:");
                println!("  ID:     {service}");
                println!("  Reason: {}", text(&check["Notes"]));
                println!();
            }
        }
        return Ok(());
    }
    let path = match &args.service {
        Some(id) => format!("/v1/agent/service/maintenance/{id}"),
        None => "/v1/agent/maintenance".to_string(),
    };
    let mut query: Vec<(&str, &str)> = vec![("enable", if args.enable { "true" } else { "false" })];
    if let Some(reason) = &args.reason {
        query.push(("reason", reason));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    super::ops::request(
        &args.http,
        reqwest::Method::PUT,
        &format!("{path}?{query}"),
        Vec::new(),
    )
    .await?;
    let verb = if args.enable { "entering" } else { "leaving" };
    match &args.service {
        Some(id) => println!("Service {verb} maintenance mode: {id}"),
        None => println!("Node {verb} maintenance mode"),
    }
    Ok(())
}

#[derive(Args)]
pub struct ServicesArgs {
    #[command(subcommand)]
    command: ServicesCommand,
}

#[derive(clap::Subcommand)]
enum ServicesCommand {
    /// Register services with the local agent: from files, or one from the flags.
    Register(ServiceFlags),
    /// Deregister services from the local agent: by -id, or those the files define.
    Deregister(ServiceFlags),
}

#[derive(Args)]
struct ServiceFlags {
    #[command(flatten)]
    http: HttpArgs,
    /// The service's name (register without a file).
    #[arg(long)]
    name: Option<String>,
    /// The service's ID (default: its name).
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    address: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// A tag; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Metadata as key=value; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// JSON service definitions, as in an agent's config: `{"service": {…}}` or
    /// `{"services": [{…}, …]}`.
    files: Vec<std::path::PathBuf>,
}

/// A definition's field, matched case-insensitively as Consul decodes them (`id`, `ID`).
fn field(def: &serde_json::Value, key: &str) -> Option<String> {
    def.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| text(v))
        .filter(|s| !s.is_empty())
}

/// The service definitions in Consul's config-file shape.
fn definitions(files: &[std::path::PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("Error reading {}: {e}", file.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("Error parsing {}: {e}", file.display()))?;
        let found = match (doc.get("service"), doc.get("services")) {
            (Some(one), None) => vec![one.clone()],
            (None, Some(serde_json::Value::Array(many))) => many.clone(),
            _ => {
                return Err(format!(
                    "{}: expected a \"service\" object or a \"services\" array",
                    file.display()
                ));
            }
        };
        all.extend(found);
    }
    Ok(all)
}

/// `beacon services register|deregister`, as `consul services`.
pub async fn services(args: ServicesArgs) -> Result<(), String> {
    match args.command {
        ServicesCommand::Register(f) => {
            let defs = if f.files.is_empty() {
                let Some(name) = &f.name else {
                    return Err("Service name is required (-name) or a file".into());
                };
                let mut meta = serde_json::Map::new();
                for pair in &f.meta {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("-meta {pair:?} is not key=value"))?;
                    meta.insert(k.to_string(), v.into());
                }
                vec![serde_json::json!({
                    "Name": name,
                    "ID": f.id.clone().unwrap_or_default(),
                    "Address": f.address.clone().unwrap_or_default(),
                    "Port": f.port.unwrap_or(0),
                    "Tags": f.tags,
                    "Meta": meta,
                })]
            } else {
                definitions(&f.files)?
            };
            for def in defs {
                let body = serde_json::to_vec(&def).map_err(|e| e.to_string())?;
                super::ops::request(
                    &f.http,
                    reqwest::Method::PUT,
                    "/v1/agent/service/register",
                    body,
                )
                .await
                .map_err(|e| format!("Error registering service: {e}"))?;
                let name = field(&def, "name").unwrap_or_default();
                println!("Registered service: {name}");
            }
        }
        ServicesCommand::Deregister(f) => {
            let ids: Vec<String> = match (&f.id, f.files.is_empty()) {
                (Some(id), true) => vec![id.clone()],
                (None, false) => definitions(&f.files)?
                    .iter()
                    .map(|d| {
                        field(d, "id")
                            .or_else(|| field(d, "name"))
                            .unwrap_or_default()
                    })
                    .collect(),
                _ => return Err("Either -id or files are required, not both".into()),
            };
            for id in ids {
                let path = format!(
                    "/v1/agent/service/deregister/{}",
                    percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC)
                );
                super::ops::request(&f.http, reqwest::Method::PUT, &path, Vec::new())
                    .await
                    .map_err(|e| format!("Error deregistering service: {e}"))?;
                println!("Deregistered service: {id}");
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    http: HttpArgs,
    /// trace, debug, info, warn or err (default info).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// `beacon monitor`: streams the agent's log (`/v1/agent/monitor`) until it ends.
pub async fn monitor(args: MonitorArgs) -> Result<(), String> {
    use std::io::Write;
    let (base, client) = args.http.connect()?;
    let level: String = form_urlencoded::byte_serialize(args.log_level.as_bytes()).collect();
    let mut response = client
        .get(format!("{base}/v1/agent/monitor?loglevel={level}"))
        .send()
        .await
        .map_err(|e| format!("Error starting monitor: {}", beacon::report::chain(&e)))?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        return Err(format!(
            "Error starting monitor: {status} ({})",
            body.trim()
        ));
    }
    let mut out = std::io::stdout();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("Monitor ended: {}", beacon::report::chain(&e)))?
    {
        out.write_all(&chunk)
            .and_then(|()| out.flush())
            .map_err(|e| format!("Error writing to stdout: {e}"))?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Config files and directories to check together, as `beacon agent -config-file` and
    /// `-config-dir` read them (JSON, HCL or TOML).
    #[arg(required = true)]
    paths: Vec<std::path::PathBuf>,
}

/// `beacon validate`: checks config files without starting an agent, as `consul validate`:
/// the files and directories given are merged as the agent merges them.
pub fn validate(args: ValidateArgs) -> Result<(), String> {
    let (config_dir, config_file) = args.paths.into_iter().partition(|p| p.is_dir());
    // The files alone may leave out what flags would give (a server's data dir): they are
    // checked as the server or dev agent they describe, with a data dir if they have none.
    let flags = beacon::config::Flags {
        config_file,
        config_dir,
        ..Default::default()
    };
    let checked = match beacon::config::load(&flags) {
        Err(e) if e.key == "data_dir" => beacon::config::load(&beacon::config::Flags {
            data_dir: Some(std::env::temp_dir()),
            ..flags
        }),
        other => other,
    };
    let config = checked.map_err(|e| format!("Config validation failed: {e}"))?;
    beacon::server::definitions(&config).map_err(|e| format!("Config validation failed: {e}"))?;
    for warning in &config.warnings {
        eprintln!("Warning: {warning}");
    }
    println!("Configuration is valid!");
    Ok(())
}
