//! Test harness: starts the real `beacon` binary on ephemeral loopback ports, learns its
//! addresses from its `listening … on` log lines, and kills it on drop (printing its log if the
//! test failed). Also a small DNS client over real UDP/TCP sockets using hickory's wire codec.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Server {
    child: Option<Child>,
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    log: Arc<Mutex<Vec<String>>>,
}

/// Runs the binary to completion (for start-up failures) and returns (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn beacon");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("beacon {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// A dev server with a fresh data dir.
    pub fn start(extra: &[&str]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut s = Server::start_in(&dir, extra);
        s._temp = Some(temp);
        s
    }

    /// A dev server with a fresh data dir, started with `--config` naming a file holding `toml`.
    pub fn with_config(toml: &str) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let config = temp.path().join("beacon.toml");
        std::fs::write(&config, toml).unwrap();
        let data = temp.path().join("data");
        let mut s = Server::start_in(&data, &["--config", config.to_str().unwrap()]);
        s._temp = Some(temp);
        s
    }

    /// A dev server on a given data dir (for restarts).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = [
            "agent",
            "--dev",
            "--node",
            "test-node",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(&args, data_dir)
    }

    /// Starts `beacon` with exactly these arguments and waits until it is ready.
    pub fn launch(args: &[String], data_dir: &Path) -> Server {
        let mut server = Server::spawn(args, data_dir);
        server.wait_ready();
        server
    }

    /// Starts `beacon` and learns its addresses, without waiting for a leader.
    pub fn spawn(args: &[String], data_dir: &Path) -> Server {
        Server::spawn_via(&[], args, data_dir)
    }

    /// [`Server::spawn`] under a wrapper command that execs `beacon` in its place (`ip netns
    /// exec NS`), so the child's pid is beacon's own and signals reach it.
    pub fn spawn_via(wrapper: &[String], args: &[String], data_dir: &Path) -> Server {
        let beacon = env!("CARGO_BIN_EXE_beacon");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(beacon);
                c
            }
            None => Command::new(beacon),
        };
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info,openraft=warn,hickory_server=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn beacon");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child: Some(child),
            http: "0.0.0.0:0".parse().unwrap(),
            dns: "0.0.0.0:0".parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            log,
        };
        server.http = server.wait_for_line("listening http on ");
        server.dns = server.wait_for_line("listening dns-udp on ");
        server
    }

    pub fn wait_ready(&mut self) {
        self.wait_for_line_text("beacon agent ready");
    }

    /// Waits for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("beacon did not exit:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_line_text(&mut self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "beacon exited with {status} before {needle:?}:\n{}",
                    self.log_text()
                );
            }
            if started.elapsed() > DEADLINE {
                panic!("no {needle:?} within {DEADLINE:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_line(&mut self, needle: &str) -> SocketAddr {
        let line = self.wait_for_line_text(needle);
        let rest = &line[line.find(needle).unwrap() + needle.len()..];
        // The address ends at a space, or at the quote closing a JSON log line's message.
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The exit status if the process has ended on its own (None while it runs, or once killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Sends a signal (`kill`'s spelling: "-STOP", "-CONT", "-TERM") to the running process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", self.pid());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- beacon log ----\n{}\n--------------------",
                self.log_text()
            );
        }
    }
}

/// Polls `check` until it returns Some, or panics with `what` after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, what, check).await
}

/// `eventually` with a longer deadline, for behaviour that is slow by specification. The
/// deadline is on tokio's clock, so under paused time (the in-process tier) it is agent time.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if started.elapsed() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// PUT a body, returning (status, text).
pub async fn put(url: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = http().put(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = http().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn query_message(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

/// Sends raw bytes over UDP and decodes the reply.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(server: SocketAddr, msg: &Message) -> Message {
    let bytes = msg.to_vec().unwrap();
    for _ in 0..3 {
        if let Some(reply) = udp_raw(server, &bytes).await {
            let reply = Message::from_vec(&reply).expect("decodable reply");
            assert_eq!(reply.metadata.id, msg.metadata.id);
            return reply;
        }
    }
    panic!("no UDP reply from {server}");
}

pub async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .expect("tcp reply in time")
        .unwrap();
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// A UDP query without EDNS (plain 512-byte DNS).
pub async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    udp(server, &query_message(name, rtype, None)).await
}

/// Registers a service through the agent API and fails the test on anything but 200.
pub async fn register(server: &Server, body: serde_json::Value) {
    let (status, text) = put(&server.url("/v1/agent/service/register"), body.to_string()).await;
    assert_eq!(status, 200, "register failed: {text}");
}

pub async fn pass(server: &Server, check_id: &str) {
    let (status, text) = put(&server.url(&format!("/v1/agent/check/pass/{check_id}")), "").await;
    assert_eq!(status, 200, "pass failed: {text}");
}

pub async fn fail(server: &Server, check_id: &str) {
    let (status, text) = put(&server.url(&format!("/v1/agent/check/fail/{check_id}")), "").await;
    assert_eq!(status, 200, "fail failed: {text}");
}

/// The A addresses in an answer.
pub fn a_records(m: &Message) -> Vec<String> {
    use hickory_proto::rr::RData;
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// (port, target) of the SRV answers.
pub fn srv_records(m: &Message) -> Vec<(u16, String)> {
    use hickory_proto::rr::RData;
    let mut v: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// A tiny HTTP server answering every request with `status`.
pub async fn http_target(status: u16) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// A response's `X-Consul-Index` header, for the next blocking query.
pub fn consul_index(response: &reqwest::Response) -> String {
    response.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .to_string()
}

/// A port that was free a moment ago (for addresses that must be known before start-up), TCP
/// and UDP alike. Taken below the kernel's ephemeral range (32768 and up on Linux), from where
/// port-0 binds (every agent's HTTP and DNS in the tests) are served: a port chosen there can be
/// handed to another socket before the agent binds it, which once failed a cluster test with
/// "Address already in use".
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// A UDP port free on loopback now (for gossip addresses); see [`free_port`].
pub fn free_udp_port() -> u16 {
    free_port()
}

/// The Python for the py-consul tests: `BEACON_TEST_PYTHON`, else the virtualenv `.ci/run`
/// creates at `target/py-venv` (py-consul 1.8.0, pytest, pytest-asyncio, pytest-timeout, aiohttp,
/// packaging).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("BEACON_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python");
    assert!(
        venv.exists(),
        "the py-consul tests need a Python with py-consul and pytest: run `.ci/run` (it creates \
         target/py-venv) or set BEACON_TEST_PYTHON"
    );
    venv
}
