//! Starting real `beacon` processes for the benchmarks (release builds via `cargo bench`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `beacon`, killed on drop.
pub struct Beacon {
    pub child: Child,
    pub rpc: String,
    /// Its LAN gossip address (servers of `start_cluster`), or empty.
    pub serf: String,
    pub http: SocketAddr,
    pub dns: SocketAddr,
}

impl Drop for Beacon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(args: &[String], envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beacon"));
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG")
                .unwrap_or_else(|_| "info,openraft=error,hickory_server=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Learns the addresses from the `listening … on` lines and waits for `beacon agent ready`.
fn ready(mut child: Child, rpc: String) -> Beacon {
    let mut lines = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let (mut http, mut dns) = (None, None);
    for line in lines.by_ref() {
        let grab = |needle: &str| {
            line.find(needle).map(|p| {
                line[p + needle.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap()
            })
        };
        http = http.or(grab("listening http on "));
        dns = dns.or(grab("listening dns-udp on "));
        if line.contains("beacon agent ready") {
            break;
        }
    }
    // BENCH_LOG=path: the servers' logs are appended there (e.g. with BENCH_RUST_LOG=debug).
    let mut copy = std::env::var("BENCH_LOG").ok().and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    std::thread::spawn(move || {
        for line in lines {
            if let Some(file) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
            }
        }
    });
    Beacon {
        child,
        rpc,
        serf: String::new(),
        http: http.expect("http address logged"),
        dns: dns.expect("dns address logged"),
    }
}

/// One dev server on ephemeral ports; `envs` are extra environment variables.
pub fn start_dev(dir: &Path, envs: &[(&str, String)]) -> Beacon {
    start_dev_with(dir, envs, None)
}

/// [`start_dev`], serving server RPC on `rpc` when given (client agents' calls and streams).
pub fn start_dev_with(dir: &Path, envs: &[(&str, String)], rpc: Option<&str>) -> Beacon {
    let mut args: Vec<String> = [
        "agent",
        "--dev",
        "--node",
        "bench",
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.display().to_string()])
    .collect();
    if let Some(rpc) = rpc {
        args.extend(["--rpc-addr".to_string(), rpc.to_string()]);
    }
    let child = command(&args, envs).spawn().expect("spawn beacon");
    ready(child, rpc.unwrap_or_default().to_string())
}

/// User plus system CPU seconds a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// A UDP port free on loopback now (for gossip addresses).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three servers forming a cluster with `--bootstrap-expect 3`.
pub fn start_cluster(dir: &Path) -> Vec<Beacon> {
    start_cluster_with(dir, |_| Vec::new())
}

/// [`start_cluster`] with `extra(i)` appended to server `i`'s arguments.
pub fn start_cluster_with(dir: &Path, extra: impl Fn(usize) -> Vec<String>) -> Vec<Beacon> {
    let rpcs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let serfs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let mut children = Vec::new();
    for (i, rpc) in rpcs.iter().enumerate() {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            "--node".into(),
            format!("n{i}"),
            "--bootstrap-expect".into(),
            "3".into(),
            "--rpc-addr".into(),
            rpc.clone(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--dns-addr".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.join(format!("n{i}")).display().to_string(),
            "--serf-lan-addr".into(),
            serfs[i].clone(),
        ];
        for r in &serfs {
            args.extend(["--retry-join".into(), r.clone()]);
        }
        args.extend(extra(i));
        children.push((
            command(&args, &[]).spawn().expect("spawn beacon"),
            rpc.clone(),
        ));
    }
    children
        .into_iter()
        .zip(serfs)
        .map(|((child, rpc), serf)| {
            let mut server = ready(child, rpc);
            server.serf = serf;
            server
        })
        .collect()
}

/// The index of the current leader among `servers`, asked of the first one.
pub async fn leader(client: &reqwest::Client, servers: &[Beacon]) -> usize {
    let addr: String = client
        .get(format!("http://{}/v1/status/leader", servers[0].http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    servers
        .iter()
        .position(|s| s.rpc == addr)
        .expect("leader among servers")
}

/// Spawns `beacon` with `args` (it runs until dropped); `ready_agent` waits for it.
pub fn spawn_agent(args: &[String]) -> Child {
    command(args, &[]).spawn().expect("spawn beacon")
}

/// Waits until an agent spawned by `spawn_agent` is ready; `rpc` is its RPC address, if any.
pub fn ready_agent(child: Child, rpc: String) -> Beacon {
    ready(child, rpc)
}

/// One UDP query for `name` (type `rtype`, message ID `id`) to `server`: the reply, or None on
/// a send or receive error (the socket's read timeout included) or an undecodable reply.
pub fn dns_query(
    sock: &std::net::UdpSocket,
    server: SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
    id: u16,
) -> Option<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).ok()?,
        rtype,
    ));
    sock.send_to(&m.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        // An answer to an earlier, timed-out query: keep reading.
        if reply.metadata.id == id {
            return Some(reply);
        }
    }
}

/// A process's resident set in bytes (`VmRSS` of `/proc/PID/status`); 0 once it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}
