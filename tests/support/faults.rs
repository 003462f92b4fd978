//! Fault injection for cluster tests: real `beacon` servers, each in its own network namespace,
//! that can be killed (SIGKILL) and restarted, paused (SIGSTOP/SIGCONT) and partitioned.
//!
//! Each server runs in a namespace of its own, joined to the test's (root) namespace by a veth
//! pair on one bridge, and listens on its own address with Consul's default ports. A partition
//! is nftables rules inside the servers' namespaces that drop every packet from the servers on
//! the other side: real packets lost, as Jepsen's iptables partitions, not a switch inside
//! Beacon. The test process, on the bridge's own address, reaches every server throughout.
//!
//! Needs root, iproute2 (`ip`) and nftables (`nft`); `.ci/run` installs nftables.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::support::Server;

/// Runs a command, panicking with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (the fault tests need iproute2)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command, ignoring failure (clean-up of what may not exist).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `nft -f -` with `script` inside namespace `ns`.
fn nft(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (the fault tests need nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The servers' network: one namespace per server on a bridge in the test's namespace.
pub struct Net {
    /// Namespace names, one per server.
    names: Vec<String>,
    bridge: String,
    /// The /24 is 10.<net>.<subnet>.0: servers are .1, .2, …, the bridge (the test) is .254.
    subnet: u8,
}

impl Net {
    /// Creates `n` namespaces named after this process (so two runs cannot collide), after
    /// clearing what killed earlier runs left behind.
    pub fn create(n: usize) -> Net {
        clear_leftovers();
        let pid = std::process::id();
        let net = Net {
            names: (0..n).map(|i| format!("bcnf{pid}-{i}")).collect(),
            bridge: format!("bcnf{pid}"),
            subnet: (pid % 250) as u8,
        };
        run("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.gateway()),
                "dev",
                &net.bridge,
            ],
        );
        run("ip", &["link", "set", &net.bridge, "up"]);
        for (i, ns) in net.names.iter().enumerate() {
            let veth = format!("{}v{i}", net.bridge);
            run("ip", &["netns", "add", ns]);
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            run("ip", &["link", "set", &veth, "master", &net.bridge, "up"]);
            let addr = format!("{}/24", net.addr(i));
            run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Server `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1)
    }

    /// The test's own address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    /// The command prefix that runs a program inside server `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.names[i]]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Cuts the network so that servers in different `sides` cannot exchange a packet; a
    /// server in several sides (a bridge) reaches all of them. Servers in no side keep every
    /// link. Replaces any earlier partition.
    pub fn partition(&self, sides: &[Vec<usize>]) {
        for i in 0..self.len() {
            let mine: Vec<&Vec<usize>> = sides.iter().filter(|s| s.contains(&i)).collect();
            let cut: Vec<String> = (0..self.len())
                .filter(|&j| {
                    j != i
                        && !mine.is_empty()
                        && sides.iter().any(|s| s.contains(&j))
                        && !mine.iter().any(|s| s.contains(&j))
                })
                .map(|j| self.addr(j).to_string())
                .collect();
            self.drop_from(i, &cut);
        }
    }

    /// Every server reaches every other again.
    pub fn heal(&self) {
        for i in 0..self.len() {
            self.drop_from(i, &[]);
        }
    }

    /// Server `i` drops every packet arriving from `sources` (and nothing else). Dropping on
    /// arrival at both ends cuts both directions.
    fn drop_from(&self, i: usize, sources: &[String]) {
        let rule = if sources.is_empty() {
            String::new()
        } else {
            format!("ip saddr {{ {} }} drop", sources.join(", "))
        };
        // Declaring the table first makes the delete succeed when it does not exist yet.
        nft(
            &self.names[i],
            &format!(
                "table inet faults\ndelete table inet faults\n\
                 table inet faults {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
            ),
        );
    }

    fn destroy(&self) {
        for ns in &self.names {
            run_quiet("ip", &["netns", "del", ns]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Removes the namespaces and bridges of earlier runs whose process is gone (killed before its
/// `Drop` ran), so a leftover bridge cannot hold this run's subnet.
fn clear_leftovers() {
    let dead = |name: &str| {
        let pid: String = name
            .trim_start_matches("bcnf")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let listed = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("bcnf") && dead(name) {
            run_quiet("ip", &["netns", "del", name]);
        }
    }
    for line in listed(&["-o", "link", "show", "type", "bridge"]).lines() {
        // "12: bcnf1234: <BROADCAST,…"
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with("bcnf") && dead(name) {
            run_quiet("ip", &["link", "del", name]);
        }
    }
}

/// What the probes may assume about a server: whether it is running and not paused, and an
/// epoch that moves at every change, so a probe can tell whether a server stayed live for the
/// whole of a query.
#[derive(Default)]
pub struct Liveness {
    live: AtomicBool,
    epoch: AtomicU64,
    /// Counts process starts: a restarted server is a new incarnation.
    incarnation: AtomicU64,
}

impl Liveness {
    fn set(&self, live: bool) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.live.store(live, Ordering::SeqCst);
    }

    /// (live, epoch) now.
    pub fn now(&self) -> (bool, u64) {
        (
            self.live.load(Ordering::SeqCst),
            self.epoch.load(Ordering::SeqCst),
        )
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::SeqCst)
    }
}

/// One server of a [`Cluster`].
pub struct Node {
    pub name: String,
    args: Vec<String>,
    dir: PathBuf,
    server: Option<Server>,
    paused: bool,
    /// The logs of this server's killed processes, printed if the test fails.
    earlier_logs: Vec<String>,
}

/// Real `beacon` servers on a [`Net`], formed with `--bootstrap-expect`, on fixed addresses and
/// data dirs so that a restart comes back as the same server.
pub struct Cluster {
    pub net: Net,
    pub nodes: Vec<Node>,
    pub liveness: Arc<Vec<Liveness>>,
    _root: tempfile::TempDir,
}

pub const HTTP_PORT: u16 = 8500;
pub const DNS_PORT: u16 = 8600;
const RPC_PORT: u16 = 8300;
const SERF_PORT: u16 = 8301;

impl Cluster {
    /// Starts `n` servers with `config` (TOML) and waits until each is ready (a leader known).
    pub fn start(n: usize, config: &str) -> Cluster {
        let net = Net::create(n);
        let root = tempfile::tempdir().unwrap();
        let config_file = root.path().join("beacon.toml");
        std::fs::write(&config_file, config).unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let ip = net.addr(i);
            let name = format!("n{i}");
            let dir = root.path().join(&name);
            let mut args: Vec<String> = vec![
                "agent".into(),
                "--server".into(),
                "--node".into(),
                name.clone(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--rpc-addr".into(),
                format!("{ip}:{RPC_PORT}"),
                "--http-addr".into(),
                format!("{ip}:{HTTP_PORT}"),
                "--dns-addr".into(),
                format!("{ip}:{DNS_PORT}"),
                "--serf-lan-addr".into(),
                format!("{ip}:{SERF_PORT}"),
                "--bootstrap-expect".into(),
                n.to_string(),
                "--config".into(),
                config_file.display().to_string(),
            ];
            for j in 0..n {
                args.extend([
                    "--retry-join".into(),
                    format!("{}:{SERF_PORT}", net.addr(j)),
                ]);
            }
            nodes.push(Node {
                name,
                args,
                dir,
                server: None,
                paused: false,
                earlier_logs: Vec::new(),
            });
        }
        let liveness: Arc<Vec<Liveness>> = Arc::new((0..n).map(|_| Liveness::default()).collect());
        let mut cluster = Cluster {
            net,
            nodes,
            liveness,
            _root: root,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.nodes[i].server.as_mut().unwrap().wait_ready();
            cluster.liveness[i].set(true);
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn spawn(&mut self, i: usize) {
        let wrapper = self.net.wrapper(i);
        let node = &mut self.nodes[i];
        node.server = Some(Server::spawn_via(&wrapper, &node.args, &node.dir));
        self.liveness[i].incarnation.fetch_add(1, Ordering::SeqCst);
    }

    /// Server `i`'s HTTP base URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.net.addr(i))
    }

    pub fn dns(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.net.addr(i), DNS_PORT))
    }

    /// Server `i`'s RPC address, as `/v1/status/leader` names a leader.
    pub fn rpc(&self, i: usize) -> String {
        format!("{}:{RPC_PORT}", self.net.addr(i))
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].server.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// SIGKILL: no clean shutdown. A paused server is killed too.
    pub fn kill(&mut self, i: usize) {
        self.liveness[i].set(false);
        let node = &mut self.nodes[i];
        if let Some(mut server) = node.server.take() {
            server.kill();
            node.earlier_logs.push(server.log_text());
        }
        node.paused = false;
    }

    /// Starts a killed server again on its data dir and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.is_running(i), "{} is running", self.nodes[i].name);
        self.spawn(i);
        let node = &mut self.nodes[i];
        let server = node.server.as_mut().unwrap();
        if let Some(status) = server.exited() {
            panic!(
                "{} exited with {status} on restart:\n{}",
                node.name,
                server.log_text()
            );
        }
        server.wait_ready();
        self.liveness[i].set(true);
    }

    /// SIGSTOP: the process stays, silent, with its connections open.
    pub fn pause(&mut self, i: usize) {
        self.liveness[i].set(false);
        self.nodes[i].server.as_ref().unwrap().signal("-STOP");
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.nodes[i].server.as_ref().unwrap().signal("-CONT");
        self.nodes[i].paused = false;
        self.liveness[i].set(true);
    }

    /// The logs of every process each server ran, for a failure report.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            for (k, log) in node.earlier_logs.iter().enumerate() {
                out.push_str(&format!(
                    "---- {} (process {k}, killed) ----\n{log}\n",
                    node.name
                ));
            }
            if let Some(server) = &node.server {
                out.push_str(&format!(
                    "---- {} (running) ----\n{}\n",
                    node.name,
                    server.log_text()
                ));
            }
        }
        out
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// The server every running, unpaused server names as leader; `None` while they disagree,
    /// name none, or one does not answer.
    pub async fn agreed_leader(&self, http: &reqwest::Client) -> Option<usize> {
        let mut agreed: Option<String> = None;
        for i in 0..self.len() {
            if !self.is_running(i) || self.is_paused(i) {
                continue;
            }
            let r = http
                .get(format!("{}/v1/status/leader", self.url(i)))
                .send()
                .await
                .ok()?;
            let named: String = r.json().await.ok()?;
            if named.is_empty() || agreed.get_or_insert_with(|| named.clone()) != &named {
                return None;
            }
        }
        let agreed = agreed?;
        (0..self.len()).find(|&i| self.rpc(i) == agreed)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; `ip netns exec` execs beacon, so its pid is the
        // only process to end.
        for node in &mut self.nodes {
            if let Some(mut server) = node.server.take() {
                server.kill();
            }
        }
    }
}
