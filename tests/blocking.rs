//! Blocking queries and read consistency modes on a real server.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

async fn get_with_index(url: &str) -> (u16, u64, serde_json::Value, reqwest::header::HeaderMap) {
    let r = http()
        .get(url)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let index = headers["X-Consul-Index"].to_str().unwrap().parse().unwrap();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, index, body, headers)
}

#[tokio::test]
async fn blocking_query_returns_early_on_change() {
    let s = Server::start(&[]);
    let (_, index, body, _) = get_with_index(&s.url("/v1/catalog/service/web")).await;
    assert_eq!(body, json!([]));
    let url = s.url(&format!("/v1/catalog/service/web?index={index}&wait=60s"));
    let waiter = tokio::spawn(async move { get_with_index(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "nothing changed yet: the query blocks"
    );
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let (status, new_index, body, _) = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the blocked query returns after the write, long before its 60 s wait")
        .unwrap();
    assert_eq!(status, 200);
    assert!(new_index > index);
    assert_eq!(body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn blocking_query_times_out_with_the_same_index_and_ignores_unrelated_writes() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let (_, index, _, _) = get_with_index(&s.url("/v1/health/service/web")).await;
    let url = s.url(&format!("/v1/health/service/web?index={index}&wait=2s"));
    let waiter = tokio::spawn(async move { get_with_index(&url).await });
    // Writes to other services and to KV do not answer the web watcher.
    register(&s, json!({"Name": "db", "Port": 5432})).await;
    let (st, _) = put(&s.url("/v1/kv/unrelated"), "x").await;
    assert_eq!(st, 200);
    let (status, same, _, headers) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(same, index, "expired without a change to web: same index");
    assert_eq!(headers["X-Consul-Effective-Consistency"], "leader");
    // An index of 0 never blocks.
    let (_, i0, _, _) = get_with_index(&s.url("/v1/health/service/web?index=0&wait=30s")).await;
    assert!(i0 >= 1);
}

#[tokio::test]
async fn kv_blocking_watches_a_prefix() {
    let s = Server::start(&[]);
    let (st, _) = put(&s.url("/v1/kv/app/a"), "1").await;
    assert_eq!(st, 200);
    let (_, index, _, _) = get_with_index(&s.url("/v1/kv/app/?recurse")).await;
    let url = s.url(&format!("/v1/kv/app/?recurse&index={index}&wait=60s"));
    let waiter = tokio::spawn(async move { get_with_index(&url).await });
    let (st, _) = put(&s.url("/v1/kv/other/key"), "x").await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a write outside the prefix does not answer the watcher"
    );
    let (st, _) = put(&s.url("/v1/kv/app/b"), "2").await;
    assert_eq!(st, 200);
    let (status, new_index, body, _) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert!(new_index > index);
    assert_eq!(body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn read_mode_parameters() {
    let s = Server::start(&[]);
    let r = http()
        .get(s.url("/v1/catalog/services?stale&consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("conflicting semantics"));
    assert_eq!(
        http()
            .get(s.url("/v1/catalog/services?index=abc"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        http()
            .get(s.url("/v1/catalog/services?index=1&wait=forever"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let (_, _, _, stale) = get_with_index(&s.url("/v1/catalog/services?stale")).await;
    assert_eq!(stale["X-Consul-Effective-Consistency"], "stale");
    assert_eq!(stale["X-Consul-KnownLeader"], "true");
    let (_, _, _, consistent) = get_with_index(&s.url("/v1/catalog/services?consistent")).await;
    assert_eq!(consistent["X-Consul-Effective-Consistency"], "consistent");
}

/// Starts a watcher of `path` at its current index; returns the index and the waiting task.
async fn watch(
    s: &Server,
    path: &str,
) -> (
    u64,
    tokio::task::JoinHandle<(u16, u64, serde_json::Value, reqwest::header::HeaderMap)>,
) {
    let (_, index, _, _) = get_with_index(&s.url(path)).await;
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = s.url(&format!("{path}{sep}index={index}&wait=10m"));
    (
        index,
        tokio::spawn(async move { get_with_index(&url).await }),
    )
}

/// The watcher returns long before its 10-minute wait, with a higher index than it sent.
async fn woken(
    what: &str,
    (index, waiter): (
        u64,
        tokio::task::JoinHandle<(u16, u64, serde_json::Value, reqwest::header::HeaderMap)>,
    ),
) -> serde_json::Value {
    let (_, new_index, body, _) = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap_or_else(|_| panic!("{what}: the watcher was not woken"))
        .unwrap();
    assert!(
        new_index > index,
        "{what}: index went from {index} to {new_index}"
    );
    body
}

async fn kv_put(s: &Server, key: &str) {
    let (st, text) = put(&s.url(&format!("/v1/kv/{key}")), "v").await;
    assert_eq!(st, 200, "{text}");
}

async fn delete(s: &Server, path: &str) {
    let r = http().delete(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "DELETE {path}");
}

#[tokio::test]
async fn kv_deletes_wake_prefix_watchers_and_the_index_never_goes_back() {
    let s = Server::start(&[]);
    for key in ["cfg/web/a", "cfg/web/b", "cfg/web/c", "cfg/db/x"] {
        kv_put(&s, key).await;
    }
    // The newest key is deleted: without tombstones the prefix index would drop to b's.
    let recurse = watch(&s, "/v1/kv/cfg/web/?recurse").await;
    let keys = watch(&s, "/v1/kv/cfg/web/?keys").await;
    delete(&s, "/v1/kv/cfg/web/c").await;
    let body = woken("recurse after delete", recurse).await;
    let left: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["cfg/web/a", "cfg/web/b"]);
    assert_eq!(
        woken("keys after delete", keys).await,
        json!(["cfg/web/a", "cfg/web/b"])
    );

    // A recursive delete of the whole prefix: 404, with a higher index.
    let recurse = watch(&s, "/v1/kv/cfg/web/?recurse").await;
    delete(&s, "/v1/kv/cfg/web/?recurse").await;
    woken("recurse after recursive delete", recurse).await;
    let (status, after, _, _) = get_with_index(&s.url("/v1/kv/cfg/web/?recurse")).await;
    assert_eq!(status, 404);

    // A session with behavior=delete deletes the keys it holds when it is destroyed.
    let (st, text) = put(&s.url("/v1/session/create"), r#"{"Behavior":"delete"}"#).await;
    assert_eq!(st, 200, "{text}");
    let session: serde_json::Value = serde_json::from_str(&text).unwrap();
    let session = session["ID"].as_str().unwrap().to_string();
    let (st, text) = put(&s.url(&format!("/v1/kv/locks/l?acquire={session}")), "me").await;
    assert_eq!((st, text.as_str()), (200, "true"));
    kv_put(&s, "locks/other").await;
    let prefix = watch(&s, "/v1/kv/locks/?recurse").await;
    let (st, _) = put(&s.url(&format!("/v1/session/destroy/{session}")), "").await;
    assert_eq!(st, 200);
    let body = woken("session invalidation deleting its key", prefix).await;
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");

    // The index of the deleted prefix never drops below the delete, even after writes elsewhere.
    kv_put(&s, "cfg/db/y").await;
    let (_, later, _, _) = get_with_index(&s.url("/v1/kv/cfg/web/?recurse")).await;
    assert!(later >= after, "{later} < {after}");
}

#[tokio::test]
async fn catalog_deregistrations_wake_every_endpoint_that_covered_them() {
    let s = Server::start(&[]);
    let register_on = |node: &str, service: &str| {
        json!({
            "Node": node, "Address": "10.1.1.1",
            "Service": {"Service": service, "ID": service, "Port": 80},
            "Checks": [
                {"CheckID": format!("{service}-check"), "Name": "c", "Status": "passing", "ServiceID": service},
                {"CheckID": "node-alive", "Name": "n", "Status": "passing"},
            ],
        })
    };
    for (node, service) in [("n1", "solo"), ("n2", "keep"), ("n3", "my svc")] {
        let (st, text) = put(
            &s.url("/v1/catalog/register"),
            register_on(node, service).to_string(),
        )
        .await;
        assert_eq!(st, 200, "{text}");
    }
    // A name that must be percent-encoded in the path is watched under its real name.
    let spaced = watch(&s, "/v1/health/service/my%20svc").await;
    let (st, text) = put(
        &s.url("/v1/catalog/deregister"),
        json!({"Node": "n3", "ServiceID": "my svc"}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    woken("/v1/health/service/my%20svc", spaced).await;
    // The last instance of `solo` goes.
    let watchers = [
        "/v1/catalog/service/solo",
        "/v1/health/service/solo",
        "/v1/health/checks/solo",
        "/v1/catalog/services",
        "/v1/health/state/passing",
    ];
    let mut waiting = Vec::new();
    for path in watchers {
        waiting.push((path, watch(&s, path).await));
    }
    let (st, text) = put(
        &s.url("/v1/catalog/deregister"),
        json!({"Node": "n1", "ServiceID": "solo"}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    for (path, w) in waiting {
        woken(path, w).await;
    }
    // Then the node itself.
    let watchers = [
        "/v1/catalog/nodes",
        "/v1/catalog/node/n1",
        "/v1/catalog/node-services/n1",
        "/v1/health/node/n1",
    ];
    let mut waiting = Vec::new();
    for path in watchers {
        waiting.push((path, watch(&s, path).await));
    }
    let (st, text) = put(
        &s.url("/v1/catalog/deregister"),
        json!({"Node": "n1"}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    for (path, w) in waiting {
        woken(path, w).await;
    }
}

#[tokio::test]
async fn kv_indexes_stay_monotonic_across_restart_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    for key in ["app/a", "app/b"] {
        kv_put(&s, key).await;
    }
    let backup = http().get(s.url("/v1/snapshot")).send().await.unwrap();
    assert_eq!(backup.status(), 200);
    let backup = backup.bytes().await.unwrap();
    let (_, before, _, _) = get_with_index(&s.url("/v1/kv/app/?recurse")).await;
    delete(&s, "/v1/kv/app/b").await;
    let (_, deleted, _, _) = get_with_index(&s.url("/v1/kv/app/?recurse")).await;
    assert!(deleted > before, "the delete raised the prefix index");
    s.terminate();

    // The tombstone is persisted: after a restart the prefix still answers with the delete.
    let s = Server::start_in(dir.path(), &[]);
    let (_, restarted, body, _) = get_with_index(&s.url("/v1/kv/app/?recurse")).await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert!(
        restarted >= deleted,
        "{restarted} < {deleted} after restart"
    );

    // A restore brings back older entries; every KV endpoint answers with the restore's index,
    // above anything the watchers saw (here: a key written and deleted after the backup).
    kv_put(&s, "app/c").await;
    delete(&s, "/v1/kv/app/c").await;
    let watcher = watch(&s, "/v1/kv/app/?recurse").await;
    let single = watch(&s, "/v1/kv/app/a").await;
    let (st, text) = put(&s.url("/v1/snapshot"), backup).await;
    assert_eq!(st, 200, "{text}");
    let body = woken("prefix after restore", watcher).await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    woken("single key after restore", single).await;
}
