//! Consul's TLS settings, resolved: the `tls { defaults, internal_rpc, https }` blocks (Consul
//! 1.12+) and the older top-level keys (`ca_file`, `cert_file`, `key_file`, `verify_incoming`,
//! `verify_incoming_rpc`, `verify_incoming_https`, `verify_outgoing`, `verify_server_hostname`,
//! `tls_min_version`), with Consul's precedence: a key in `tls.https` / `tls.internal_rpc` wins
//! (`verify_incoming_https` / `verify_incoming_rpc` count as set there), then `tls.defaults`,
//! then the other top-level keys (Consul's `agent/config/deprecated.go`, `builder.go`).
//! `tls.https.verify_outgoing` is accepted and has no effect (HTTPS makes no outgoing
//! connections), as in Consul. Only file names and switches live here; `crate::tls` reads the files.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The lowest TLS version a listener or client accepts. Beacon refuses anything below 1.2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// The TLS settings of one kind of connection: the HTTPS API, or server RPC (both directions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSide {
    /// PEM file of the CA certificates that sign peers' certificates.
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates, used with (or instead of) `ca_file`.
    pub ca_path: Option<PathBuf>,
    /// PEM certificate chain this agent presents (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Incoming connections must present a certificate signed by the CA.
    pub verify_incoming: bool,
    /// Outgoing connections use TLS and verify the peer's certificate against the CA.
    pub verify_outgoing: bool,
    pub min_version: TlsVersion,
}

impl TlsSide {
    /// Whether this side has a certificate to serve TLS with.
    pub fn has_cert(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn has_ca(&self) -> bool {
        self.ca_file.is_some() || self.ca_path.is_some()
    }
}

/// All of an agent's TLS settings. Nothing configured means plaintext everywhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    pub https: TlsSide,
    pub rpc: TlsSide,
    /// A server's certificate must name `server.<datacenter>.<domain>` (Consul's
    /// `tls.internal_rpc.verify_server_hostname`); implies `rpc.verify_outgoing`.
    pub verify_server_hostname: bool,
}

impl TlsConfig {
    /// Whether any TLS material is configured (the agent then loads it at start).
    pub fn enabled(&self) -> bool {
        self.https.has_cert() || self.rpc.has_cert() || self.rpc.has_ca() || self.https.has_ca()
    }
}

/// One `tls.*` block, or the top-level keys: every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTlsSide {
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub tls_min_version: Option<String>,
    pub verify_server_hostname: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    #[serde(default)]
    defaults: FileTlsSide,
    #[serde(default)]
    internal_rpc: FileTlsSide,
    #[serde(default)]
    https: FileTlsSide,
}

/// The top-level (pre-1.12) keys.
#[derive(Debug, Default)]
pub(super) struct LegacyTls {
    pub side: FileTlsSide,
    pub verify_incoming_rpc: Option<bool>,
    pub verify_incoming_https: Option<bool>,
}

fn min_version(key: &str, value: Option<&str>) -> Result<TlsVersion, ConfigError> {
    match value {
        None => Ok(TlsVersion::Tls12),
        Some("TLSv1_2" | "tls12") => Ok(TlsVersion::Tls12),
        Some("TLSv1_3" | "tls13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLSv1_0" | "TLSv1_1" | "tls10" | "tls11")) => Err(ConfigError::new(
            key,
            format!("{v} is below TLS 1.2, which Beacon requires (use TLSv1_2 or TLSv1_3)"),
        )),
        Some(v) => Err(ConfigError::new(
            key,
            format!("{v:?} is not one of TLSv1_2, TLSv1_3 (or tls12, tls13)"),
        )),
    }
}

fn side(
    name: &str,
    specific: &FileTlsSide,
    defaults: &FileTlsSide,
    legacy: &FileTlsSide,
    legacy_verify_incoming: Option<bool>,
) -> Result<TlsSide, ConfigError> {
    let pick = |f: fn(&FileTlsSide) -> Option<PathBuf>| {
        f(specific).or_else(|| f(defaults)).or_else(|| f(legacy))
    };
    // Consul's `applyDeprecatedTLSConfig`: `verify_incoming_rpc`/`_https` fill the
    // `internal_rpc`/`https` block and the other top-level keys fill `tls.defaults`, each only
    // where the block leaves the key unset.
    let flag = |f: fn(&FileTlsSide) -> Option<bool>, legacy_specific: Option<bool>| {
        f(specific)
            .or(legacy_specific)
            .or_else(|| f(defaults))
            .or_else(|| f(legacy))
            .unwrap_or(false)
    };
    let (version_key, version) = if specific.tls_min_version.is_some() {
        (
            format!("tls.{name}.tls_min_version"),
            &specific.tls_min_version,
        )
    } else if defaults.tls_min_version.is_some() {
        (
            "tls.defaults.tls_min_version".into(),
            &defaults.tls_min_version,
        )
    } else {
        ("tls_min_version".into(), &legacy.tls_min_version)
    };
    let side = TlsSide {
        ca_file: pick(|s| s.ca_file.clone()),
        ca_path: pick(|s| s.ca_path.clone()),
        cert_file: pick(|s| s.cert_file.clone()),
        key_file: pick(|s| s.key_file.clone()),
        verify_incoming: flag(|s| s.verify_incoming, legacy_verify_incoming),
        // Only server RPC makes outgoing connections.
        verify_outgoing: name == "internal_rpc" && flag(|s| s.verify_outgoing, None),
        min_version: min_version(&version_key, version.as_deref())?,
    };
    if side.cert_file.is_some() != side.key_file.is_some() {
        return Err(ConfigError::new(
            format!("tls.{name}.cert_file"),
            "cert_file and key_file must be given together",
        ));
    }
    if side.verify_incoming && !(side.has_ca() && side.has_cert()) {
        return Err(ConfigError::new(
            format!("tls.{name}.verify_incoming"),
            "needs ca_file (or ca_path), cert_file and key_file",
        ));
    }
    if side.verify_outgoing && !side.has_ca() {
        return Err(ConfigError::new(
            format!("tls.{name}.verify_outgoing"),
            "needs ca_file (or ca_path) to verify servers with",
        ));
    }
    Ok(side)
}

/// Resolves the blocks and the legacy keys into one [`TlsConfig`].
pub(super) fn resolve(file: &FileTls, legacy: &LegacyTls) -> Result<TlsConfig, ConfigError> {
    for (name, block) in [("defaults", &file.defaults), ("https", &file.https)] {
        if block.verify_server_hostname.is_some() {
            return Err(ConfigError::new(
                format!("tls.{name}.verify_server_hostname"),
                "belongs in tls.internal_rpc (it applies to server RPC only)",
            ));
        }
    }
    let https = side(
        "https",
        &file.https,
        &file.defaults,
        &legacy.side,
        legacy.verify_incoming_https,
    )?;
    let mut rpc = side(
        "internal_rpc",
        &file.internal_rpc,
        &file.defaults,
        &legacy.side,
        legacy.verify_incoming_rpc,
    )?;
    let verify_server_hostname = file
        .internal_rpc
        .verify_server_hostname
        .or(legacy.side.verify_server_hostname)
        .unwrap_or(false);
    if verify_server_hostname {
        // As Consul since 1.12: checking the server's name means verifying it at all.
        if !rpc.has_ca() {
            return Err(ConfigError::new(
                "tls.internal_rpc.verify_server_hostname",
                "needs ca_file (or ca_path) to verify servers with",
            ));
        }
        rpc.verify_outgoing = true;
    }
    Ok(TlsConfig {
        https,
        rpc,
        verify_server_hostname,
    })
}
