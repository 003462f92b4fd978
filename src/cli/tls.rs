//! `beacon tls ca create` and `beacon tls cert create`: Consul's certificate commands, flags
//! and file names, writing into the current directory (the work is in `tlsgen`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::tlsgen::{self, CaOptions, CertKind, CertOptions};

#[derive(Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Certificate authority commands.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Agent certificate commands.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA: <domain>-agent-ca.pem and <domain>-agent-ca-key.pem.
    Create(CaCreate),
}

#[derive(Args)]
struct CaCreate {
    /// The DNS domain the certificates are for.
    #[arg(long, default_value = "consul")]
    domain: String,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = tlsgen::DEFAULT_CA_DAYS)]
    days: u32,
    /// Restrict the CA to the domain and `localhost` (X.509 name constraints).
    #[arg(long)]
    name_constraint: bool,
    /// Another name the CA may sign for with -name-constraint; repeatable.
    #[arg(long = "additional-name-constraint", value_name = "NAME")]
    additional_name_constraints: Vec<String>,
    /// The CA's common name (default: "Consul Agent CA" and a serial).
    #[arg(long)]
    common_name: Option<String>,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a server, client or CLI certificate signed by the CA.
    Create(CertCreate),
}

#[derive(Args)]
struct CertCreate {
    /// A server certificate: names server.<dc>.<domain>, localhost and 127.0.0.1.
    #[arg(long, group = "kind")]
    server: bool,
    /// A client agent certificate: names client.<dc>.<domain>, localhost and 127.0.0.1.
    #[arg(long, group = "kind")]
    client: bool,
    /// A CLI certificate: names cli.<dc>.<domain> and localhost.
    #[arg(long, group = "kind")]
    cli: bool,
    #[arg(long, default_value = "dc1")]
    dc: String,
    #[arg(long, default_value = "consul")]
    domain: String,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = tlsgen::DEFAULT_CERT_DAYS)]
    days: u32,
    /// Another DNS name for the certificate; repeatable.
    #[arg(long = "additional-dnsname", value_name = "NAME")]
    additional_dnsnames: Vec<String>,
    /// Another IP address for the certificate; repeatable.
    #[arg(long = "additional-ipaddress", value_name = "IP")]
    additional_ipaddresses: Vec<IpAddr>,
    /// The CA certificate (default <domain>-agent-ca.pem, so it follows -domain).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The CA's key (default <domain>-agent-ca-key.pem).
    #[arg(long)]
    key: Option<PathBuf>,
    /// For a server certificate: also name <node>.server.<dc>.<domain>.
    #[arg(long)]
    node: Option<String>,
}

/// The agent writes its domain with a trailing dot (`consul.`); certificates and file names
/// do not.
fn bare(domain: String) -> String {
    domain.trim_end_matches('.').to_string()
}

pub fn run(args: TlsArgs) -> Result<(), String> {
    let here = std::path::Path::new(".");
    match args.command {
        TlsCommand::Ca {
            command: CaCommand::Create(c),
        } => {
            let (cert, key) = tlsgen::create_ca(
                here,
                &CaOptions {
                    domain: bare(c.domain),
                    days: c.days,
                    name_constraint: c.name_constraint,
                    additional_name_constraints: c.additional_name_constraints,
                    common_name: c.common_name,
                },
            )
            .map_err(|e| format!("{e:#}"))?;
            println!("==> Saved {}", cert.display());
            println!("==> Saved {}", key.display());
        }
        TlsCommand::Cert {
            command: CertCommand::Create(c),
        } => {
            let kind = match (c.server, c.client, c.cli) {
                (true, _, _) => CertKind::Server,
                (_, true, _) => CertKind::Client,
                (_, _, true) => CertKind::Cli,
                _ => return Err("Please provide either -server, -client, or -cli".into()),
            };
            if c.node.is_some() && !c.server {
                return Err("-node requires -server".into());
            }
            let domain = bare(c.domain);
            let ca_file =
                c.ca.unwrap_or_else(|| PathBuf::from(format!("{domain}-agent-ca.pem")));
            let key_file = c
                .key
                .unwrap_or_else(|| PathBuf::from(format!("{domain}-agent-ca-key.pem")));
            let (cert, key) = tlsgen::create_cert(
                here,
                &CertOptions {
                    datacenter: c.dc,
                    domain,
                    days: c.days,
                    additional_dnsnames: c.additional_dnsnames,
                    additional_ipaddresses: c.additional_ipaddresses,
                    ca_file,
                    key_file,
                    node: c.node,
                    ..CertOptions::new(kind)
                },
            )
            .map_err(|e| format!("{e:#}"))?;
            println!("==> Saved {}", cert.display());
            println!("==> Saved {}", key.display());
        }
    }
    Ok(())
}
