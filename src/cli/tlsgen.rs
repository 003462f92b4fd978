//! Agent TLS certificates: Beacon's `consul tls ca create` and `consul tls cert create`.
//!
//! This module owns the files those commands write and what is in them: names and `<n>`
//! numbering, subjects, SANs, key usages, name constraints, and never overwriting a file.
//! It follows Consul's `command/tls/{ca,cert}/create` and `tlsutil/generate.go`, so the
//! files work with either tool: EC P-256 keys (mode 0600), random serials, and a CA made by
//! `consul tls ca create` (SEC1 or PKCS#8 key) can sign Beacon certificates.
//! One difference: keys are written as rcgen gives them, PKCS#8 `PRIVATE KEY`, where
//! Consul writes SEC1 `EC PRIVATE KEY`; rustls and Go's `tls.X509KeyPair` read both.
//!
//! No DER is parsed here: rcgen builds and signs, x509-parser (also inside rcgen's
//! `Issuer`) reads the CA certificate, and rustls' WebPKI verifier checks the result.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use rcgen::KeyUsagePurpose::{CrlSign, DigitalSignature, KeyCertSign, KeyEncipherment};
use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, GeneralSubtree, IsCa,
    Issuer, KeyPair, NameConstraints, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

/// Validity of a new CA in days: Consul's `tls ca create -days` default (about five years).
pub const DEFAULT_CA_DAYS: u32 = 1825;

/// Validity of a new certificate in days: Consul's `tls cert create -days` default.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// Start of the default CA common name; the decimal serial follows, as in Consul.
pub const DEFAULT_CA_NAME_PREFIX: &str = "Consul Agent CA";

/// Highest `<n>` tried when looking for free certificate file names (Consul's limit).
const MAX_CERT_INDEX: u32 = 10_000;

/// Options of [`create_ca`]: the flags of `consul tls ca create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// `-domain` (default `consul`): names the files; a permitted name constraint.
    pub domain: String,
    /// `-days` (default [`DEFAULT_CA_DAYS`]).
    pub days: u32,
    /// `-name-constraint`: a critical name-constraints extension permitting only
    /// `localhost`, [`domain`](Self::domain) and the additional domains. A CA cannot be
    /// widened later, so DNS names used to reach the HTTPS API or UI must be listed now.
    pub name_constraint: bool,
    /// `-additional-name-constraint`; ignored without `name_constraint`, as in Consul.
    pub additional_name_constraints: Vec<String>,
    /// `-common-name`; default `"Consul Agent CA <serial>"`.
    pub common_name: Option<String>,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            domain: "consul".to_owned(),
            days: DEFAULT_CA_DAYS,
            name_constraint: false,
            additional_name_constraints: Vec::new(),
            common_name: None,
        }
    }
}

/// Creates a new agent CA, like `consul tls ca create`.
///
/// Writes `<domain>-agent-ca.pem` (self-signed, `cA=TRUE`, keyCertSign/cRLSign/
/// digitalSignature, subject and authority key ids) and `<domain>-agent-ca-key.pem`
/// (mode 0600) in `dir`, and returns their paths in that order. Unlike Consul's, the
/// subject holds only the common name, not HashiCorp's organization and address.
///
/// # Errors
/// `<path> already exists` (nothing is written), invalid options, I/O failure.
pub fn create_ca(dir: &Path, opts: &CaOptions) -> Result<(PathBuf, PathBuf)> {
    check_options(&[("domain", &opts.domain)], opts.days)?;
    let cert_path = dir.join(format!("{}-agent-ca.pem", opts.domain));
    let key_path = dir.join(format!("{}-agent-ca-key.pem", opts.domain));
    if let Some(path) = [&cert_path, &key_path].into_iter().find(|p| exists(p)) {
        bail!("{} already exists", path.display());
    }

    let serial = random_serial();
    let common_name = match &opts.common_name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("{DEFAULT_CA_NAME_PREFIX} {}", u128::from_be_bytes(serial)),
    };
    let mut params = base_params(&common_name, serial, opts.days);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![DigitalSignature, KeyCertSign, CrlSign];
    if opts.name_constraint {
        // Consul's order: the additional domains, then the cluster domain and localhost.
        let extra = opts.additional_name_constraints.iter().map(|d| d.trim());
        let permitted = extra.filter(|d| !d.is_empty());
        let permitted = permitted.chain([opts.domain.as_str(), "localhost"]);
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .map(|d| GeneralSubtree::DnsName(d.into()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key).context("generating CA")?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// The kind of certificate [`create_cert`] makes: Consul's `-server`, `-client` or `-cli`.
/// Its SANs are the extra DNS names, then those listed here, then the extra IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// `<node>.server.<dc>.<domain>`, `server.<dc>.<domain>`, `localhost`, `127.0.0.1`;
    /// serverAuth and clientAuth. Its holder can act as a server of the datacenter:
    /// guard its key like the CA key.
    Server,
    /// `client.<dc>.<domain>`, `localhost`, `127.0.0.1`; clientAuth and serverAuth (client
    /// agents also serve the HTTPS API and accept RPC from the CLI).
    Client,
    /// `cli.<dc>.<domain>`, `localhost`; clientAuth only, for the command-line tool.
    Cli,
}

/// Options of [`create_cert`]: the flags of `consul tls cert create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOptions {
    /// `-server`, `-client` or `-cli`.
    pub kind: CertKind,
    /// `-dc` (default `dc1`).
    pub datacenter: String,
    /// `-domain` (default `consul`).
    pub domain: String,
    /// `-days` (default [`DEFAULT_CERT_DAYS`]).
    pub days: u32,
    /// `-additional-dnsname`; blank entries are skipped.
    pub additional_dnsnames: Vec<String>,
    /// `-additional-ipaddress`.
    pub additional_ipaddresses: Vec<IpAddr>,
    /// `-ca`; empty means `<domain>-agent-ca.pem`. Relative to the output directory.
    pub ca_file: PathBuf,
    /// `-key`; empty means `<domain>-agent-ca-key.pem`. Relative to the output directory.
    pub key_file: PathBuf,
    /// `-node`, server certificates only: adds the SAN `<node>.server.<dc>.<domain>`.
    pub node: Option<String>,
}

impl CertOptions {
    /// Consul's defaults for `kind`: `dc1`, `consul`, [`DEFAULT_CERT_DAYS`], no extra names,
    /// and CA files left empty so that they follow [`domain`](Self::domain).
    pub fn new(kind: CertKind) -> Self {
        Self {
            kind,
            datacenter: "dc1".to_owned(),
            domain: "consul".to_owned(),
            days: DEFAULT_CERT_DAYS,
            additional_dnsnames: Vec::new(),
            additional_ipaddresses: Vec::new(),
            ca_file: PathBuf::new(),
            key_file: PathBuf::new(),
            node: None,
        }
    }
}

/// Creates a certificate signed by the agent CA, like `consul tls cert create`.
///
/// Writes `<dc>-<kind>-<domain>-<n>.pem` and `<dc>-<kind>-<domain>-<n>-key.pem` (mode 0600)
/// in `dir`, `<n>` being the first number from 0 for which neither file exists, and returns
/// their paths. Subject CN `<kind>.<dc>.<domain>`, `cA=FALSE`, digitalSignature and
/// keyEncipherment, SANs and extended key usages as listed at [`CertKind`].
///
/// # Errors
/// A missing CA (``... not found: run `beacon tls ca create` first``), a CA file or key
/// that does not parse (`cannot parse CA key ...`), is no CA, is expired or does not
/// belong together; a new certificate that would not verify against the CA (a SAN outside
/// its name constraints); `node` on a non-server; no free `<n>` up to 10000. Nothing is
/// written then, and an existing file is never overwritten.
pub fn create_cert(dir: &Path, opts: &CertOptions) -> Result<(PathBuf, PathBuf)> {
    let (dc, domain) = (&opts.datacenter, &opts.domain);
    check_options(&[("datacenter", dc), ("domain", domain)], opts.days)?;
    let node = opts.node.as_deref().filter(|n| !n.is_empty());
    if node.is_some() && opts.kind != CertKind::Server {
        bail!("a node name can only be given for a server certificate");
    }
    let (kind, ekus) = match opts.kind {
        CertKind::Server => ("server", vec![ServerAuth, ClientAuth]),
        CertKind::Client => ("client", vec![ClientAuth, ServerAuth]),
        CertKind::Cli => ("cli", vec![ClientAuth]),
    };
    // `join` keeps an absolute path as it is.
    let ca_file = |given: &Path, default: &str| match given.as_os_str().is_empty() {
        true => dir.join(format!("{domain}-{default}")),
        false => dir.join(given),
    };
    let ca_path = ca_file(&opts.ca_file, "agent-ca.pem");
    let (ca_der, issuer) = load_ca(&ca_path, &ca_file(&opts.key_file, "agent-ca-key.pem"))?;
    let (cert_path, key_path) = free_pair(dir, &format!("{dc}-{kind}-{domain}"))?;

    let name = format!("{kind}.{dc}.{domain}");
    let mut params = base_params(&name, random_serial(), opts.days);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![DigitalSignature, KeyEncipherment];
    params.extended_key_usages = ekus;
    let node_name = node.map(|node| format!("{node}.{name}"));
    let dns = opts.additional_dnsnames.iter().map(|d| d.trim().to_owned());
    let dns = dns.chain(node_name).chain([name, "localhost".into()]);
    for dns in dns.filter(|d| !d.is_empty()) {
        let ia5 =
            Ia5String::try_from(dns.as_str()).map_err(|e| anyhow!("bad DNS name {dns:?}: {e}"))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    let localhost = (opts.kind != CertKind::Cli).then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ips = opts.additional_ipaddresses.iter().copied().chain(localhost);
    params.subject_alt_names.extend(ips.map(SanType::IpAddress));
    let mut seen = HashSet::new();
    params
        .subject_alt_names
        .retain(|san| seen.insert(san.clone()));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer).context("signing")?;

    // Consul runs `tlsutil.Verify` on what it signed; so do we, before writing. This
    // catches SANs outside the CA's name constraints, and a CA subject that rcgen does not
    // reproduce byte for byte (a repeated attribute, say), which no verifier would chain.
    // Every kind has clientAuth, so the client verifier suits all three.
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()?
        .verify_client_cert(cert.der(), &[], UnixTime::now())
        .with_context(|| format!("new certificate fails to verify with {}", ca_path.display()))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

type Ca = (CertificateDer<'static>, Issuer<'static, KeyPair>);

/// Reads the CA and its key. Checks with x509-parser that they belong together and can
/// sign now, so these mistakes get a clear message rather than a failed verification.
fn load_ca(ca_path: &Path, key_path: &Path) -> Result<Ca> {
    let (ca, key) = (ca_path.display(), key_path.display());
    let ca_pem = read_existing(ca_path, "CA file")?;
    let key_pem = read_existing(key_path, "CA key file")?;
    let der = CertificateDer::from_pem_slice(&ca_pem)
        .map_err(|e| anyhow!("no PEM certificate in {ca}: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("cannot parse CA certificate {ca}: {e}"))?;
    if !cert.is_ca() {
        bail!("{ca} is not a CA certificate");
    }
    if !cert.validity().is_valid() {
        bail!("CA certificate {ca} has expired or is not yet valid");
    }
    // This takes `PRIVATE KEY` and Consul's `EC PRIVATE KEY`; rcgen signs with either.
    let key_pair = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|k| KeyPair::try_from(&k).map_err(|e| anyhow!("{e}")))
        .with_context(|| format!("cannot parse CA key {key}"))?;
    if key_pair.der_bytes() != &*cert.public_key().subject_public_key.data {
        bail!("CA key {key} does not match CA certificate {ca}");
    }
    let issuer = Issuer::from_ca_cert_der(&der, key_pair)
        .with_context(|| format!("unsupported CA certificate {ca}"))?;
    Ok((der, issuer))
}

fn read_existing(path: &Path, what: &str) -> Result<Vec<u8>> {
    let shown = path.display();
    fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            anyhow!("{what} {shown} not found: run `beacon tls ca create` first")
        }
        _ => anyhow!("reading {what} {shown}: {e}"),
    })
}

fn free_pair(dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf)> {
    for n in 0..=MAX_CERT_INDEX {
        let cert = dir.join(format!("{prefix}-{n}.pem"));
        let key = dir.join(format!("{prefix}-{n}-key.pem"));
        if !exists(&cert) && !exists(&key) {
            return Ok((cert, key));
        }
    }
    bail!("no free file name {prefix}-<n>.pem for n up to {MAX_CERT_INDEX}")
}

/// A dangling symlink counts as existing: writing through it would create a file elsewhere.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Creates both files with `create_new`, so that one appearing since the existence check
/// is not overwritten either. A file left incomplete is removed again.
fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<()> {
    write_new(cert_path, cert_pem, 0o644)?;
    write_new(key_path, key_pem, 0o600).inspect_err(|_| drop(fs::remove_file(cert_path)))
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => anyhow!("{} already exists", path.display()),
            _ => anyhow!("creating {}: {e}", path.display()),
        })?;
    let written = file.write_all(contents.as_bytes());
    written.and_then(|()| file.sync_all()).or_else(|e| {
        drop(fs::remove_file(path));
        Err(e).with_context(|| format!("writing {}", path.display()))
    })
}

/// Rejects zero days, and values that would not be plain parts of a file name.
fn check_options(parts: &[(&str, &str)], days: u32) -> Result<()> {
    if days == 0 {
        bail!("the validity must be at least one day");
    }
    for (what, value) in parts {
        if value.is_empty() || value.contains(['/', '\\']) || *value == "." || *value == ".." {
            bail!("invalid {what} {value:?}");
        }
    }
    Ok(())
}

/// Subject, serial, validity from now, and an authority key identifier: Go writes one
/// whenever the issuer has a subject key identifier, as Consul's and Beacon's CAs do.
fn base_params(common_name: &str, serial: [u8; 16], days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let name = &mut params.distinguished_name;
    name.push(DnType::CommonName, go_string(common_name));
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = OffsetDateTime::now_utc();
    params.not_after = params.not_before + Duration::days(days.into());
    params.use_authority_key_identifier_extension = true;
    params
}

/// Go's `pkix.Name` marshalling: PrintableString when every character allows it, else
/// UTF8String. Matching it keeps subjects identical to Consul's.
fn go_string(s: &str) -> DnValue {
    match PrintableString::try_from(s) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(s.to_owned()),
    }
}

/// 128 random bits like Consul's `GenerateSerialNumber`, with the top bit cleared so the
/// serial is positive and its DER INTEGER needs no padding byte.
fn random_serial() -> [u8; 16] {
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    serial
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use x509_parser::certificate::X509Certificate;
    use x509_parser::der_parser::asn1_rs::Tag;
    use x509_parser::extensions::ParsedExtension;

    type Pair = (PathBuf, PathBuf);

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn roots(ca: &Path) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        store.add(cert_der(ca)).unwrap();
        Arc::new(store)
    }

    fn verify_server(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder(roots(ca)).build().unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let now = UnixTime::now();
        let verified = verifier.verify_server_cert(&cert_der(cert), &[], &name, &[], now);
        verified.map(drop)
    }

    fn verify_client(ca: &Path, cert: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder(roots(ca)).build().unwrap();
        let verified = verifier.verify_client_cert(&cert_der(cert), &[], UnixTime::now());
        verified.map(drop)
    }

    fn file_name(path: &Path) -> &str {
        path.file_name().unwrap().to_str().unwrap()
    }

    /// The name of a certificate file without `.pem`, checking its key file's name.
    fn stem(pair: &Pair) -> String {
        let stem = file_name(&pair.0).strip_suffix(".pem").unwrap();
        assert_eq!(file_name(&pair.1), format!("{stem}-key.pem"));
        stem.to_owned()
    }

    fn opts(kind: CertKind, change: impl FnOnce(&mut CertOptions)) -> CertOptions {
        let mut opts = CertOptions::new(kind);
        change(&mut opts);
        opts
    }

    fn assert_err<T: std::fmt::Debug>(result: Result<T>, expected: &str) {
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains(expected), "{err}");
    }

    /// The string type and text of a certificate's common name.
    fn common_name(cert: &X509Certificate<'_>) -> (Tag, String) {
        let cn = cert.subject().iter_common_name().next().unwrap();
        let text = cn.as_str().unwrap().to_owned();
        (cn.attr_value().header.tag(), text)
    }

    /// A CA, a server and a client certificate in a fresh directory.
    fn pki() -> (tempfile::TempDir, PathBuf, Pair, Pair) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = create_ca(dir.path(), &CaOptions::default()).unwrap();
        let new = |kind| create_cert(dir.path(), &CertOptions::new(kind)).unwrap();
        let (server, client) = (new(CertKind::Server), new(CertKind::Client));
        (dir, ca, server, client)
    }

    #[test]
    fn file_names_numbering_and_no_overwrite() {
        let (dir, ca, server, client) = pki();
        let new = |kind| create_cert(dir.path(), &CertOptions::new(kind)).unwrap();
        assert_eq!(file_name(&ca), "consul-agent-ca.pem");
        assert!(dir.path().join("consul-agent-ca-key.pem").is_file());
        assert_eq!(stem(&server), "dc1-server-consul-0");
        assert_eq!(stem(&client), "dc1-client-consul-0");
        assert_eq!(stem(&new(CertKind::Server)), "dc1-server-consul-1");
        // A number is only free when neither of its files exists.
        fs::remove_file(&server.0).unwrap();
        assert_eq!(stem(&new(CertKind::Server)), "dc1-server-consul-2");
        fs::remove_file(&server.1).unwrap();
        assert_eq!(stem(&new(CertKind::Server)), "dc1-server-consul-0");
        assert_eq!(stem(&new(CertKind::Cli)), "dc1-cli-consul-0");

        let ca_before = fs::read(&ca).unwrap();
        let again = create_ca(dir.path(), &CaOptions::default());
        assert_err(again, "consul-agent-ca.pem already exists");
        assert_eq!(fs::read(&ca).unwrap(), ca_before);
        // Only the key left over: still refused, and no certificate appears.
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join("consul-agent-ca-key.pem"), "x").unwrap();
        let again = create_ca(other.path(), &CaOptions::default());
        assert_err(again, "consul-agent-ca-key.pem already exists");
        assert!(!other.path().join("consul-agent-ca.pem").exists());
    }

    #[test]
    fn other_dc_and_domain_name_files_and_sans() {
        let dir = tempfile::tempdir().unwrap();
        let ca_opts = CaOptions {
            domain: "beacon".into(),
            ..CaOptions::default()
        };
        let (ca, ca_key) = create_ca(dir.path(), &ca_opts).unwrap();
        assert_eq!(file_name(&ca), "beacon-agent-ca.pem");
        assert_eq!(file_name(&ca_key), "beacon-agent-ca-key.pem");
        let opts = opts(CertKind::Server, |o| {
            (o.datacenter, o.domain) = ("east".into(), "beacon".into());
            o.node = Some("node1".into());
            o.additional_dnsnames = vec![" api.example.com ".into(), String::new()];
            o.additional_ipaddresses = vec!["10.0.0.5".parse().unwrap(), "::1".parse().unwrap()];
        });
        let cert = create_cert(dir.path(), &opts).unwrap();
        assert_eq!(stem(&cert), "east-server-beacon-0");
        let dns = "server.east.beacon node1.server.east.beacon api.example.com localhost";
        for name in dns.split(' ').chain(["127.0.0.1", "10.0.0.5", "::1"]) {
            verify_server(&ca, &cert.0, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_server(&ca, &cert.0, "server.dc1.beacon").is_err());
    }

    #[test]
    fn verifiers_accept_each_kind_only_for_its_role() {
        let (dir, ca, server, client) = pki();
        for name in ["server.dc1.consul", "localhost", "127.0.0.1"] {
            verify_server(&ca, &server.0, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify_server(&ca, &server.0, "client.dc1.consul").is_err());
        // Servers dial each other with their server certificate.
        verify_client(&ca, &server.0).unwrap();

        assert!(verify_server(&ca, &client.0, "server.dc1.consul").is_err());
        verify_server(&ca, &client.0, "client.dc1.consul").unwrap();
        verify_server(&ca, &client.0, "127.0.0.1").unwrap();
        verify_client(&ca, &client.0).unwrap();

        let (cli, _) = create_cert(dir.path(), &CertOptions::new(CertKind::Cli)).unwrap();
        verify_client(&ca, &cli).unwrap();
        let err = verify_server(&ca, &cli, "localhost").unwrap_err();
        assert!(format!("{err:?}").contains("Purpose"), "{err:?}");

        let (_other_dir, other_ca, ..) = pki();
        assert!(verify_server(&other_ca, &server.0, "server.dc1.consul").is_err());
        assert!(verify_client(&other_ca, &client.0).is_err());
    }

    #[test]
    fn keys_and_certificate_contents_follow_consul() {
        let (dir, ca_path, server, client) = pki();
        let ca_key = dir.path().join("consul-agent-ca-key.pem");
        for key in [ca_key, server.1, client.1] {
            let pem = fs::read_to_string(&key).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
            let pair = KeyPair::from_pem(&pem).unwrap();
            assert_eq!(pair.algorithm(), &PKCS_ECDSA_P256_SHA256);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }

        let (ca_der, leaf_der) = (cert_der(&ca_path), cert_der(&server.0));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let days = |c: &X509Certificate<'_>| {
            let validity = c.validity();
            (validity.not_after - validity.not_before)
                .unwrap()
                .whole_days()
        };
        let key_id = |c: &X509Certificate<'_>, authority: bool| {
            let ids = c.iter_extensions().map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) if !authority => Some(id.0),
                ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                    aki.key_identifier.as_ref().map(|id| id.0)
                }
                _ => None,
            });
            ids.flatten().next().unwrap().to_vec()
        };
        assert!(ca.is_ca());
        assert_eq!(ca.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(days(&ca), i64::from(DEFAULT_CA_DAYS));
        let cn = format!("Consul Agent CA {}", ca.serial);
        assert_eq!(common_name(&ca), (Tag::PrintableString, cn));

        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(days(&leaf), i64::from(DEFAULT_CERT_DAYS));
        let cn = "server.dc1.consul".to_owned();
        assert_eq!(common_name(&leaf), (Tag::PrintableString, cn));
        // The leaf names the CA's own key identifier, which rcgen's Issuer copied.
        assert_eq!(key_id(&leaf, true), key_id(&ca, false));
        assert_ne!(key_id(&leaf, false), key_id(&ca, false));
    }

    #[test]
    fn custom_common_name_and_name_constraints() {
        let dir = tempfile::tempdir().unwrap();
        let ca_opts = CaOptions {
            name_constraint: true,
            additional_name_constraints: vec!["example.com".into()],
            common_name: Some("Beacon Test CA_1".into()),
            ..CaOptions::default()
        };
        let (ca, _) = create_ca(dir.path(), &ca_opts).unwrap();
        let ca_der = cert_der(&ca);
        let (_, info) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        // '_' is not a PrintableString character, so Go would use UTF8String.
        let cn = "Beacon Test CA_1".to_owned();
        assert_eq!(common_name(&info), (Tag::Utf8String, cn));
        let nc = info.name_constraints().unwrap().unwrap();
        assert!(nc.critical);
        let permitted = nc.value.permitted_subtrees.iter().flatten();
        let permitted: Vec<_> = permitted.map(|s| format!("{:?}", s.base)).collect();
        let expected = ["example.com", "consul", "localhost"].map(|d| format!("DNSName({d:?})"));
        assert_eq!(permitted, expected);

        let extra = |name: &str| {
            opts(CertKind::Server, |o| {
                o.additional_dnsnames = vec![name.into()]
            })
        };
        let (cert, _) = create_cert(dir.path(), &extra("api.example.com")).unwrap();
        verify_server(&ca, &cert, "api.example.com").unwrap();
        verify_server(&ca, &cert, "server.dc1.consul").unwrap();
        let outside = create_cert(dir.path(), &extra("evil.org"));
        assert_err(outside, "NameConstraintViolation");
        assert!(!dir.path().join("dc1-server-consul-1.pem").exists());
    }

    #[test]
    fn missing_mismatched_and_broken_ca_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let create = |opts: &CertOptions| create_cert(dir.path(), opts);
        let client = |change: fn(&mut CertOptions)| create(&opts(CertKind::Client, change));
        let missing = "consul-agent-ca.pem not found: run `beacon tls ca create` first";
        assert_err(create(&CertOptions::new(CertKind::Server)), missing);
        create_ca(dir.path(), &CaOptions::default()).unwrap();

        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = create_ca(other.path(), &CaOptions::default()).unwrap();
        let mismatched = opts(CertKind::Client, |o| o.key_file = other_key);
        assert_err(create(&mismatched), "does not match CA certificate");
        fs::write(dir.path().join("garbage-key.pem"), "not a key").unwrap();
        let garbage = client(|o| o.key_file = "garbage-key.pem".into());
        assert_err(garbage, "cannot parse CA key");
        // A leaf certificate with its own key must not be usable as a CA.
        let (leaf, key) = create(&CertOptions::new(CertKind::Client)).unwrap();
        let not_ca = opts(CertKind::Client, |o| (o.ca_file, o.key_file) = (leaf, key));
        assert_err(create(&not_ca), "is not a CA certificate");

        let node = client(|o| o.node = Some("n1".into()));
        assert_err(node, "only be given for a server");
        assert_err(client(|o| o.days = 0), "at least one day");
        let dc = client(|o| o.datacenter = "../dc1".into());
        assert_err(dc, "invalid datacenter");
        assert_err(client(|o| o.domain = "..".into()), "invalid domain");
        let zero_days = CaOptions {
            days: 0,
            ..CaOptions::default()
        };
        assert_err(create_ca(dir.path(), &zero_days), "at least one day");
        // CA pair, the garbage key, and the one client pair.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 5);
    }

    #[test]
    fn signs_with_a_consul_style_ca() {
        // `consul tls ca create` writes a SEC1 key and Go's multi-attribute subject, with
        // attributes rcgen only knows by OID (street, postal code).
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING as P256, EcdsaKeyPair};
        let ec = EcdsaKeyPair::generate(&P256).unwrap();
        let sec1 = ec.private_key().as_der().unwrap();
        let sec1_pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref()));
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in [
            (DnType::CountryName, "US"),
            (DnType::CustomDnType(vec![2, 5, 4, 17]), "94105"),
            (DnType::StateOrProvinceName, "CA"),
            (DnType::LocalityName, "San Francisco"),
            (DnType::CustomDnType(vec![2, 5, 4, 9]), "101 Second Street"),
            (DnType::OrganizationName, "HashiCorp Inc."),
        ] {
            params.distinguished_name.push(ty, go_string(value));
        }
        let cn = DnValue::Utf8String("Consul Agent CA 42".into());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyCertSign, CrlSign];
        let key = KeyPair::from_pem(&sec1_pem).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("consul-agent-ca.pem");
        fs::write(&ca_path, params.self_signed(&key).unwrap().pem()).unwrap();
        fs::write(dir.path().join("consul-agent-ca-key.pem"), &sec1_pem).unwrap();

        let (cert, _) = create_cert(dir.path(), &CertOptions::new(CertKind::Server)).unwrap();
        verify_server(&ca_path, &cert, "server.dc1.consul").unwrap();
    }

    /// Ping and echo over TLS, both sides trusting `ca`; the client expects the server to be
    /// `server.dc1.consul`. Returns the outcomes of the server and the client side.
    async fn handshake(ca: &Path, server: &Pair, client: &Pair) -> [Result<()>; 2] {
        let key = |pair: &Pair| PrivateKeyDer::from_pem_file(&pair.1).unwrap();
        let verifier = WebPkiClientVerifier::builder(roots(ca)).build().unwrap();
        let server_config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert_der(&server.0)], key(server))
            .unwrap();
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots(ca))
            .with_client_auth_cert(vec![cert_der(&client.0)], key(client))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut tls = acceptor.accept(server_io).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            Ok(tls.shutdown().await?)
        };
        let client_side = async move {
            let name = ServerName::try_from("server.dc1.consul").unwrap();
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"ping").await?;
            tls.flush().await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            anyhow::ensure!(&buf == b"ping");
            Ok(())
        };
        let (server_side, client_side) = tokio::join!(server_side, client_side);
        [server_side, client_side]
    }

    #[tokio::test]
    async fn mutual_tls_handshake() {
        let (_dir, ca, server, client) = pki();
        // Server certificates also work as client certificates (server-to-server RPC).
        for client in [&client, &server] {
            for side in handshake(&ca, &server, client).await {
                side.unwrap();
            }
        }
        // A client from another CA is refused, and a client certificate cannot pose as a
        // server; both sides see the failure.
        let (_other_dir, _, _, other_client) = pki();
        let refused = handshake(&ca, &server, &other_client).await;
        assert!(refused.iter().all(Result::is_err), "{refused:?}");
        let refused = handshake(&ca, &client, &client).await;
        assert!(refused.iter().all(Result::is_err), "{refused:?}");
    }
}
