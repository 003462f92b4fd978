//! `beacon kv …` against a real server, as a user would run it.

mod support;

use std::process::{Command, Output, Stdio};

use support::*;

fn beacon(env_addr: Option<(&str, &str)>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beacon"));
    cmd.args(args)
        .env_remove("BEACON_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((k, v)) = env_addr {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Runs `beacon args`, asserts it succeeded, and returns its stdout.
fn succeeds(env_addr: Option<(&str, &str)>, args: &[&str]) -> String {
    let o = beacon(env_addr, args, None);
    assert!(o.status.success(), "{args:?}: {o:?}");
    stdout(&o)
}

/// Runs a command that must fail with exit status 1, saying `needle` on stderr.
fn fails(env_addr: Option<(&str, &str)>, args: &[&str], needle: &str) {
    let o = beacon(env_addr, args, None);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(needle),
        "{args:?}: {needle:?} not in {o:?}"
    );
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn kv_cli_put_get_delete_with_consul_flags() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", addr.as_str()));
    let o = beacon(env, &["kv", "put", "-flags=9", "cfg/db", "postgres"], None);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "Success! Data written to: cfg/db");
    let o = beacon(env, &["kv", "get", "cfg/db"], None);
    assert_eq!(stdout(&o), "postgres\n");
    let o = beacon(env, &["kv", "get", "-detailed", "cfg/db"], None);
    assert!(stdout(&o).contains("Flags           9"), "{}", stdout(&o));

    // Values from stdin and from base64.
    let o = beacon(env, &["kv", "put", "cfg/bin", "-"], Some(b"\x00\x01binary"));
    assert!(o.status.success());
    let o = beacon(env, &["kv", "get", "-base64", "cfg/bin"], None);
    assert_eq!(stdout(&o).trim(), "AAFiaW5hcnk=");
    let o = beacon(env, &["kv", "put", "-base64", "cfg/b64", "aGk="], None);
    assert!(o.status.success());
    assert_eq!(
        stdout(&beacon(env, &["kv", "get", "cfg/b64"], None)),
        "hi\n"
    );

    // -cas with a stale index fails with exit status 1 and writes nothing.
    fails(
        env,
        &["kv", "put", "-cas", "-modify-index=1", "cfg/db", "mysql"],
        "CAS failed",
    );
    assert_eq!(
        stdout(&beacon(env, &["kv", "get", "cfg/db"], None)),
        "postgres\n"
    );

    let o = beacon(env, &["kv", "get", "-recurse", "cfg/"], None);
    assert_eq!(stdout(&o).lines().count(), 3);

    // --http-addr beats the environment; CONSUL_HTTP_ADDR works with a scheme.
    let wrong = Some(("BEACON_HTTP_ADDR", "127.0.0.1:1"));
    let o = beacon(wrong, &["kv", "get", "--http-addr", &addr, "cfg/db"], None);
    assert_eq!(stdout(&o), "postgres\n");
    let with_scheme = format!("http://{addr}");
    let o = beacon(
        Some(("CONSUL_HTTP_ADDR", with_scheme.as_str())),
        &["kv", "get", "cfg/db"],
        None,
    );
    assert_eq!(stdout(&o), "postgres\n");

    let o = beacon(env, &["kv", "delete", "-recurse", "cfg/"], None);
    assert!(o.status.success());
    let o = beacon(env, &["kv", "get", "cfg/db"], None);
    assert_eq!(o.status.code(), Some(1));
}

#[tokio::test]
async fn kv_export_then_import_round_trips() {
    let source = Server::start(&[]);
    let src_addr = source.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", src_addr.as_str()));
    for (k, v, f) in [
        ("app/a", "1", "0"),
        ("app/b/c", "two", "5"),
        ("app/bin", "\u{1}\u{2}", "0"),
    ] {
        let o = beacon(env, &["kv", "put", &format!("-flags={f}"), k, v], None);
        assert!(o.status.success());
    }
    let exported = beacon(env, &["kv", "export", "app/"], None);
    assert!(exported.status.success());
    let parsed: serde_json::Value = serde_json::from_slice(&exported.stdout).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), 3);
    assert_eq!(parsed[1]["flags"], 5);

    let target = Server::start(&[]);
    let dst_addr = target.http.to_string();
    let dst = Some(("BEACON_HTTP_ADDR", dst_addr.as_str()));
    let o = beacon(dst, &["kv", "import", "-"], Some(&exported.stdout));
    assert!(o.status.success(), "{o:?}");
    let again = beacon(dst, &["kv", "export", "app/"], None);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap(),
        parsed,
        "export → import → export is the identity"
    );
}

#[tokio::test]
async fn snapshot_save_reports_the_index_and_restore_refuses_another_version() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", addr.as_str()));
    assert!(beacon(env, &["kv", "put", "k", "v"], None).status.success());
    let index = consul_index(&http().get(s.url("/v1/snapshot")).send().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let o = beacon(env, &["snapshot", "save", file.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stdout(&o).trim(),
        format!("Saved and verified snapshot to index {index}")
    );
    let o = beacon(env, &["snapshot", "restore", file.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");

    let (st, text) = put(&s.url("/v1/snapshot"), r#"{"Version": 2, "Catalog": {}}"#).await;
    assert_eq!(st, 400);
    assert!(text.contains("format version 2"), "{text}");
}

#[tokio::test]
async fn kv_cli_escapes_keys_and_handles_values_like_consul() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use std::collections::BTreeMap;

    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", addr.as_str()));
    // Every key is stored under exactly its own name (a leading `/` stripped, as Consul).
    let keys = [
        ("cfg?env=prod", "cfg?env=prod", "v-query"),
        ("cfg#a", "cfg#a", "v-fragment"),
        ("cfg", "cfg", "v-plain"),
        ("x%20y", "x%20y", "v-percent"),
        ("a/../b", "a/../b", "v-dotdot"),
        ("a/./c", "a/./c", "v-dot"),
        (" spaced key", " spaced key", "v-space"),
        ("/lead", "lead", "v-lead"),
    ];
    for (arg, _, value) in keys {
        let o = beacon(env, &["kv", "put", arg, value], None);
        assert!(o.status.success(), "put {arg:?}: {o:?}");
    }
    // No DATA stores an empty value (stdin is not read); `--` lets DATA start with `-`.
    let o = beacon(env, &["kv", "put", "empty"], Some(b"from stdin"));
    assert!(o.status.success(), "{o:?}");
    let o = beacon(env, &["kv", "put", "dash", "--", "-value"], None);
    assert!(o.status.success(), "{o:?}");

    let listing = |url: String| async move {
        let (st, body) = get_json(&url).await;
        assert_eq!(st, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let v = e["Value"]
                    .as_str()
                    .map(|v| String::from_utf8(STANDARD.decode(v).unwrap()).unwrap())
                    .unwrap_or_default();
                (e["Key"].as_str().unwrap().to_string(), v)
            })
            .collect::<BTreeMap<String, String>>()
    };
    let mut want: BTreeMap<String, String> = keys
        .iter()
        .map(|(_, stored, v)| (stored.to_string(), v.to_string()))
        .collect();
    want.insert("empty".into(), String::new());
    want.insert("dash".into(), "-value".into());
    assert_eq!(listing(s.url("/v1/kv/?recurse")).await, want);
    let r = http().get(s.url("/v1/kv/cfg?raw")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"v-plain");

    // `get` and `get -recurse` find each key under its own name.
    for (arg, stored, value) in keys {
        let o = beacon(env, &["kv", "get", arg], None);
        assert_eq!(stdout(&o), format!("{value}\n"), "get {arg:?}: {o:?}");
        let o = beacon(env, &["kv", "get", "-recurse", stored], None);
        assert!(
            stdout(&o).contains(&format!("{stored}:{value}\n")),
            "get -recurse {stored:?}: {o:?}"
        );
    }
    let o = beacon(env, &["kv", "get", "-recurse", "a/../"], None);
    assert_eq!(stdout(&o), "a/../b:v-dotdot\n", "{o:?}");
    let o = beacon(env, &["kv", "get", "-keys", "cfg?"], None);
    assert_eq!(stdout(&o), "cfg?env=prod\n", "{o:?}");

    // `delete` removes only the key it names; export sees the rest under their names.
    for arg in ["cfg?env=prod", "cfg#a", "a/../b", "/lead"] {
        let o = beacon(env, &["kv", "delete", arg], None);
        assert!(o.status.success(), "delete {arg:?}: {o:?}");
    }
    let o = beacon(env, &["kv", "delete", "-recurse", "a/./"], None);
    assert!(o.status.success(), "{o:?}");
    for k in ["cfg?env=prod", "cfg#a", "a/../b", "a/./c", "lead"] {
        want.remove(k);
    }
    assert_eq!(listing(s.url("/v1/kv/?recurse")).await, want);
    let o = beacon(env, &["kv", "export", "x%"], None);
    let exported: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(exported[0]["key"], "x%20y", "{o:?}");
    assert_eq!(exported.as_array().unwrap().len(), 1);

    // Binary values come out of `get` as the raw bytes (then Consul's newline).
    let bytes = [0x00u8, 0xff, 0xfe, 0x80];
    let (st, _) = put(&s.url("/v1/kv/bin"), bytes.to_vec()).await;
    assert_eq!(st, 200);
    let o = beacon(env, &["kv", "get", "bin"], None);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, [&bytes[..], b"\n"].concat());
}

#[tokio::test]
async fn catalog_info_reload_and_version_print_what_consul_prints() {
    let s = Server::with_config("datacenter = \"dc1\"\n");
    register(
        &s,
        serde_json::json!({"Name": "web", "Port": 80, "Tags": ["v2", "v1"]}),
    )
    .await;
    let addr = s.http.to_string();
    let env = Some(("CONSUL_HTTP_ADDR", addr.as_str()));
    let run = |args: &[&str]| succeeds(env, args);
    assert_eq!(run(&["catalog", "datacenters"]), "dc1\n");
    let nodes = run(&["catalog", "nodes"]);
    let lines: Vec<&str> = nodes.lines().collect();
    assert!(
        lines[0].starts_with("Node") && lines[0].ends_with("DC"),
        "{nodes}"
    );
    assert!(
        lines[1].starts_with("test-node") && lines[1].contains("127.0.0.1"),
        "{nodes}"
    );
    assert!(run(&["catalog", "nodes", "-service", "web"]).contains("test-node"));
    assert!(run(&["catalog", "nodes", "-detailed"]).contains("TaggedAddresses"));
    let o = beacon(env, &["catalog", "nodes", "-service", "nothing"], None);
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(run(&["catalog", "services"]), "consul\nweb\n");
    let tagged = run(&["catalog", "services", "-tags"]);
    assert!(
        tagged
            .lines()
            .any(|l| l.starts_with("web") && l.ends_with("v1,v2")),
        "{tagged}"
    );
    assert!(run(&["catalog", "services", "-node", "test-node"]).contains("web"));
    let info = run(&["info"]);
    assert!(info.lines().any(|l| l == "consul:"), "{info}");
    assert!(info.contains("\tleader_addr = "), "{info}");
    assert_eq!(run(&["reload"]).trim(), "Configuration reload triggered");
    assert!(run(&["version"]).starts_with("Beacon v"));

    // Maintenance: the node and a service, listed, then lifted.
    assert_eq!(
        run(&["maint", "-enable", "-reason", "kernel upgrade"]).trim(),
        "Node entering maintenance mode"
    );
    assert_eq!(
        run(&["maint", "-enable", "-service", "web"]).trim(),
        "Service entering maintenance mode: web"
    );
    let listed = run(&["maint"]);
    assert!(
        listed.contains("Node:\n  Name:   test-node\n  Reason: kernel upgrade"),
        "{listed}"
    );
    assert!(listed.contains("Service:\n  ID:     web"), "{listed}");
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert!(checks.get("_node_maintenance").is_some(), "{checks}");
    run(&["maint", "-disable"]);
    run(&["maint", "-disable", "-service", "web"]);
    assert_eq!(run(&["maint"]), "");
}

#[tokio::test]
async fn services_register_and_deregister_from_flags_and_files() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let env = Some(("CONSUL_HTTP_ADDR", addr.as_str()));
    let run = |args: &[&str]| succeeds(env, args);
    let o = run(&[
        "services", "register", "-name", "web", "-port", "8080", "-tag", "v1", "-meta", "team=a",
    ]);
    assert_eq!(o.trim(), "Registered service: web");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.json");
    std::fs::write(
        &file,
        r#"{"services": [{"id": "api-1", "name": "api", "port": 9000}, {"name": "db", "port": 5432}]}"#,
    )
    .unwrap();
    let o = run(&["services", "register", file.to_str().unwrap()]);
    assert_eq!(o, "Registered service: api\nRegistered service: db\n");
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert_eq!(services["web"]["Port"], 8080, "{services}");
    assert_eq!(services["web"]["Tags"][0], "v1");
    assert_eq!(services["web"]["Meta"]["team"], "a");
    assert_eq!(services["api-1"]["Service"], "api", "{services}");
    assert!(services.get("db").is_some(), "{services}");

    assert_eq!(
        run(&["services", "deregister", "-id", "web"]).trim(),
        "Deregistered service: web"
    );
    run(&["services", "deregister", file.to_str().unwrap()]);
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert_eq!(services, serde_json::json!({}), "{services}");
    // A bad file registers nothing and says why.
    std::fs::write(&file, r#"{"service": [1]}"#).unwrap();
    let o = beacon(env, &["services", "register", file.to_str().unwrap()], None);
    assert!(!o.status.success(), "{o:?}");
}

#[tokio::test]
async fn the_agent_takes_consuls_single_dash_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (http, dns) = (free_port(), free_port());
    let args: Vec<String> = [
        "agent",
        "-dev",
        "-node",
        "flags-node",
        "-client",
        "127.0.0.1",
        "-http-port",
        &http.to_string(),
        "-dns-port",
        &dns.to_string(),
        "-data-dir",
        dir.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let s = Server::launch(&args, dir.path());
    assert_eq!(s.http.port(), http);
    assert_eq!(s.dns.port(), dns);
    let (status, nodes) = get_json(&s.url("/v1/catalog/nodes")).await;
    assert_eq!(status, 200);
    assert_eq!(nodes[0]["Node"], "flags-node", "{nodes}");
}

#[tokio::test]
async fn monitor_streams_the_log_and_validate_checks_files() {
    let s = Server::with_config("datacenter = \"dc1\"\n");
    let addr = s.http.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(["monitor", "-http-addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    eventually("the reload in the monitor's stream", || {
        // Each try asks for a reload and reads what streamed since.
        let o = beacon(Some(("CONSUL_HTTP_ADDR", addr.as_str())), &["reload"], None);
        assert!(o.status.success(), "{o:?}");
        seen.extend(rx.try_iter());
        let hit = seen
            .iter()
            .any(|l| l.contains("reloaded DNS configuration"));
        async move { hit.then_some(()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "datacenter = \"east\"\n[ports]\nhttps = -1\n").unwrap();
    let o = beacon(None, &["validate", good.to_str().unwrap()], None);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).trim(), "Configuration is valid!");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "datacenter = \"east\"\nbogus_key = 1\n").unwrap();
    let o = beacon(
        None,
        &["validate", good.to_str().unwrap(), bad.to_str().unwrap()],
        None,
    );
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("bogus_key"),
        "{err}"
    );
}

/// A `beacon` command left running, its stdout and stderr collected as they come.
struct Running {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_beacon"))
            .args(args)
            .env_remove("BEACON_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut from: Box<dyn std::io::Read + Send>| {
            let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let into = sink.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    into.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            sink
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (up to the deadline) for the command to exit; returns its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!(
                    "still running after {DEADLINE:?}; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_file(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// Writes a line into a FIFO once its reader has opened it.
async fn release_fifo(path: &std::path::Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut writer = eventually("the FIFO's reader", || async {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()
    })
    .await;
    writer.write_all(b"go\n").unwrap();
}

/// Consul's lock keys carry these flags (`api.LockFlagValue`).
const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;

#[tokio::test]
async fn lock_runs_one_child_at_a_time_and_passes_its_exit_code_on() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let (log_path, fifo_path) = (log.display().to_string(), fifo.display().to_string());
    let first_child = format!(
        "echo \"A $CONSUL_LOCK_HELD\" >> {log_path}; read line < {fifo_path}; \
         echo A-end >> {log_path}; exit 3"
    );
    let mut first = Running::start(&[
        "lock",
        "-http-addr",
        &addr,
        "-name",
        "first",
        "jobs/nightly",
        &first_child,
    ]);
    eventually("the first child runs", || async {
        read_file(&log).contains("A true").then_some(())
    })
    .await;

    // It holds jobs/nightly/.lock with a session of its own: named, with a 15s TTL.
    let lock_url = s.url("/v1/kv/jobs/nightly/.lock");
    let r = http().get(&lock_url).send().await.unwrap();
    let index = consul_index(&r);
    let entry: serde_json::Value = r.json().await.unwrap();
    assert_eq!(entry[0]["Flags"], LOCK_FLAG_VALUE, "{entry}");
    let holder = entry[0]["Session"].as_str().unwrap().to_string();
    let (_, session) = get_json(&s.url(&format!("/v1/session/info/{holder}"))).await;
    assert_eq!(session[0]["Name"], "first", "{session}");
    assert_eq!(session[0]["TTL"], "15s", "{session}");

    // A second lock on the prefix waits: its child (several words, joined by spaces, as
    // Consul) does not run, and the key stays the first one's for a second.
    let mut second = Running::start(&[
        "lock",
        "-http-addr",
        &addr,
        "jobs/nightly",
        "echo",
        "B",
        "$CONSUL_LOCK_HELD",
        ">>",
        &log_path,
    ]);
    eventually("the second lock's session (or its child)", || async {
        let (_, sessions) = get_json(&s.url("/v1/session/list")).await;
        (sessions.as_array().unwrap().len() == 2 || read_file(&log).contains('B')).then_some(())
    })
    .await;
    let r = http()
        .get(format!("{lock_url}?index={index}&wait=1s"))
        .send()
        .await
        .unwrap();
    let entry: serde_json::Value = r.json().await.unwrap();
    assert_eq!(entry[0]["Session"], holder.as_str(), "{entry}");
    assert!(!read_file(&log).contains('B'), "{}", read_file(&log));

    // The first child ends: its exit code is the command's, then the second one runs.
    release_fifo(&fifo).await;
    assert_eq!(first.exit_code(), Some(3), "{}", first.stderr());
    assert_eq!(second.exit_code(), Some(0), "{}", second.stderr());
    assert_eq!(read_file(&log), "A true\nA-end\nB true\n");

    // Both released the lock, destroyed their sessions and deleted the key.
    let (status, _) = get_json(&lock_url).await;
    assert_eq!(status, 404);
    let (_, sessions) = get_json(&s.url("/v1/session/list")).await;
    assert_eq!(sessions, serde_json::json!([]));
}

/// `beacon lock PREFIX` holding a child that writes "started" to `log` and sleeps; returns
/// once the child runs.
async fn lock_running(addr: &str, prefix: &str, log: &std::path::Path) -> Running {
    let child = format!("echo started >> {}; exec sleep 60", log.display());
    let running = Running::start(&["lock", "-http-addr", addr, prefix, &child]);
    eventually("the child runs", || async {
        read_file(log).contains("started").then_some(())
    })
    .await;
    running
}

#[tokio::test]
async fn lock_stops_its_child_when_the_lock_is_lost_or_a_signal_comes() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = format!("echo started >> {}; exec sleep 60", log.display());
    let mut held = lock_running(&addr, "jobs/lost", &log).await;

    // While it is held, -timeout gives up, says so, and leaves no session behind.
    fails(
        None,
        &[
            "lock",
            "-http-addr",
            &addr,
            "-timeout=200ms",
            "jobs/lost",
            "true",
        ],
        "timeout during lock acquisition",
    );
    let (_, sessions) = get_json(&s.url("/v1/session/list")).await;
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");

    // The key is released from under it (its session lives on): the lock is lost, the child
    // stopped, the exit code 1.
    let (_, entry) = get_json(&s.url("/v1/kv/jobs/lost/.lock")).await;
    let holder = entry[0]["Session"].as_str().unwrap().to_string();
    let release = format!("/v1/kv/jobs/lost/.lock?release={holder}&flags={LOCK_FLAG_VALUE}");
    let (status, text) = put(&s.url(&release), "").await;
    assert_eq!((status, text.trim()), (200, "true"));
    assert_eq!(held.exit_code(), Some(1));
    assert!(held.stderr().contains("Lock lost"), "{}", held.stderr());

    // Its session is destroyed (invalidated): the same.
    let mut held = Running::start(&["lock", "-http-addr", &addr, "jobs/invalid", &child]);
    let holder = eventually("the lock is held", || async {
        let (_, entry) = get_json(&s.url("/v1/kv/jobs/invalid/.lock")).await;
        entry[0]["Session"].as_str().map(str::to_string)
    })
    .await;
    let (status, _) = put(&s.url(&format!("/v1/session/destroy/{holder}")), "").await;
    assert_eq!(status, 200);
    assert_eq!(held.exit_code(), Some(1));
    assert!(held.stderr().contains("Lock lost"), "{}", held.stderr());

    // SIGTERM goes to the child; the lock is released and the child's status passed on.
    let log2 = dir.path().join("log2");
    let mut signalled = lock_running(&addr, "jobs/signal", &log2).await;
    signalled.signal("-TERM");
    assert_eq!(
        signalled.exit_code(),
        Some(128 + 15),
        "{}",
        signalled.stderr()
    );
    for key in ["jobs/lost/.lock", "jobs/invalid/.lock", "jobs/signal/.lock"] {
        let (status, _) = get_json(&s.url(&format!("/v1/kv/{key}"))).await;
        assert_eq!(status, 404, "{key}");
    }
    let (_, sessions) = get_json(&s.url("/v1/session/list")).await;
    assert_eq!(sessions, serde_json::json!([]));

    // Consul's checks of the arguments.
    for (args, message) in [
        (
            &["jobs/x"][..],
            "Key prefix and child command must be specified",
        ),
        (
            &["-n", "0", "jobs/x", "true"][..],
            "Lock holder limit must be positive",
        ),
        (
            &["-n", "2", "jobs/x", "true"][..],
            "semaphores (-n > 1) are not supported",
        ),
    ] {
        let mut all = vec!["lock", "-http-addr", &addr];
        all.extend(args);
        fails(None, &all, message);
    }
}

#[tokio::test]
async fn watch_hands_each_change_to_its_handler_as_consuls_json() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (status, _) = put(&s.url("/v1/kv/cfg/x"), "v1").await;
    assert_eq!(status, 200);
    let handler = format!(
        "cat >> {}; echo $CONSUL_INDEX >> {}.index",
        out.display(),
        out.display()
    );
    let mut watch = Running::start(&[
        "watch",
        "-http-addr",
        &addr,
        "-type",
        "key",
        "-key",
        "cfg/x",
        &handler,
    ]);
    let lines = |n: usize| {
        let out = out.clone();
        move || {
            let text = read_file(&out);
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            async move { (lines.len() >= n).then_some(lines) }
        }
    };
    let first = eventually("the first value", lines(1)).await;
    // Consul's api.KVPair, every field in its order.
    assert!(
        first[0].starts_with(r#"{"Key":"cfg/x","CreateIndex":"#),
        "{}",
        first[0]
    );
    let entry: serde_json::Value = serde_json::from_str(&first[0]).unwrap();
    assert_eq!(entry["Value"], STANDARD.encode("v1"));
    assert_eq!(entry["Session"], "");
    assert_eq!(entry["LockIndex"], 0);

    let (status, _) = put(&s.url("/v1/kv/cfg/x"), "v2").await;
    assert_eq!(status, 200);
    let both = eventually("the changed value", lines(2)).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let changed: serde_json::Value = serde_json::from_str(&both[1]).unwrap();
    assert_eq!(changed["Value"], STANDARD.encode("v2"));
    assert!(changed["ModifyIndex"].as_u64() > entry["ModifyIndex"].as_u64());
    let indexes = read_file(&dir.path().join("out.index"));
    assert_eq!(
        indexes.lines().last().unwrap(),
        changed["ModifyIndex"].to_string(),
        "CONSUL_INDEX is the answer's index"
    );
    // SIGTERM ends the watch, with exit code 0 as Consul's.
    watch.signal("-TERM");
    assert_eq!(watch.exit_code(), Some(0));

    // A handler that prints: one JSON line per change on stdout, the first one at start.
    let mut service = Running::start(&[
        "watch",
        "-http-addr",
        &addr,
        "-type",
        "service",
        "-service",
        "web",
        "cat",
    ]);
    eventually("the empty service", || {
        let seen = service.stdout();
        async move { (seen == "[]\n").then_some(()) }
    })
    .await;
    register(&s, serde_json::json!({"Name": "web", "Port": 80})).await;
    let line = eventually("the registered instance", || {
        let seen = service.stdout();
        async move { seen.lines().nth(1).map(str::to_string) }
    })
    .await;
    let instances: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(instances[0]["Service"]["Service"], "web", "{instances}");
    assert_eq!(instances[0]["Service"]["Port"], 80, "{instances}");
    service.signal("-INT");
    assert_eq!(service.exit_code(), Some(0));

    // The handler's failure ends the watch with exit code 1, as Consul's.
    fails(
        None,
        &["watch", "-http-addr", &addr, "-type", "nodes", "exit 4"],
        "Error executing handler: exit status 4",
    );
}

#[tokio::test]
async fn watch_without_a_handler_prints_the_view_once_as_consul() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    register(
        &s,
        serde_json::json!({"Name": "web", "Port": 80, "Tags": ["v1"]}),
    )
    .await;
    let o = beacon(
        None,
        &[
            "watch",
            "-http-addr",
            &addr,
            "-type",
            "service",
            "-service",
            "web",
            "-tag",
            "v1",
        ],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    // Go's json.MarshalIndent with four spaces.
    assert!(text.starts_with("[\n    {\n        \""), "{text}");
    let instances: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(instances[0]["Service"]["Service"], "web", "{instances}");
    let o = beacon(
        None,
        &[
            "watch",
            "-http-addr",
            &addr,
            "-type",
            "key",
            "-key",
            "absent",
        ],
        None,
    );
    assert_eq!(stdout(&o), "null\n", "{o:?}");
    let o = beacon(
        None,
        &["watch", "-http-addr", &addr, "-type", "services"],
        None,
    );
    let services: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(services["web"], serde_json::json!(["v1"]), "{services}");

    for (args, message) in [
        (&["-type", "key"][..], "Must specify a single key to watch"),
        (
            &["-type", "keyprefix"][..],
            "Must specify a single prefix to watch",
        ),
        (
            &["-type", "service"][..],
            "Must specify a single service to watch",
        ),
        (
            &["-type", "nodes", "-key", "k"][..],
            "Invalid parameters: [key]",
        ),
        (&["-type", "bogus"][..], "Unsupported watch type: bogus"),
        (&[][..], "Watch type must be specified"),
    ] {
        let mut all = vec!["watch", "-http-addr", &addr];
        all.extend(args);
        fails(None, &all, message);
    }
    fails(
        None,
        &["watch", "-http-addr", "127.0.0.1:1", "-type", "nodes"],
        "Error querying Consul agent",
    );
}

#[tokio::test]
async fn snapshot_inspect_prints_what_save_saved() {
    let s = Server::start(&[]);
    let addr = s.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", addr.as_str()));
    assert!(beacon(env, &["kv", "put", "k", "v"], None).status.success());
    register(&s, serde_json::json!({"Name": "web", "Port": 80})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let file_arg = file.to_str().unwrap();
    let saved = succeeds(env, &["snapshot", "save", "-stale", file_arg]);
    let index: u64 = saved
        .trim()
        .strip_prefix("Saved and verified snapshot to index ")
        .unwrap()
        .parse()
        .unwrap();

    let text = succeeds(None, &["snapshot", "inspect", file_arg]);
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .to_string()
    };
    assert_eq!(field("Index"), index.to_string(), "{text}");
    assert_eq!(
        field("Size"),
        std::fs::metadata(&file).unwrap().len().to_string()
    );
    assert_eq!(field("Term"), "0");
    assert_eq!(field("Version"), "1");
    let id = field("ID");
    assert!(id.starts_with(&format!("0-{index}-")), "{id}");
    assert!(
        text.starts_with(" ID           "),
        "Consul's columns:\n{text}"
    );
    assert_eq!(field("KVS"), "1", "one key:\n{text}");

    let json = succeeds(None, &["snapshot", "inspect", "-format", "json", file_arg]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["Meta"]["Index"], index, "{json}");

    std::fs::write(&file, "garbage").unwrap();
    fails(
        None,
        &["snapshot", "inspect", file_arg],
        "not a Beacon snapshot",
    );
    std::fs::write(&file, r#"{"Version": 1, "Catalog": {}}"#).unwrap();
    let o = beacon(None, &["snapshot", "inspect", file_arg], None);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

/// A stand-in agent that records each request line and answers 404 to all.
fn recording_agent() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            into.lock().unwrap().push(line.trim_end().to_string());
            let mut header = String::new();
            let mut length = 0;
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                header.clear();
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = (&conn).write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn datacenter_and_stale_reach_the_agent() {
    let s = Server::with_config("datacenter = \"dc1\"\n");
    let addr = s.http.to_string();
    let env = Some(("BEACON_HTTP_ADDR", addr.as_str()));
    assert!(
        beacon(env, &["kv", "put", "-datacenter", "dc1", "k", "v"], None)
            .status
            .success()
    );
    let o = beacon(
        env,
        &["kv", "get", "-datacenter", "dc1", "-stale", "k"],
        None,
    );
    assert_eq!(stdout(&o), "v\n", "{o:?}");
    // Beacon serves one datacenter: another one is the agent's error, passed on.
    for args in [
        &["kv", "get", "-datacenter", "other", "k"][..],
        &["kv", "get", "-recurse", "-datacenter", "other", "k"][..],
        &["kv", "put", "-datacenter", "other", "k", "v"][..],
        &["kv", "delete", "-datacenter", "other", "k"][..],
        &["catalog", "services", "-datacenter", "other"][..],
        &["snapshot", "save", "-datacenter", "other", "/nonexistent/x"][..],
        &["watch", "-datacenter", "other", "-type", "nodes"][..],
        &["lock", "-datacenter", "other", "jobs", "true"][..],
    ] {
        let o = beacon(env, args, None);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("No path to datacenter"),
            "{args:?}: {o:?}"
        );
    }
    assert_eq!(
        stdout(&beacon(env, &["kv", "get", "k"], None)),
        "v\n",
        "nothing was written"
    );

    // The query strings, as an agent sees them: `dc` on every call, `stale` on reads only.
    let (fake, seen) = recording_agent();
    let env = Some(("CONSUL_HTTP_ADDR", fake.as_str()));
    for args in [
        &["kv", "get", "-datacenter", "dc9", "-stale", "a/b"][..],
        &["kv", "put", "-datacenter", "dc9", "-stale", "a/b", "v"][..],
        &["catalog", "nodes", "-datacenter", "dc9", "-stale"][..],
        &["snapshot", "save", "-stale", "/nonexistent/x"][..],
    ] {
        beacon(env, args, None);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /v1/kv/a/b?dc=dc9&stale HTTP/1.1",
            "PUT /v1/kv/a/b?dc=dc9&flags=0 HTTP/1.1",
            "GET /v1/catalog/nodes?dc=dc9&stale HTTP/1.1",
            "GET /v1/snapshot?stale HTTP/1.1",
        ]
    );
}
