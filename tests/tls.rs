//! TLS with real handshakes: certificates made by `beacon tls`, a real `beacon` agent serving
//! HTTPS and DNS over TLS, reqwest, the CLI, py-consul and `dig +tls` as clients.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use beacon::config::{TlsConfig, TlsSide};
use beacon::tls::Tls;
use beacon::transport::Limits;
use support::*;

fn beacon(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "beacon {args:?}: {out:?}");
    out
}

/// A CA and server, client and CLI certificates in `dir`, as an operator makes them.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn create(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        beacon(dir, &["tls", "ca", "create"]);
        beacon(dir, &["tls", "cert", "create", "-server"]);
        beacon(dir, &["tls", "cert", "create", "-client"]);
        beacon(dir, &["tls", "cert", "create", "-cli"]);
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        let path = self.dir.join(name);
        assert!(path.exists(), "{} was not created", path.display());
        path.display().to_string()
    }

    fn ca(&self) -> String {
        self.path("consul-agent-ca.pem")
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// An HTTPS client trusting this CA, presenting the `kind` certificate (if any).
    fn client(&self, kind: Option<&str>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&self.read("consul-agent-ca.pem")).unwrap(),
            )
            .tls_info(true)
            .timeout(Duration::from_secs(10));
        if let Some(kind) = kind {
            let mut pem = self.read(&format!("dc1-{kind}-consul-0.pem"));
            pem.extend(self.read(&format!("dc1-{kind}-consul-0-key.pem")));
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }
}

fn tls_config(certs: &Certs, server_cert: &str, verify_incoming: bool) -> String {
    format!(
        r#"
[tls.defaults]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
verify_incoming = {verify_incoming}
"#,
        ca = certs.ca(),
        cert = certs.path(&format!("{server_cert}.pem")),
        key = certs.path(&format!("{server_cert}-key.pem")),
    )
}

/// A dev agent with HTTPS and DNS over TLS on ephemeral ports, configured by `config`.
fn agent(config: &Path) -> (Server, std::net::SocketAddr, std::net::SocketAddr) {
    let mut server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--https-addr",
        "127.0.0.1:0",
        "--dns-tls-addr",
        "127.0.0.1:0",
    ]);
    let https = server.wait_for_line("listening https on ");
    let dot = server.wait_for_line("listening dns-tls on ");
    (server, https, dot)
}

/// The certificate the agent presented on this response's connection.
fn peer_cert(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS response carries the peer's certificate")
        .to_vec()
}

fn der_of(pem_file: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(pem_file).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_api_checks_client_certificates_and_takes_new_ones_on_reload() {
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::create(&root.path().join("pki"));
    let foreign = Certs::create(&root.path().join("foreign"));
    let config = root.path().join("beacon.toml");
    std::fs::write(&config, tls_config(&certs, "dc1-server-consul-0", true)).unwrap();
    let (server, https, _) = agent(&config);
    let url = |path: &str| format!("https://localhost:{}{path}", https.port());

    // A client certificate from the CA: served, over TLS, with the server's certificate.
    let response = certs
        .client(Some("client"))
        .get(url("/v1/status/leader"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(peer_cert(&response) == der_of(&certs.path("dc1-server-consul-0.pem")));
    // Refused during the handshake: no client certificate, or one from another CA.
    for (what, client) in [
        ("no client certificate", certs.client(None)),
        ("a foreign CA's certificate", {
            let mut pem = foreign.read("dc1-client-consul-0.pem");
            pem.extend(foreign.read("dc1-client-consul-0-key.pem"));
            reqwest::Client::builder()
                .tls_certs_only(
                    reqwest::Certificate::from_pem_bundle(&certs.read("consul-agent-ca.pem"))
                        .unwrap(),
                )
                .identity(reqwest::Identity::from_pem(&pem).unwrap())
                .build()
                .unwrap()
        }),
    ] {
        let result = client.get(url("/v1/status/leader")).send().await;
        assert!(result.is_err(), "{what} was served: {result:?}");
    }
    // A client that trusts another CA refuses the agent.
    let result = foreign
        .client(Some("client"))
        .get(url("/v1/status/leader"))
        .send()
        .await;
    assert!(
        result.is_err(),
        "a foreign CA accepted the agent: {result:?}"
    );
    // Plain HTTP stays open beside HTTPS, as Consul; plain HTTP sent to the HTTPS port is told so.
    let (status, _) = get_json(&server.url("/v1/status/leader")).await;
    assert_eq!(status, 200);
    let response = http()
        .get(format!(
            "http://127.0.0.1:{}/v1/status/leader",
            https.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("HTTP request to an HTTPS server")
    );

    // The CLI over HTTPS, with flags and then with Consul's environment variables.
    let https_addr = format!("https://127.0.0.1:{}", https.port());
    let out = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args([
            "kv",
            "put",
            "-http-addr",
            &https_addr,
            "-ca-file",
            &certs.ca(),
            "-client-cert",
            &certs.path("dc1-cli-consul-0.pem"),
            "-client-key",
            &certs.path("dc1-cli-consul-0-key.pem"),
            "-tls-server-name",
            "server.dc1.consul",
            "over/tls",
            "yes",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(["kv", "get", "over/tls"])
        .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{}", https.port()))
        .env("CONSUL_HTTP_SSL", "true")
        .env("CONSUL_CACERT", certs.ca())
        .env("CONSUL_CLIENT_CERT", certs.path("dc1-cli-consul-0.pem"))
        .env("CONSUL_CLIENT_KEY", certs.path("dc1-cli-consul-0-key.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(["kv", "get", "over/tls", "-http-addr", &https_addr])
        .env("CONSUL_CACERT", certs.ca())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the CLI without a client certificate was served: {out:?}"
    );

    // py-consul over HTTPS with a client certificate.
    let script = format!(
        r#"
import consul
c = consul.Consul(host="127.0.0.1", port={port}, scheme="https", verify="{ca}", cert=("{cert}", "{key}"))
c.agent.service.register("web", port=80)
assert "web" in c.agent.services(), c.agent.services()
print(c.kv.get("over/tls")[1]["Value"].decode())
"#,
        port = https.port(),
        ca = certs.ca(),
        cert = certs.path("dc1-client-consul-0.pem"),
        key = certs.path("dc1-client-consul-0-key.pem"),
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");

    // Rotation: a blocking query open on the old certificate survives the reload; new
    // connections get the new certificate.
    beacon(&certs.dir, &["tls", "cert", "create", "-server"]);
    let index = consul_index(
        &certs
            .client(Some("client"))
            .get(url("/v1/kv/over/tls"))
            .send()
            .await
            .unwrap(),
    );
    let open = certs.client(Some("client"));
    let blocking = tokio::spawn({
        let url = url(&format!("/v1/kv/over/tls?index={index}&wait=3s"));
        async move { open.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&config, tls_config(&certs, "dc1-server-consul-1", true)).unwrap();
    assert_eq!(reload(&certs, &url("/v1/agent/reload")).await, 200);
    assert!(
        served_cert(&certs, &url("/v1/status/leader")).await
            == der_of(&certs.path("dc1-server-consul-1.pem")),
        "a new connection after the reload still got the old certificate"
    );
    assert_eq!(blocking.await.unwrap().unwrap(), 200);
    // A reload naming a missing file fails and changes nothing.
    std::fs::write(
        &config,
        tls_config(&certs, "dc1-server-consul-1", true)
            .replace("dc1-server-consul-1.pem", "missing.pem"),
    )
    .unwrap();
    assert_eq!(reload(&certs, &url("/v1/agent/reload")).await, 500);
    assert!(
        served_cert(&certs, &url("/v1/status/leader")).await
            == der_of(&certs.path("dc1-server-consul-1.pem")),
        "a failed reload changed the certificate"
    );
    drop(server);
}

/// `PUT /v1/agent/reload` over HTTPS with a client certificate: the status.
async fn reload(certs: &Certs, url: &str) -> u16 {
    let response = certs.client(Some("client")).put(url).send().await.unwrap();
    response.status().as_u16()
}

/// The certificate a new HTTPS connection to `url` is served.
async fn served_cert(certs: &Certs, url: &str) -> Vec<u8> {
    let response = certs.client(Some("client")).get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    peer_cert(&response)
}

/// Answers every call with its method number.
struct Echo;

impl beacon::transport::Handler for Echo {
    fn call(
        &self,
        method: u16,
        _body: bytes::Bytes,
    ) -> beacon::transport::BoxFuture<'static, Result<bytes::Bytes, String>> {
        Box::pin(async move { Ok(bytes::Bytes::from(method.to_string())) })
    }

    fn subscribe(
        &self,
        _method: u16,
        _body: bytes::Bytes,
    ) -> beacon::transport::BoxFuture<
        'static,
        Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, String>,
    > {
        Box::pin(async { Err("no streams".to_owned()) })
    }
}

/// RPC TLS settings with this CA and certificate.
fn rpc_config(certs: &Certs, cert: &str, outgoing: bool, hostname: bool) -> TlsConfig {
    TlsConfig {
        rpc: TlsSide {
            ca_file: Some(certs.ca().into()),
            cert_file: Some(certs.path(&format!("{cert}.pem")).into()),
            key_file: Some(certs.path(&format!("{cert}-key.pem")).into()),
            verify_outgoing: outgoing,
            ..Default::default()
        },
        verify_server_hostname: hostname,
        ..Default::default()
    }
}

fn rpc_tls(certs: &Certs, cert: &str, outgoing: bool, hostname: bool) -> Arc<Tls> {
    let config = rpc_config(certs, cert, outgoing, hostname);
    Arc::new(Tls::load(&config, "dc1", "consul.").unwrap())
}

/// An in-process RPC server answering with [`Echo`] on an ephemeral port, until the guard
/// drops.
async fn serve_echo(tls: Arc<Tls>) -> (String, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(beacon::transport::serve(
        listener,
        Arc::new(Echo),
        Arc::new(String::new),
        Limits::default(),
        Some(tls),
        stop.clone(),
    ));
    (addr, stop.drop_guard())
}

async fn call(pool: &beacon::transport::Pool, addr: &str) -> Result<bytes::Bytes, String> {
    pool.call(addr, 7, bytes::Bytes::new(), Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_clients_check_the_server_name_and_plaintext_stays_open_without_verify_incoming() {
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::create(&root.path().join("pki"));
    // An RPC server presenting a *client* certificate, not verifying incoming peers.
    let (addr, _stop) = serve_echo(rpc_tls(&certs, "dc1-client-consul-0", false, false)).await;
    let pool = |tls: Option<Arc<Tls>>| {
        beacon::transport::Pool::new(Arc::new(String::new), Limits::default(), tls)
    };
    // verify_server_hostname: a certificate that does not name server.dc1.consul is no server.
    let strict = pool(Some(rpc_tls(&certs, "dc1-client-consul-0", true, true)));
    let refused = call(&strict, &addr).await.unwrap_err();
    assert!(refused.contains("TLS"), "{refused}");
    // verify_outgoing alone checks the chain, not the name (Consul's rule).
    let chain_only = pool(Some(rpc_tls(&certs, "dc1-client-consul-0", true, false)));
    assert_eq!(call(&chain_only, &addr).await.unwrap(), "7");
    // Without verify_incoming, plaintext is still served beside TLS.
    assert_eq!(call(&pool(None), &addr).await.unwrap(), "7");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_over_tls_answers_like_tcp_with_the_agents_certificate() {
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::create(&root.path().join("pki"));
    let config = root.path().join("beacon.toml");
    // DNS over TLS never asks for a client certificate, even with verify_incoming.
    std::fs::write(&config, tls_config(&certs, "dc1-server-consul-0", true)).unwrap();
    let (server, _, dot) = agent(&config);
    register(
        &server,
        serde_json::json!({"Name": "web", "Port": 8080, "Address": "10.0.0.7"}),
    )
    .await;
    let dig = |extra: &[&str]| {
        let mut args = vec![
            format!("@{}", dot.ip()),
            "-p".into(),
            dot.port().to_string(),
            "+tls".into(),
            format!("+tls-ca={}", certs.ca()),
            "+short".into(),
            "+time=3".into(),
            "+tries=1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["web.service.consul".into(), "A".into()]);
        Command::new("dig").args(&args).output().unwrap()
    };
    let out = eventually("dig +tls answers", || async {
        let out = dig(&["+tls-hostname=server.dc1.consul"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("10.0.0.7").then_some(text)
    })
    .await;
    assert_eq!(out.trim(), "10.0.0.7");
    // dig verifies the name: the server certificate does not name client.dc1.consul.
    let out = dig(&["+tls-hostname=client.dc1.consul"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("10.0.0.7"),
        "{out:?}"
    );
}

#[test]
fn tls_settings_below_1_2_or_incomplete_are_configuration_errors() {
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::create(&root.path().join("pki"));
    let cases = [
        (
            format!(
                "{}\ntls_min_version = \"TLSv1_1\"\n",
                tls_config(&certs, "dc1-server-consul-0", false)
            ),
            "below TLS 1.2",
        ),
        (
            "[tls.defaults]\nverify_incoming = true\n".to_string(),
            "verify_incoming",
        ),
        (
            format!(
                "cert_file = \"{}\"\n",
                certs.path("dc1-server-consul-0.pem")
            ),
            "key_file",
        ),
    ];
    for (toml, needle) in cases {
        let config = root.path().join("bad.toml");
        std::fs::write(&config, &toml).unwrap();
        let (code, stderr) = run_to_exit(&["agent", "--dev", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 64, "{toml}\n{stderr}");
        assert!(stderr.contains(needle), "{toml}\n{stderr}");
    }
    // A certificate file that is not PEM: a clear start-up error naming it.
    let bogus = root.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let config = root.path().join("bogus.toml");
    std::fs::write(
        &config,
        format!(
            "[tls.defaults]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            bogus.display(),
            certs.path("dc1-server-consul-0-key.pem")
        ),
    )
    .unwrap();
    let (code, stderr) = run_to_exit(&[
        "agent",
        "--dev",
        "--config",
        config.to_str().unwrap(),
        "--https-addr",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("bogus.pem"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_connections_keep_their_certificates_and_new_ones_take_the_reloaded_files() {
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::create(&root.path().join("pki"));
    let foreign = Certs::create(&root.path().join("foreign"));
    let config = |certs: &Certs| rpc_config(certs, "dc1-server-consul-0", true, true);
    let server_tls = Arc::new(Tls::load(&config(&certs), "dc1", "consul.").unwrap());
    let (addr, _stop) = serve_echo(server_tls.clone()).await;
    let client_tls = Arc::new(Tls::load(&config(&certs), "dc1", "consul.").unwrap());
    let pool = beacon::transport::Pool::new(
        Arc::new(String::new),
        Limits::default(),
        Some(client_tls.clone()),
    );
    assert_eq!(call(&pool, &addr).await.unwrap(), "7");
    // The server now serves a certificate of another CA, which the client does not trust:
    // the open connection carries on untouched...
    server_tls.commit(server_tls.stage(&config(&foreign)).unwrap());
    assert_eq!(call(&pool, &addr).await.unwrap(), "7");
    // ...and once the client reloads too, its next connection is a new handshake, which
    // meets the new certificate.
    client_tls.commit(client_tls.stage(&config(&certs)).unwrap());
    let refused = call(&pool, &addr).await.unwrap_err();
    assert!(refused.contains("TLS"), "{refused}");
}
