//! The middle tier: the real server started in-process (ephemeral loopback ports, a shutdown
//! future) on a current-thread runtime with tokio's clock paused, so tests of timer logic
//! (session TTLs, the critical-service reaper) run in milliseconds of real time instead of
//! minutes. While the runtime has nothing to do, the paused clock jumps to the next timer.
//!
//! Paused time is for timer logic: timers may fire "early" while the runtime waits on socket
//! I/O, so nothing here asserts on socket timing. Process-boundary behaviour (signals, exit
//! codes, restarts, clusters, resolvers) stays in the real-binary tests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use beacon::config::{self, Flags};
use serde_json::{Value, json};
use support::eventually_within;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A dev server running inside the test's runtime.
struct InProcess {
    http: SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    async fn start() -> InProcess {
        let flags = Flags {
            dev: true,
            http_addr: Some("127.0.0.1:0".into()),
            dns_addr: Some("127.0.0.1:0".into()),
            node: Some("in-process".into()),
            ..Flags::default()
        };
        let mut config = config::resolve(&flags, None).expect("dev config");
        config.dns.udp_workers = 1;
        let bound = beacon::server::bind(&config).await.expect("bind");
        let http = bound.http_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(beacon::server::run_bound(config, bound, None, async {
            let _ = stopped.await;
        }));
        let server = InProcess {
            http,
            client: reqwest::Client::new(),
            stop: Some(stop),
            done,
        };
        eventually_within(
            Duration::from_secs(30),
            "the agent is registered",
            || async {
                let (_, nodes) = server.get("/v1/catalog/nodes").await;
                (nodes.as_array().is_some_and(|n| !n.is_empty())).then_some(())
            },
        )
        .await;
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn put(&self, path: &str, body: Value) -> (u16, String) {
        let r = self
            .client
            .put(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn create_session(&self, body: Value) -> String {
        let (st, text) = self.put("/v1/session/create", body).await;
        assert_eq!(st, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["ID"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().expect("clean shutdown");
    }
}

#[tokio::test(start_paused = true)]
async fn session_ttl_expiry_releases_the_lock() {
    let s = InProcess::start().await;
    let sid = s
        .create_session(json!({"TTL": "10s", "LockDelay": "0s"}))
        .await;
    let (_, acquired) = s
        .put(&format!("/v1/kv/ttl-lock?acquire={sid}"), json!("x"))
        .await;
    assert_eq!(acquired, "true");
    let (_, renewed) = s
        .put(&format!("/v1/session/renew/{sid}"), json!(null))
        .await;
    assert!(renewed.contains(&sid));
    // Consul invalidates after twice the TTL without a renewal.
    eventually_within(Duration::from_secs(40), "the session expires", || async {
        let (_, info) = s.get(&format!("/v1/session/info/{sid}")).await;
        (info == json!([])).then_some(())
    })
    .await;
    let (_, e) = s.get("/v1/kv/ttl-lock").await;
    assert!(e[0].get("Session").is_none(), "the lock was released: {e}");
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_a_session_and_it_expires_at_twice_its_ttl_after_the_last() {
    let s = InProcess::start().await;
    let sid = s.create_session(json!({"TTL": "10s"})).await;
    let info = || async { s.get(&format!("/v1/session/info/{sid}")).await.1 };
    for _ in 0..15 {
        let (st, _) = s
            .put(&format!("/v1/session/renew/{sid}"), json!(null))
            .await;
        assert_eq!(st, 200);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_ne!(info().await, json!([]), "renewed every 3 s for 45 s");
    s.put(&format!("/v1/session/renew/{sid}"), json!(null))
        .await;
    let last_renew = Instant::now();
    tokio::time::sleep_until(last_renew + Duration::from_secs(19)).await;
    assert_ne!(
        info().await,
        json!([]),
        "still there 19 s after the last renew"
    );
    tokio::time::sleep_until(last_renew + Duration::from_secs(22)).await;
    assert_eq!(info().await, json!([]), "invalidated by 22 s (2 × TTL)");
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn services_critical_past_deregister_after_are_reaped() {
    let s = InProcess::start().await;
    for body in [
        json!({"Name": "doomed", "Port": 80, "Check": {"TTL": "1h", "DeregisterCriticalServiceAfter": "1s"}}),
        json!({"Name": "kept", "Port": 80, "Check": {"TTL": "1h", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}}),
    ] {
        let (st, text) = s.put("/v1/agent/service/register", body).await;
        assert_eq!(st, 200, "{text}");
    }
    // Consul's floor is one minute, and the reaper looks every few seconds.
    eventually_within(
        Duration::from_secs(100),
        "the critical service is deregistered",
        || async {
            let (_, services) = s.get("/v1/agent/services").await;
            services.get("doomed").is_none().then_some(())
        },
    )
    .await;
    let (_, services) = s.get("/v1/agent/services").await;
    assert!(services.get("kept").is_some(), "a passing service stays");
    let (_, checks) = s.get("/v1/agent/checks").await;
    assert!(
        checks.get("service:doomed").is_none(),
        "its checks went with it"
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn kv_tombstones_are_reaped_after_their_ttl_without_the_index_dropping() {
    let s = InProcess::start().await;
    let index = |path: &'static str| {
        let client = s.client.clone();
        let url = s.url(path);
        async move {
            let r = client.get(url).send().await.unwrap();
            r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let delete = |path: &'static str| {
        let request = s.client.delete(s.url(path));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    // `kept/` keeps an older live key beside a deleted newer one; `gone/` loses everything.
    for key in ["kept/a", "kept/b"] {
        let (st, _) = s.put(&format!("/v1/kv/{key}"), json!("v")).await;
        assert_eq!(st, 200);
    }
    delete("/v1/kv/kept/b").await;
    let kept_deleted = index("/v1/kv/kept/?recurse").await;
    let (st, _) = s.put("/v1/kv/gone/x", json!("v")).await;
    assert_eq!(st, 200);
    delete("/v1/kv/gone/x").await;
    let deleted = index("/v1/kv/gone/?recurse").await;
    let (st, _) = s.put("/v1/kv/other/y", json!("v")).await;
    assert_eq!(st, 200);
    // While the tombstone is kept, the empty prefix answers with the index of its delete.
    assert_eq!(index("/v1/kv/gone/?recurse").await, deleted);
    // After the TTL the leader reaps it: the prefix then answers with the KV table's index,
    // which is never lower.
    tokio::time::sleep(beacon::leader::TOMBSTONE_TTL).await;
    eventually_within(
        Duration::from_secs(120),
        "the tombstone is reaped",
        || async { (index("/v1/kv/gone/?recurse").await > deleted).then_some(()) },
    )
    .await;
    // The older live key alone would answer with its own, lower index: the reaped tombstone's
    // index is the floor.
    let kept = index("/v1/kv/kept/?recurse").await;
    assert!(
        kept >= kept_deleted,
        "{kept} < {kept_deleted} after the reap"
    );
    s.stop().await;
}
