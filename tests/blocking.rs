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
