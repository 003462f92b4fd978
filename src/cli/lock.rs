//! `beacon lock PREFIX CHILD...`: Consul's `lock` with `-n 1` (its API's `Lock`). A session
//! (TTL 15s, renewed every 7.5s) acquires `PREFIX/.lock`, waiting on it with blocking queries
//! while another session holds it; the child runs with `CONSUL_LOCK_HELD=true` while a monitor
//! watches the key. When the child exits, the lock is released, the session destroyed and the
//! key deleted if nobody took it meanwhile; Beacon then exits with the child's status.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::process::{self, Shutdown};
use super::{Agent, HttpArgs, Query, Reply, ServerArgs};

/// The flags Consul's lock keys carry, so a lock and a semaphore on one prefix are told apart
/// (its API's `LockFlagValue`).
pub const LOCK_FLAG_VALUE: u64 = 0x2ddc_cbc0_58a5_0c18;
/// The key under the prefix (its API's `DefaultSemaphoreKey`).
const LOCK_KEY: &str = ".lock";
/// The lock session's TTL (its API's `DefaultLockSessionTTL`); renewed at half of it.
const SESSION_TTL: Duration = Duration::from_secs(15);
/// How long one blocking wait on a held lock lasts (`DefaultLockWaitTime`).
const LOCK_WAIT: Duration = Duration::from_secs(15);
/// The pause after an acquisition refused under a lock-delay (`DefaultLockRetryTime`).
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// The pause between the monitor's retries (`defaultMonitorRetryTime`).
const MONITOR_RETRY_TIME: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct LockArgs {
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// How many may hold the lock at once. Only 1 is supported (Consul turns a higher value
    /// into a semaphore).
    #[arg(
        short = 'n',
        long = "n",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    limit: i64,
    /// Session name (default: "Consul lock for 'CHILD' at 'PREFIX'", as Consul).
    #[arg(long)]
    name: Option<String>,
    /// Give up after waiting this long for the lock ("5s", "1m"); 0 waits for ever.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    timeout: Option<String>,
    /// Deprecated spelling of -timeout, as in Consul.
    #[arg(
        long = "try",
        value_name = "DURATION",
        hide = true,
        allow_hyphen_values = true
    )]
    try_timeout: Option<String>,
    /// Errors (5xx or no answer) the lock monitor rides out, 1s apart, before the lock is
    /// taken as lost.
    #[arg(
        long = "monitor-retry",
        default_value_t = 3,
        allow_negative_numbers = true
    )]
    monitor_retry: i64,
    /// Give the child this command's stdin (by default it gets none).
    #[arg(long = "pass-stdin")]
    pass_stdin: bool,
    /// Run CHILD through $SHELL -c (else /bin/sh); -shell=false runs it directly.
    #[arg(long, require_equals = true, num_args = 0..=1, default_value = "true",
          default_missing_value = "true", action = clap::ArgAction::Set)]
    shell: bool,
    /// Accepted for Consul's scripts; Beacon always exits with the child's status.
    #[arg(long = "child-exit-code")]
    child_exit_code: bool,
    /// Say what the lock is doing.
    #[arg(long)]
    verbose: bool,
    /// The KV prefix; the lock is the key PREFIX/.lock.
    prefix: Option<String>,
    /// The command to run while holding the lock.
    child: Vec<String>,
}

/// Why waiting for the lock stopped without it.
enum Gave {
    Up,
    Error(String),
}

/// The lock's calls: one key, one session.
struct Lock {
    agent: Agent,
    /// The escaped URL path of the key.
    path: String,
    /// `?dc=` for every call.
    dc: Query,
    session: String,
}

impl Lock {
    fn query(&self, extra: &[(&'static str, String)]) -> Query {
        let mut q = self.dc.clone();
        q.extend(extra.iter().cloned());
        q
    }

    /// The lock key (None when absent) and the index to block on.
    async fn read(&self, extra: &[(&'static str, String)]) -> Result<(Option<Value>, u64), String> {
        let reply = self
            .agent
            .call(
                reqwest::Method::GET,
                &self.path,
                &self.query(extra),
                Vec::new(),
            )
            .await?;
        match reply.status {
            200 => {
                let entries: Vec<Value> =
                    serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
                Ok((entries.into_iter().next(), reply.index))
            }
            404 => Ok((None, reply.index)),
            _ => Err(reply.unexpected()),
        }
    }

    /// `PUT ?acquire=` or `?release=` with the lock's flags; whether the server agreed.
    async fn put(&self, verb: &'static str) -> Result<bool, String> {
        let query = self.query(&[
            (verb, self.session.clone()),
            ("flags", LOCK_FLAG_VALUE.to_string()),
        ]);
        let reply = self
            .agent
            .call(reqwest::Method::PUT, &self.path, &query, Vec::new())
            .await?;
        if reply.status != 200 {
            return Err(reply.unexpected());
        }
        Ok(reply.text() == "true")
    }

    /// Waits until the session holds the lock (Consul's `Lock.Lock`), blocking on the key
    /// while another session holds it.
    async fn acquire(&self) -> Result<(), String> {
        let mut index = 0;
        loop {
            let mut extra = vec![("wait", format!("{}ms", LOCK_WAIT.as_millis()))];
            if index > 0 {
                extra.push(("index", index.to_string()));
            }
            let (entry, at) = self
                .read(&extra)
                .await
                .map_err(|e| format!("failed to read lock: {e}"))?;
            if let Some(entry) = &entry {
                if entry["Flags"].as_u64() != Some(LOCK_FLAG_VALUE) {
                    return Err("Existing key does not match lock use".into());
                }
                let holder = entry["Session"].as_str().unwrap_or("");
                if holder == self.session {
                    return Ok(());
                }
                if !holder.is_empty() {
                    index = at;
                    continue;
                }
            }
            if self
                .put("acquire")
                .await
                .map_err(|e| format!("failed to acquire lock: {e}"))?
            {
                return Ok(());
            }
            // Refused: either someone took it first (wait on them), or a lock-delay is running
            // (retry after a pause).
            let (entry, at) = self.read(&[]).await?;
            if entry.is_some_and(|e| !e["Session"].as_str().unwrap_or("").is_empty()) {
                index = at;
            } else {
                index = 0;
                tokio::time::sleep(LOCK_RETRY).await;
            }
        }
    }

    /// Returns once the session no longer holds the lock (Consul's `monitorLock`), riding out
    /// `retries` failed reads.
    async fn monitor(&self, retries: u64) {
        let mut index = 0;
        let mut failures = 0;
        loop {
            let mut extra = vec![("consistent", String::new())];
            if index > 0 {
                extra.push(("index", index.to_string()));
            }
            match self.read(&extra).await {
                Ok((Some(entry), at)) if entry["Session"].as_str() == Some(&self.session) => {
                    failures = 0;
                    index = at;
                }
                Ok(_) => return,
                Err(_) if failures < retries => {
                    failures += 1;
                    tokio::time::sleep(MONITOR_RETRY_TIME).await;
                }
                Err(_) => return,
            }
        }
    }

    /// Renews the session at half its TTL until the session is gone; returns then.
    async fn renew(&self) {
        let path = format!("/v1/session/renew/{}", self.session);
        loop {
            tokio::time::sleep(SESSION_TTL / 2).await;
            match self
                .agent
                .call(reqwest::Method::PUT, &path, &self.dc, Vec::new())
                .await
            {
                Ok(Reply { status: 404, .. }) => return,
                // A failed renewal is retried next time; the monitor notices a lost lock.
                _ => continue,
            }
        }
    }

    async fn destroy_session(&self) -> Result<(), String> {
        let path = format!("/v1/session/destroy/{}", self.session);
        self.agent
            .call_ok(reqwest::Method::PUT, &path, &self.dc, Vec::new())
            .await
            .map(drop)
    }

    /// Deletes the key if no session holds it (Consul's `Lock.Destroy`); Ok(false) when it is
    /// in use.
    async fn cleanup(&self) -> Result<bool, String> {
        let (entry, _) = self
            .read(&[])
            .await
            .map_err(|e| format!("failed to read lock: {e}"))?;
        let Some(entry) = entry else {
            return Ok(true);
        };
        if entry["Flags"].as_u64() != Some(LOCK_FLAG_VALUE) {
            return Err("Existing key does not match lock use".into());
        }
        if !entry["Session"].as_str().unwrap_or("").is_empty() {
            return Ok(false);
        }
        let cas = entry["ModifyIndex"].as_u64().unwrap_or(0);
        let reply = self
            .agent
            .call(
                reqwest::Method::DELETE,
                &self.path,
                &self.query(&[("cas", cas.to_string())]),
                Vec::new(),
            )
            .await
            .map_err(|e| format!("failed to remove lock: {e}"))?;
        if reply.status != 200 {
            return Err(format!("failed to remove lock: {}", reply.unexpected()));
        }
        Ok(reply.text() == "true")
    }
}

/// `path.Join(prefix, ".lock")` as Go cleans it.
fn lock_key(prefix: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in prefix.split('/').chain([LOCK_KEY]) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn duration_flag(name: &str, value: Option<&str>) -> Result<Duration, String> {
    match value {
        None => Ok(Duration::ZERO),
        Some(v) if v.trim_start().starts_with('-') => Err("Timeout must be positive".into()),
        Some(v) => beacon::model::parse_duration(v)
            .map_err(|e| format!("invalid value {v:?} for flag -{name}: {e}")),
    }
}

pub async fn run(args: LockArgs) -> Result<u8, String> {
    if args.limit <= 0 {
        return Err("Lock holder limit must be positive".into());
    }
    if args.limit > 1 {
        return Err("semaphores (-n > 1) are not supported".into());
    }
    if args.prefix.is_none() || args.child.is_empty() {
        return Err("Key prefix and child command must be specified".into());
    }
    let prefix = args.prefix.clone().unwrap_or_default();
    let prefix = prefix.trim_start_matches('/').to_string();
    let timeout = match &args.timeout {
        Some(t) => duration_flag("timeout", Some(t))?,
        None => duration_flag("try", args.try_timeout.as_deref())?,
    };
    if args.monitor_retry < 0 {
        return Err("Number for 'monitor-retry' must be >= 0".into());
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("Consul lock for '{}' at '{}'", args.child.join(" "), prefix));
    let verbose = |message: &str| {
        if args.verbose {
            println!("{message}");
        }
    };

    let agent = Agent::connect(&args.http)?;
    let dc = args.server.write_query();
    agent.check(&dc).await?;
    let key = lock_key(&prefix);
    verbose(&format!("Setting up lock at path: {key}"));
    let mut shutdown = Shutdown::listen()?;

    verbose("Attempting lock acquisition");
    let body = json!({"Name": name, "TTL": format!("{}s", SESSION_TTL.as_secs())});
    let session = match agent
        .call_ok(
            reqwest::Method::PUT,
            "/v1/session/create",
            &dc,
            body.to_string().into_bytes(),
        )
        .await
        .and_then(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v["ID"].as_str().map(str::to_string))
                .ok_or_else(|| format!("no session ID in {}", r.text()))
        }) {
        Ok(id) => id,
        Err(e) => {
            return Err(format!(
                "Lock acquisition failed: failed to create session: {e}"
            ));
        }
    };
    let lock = Lock {
        agent,
        path: format!("/v1/kv/{}", super::kv::key_path(&key)?),
        dc,
        session,
    };

    // Acquire, unless a signal or the timeout comes first.
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    // The session is renewed while waiting too (as Consul's `RenewPeriodic` from creation): a
    // wait behind a long holder outlives the session's TTL.
    let acquired = tokio::select! {
        r = lock.acquire() => r.map_err(Gave::Error),
        () = lock.renew() => Err(Gave::Error("the session ended while waiting".into())),
        _ = shutdown.recv() => Err(Gave::Up),
        _ = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        } => Err(Gave::Up),
    };
    if let Err(gave) = acquired {
        // It may have been acquired just as the wait ended: release before the session goes,
        // so no lock-delay follows.
        let _ = lock.put("release").await;
        let _ = lock.destroy_session().await;
        return Err(match gave {
            Gave::Up => "Shutdown triggered or timeout during lock acquisition".into(),
            Gave::Error(e) => format!("Lock acquisition failed: {e}"),
        });
    }

    // Held: run the child while the session is renewed and the lock watched.
    let outcome = {
        // Ends when the lock is lost: the key changed hands or the session is gone.
        let watch = async {
            tokio::select! {
                () = lock.monitor(args.monitor_retry as u64) => {}
                () = lock.renew() => {}
            }
        };
        tokio::pin!(watch);
        verbose("Starting handler");
        let spawned = process::command(&args.child, args.shell).and_then(|mut command| {
            command.env("CONSUL_LOCK_HELD", "true");
            if !args.pass_stdin {
                command.stdin(std::process::Stdio::null());
            }
            command.spawn().map_err(|e| e.to_string())
        });
        match spawned {
            Err(e) => Err(format!("Error starting handler: {e}")),
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => {
                        verbose("Child terminated, releasing lock");
                        status
                            .map(process::exit_code)
                            .map_err(|e| format!("Error running handler: {e}"))
                    }
                    signal = shutdown.recv() => {
                        verbose("Shutdown triggered, killing child");
                        process::stop(&mut child, signal).await.map(process::exit_code)
                    }
                    () = &mut watch => {
                        // Consul says so only with -verbose, and exits 0; Beacon always says
                        // so, and exits 1.
                        eprintln!("Lock lost, killing child");
                        process::stop(&mut child, libc::SIGTERM).await.map(|_| 1)
                    }
                }
            }
        }
    };

    // Release, end the session, delete the key if nobody waits on it.
    let released = lock.put("release").await;
    let destroyed = lock.destroy_session().await;
    if let Err(e) = released {
        return Err(format!("Lock release failed: failed to release lock: {e}"));
    }
    if let Err(e) = destroyed {
        return Err(format!(
            "Lock release failed: failed to destroy session: {e}"
        ));
    }
    match lock.cleanup().await {
        Ok(true) => verbose("Cleanup succeeded"),
        Ok(false) => verbose("Cleanup aborted, lock in use"),
        Err(e) => return Err(format!("Lock cleanup failed: {e}")),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_joined_as_go_does() {
        assert_eq!(lock_key("jobs/nightly"), "jobs/nightly/.lock");
        assert_eq!(lock_key("jobs/nightly/"), "jobs/nightly/.lock");
        assert_eq!(lock_key(""), ".lock");
        assert_eq!(lock_key("a//b/../c"), "a/c/.lock");
        assert_eq!(LOCK_FLAG_VALUE, 3_304_740_253_564_472_344);
    }
}
