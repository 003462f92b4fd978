//! `beacon watch -type TYPE … [HANDLER...]`: Consul's `watch` (its `api/watch` plan). A loop of
//! blocking queries on one endpoint; each new result (and the first) goes to the handler as
//! JSON on its stdin, with `CONSUL_INDEX` in its environment. Without a handler the first
//! result is printed, indented, and the watch ends, as Consul's does.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::process::{self, Shutdown};
use super::{Agent, HttpArgs, Query, ServerArgs, go_json};

/// The first pause after a failed query; the n-th failure in a row waits n² times as long.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The longest pause between failed queries.
const MAX_BACKOFF: Duration = Duration::from_secs(180);

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// What to watch: key, keyprefix, services, nodes, service or checks.
    #[arg(long = "type", value_name = "TYPE")]
    watch_type: Option<String>,
    /// The key to watch (type key).
    #[arg(long)]
    key: Option<String>,
    /// The key prefix to watch (type keyprefix).
    #[arg(long)]
    prefix: Option<String>,
    /// The service to watch (type service; optional for checks).
    #[arg(long)]
    service: Option<String>,
    /// Only instances with this tag (type service; checks of services with it for checks).
    #[arg(long)]
    tag: Option<String>,
    /// Only instances whose checks all pass (type service): true or false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    passingonly: Option<String>,
    /// The check state to watch (type checks): any, passing, warning or critical.
    #[arg(long)]
    state: Option<String>,
    /// Run HANDLER through $SHELL -c (else /bin/sh); -shell=false runs it directly.
    #[arg(long, require_equals = true, num_args = 0..=1, default_value = "true",
          default_missing_value = "true", action = clap::ArgAction::Set)]
    shell: bool,
    /// The command to run on each change, with the JSON on its stdin.
    handler: Vec<String>,
}

/// One watch type with its parameters.
#[derive(Debug, PartialEq)]
enum View {
    Key(String),
    KeyPrefix(String),
    Services,
    Nodes,
    Service {
        name: String,
        tag: Option<String>,
        passing: bool,
    },
    /// Checks of one service, or in one state (with `tag`, of services carrying it).
    ChecksOfService(String),
    ChecksInState {
        state: String,
        tag: Option<String>,
    },
}

fn given(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

impl View {
    /// The watch the flags describe, with Consul's checks and messages (`watch.Parse`).
    fn parse(args: &WatchArgs) -> Result<View, String> {
        let passing = match given(&args.passingonly) {
            None => None,
            Some(v) => Some(super::go_bool(&v).ok_or_else(|| {
                format!("Failed to parse passingonly flag: strconv.ParseBool: parsing {v:?}: invalid syntax")
            })?),
        };
        let watch_type = given(&args.watch_type).ok_or("Watch type must be specified")?;
        let (key, prefix, service, tag, state) = (
            given(&args.key),
            given(&args.prefix),
            given(&args.service),
            given(&args.tag),
            given(&args.state),
        );
        let mut unused: Vec<&str> = [
            ("key", key.is_some()),
            ("prefix", prefix.is_some()),
            ("service", service.is_some()),
            ("tag", tag.is_some()),
            ("passingonly", passing.is_some()),
            ("state", state.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        let mut uses = |names: &[&str]| unused.retain(|u| !names.contains(u));
        let view = match watch_type.as_str() {
            "key" => {
                uses(&["key"]);
                View::Key(key.ok_or("Must specify a single key to watch")?)
            }
            "keyprefix" => {
                uses(&["prefix"]);
                View::KeyPrefix(prefix.ok_or("Must specify a single prefix to watch")?)
            }
            "services" => View::Services,
            "nodes" => View::Nodes,
            "service" => {
                uses(&["service", "tag", "passingonly"]);
                View::Service {
                    name: service.ok_or("Must specify a single service to watch")?,
                    tag,
                    passing: passing.unwrap_or(false),
                }
            }
            "checks" => {
                uses(&["service", "state", "tag"]);
                match (service, state) {
                    (Some(_), Some(_)) => return Err("Cannot specify service and state".into()),
                    (Some(service), None) => View::ChecksOfService(service),
                    (None, state) => View::ChecksInState {
                        state: state.unwrap_or_else(|| "any".into()),
                        tag,
                    },
                }
            }
            other => return Err(format!("Unsupported watch type: {other}")),
        };
        if !unused.is_empty() {
            return Err(format!("Invalid parameters: [{}]", unused.join(" ")));
        }
        Ok(view)
    }

    fn name(&self) -> &'static str {
        match self {
            View::Key(_) => "key",
            View::KeyPrefix(_) => "keyprefix",
            View::Services => "services",
            View::Nodes => "nodes",
            View::Service { .. } => "service",
            View::ChecksOfService(_) | View::ChecksInState { .. } => "checks",
        }
    }

    /// The endpoint (escaped path) and its own query parameters.
    fn endpoint(&self) -> Result<(String, Query), String> {
        let segment = super::kv::key_path;
        Ok(match self {
            View::Key(key) => (format!("/v1/kv/{}", segment(key)?), vec![]),
            View::KeyPrefix(prefix) => (
                format!("/v1/kv/{}", segment(prefix)?),
                vec![("recurse", String::new())],
            ),
            View::Services => ("/v1/catalog/services".into(), vec![]),
            View::Nodes => ("/v1/catalog/nodes".into(), vec![]),
            View::Service { name, tag, passing } => {
                let mut query = Vec::new();
                if let Some(tag) = tag {
                    query.push(("tag", tag.clone()));
                }
                if *passing {
                    query.push(("passing", "1".to_string()));
                }
                (format!("/v1/health/service/{}", segment(name)?), query)
            }
            View::ChecksOfService(name) => {
                (format!("/v1/health/checks/{}", segment(name)?), vec![])
            }
            View::ChecksInState { state, tag } => {
                let mut query = Vec::new();
                if let Some(tag) = tag {
                    query.push(("filter", format!("{tag:?} in ServiceTags")));
                }
                (format!("/v1/health/state/{}", segment(state)?), query)
            }
        })
    }

    /// The result in an answer, as JSON text (compact) and as a value to compare. A missing
    /// key or prefix is `null`, as Consul's API client gives its handler.
    fn result(&self, reply: &super::Reply) -> Result<(String, Value), String> {
        let is_kv = matches!(self, View::Key(_) | View::KeyPrefix(_));
        match reply.status {
            200 => {}
            404 if is_kv => return Ok(("null".into(), Value::Null)),
            _ => return Err(reply.unexpected()),
        }
        let value: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("Error decoding the agent's answer: {e}"))?;
        let text = match self {
            View::Key(_) => {
                let first = value.as_array().and_then(|a| a.first()).cloned();
                to_json(&first.as_ref().map(KvPair::from))?
            }
            View::KeyPrefix(_) => {
                let pairs: Vec<KvPair> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(KvPair::from)
                    .collect();
                to_json(&pairs)?
            }
            _ => go_json(&String::from_utf8_lossy(&reply.body), None),
        };
        let value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok((text, value))
    }
}

/// A KV entry as Consul's API client (`api.KVPair`) encodes it for a handler: every field, in
/// its order, `Session` empty rather than absent.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    key: String,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    flags: u64,
    value: Option<String>,
    session: String,
}

impl From<&Value> for KvPair {
    fn from(e: &Value) -> Self {
        let text = |field: &str| e[field].as_str().unwrap_or_default().to_string();
        let number = |field: &str| e[field].as_u64().unwrap_or(0);
        KvPair {
            key: text("Key"),
            create_index: number("CreateIndex"),
            modify_index: number("ModifyIndex"),
            lock_index: number("LockIndex"),
            flags: number("Flags"),
            value: e["Value"].as_str().map(str::to_string),
            session: text("Session"),
        }
    }
}

fn to_json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value)
        .map(|s| go_json(&s, None))
        .map_err(|e| format!("Error encoding output: {e}"))
}

/// When a result goes to the handler (Consul's `Plan.Run`): when the index moved and the
/// result differs from the last one handed over (the first always goes).
#[derive(Default)]
struct Plan {
    /// The index the next query blocks on; None before the first answer and after an error.
    index: Option<u64>,
    last: Option<Value>,
}

impl Plan {
    /// Takes an answer; true when it is to be handled.
    fn observe(&mut self, index: u64, result: Value) -> bool {
        if self.index == Some(index) {
            return false;
        }
        let old = self.index;
        // An index that went backwards (a restored snapshot, another server) starts over from
        // 0, so the next query answers at once.
        self.index = Some(match old {
            Some(previous) if previous > index => 0,
            _ => index,
        });
        if old.is_some() && self.last.as_ref() == Some(&result) {
            return false;
        }
        self.last = Some(result);
        true
    }

    /// A failed query: the next one starts without an index (and its result is handled).
    fn failed(&mut self) {
        self.index = None;
    }

    /// The `?index=` of the next query (none for 0, as Consul's client).
    fn wait_index(&self) -> Option<u64> {
        self.index.filter(|&i| i > 0)
    }
}

/// Go's text for how a process ended (`exec.ExitError`).
fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match signal {
            libc::SIGHUP => "signal: hangup".into(),
            libc::SIGINT => "signal: interrupt".into(),
            libc::SIGKILL => "signal: killed".into(),
            libc::SIGTERM => "signal: terminated".into(),
            other => format!("signal: {other}"),
        },
        _ => status.to_string(),
    }
}

/// How running the handler ended.
enum Handled {
    Done,
    Failed(String),
    /// SIGINT or SIGTERM came (and was passed on to the handler).
    Shutdown,
}

async fn run_handler(args: &WatchArgs, index: u64, json: &str, shutdown: &mut Shutdown) -> Handled {
    let mut command = match process::command(&args.handler, args.shell) {
        Ok(c) => c,
        Err(e) => return Handled::Failed(format!("Error executing handler: {e}")),
    };
    command
        .env("CONSUL_INDEX", index.to_string())
        .stdin(std::process::Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Handled::Failed(format!("Error starting handler: {e}")),
    };
    // The handler may exit without reading: its stdin is written alongside the wait.
    if let Some(mut stdin) = child.stdin.take() {
        let input = format!("{json}\n").into_bytes();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) if s.success() => Handled::Done,
            Ok(s) => Handled::Failed(format!("Error executing handler: {}", exit_text(s))),
            Err(e) => Handled::Failed(format!("Error executing handler: {e}")),
        },
        signal = shutdown.recv() => {
            // The handler ends with the watch (SIGKILL if it ignores the signal), as `lock`'s
            // child does.
            if let Err(e) = process::stop(&mut child, signal).await {
                eprintln!("Warning, could not stop the handler: {e}");
            }
            Handled::Shutdown
        }
    }
}

pub async fn run(args: WatchArgs) -> Result<u8, String> {
    let view = View::parse(&args)?;
    let (path, own_query) = view.endpoint()?;
    let agent = Agent::connect(&args.http)?;
    agent.check(&args.server.write_query()).await?;
    let mut shutdown = Shutdown::listen()?;
    let mut plan = Plan::default();
    let mut failures: u32 = 0;
    loop {
        let mut query = args.server.read_query();
        query.extend(own_query.iter().cloned());
        if let Some(index) = plan.wait_index() {
            query.push(("index", index.to_string()));
        }
        let answer = tokio::select! {
            reply = agent.call(reqwest::Method::GET, &path, &query, Vec::new()) => {
                reply.and_then(|r| view.result(&r).map(|(text, value)| (r.index, text, value)))
            }
            _ = shutdown.recv() => return Ok(0),
        };
        let (index, text, value) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                failures += 1;
                plan.failed();
                let retry = (RETRY_INTERVAL * failures.saturating_mul(failures)).min(MAX_BACKOFF);
                eprintln!(
                    "[ERROR] watch: Watch errored: type={} error={e:?} retry={}",
                    view.name(),
                    beacon::model::format_duration(retry)
                );
                tokio::select! {
                    () = tokio::time::sleep(retry) => continue,
                    _ = shutdown.recv() => return Ok(0),
                }
            }
        };
        failures = 0;
        if !plan.observe(index, value) {
            continue;
        }
        if args.handler.is_empty() {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", go_json(&text, Some("    ")))
                .and_then(|()| out.flush())
                .map_err(|e| format!("Error writing output: {e}"))?;
            return Ok(0);
        }
        match run_handler(&args, index, &text, &mut shutdown).await {
            Handled::Done => {}
            Handled::Failed(e) => {
                eprintln!("{e}");
                return Ok(1);
            }
            Handled::Shutdown => return Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_plan_hands_over_changes_and_restarts_when_the_index_goes_back() {
        let mut plan = Plan::default();
        assert_eq!(plan.wait_index(), None);
        assert!(plan.observe(10, json!([1])), "the first result always goes");
        assert_eq!(plan.wait_index(), Some(10));
        assert!(
            !plan.observe(10, json!([2])),
            "same index: nothing happened"
        );
        assert!(!plan.observe(11, json!([1])), "new index, same result");
        assert_eq!(plan.wait_index(), Some(11));
        assert!(plan.observe(12, json!([3])));
        // Backwards: handled if different, and the next query starts from 0 (no ?index).
        assert!(!plan.observe(5, json!([3])));
        assert_eq!(plan.wait_index(), None);
        assert_eq!(plan.index, Some(0));
        assert!(!plan.observe(5, json!([3])), "from 0 to 5, same result");
        assert_eq!(plan.wait_index(), Some(5));
        // After an error the next answer goes to the handler even if unchanged.
        plan.failed();
        assert!(plan.observe(5, json!([3])));
    }

    fn args(argv: &[&str]) -> WatchArgs {
        #[derive(clap::Parser)]
        struct Test {
            #[command(flatten)]
            watch: WatchArgs,
        }
        let mut all = vec!["watch".to_string()];
        all.extend(argv.iter().map(|s| s.to_string()));
        <Test as clap::Parser>::parse_from(all).watch
    }

    #[test]
    fn flags_are_checked_as_consul_checks_them() {
        let parse = |argv: &[&str]| View::parse(&args(argv));
        assert_eq!(parse(&[]), Err("Watch type must be specified".into()));
        assert_eq!(
            parse(&["--type", "key"]),
            Err("Must specify a single key to watch".into())
        );
        assert_eq!(
            parse(&["--type", "key", "--key", "a"]),
            Ok(View::Key("a".into()))
        );
        assert_eq!(
            parse(&["--type", "key", "--key", "a", "--prefix", "b", "--tag", "t"]),
            Err("Invalid parameters: [prefix tag]".into())
        );
        assert_eq!(
            parse(&["--type", "checks", "--service", "a", "--state", "any"]),
            Err("Cannot specify service and state".into())
        );
        assert_eq!(
            parse(&["--type", "checks"]),
            Ok(View::ChecksInState {
                state: "any".into(),
                tag: None
            })
        );
        assert_eq!(
            parse(&["--type", "service", "--service", "web", "--passingonly"]),
            Ok(View::Service {
                name: "web".into(),
                tag: None,
                passing: true
            })
        );
        assert!(
            parse(&[
                "--type",
                "service",
                "--service",
                "web",
                "--passingonly=maybe"
            ])
            .unwrap_err()
            .starts_with("Failed to parse passingonly flag")
        );
        assert_eq!(
            parse(&["--type", "event"]),
            Err("Unsupported watch type: event".into())
        );
    }
}
