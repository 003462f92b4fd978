//! TLS for the HTTPS API, server RPC (both directions) and DNS over TLS, on rustls with its
//! aws-lc-rs provider (the only one compiled: two providers make rustls panic).
//!
//! This module owns the certificates: it reads the PEM files named by
//! [`TlsConfig`](crate::config::TlsConfig), builds one rustls config per use, and swaps them all
//! at once when a reload commits ([`Tls::stage`], [`Tls::commit`]), so new connections use the
//! new files while open ones keep the certificates they were made with. It also owns Consul's rule for who is a server:
//! with `verify_server_hostname` a server's certificate names `server.<datacenter>.<domain>`
//! (Consul's `tlsutil.Configurator`, `agent/config/builder.go`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::{TlsConfig, TlsSide, TlsVersion};

/// Why TLS material could not be loaded; names the file and the key it came from.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct TlsError {
    what: String,
    message: String,
}

fn error(what: impl Into<String>, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        what: what.into(),
        message: message.to_string(),
    }
}

/// An agent's TLS state: what its settings ask for, and the configs built from the files.
pub struct Tls {
    /// `server.<datacenter>.<domain>`: the name servers' certificates carry and clients check.
    server_name: String,
    current: ArcSwap<Material>,
    /// Bumped by every reload, so connection pools retire connections made before it.
    generation: AtomicU64,
    /// Serves DNS over TLS the current certificate (hickory keeps one rustls config for the
    /// listener's life, so the certificate is looked up per handshake instead).
    dot: Arc<CurrentCert>,
}

/// What one load of the files produced.
struct Material {
    config: TlsConfig,
    https: Option<Arc<ServerConfig>>,
    rpc_server: Option<Arc<ServerConfig>>,
    rpc_client: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// Certificates read and checked by [`Tls::stage`], not in use until [`Tls::commit`].
pub struct Staged {
    material: Material,
    dot: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => rustls::DEFAULT_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| error(&what, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(&what, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(what, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| error(&what, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| error(what, format!("not a PEM private key: {e}")))
}

/// The CA certificates (DER) of `ca_file` and every file of `ca_path`, as Consul reads them
/// (the whole directory). A file or directory that yields no certificate is an error, so a
/// mistyped CA never means "trust nothing" or "trust the system". Shared with the CLI.
pub fn read_ca_certs(
    ca_file: Option<&Path>,
    ca_path: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut files: Vec<PathBuf> = ca_file.iter().map(|p| p.to_path_buf()).collect();
    if let Some(dir) = ca_path {
        let entries = fs::read_dir(dir).map_err(|e| error(dir.display().to_string(), e))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(error(dir.display().to_string(), "ca_path holds no files"));
        }
        files.extend(found);
    }
    let mut certs = Vec::new();
    for file in files {
        certs.extend(read_certs(&file)?);
    }
    Ok(certs)
}

fn read_roots(side: &TlsSide) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    let certs = read_ca_certs(side.ca_file.as_deref(), side.ca_path.as_deref())?;
    if certs.is_empty() {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| error("ca_file", format!("bad CA certificate: {e}")))?;
    }
    Ok(Some(Arc::new(roots)))
}

fn identity(
    side: &TlsSide,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    match (&side.cert_file, &side.key_file) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            // Served anyway (the operator may be mid-rotation), but peers will refuse it.
            let valid = x509_parser::parse_x509_certificate(&certs[0])
                .map(|(_, parsed)| parsed.validity().is_valid());
            if valid == Ok(false) {
                tracing::warn!(file = %cert.display(), "this certificate has expired or is not valid yet: peers will refuse it");
            }
            Ok(Some((certs, read_key(key)?)))
        }
        _ => Ok(None),
    }
}

/// Whether the certificate of `side` names `name` (None without a certificate).
fn names(side: &TlsSide, name: &str) -> Option<bool> {
    let certs = read_certs(side.cert_file.as_ref()?).ok()?;
    let name = ServerName::try_from(name).ok()?;
    let parsed = ParsedCertificate::try_from(certs.first()?).ok()?;
    Some(rustls::client::verify_server_name(&parsed, &name).is_ok())
}

/// A server config for one listener kind: its certificate, and client certificates required
/// (`verify_incoming`), optional (a CA is configured: peers may still prove who they are), or
/// not asked for.
fn server_config(side: &TlsSide, alpn: &[&[u8]]) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let Some((certs, key)) = identity(side)? else {
        return Ok(None);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(side.min_version))
        .map_err(|e| error("tls_min_version", e))?;
    let builder = match read_roots(side)? {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if side.verify_incoming {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| error("ca_file", format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| error("cert_file/key_file", e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// The client config for outgoing server RPC, when `verify_outgoing` asks for TLS.
fn rpc_client_config(
    side: &TlsSide,
    verify_server_hostname: bool,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if !side.verify_outgoing {
        return Ok(None);
    }
    let roots = read_roots(side)?.ok_or_else(|| error("ca_file", "verify_outgoing needs a CA"))?;
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| error("ca_file", format!("cannot verify servers with it: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = if verify_server_hostname {
        webpki
    } else {
        Arc::new(ChainOnly(webpki))
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(side.min_version))
        .map_err(|e| error("tls_min_version", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity(side)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| error("cert_file/key_file", e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

fn certified_key(side: &TlsSide) -> Result<Option<Arc<CertifiedKey>>, TlsError> {
    let Some((certs, key)) = identity(side)? else {
        return Ok(None);
    };
    let key = CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| error("cert_file/key_file", e))?;
    Ok(Some(Arc::new(key)))
}

impl Material {
    fn load(
        config: &TlsConfig,
        server_name: &str,
    ) -> Result<(Material, Option<Arc<CertifiedKey>>), TlsError> {
        let https = server_config(&config.https, &[b"h2", b"http/1.1"])?;
        let rpc_server = server_config(&config.rpc, &[])?;
        let rpc_client = match rpc_client_config(&config.rpc, config.verify_server_hostname)? {
            Some(client) => {
                let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
                    error(
                        "datacenter/domain",
                        format!("{server_name:?} is not a DNS name: {e}"),
                    )
                })?;
                Some((client, name))
            }
            None => None,
        };
        // DNS over TLS serves the agent's certificate: the HTTPS one, else the RPC one.
        let dot = match certified_key(&config.https)? {
            Some(key) => Some(key),
            None => certified_key(&config.rpc)?,
        };
        let material = Material {
            config: config.clone(),
            https,
            rpc_server,
            rpc_client,
        };
        Ok((material, dot))
    }
}

impl Tls {
    /// Reads every file `config` names. `domain` is the DNS domain with or without its
    /// trailing dot (`consul.`).
    pub fn load(config: &TlsConfig, datacenter: &str, domain: &str) -> Result<Tls, TlsError> {
        let server_name = server_name(datacenter, domain);
        let (material, dot) = Material::load(config, &server_name)?;
        Ok(Tls {
            server_name,
            current: ArcSwap::from_pointee(material),
            generation: AtomicU64::new(0),
            dot: Arc::new(CurrentCert(arc_swap::ArcSwapOption::new(dot))),
        })
    }

    /// Reads and checks the files `config` names (SIGHUP, `PUT /v1/agent/reload`) without
    /// using them yet: a reload stages everything it changes, then commits it all.
    pub fn stage(&self, config: &TlsConfig) -> Result<Staged, TlsError> {
        let (material, dot) = Material::load(config, &self.server_name)?;
        Ok(Staged { material, dot })
    }

    /// Puts staged certificates in use for new connections; connection pools retire the
    /// connections made before ([`Tls::generation`]), which finish what they carry.
    pub fn commit(&self, staged: Staged) {
        self.current.store(Arc::new(staged.material));
        self.dot.0.store(staged.dot);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many reloads have been committed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The HTTPS API's config, when a certificate is configured.
    pub fn https(&self) -> Option<Arc<ServerConfig>> {
        self.current.load().https.clone()
    }

    /// The RPC listener's config, when a certificate is configured.
    pub fn rpc_server(&self) -> Option<Arc<ServerConfig>> {
        self.current.load().rpc_server.clone()
    }

    /// Whether the RPC listener refuses plaintext connections (`verify_incoming`).
    pub fn rpc_requires_tls(&self) -> bool {
        self.current.load().config.rpc.verify_incoming
    }

    /// The config and the name to ask for on outgoing RPC connections, when
    /// `verify_outgoing` makes them TLS.
    pub fn rpc_client(&self) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
        self.current.load().rpc_client.clone()
    }

    /// Whether this agent's RPC certificate names `server.<datacenter>.<domain>`, as a server's
    /// must under `verify_server_hostname` (None without a certificate).
    pub fn rpc_cert_names_server(&self) -> Option<bool> {
        names(&self.current.load().config.rpc, &self.server_name)
    }

    /// The certificate resolver for DNS over TLS.
    pub fn dot_certs(&self) -> Arc<dyn ResolvesServerCert> {
        self.dot.clone()
    }

    /// `server.<datacenter>.<domain>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Whether an incoming RPC peer may act as a server (Raft, membership): always, unless
    /// `verify_incoming` and `verify_server_hostname` are both on; then only a peer whose
    /// verified certificate names `server.<datacenter>.<domain>`. Stricter than Consul, which
    /// checks the name on outgoing connections only.
    pub fn peer_is_server(&self, certs: Option<&[CertificateDer<'_>]>) -> bool {
        let current = self.current.load();
        if !(current.config.verify_server_hostname && current.config.rpc.verify_incoming) {
            return true;
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(self.server_name.as_str()) else {
            return false;
        };
        ParsedCertificate::try_from(leaf)
            .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &name).is_ok())
    }
}

/// `server.<datacenter>.<domain>` without the domain's trailing dot.
pub fn server_name(datacenter: &str, domain: &str) -> String {
    format!("server.{datacenter}.{}", domain.trim_end_matches('.'))
}

/// The DNS-over-TLS certificate, swapped on reload.
#[derive(Debug)]
struct CurrentCert(arc_swap::ArcSwapOption<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

/// Verifies a server's chain against the CA but not the name it was asked for: Consul's
/// `verify_outgoing` without `verify_server_hostname`.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
