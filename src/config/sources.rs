//! Config files as Consul reads them: JSON (`.json`), HCL (`.hcl`, through `hcl-rs`) and
//! Beacon's first format, TOML (`.toml`, and any other extension given by `-config-file`),
//! from `-config-file` (repeatable) and `-config-dir` (every `.json`, `.hcl` and `.toml` in
//! it, in lexical order of the file names), merged as Consul's `agent/config/merge.go` does:
//! objects merge key by key, lists add up (`retry_join`, `services`, `checks`, …), and a later
//! scalar wins. One difference: every `-config-file` comes before every `-config-dir`, where
//! Consul keeps the command line's order of the two flags.
//!
//! Every file is checked on its own before the merge, so an error names the file and the key.
//! Keys that Consul's configuration has (`agent/config/config.go`) for features Beacon lacks
//! are removed with a warning naming them, so a Consul config starts while it is migrated.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ConfigError;

/// What the files say, merged, and the warnings about Consul keys that were left out.
#[derive(Debug, Default)]
pub struct Loaded {
    /// One JSON object with the files' keys (their own names, snake_case), without the
    /// service and check definitions.
    pub value: Value,
    /// "FILE: KEY: …" per Consul key Beacon does not use.
    pub warnings: Vec<String>,
    /// The `service`/`services` definitions, in file order, with their file.
    pub services: Vec<Definition>,
    /// The `check`/`checks` definitions, in file order, with their file.
    pub checks: Vec<Definition>,
    /// Each file's own keys, for naming the file behind a bad merged value.
    files: Vec<(PathBuf, Value)>,
}

impl Loaded {
    /// The last file that sets `key` (a dotted path such as `dns_config.node_ttl`): the one
    /// whose value the merged config has.
    pub fn file_setting(&self, key: &str) -> Option<&Path> {
        self.files.iter().rev().find_map(|(path, value)| {
            let mut at = value;
            for part in key.split('.') {
                at = at.get(part)?;
            }
            Some(path.as_path())
        })
    }
}

/// A service or check definition as a file wrote it (decoded by the agent, which names the
/// file in its errors).
#[derive(Clone, Debug)]
pub struct Definition {
    /// None when it came from elsewhere than a file (tests).
    pub file: Option<PathBuf>,
    pub value: Value,
}

/// Reads `files` in order, then each of `dirs` (its config files in lexical order), checks each
/// file with `check` (given the file's value after unsupported Consul keys are removed) and
/// merges them. Errors name the file: unreadable, unparsable, not an object at the top, or
/// whatever `check` says.
pub fn read(
    files: &[PathBuf],
    dirs: &[PathBuf],
    check: impl Fn(&Value) -> Result<(), ConfigError>,
) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded {
        value: Value::Object(Map::new()),
        ..Loaded::default()
    };
    let mut paths: Vec<PathBuf> = files.to_vec();
    for dir in dirs {
        paths.extend(dir_files(dir, &mut loaded.warnings)?);
    }
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("config", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut value = parse(path, &text)?;
        for key in strip_consul_only(&mut value) {
            loaded.warnings.push(format!(
                "{}: {key} is a Consul setting Beacon does not use; ignored",
                path.display()
            ));
        }
        relative_to(path, &mut value);
        check(&value)
            .map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.key), e.message))?;
        let map = value.as_object_mut().expect("parse gives an object");
        for key in ["service", "services", "check", "checks"] {
            let found = match map.remove(key) {
                Some(Value::Array(many)) => many,
                Some(one) => vec![one],
                None => continue,
            };
            let into = if key.starts_with("service") {
                &mut loaded.services
            } else {
                &mut loaded.checks
            };
            into.extend(found.into_iter().map(|value| Definition {
                file: Some(path.clone()),
                value,
            }));
        }
        loaded.files.push((path.clone(), value.clone()));
        merge(&mut loaded.value, value);
    }
    Ok(loaded)
}

/// The config files of a `-config-dir`, in lexical order; other files are skipped with a
/// warning, as Consul skips them. A config file that cannot be read (a dangling link) is an
/// error when it is read, not skipped.
fn dir_files(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new("config-dir", format!("cannot read {}: {e}", dir.display()))
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigError::new("config-dir", format!("cannot read {}: {e}", dir.display()))
        })?;
        let path = entry.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json" | "hcl" | "toml")
        );
        if path.is_dir() {
            continue;
        }
        if wanted {
            found.push(path);
        } else {
            warnings.push(format!(
                "{}: skipped: a config file's name must end in .json, .hcl or .toml",
                path.display()
            ));
        }
    }
    found.sort();
    Ok(found)
}

/// One file's keys as a JSON object, by its extension.
pub fn parse(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let fail = |e: String| {
        ConfigError::new(
            "config",
            format!("{}: {}", path.display(), e.trim_end().replace('\n', " ")),
        )
    };
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(text).map_err(|e| fail(e.to_string()))?,
        Some("hcl") => hcl::from_str(text).map_err(|e| fail(hcl_error(&e)))?,
        _ => toml::from_str(text).map_err(|e| fail(e.to_string()))?,
    };
    if !value.is_object() {
        return Err(fail("expected an object of settings at the top".into()));
    }
    Ok(value)
}

/// An HCL error on one line: where it is and what was wrong, without the source excerpt
/// hcl-rs draws over several lines.
fn hcl_error(e: &hcl::Error) -> String {
    match e {
        hcl::Error::Parse(p) => {
            let at = p.location();
            format!(
                "line {}, column {}: {}",
                at.line(),
                at.column(),
                p.message()
            )
        }
        other => other.to_string(),
    }
}

/// Merges `from` into `into` as Consul merges config sources: objects key by key, lists
/// appended, anything else replaced.
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        a.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b),
        (slot, value) => *slot = value,
    }
}

/// Paths inside a file that name other files are relative to the file, as an operator reads
/// them: zone files.
fn relative_to(path: &Path, value: &mut Value) {
    let Some(dir) = path.parent() else { return };
    let Some(Value::Array(zones)) = value.get_mut("zone_files") else {
        return;
    };
    for zone in zones {
        if let Some(Value::String(p)) = zone.get_mut("path")
            && Path::new(p.as_str()).is_relative()
        {
            *p = dir.join(&*p).display().to_string();
        }
    }
}

/// Consul settings (`agent/config/config.go`, 1.20) that Beacon has no feature for: dotted
/// paths, a block's name standing for the whole block.
const CONSUL_ONLY: &[&str] = &[
    "acl",
    "acl_agent_master_token",
    "acl_agent_token",
    "acl_datacenter",
    "acl_default_policy",
    "acl_disabled_ttl",
    "acl_down_policy",
    "acl_enable_key_list_policy",
    "acl_master_token",
    "acl_replication_token",
    "acl_token",
    "acl_ttl",
    "addresses.grpc",
    "addresses.grpc_tls",
    "advertise_addr_ipv4",
    "advertise_addr_ipv6",
    "advertise_addr_wan",
    "advertise_addr_wan_ipv4",
    "advertise_addr_wan_ipv6",
    "advertise_reconnect_timeout",
    "audit",
    "auto_config",
    "auto_encrypt",
    "auto_reload_config",
    "autopilot.disable_upgrade_migration",
    "autopilot.last_contact_threshold",
    "autopilot.max_trailing_logs",
    "autopilot.min_quorum",
    "autopilot.redundancy_zone_tag",
    "autopilot.server_stabilization_time",
    "autopilot.upgrade_version_tag",
    "bootstrap",
    "cache",
    "check_deregister_interval_min",
    "check_output_max_size",
    "check_reap_interval",
    "cloud",
    "config_entries",
    "connect",
    "consul",
    "default_query_time",
    "disable_anonymous_signature",
    "disable_coordinates",
    "disable_host_node_id",
    "disable_http_unprintable_char_filter",
    "disable_keyring_file",
    "disable_remote_exec",
    "disable_update_check",
    "discard_check_output",
    "discovery_max_stale",
    "dns_config.allow_stale",
    "dns_config.cache_max_age",
    "dns_config.disable_compression",
    "dns_config.enable_truncate",
    "dns_config.max_stale",
    "dns_config.prefer_namespace",
    "dns_config.use_cache",
    "enable_acl_replication",
    "enable_agent_tls_for_checks",
    "enable_central_service_config",
    "enable_debug",
    "enable_local_script_checks",
    "enable_script_checks",
    "enable_syslog",
    "encrypt_verify_incoming",
    "encrypt_verify_outgoing",
    "experiments",
    "gossip_wan",
    "http_config",
    "license_path",
    "limits",
    "locality",
    "max_query_time",
    "node_id",
    "node_meta",
    "non_voting_server",
    "peering",
    "performance.leave_drain_time",
    "performance.rpc_hold_timeout",
    "pid_file",
    "ports.expose_max_port",
    "ports.expose_min_port",
    "ports.grpc",
    "ports.grpc_tls",
    "ports.serf_wan",
    "ports.sidecar_max_port",
    "ports.sidecar_min_port",
    "primary_datacenter",
    "primary_gateways",
    "primary_gateways_interval",
    "protocol",
    "raft_boltdb",
    "raft_logstore",
    "raft_protocol",
    "read_replica",
    "reconnect_timeout_wan",
    "rejoin_after_leave",
    "reporting",
    "retry_interval_wan",
    "retry_join_wan",
    "retry_max",
    "retry_max_wan",
    "rpc",
    "segment",
    "segments",
    "serf_lan",
    "serf_lan_allowed_cidrs",
    "serf_wan",
    "serf_wan_allowed_cidrs",
    "server_name",
    "session_ttl_min",
    "skip_leave_on_interrupt",
    "snapshot_agent",
    "start_join_wan",
    "syslog_facility",
    "tagged_addresses",
    "telemetry",
    "tls.grpc",
    "tls_cipher_suites",
    "tls_prefer_server_cipher_suites",
    "translate_wan_addrs",
    "ui_config.content_path",
    "ui_config.dashboard_url_templates",
    "ui_config.dir",
    "ui_config.metrics_provider",
    "ui_config.metrics_provider_files",
    "ui_config.metrics_provider_options_json",
    "ui_config.metrics_proxy",
    "ui_content_path",
    "ui_dir",
    "unix_sockets",
    "watches",
    "xds",
];

/// Removes the [`CONSUL_ONLY`] keys from a file's object; returns the ones it had.
fn strip_consul_only(value: &mut Value) -> Vec<&'static str> {
    let mut removed = Vec::new();
    for path in CONSUL_ONLY {
        let (parent, key) = match path.split_once('.') {
            Some((block, key)) => (value.get_mut(block), key),
            None => (Some(&mut *value), *path),
        };
        if let Some(Value::Object(map)) = parent
            && map.remove(key).is_some()
        {
            removed.push(*path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_follows_consul_lists_add_objects_merge_scalars_replace() {
        let mut a = json!({"retry_join": ["a"], "ports": {"http": 1, "dns": 2}, "datacenter": "x"});
        merge(
            &mut a,
            json!({"retry_join": ["b"], "ports": {"http": 3}, "datacenter": "y"}),
        );
        assert_eq!(
            a,
            json!({"retry_join": ["a", "b"], "ports": {"http": 3, "dns": 2}, "datacenter": "y"})
        );
    }

    #[test]
    fn hcl_blocks_become_objects_and_repeated_blocks_a_list() {
        let text = r#"
            datacenter = "east"
            ports { http = 18500 }
            service {
              name = "web"
              port = 80
            }
            service {
              name = "api"
              port = 81
            }
        "#;
        let value = parse(Path::new("a.hcl"), text).unwrap();
        assert_eq!(value["datacenter"], "east");
        assert_eq!(value["ports"]["http"], 18500);
        let services = value["service"].as_array().expect("two service blocks");
        assert_eq!(services[1]["name"], "api");
    }

    #[test]
    fn consul_only_keys_are_removed_and_named_others_stay() {
        let mut value = json!({
            "telemetry": {"prometheus_retention_time": "60s"},
            "ports": {"grpc": 8502, "http": 8500},
            "bogus": 1
        });
        let removed = strip_consul_only(&mut value);
        assert_eq!(removed, vec!["ports.grpc", "telemetry"]);
        assert_eq!(value, json!({"ports": {"http": 8500}, "bogus": 1}));
    }

    #[test]
    fn a_file_that_is_not_an_object_is_refused_naming_it() {
        let err = parse(Path::new("x.json"), "[1]").unwrap_err();
        assert!(err.message.contains("x.json"), "{err}");
    }
}
