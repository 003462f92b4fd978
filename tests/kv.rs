//! The KV store, sessions and transactions of a real server, over real HTTP.

mod support;

use serde_json::{Value, json};
use support::*;

async fn send(
    method: reqwest::Method,
    url: String,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = http().request(method, url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

async fn kv_put(s: &Server, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let (st, _, b) = send(reqwest::Method::PUT, s.url(&format!("/v1/kv/{path}")), body).await;
    (st, String::from_utf8_lossy(&b).into_owned())
}

async fn create_session(s: &Server, body: Value) -> String {
    let (st, text) = put(&s.url("/v1/session/create"), body.to_string()).await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["ID"].as_str().unwrap().to_string()
}

fn index(h: &reqwest::header::HeaderMap) -> u64 {
    h["X-Consul-Index"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn put_get_raw_recurse_keys_delete() {
    let s = Server::start(&[]);
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        kv_put(&s, "app/bin?flags=42", bytes.clone()).await,
        (200, "true".into())
    );
    assert_eq!(kv_put(&s, "app/config/db", "postgres").await.0, 200);
    assert_eq!(kv_put(&s, "app/config/cache", "redis").await.0, 200);
    assert_eq!(kv_put(&s, "other", "x").await.0, 200);

    let (st, h, body) = send(reqwest::Method::GET, s.url("/v1/kv/app/bin"), "").await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["Key"], "app/bin");
    assert_eq!(v[0]["Flags"], 42);
    assert_eq!(v[0]["ModifyIndex"].as_u64().unwrap(), index(&h));
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v[0]["Value"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, bytes, "arbitrary bytes round-trip");
    let (_, _, raw) = send(reqwest::Method::GET, s.url("/v1/kv/app/bin?raw"), "").await;
    assert_eq!(raw, bytes);

    let (_, h, body) = send(reqwest::Method::GET, s.url("/v1/kv/app/?recurse"), "").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/bin", "app/config/cache", "app/config/db"]);
    let max = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ModifyIndex"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(index(&h), max, "recurse index is the highest in the prefix");

    let (_, keys) = get_json(&s.url("/v1/kv/app/?keys&separator=/")).await;
    assert_eq!(keys, json!(["app/bin", "app/config/"]));
    let (_, keys) = get_json(&s.url("/v1/kv/?keys")).await;
    assert_eq!(keys.as_array().unwrap().len(), 4);

    let (st, h, _) = send(reqwest::Method::GET, s.url("/v1/kv/missing"), "").await;
    assert_eq!(st, 404);
    assert!(index(&h) >= 1);

    let (st, _, b) = send(
        reqwest::Method::DELETE,
        s.url("/v1/kv/app/config?recurse"),
        "",
    )
    .await;
    assert_eq!((st, b.as_slice()), (200, &b"true"[..]));
    let (_, keys) = get_json(&s.url("/v1/kv/?keys")).await;
    assert_eq!(keys, json!(["app/bin", "other"]));
    let (st, _, _) = send(reqwest::Method::DELETE, s.url("/v1/kv/other"), "").await;
    assert_eq!(st, 200);
    assert_eq!(
        send(reqwest::Method::GET, s.url("/v1/kv/other"), "")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn cas_races_have_exactly_one_winner() {
    let s = Server::start(&[]);
    assert_eq!(kv_put(&s, "counter", "0").await.0, 200);
    let (_, current) = get_json(&s.url("/v1/kv/counter")).await;
    let idx = current[0]["ModifyIndex"].as_u64().unwrap();
    for round in 0..5 {
        let (_, current) = get_json(&s.url("/v1/kv/counter")).await;
        let idx = current[0]["ModifyIndex"].as_u64().unwrap();
        let path = format!("counter?cas={idx}");
        let a = kv_put(&s, &path, format!("a{round}"));
        let b = kv_put(&s, &path, format!("b{round}"));
        let (a, b) = tokio::join!(a, b);
        let wins = [a.1.as_str(), b.1.as_str()]
            .iter()
            .filter(|r| **r == "true")
            .count();
        assert_eq!(wins, 1, "round {round}: {a:?} {b:?}");
    }
    // cas=0 only creates.
    assert_eq!(kv_put(&s, "counter?cas=0", "x").await.1, "false");
    assert_eq!(kv_put(&s, "fresh?cas=0", "x").await.1, "true");
    // Delete with a stale cas fails and leaves the key.
    let (_, _, b) = send(
        reqwest::Method::DELETE,
        s.url(&format!("/v1/kv/counter?cas={idx}")),
        "",
    )
    .await;
    assert_eq!(b, b"false");
    assert_eq!(
        send(reqwest::Method::GET, s.url("/v1/kv/counter"), "")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn locks_sessions_and_release_on_destroy() {
    let s = Server::start(&[]);
    let s1 = create_session(&s, json!({"Name": "one", "LockDelay": "0s"})).await;
    let s2 = create_session(&s, json!({})).await;
    let (_, info) = get_json(&s.url(&format!("/v1/session/info/{s1}"))).await;
    assert_eq!(info[0]["Name"], "one");
    assert_eq!(info[0]["Node"], "test-node");
    assert_eq!(info[0]["Behavior"], "release");
    let (_, info2) = get_json(&s.url(&format!("/v1/session/info/{s2}"))).await;
    assert_eq!(
        info2[0]["LockDelay"], 15_000_000_000u64,
        "default lock-delay is 15s"
    );

    let (pa, pb) = (
        format!("leader?acquire={s1}"),
        format!("leader?acquire={s2}"),
    );
    let a = kv_put(&s, &pa, "s1");
    let b = kv_put(&s, &pb, "s2");
    let (a, b) = tokio::join!(a, b);
    assert_eq!(
        [a.1.as_str(), b.1.as_str()]
            .iter()
            .filter(|r| **r == "true")
            .count(),
        1
    );
    let (winner, loser) = if a.1 == "true" {
        (&s1, &s2)
    } else {
        (&s2, &s1)
    };
    let (_, e) = get_json(&s.url("/v1/kv/leader")).await;
    assert_eq!(e[0]["Session"].as_str().unwrap(), winner);
    assert_eq!(e[0]["LockIndex"], 1);
    assert_eq!(
        kv_put(&s, &format!("leader?release={loser}"), "").await.1,
        "false"
    );

    let (_, list) = get_json(&s.url("/v1/session/list")).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, by_node) = get_json(&s.url("/v1/session/node/test-node")).await;
    assert_eq!(by_node.as_array().unwrap().len(), 2);

    let (st, text) = put(&s.url(&format!("/v1/session/destroy/{winner}")), "").await;
    assert_eq!((st, text.as_str()), (200, "true"));
    let (_, e) = get_json(&s.url("/v1/kv/leader")).await;
    assert!(
        e[0].get("Session").is_none(),
        "destroy released the lock: {e}"
    );
    let (_, gone) = get_json(&s.url(&format!("/v1/session/info/{winner}"))).await;
    assert_eq!(gone, json!([]));
    if winner == &s1 {
        // s1 had no lock-delay, so the other session can take the lock at once.
        assert_eq!(
            kv_put(&s, &format!("leader?acquire={loser}"), "").await.1,
            "true"
        );
    } else {
        // s2 has a 15 s lock-delay: the lock cannot be taken again yet.
        assert_eq!(
            kv_put(&s, &format!("leader?acquire={loser}"), "").await.1,
            "false"
        );
    }
    let (st, _) = put(&s.url(&format!("/v1/session/renew/{winner}")), "").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn delete_behavior_and_check_linked_sessions() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "web", "Check": {"TTL": "1h", "Status": "passing"}}),
    )
    .await;
    let sid = create_session(
        &s,
        json!({"Behavior": "delete", "ServiceChecks": [{"ID": "service:web"}]}),
    )
    .await;
    assert_eq!(
        kv_put(&s, &format!("ephemeral?acquire={sid}"), "x").await.1,
        "true"
    );
    fail(&s, "service:web").await;
    let (_, gone) = get_json(&s.url(&format!("/v1/session/info/{sid}"))).await;
    assert_eq!(
        gone,
        json!([]),
        "a critical linked check invalidates the session"
    );
    assert_eq!(
        send(reqwest::Method::GET, s.url("/v1/kv/ephemeral"), "")
            .await
            .0,
        404
    );
    // A session cannot be created on a critical check.
    let (st, text) = put(
        &s.url("/v1/session/create"),
        json!({"ServiceChecks": [{"ID": "service:web"}]}).to_string(),
    )
    .await;
    assert_eq!(st, 400, "{text}");
}

#[tokio::test]
async fn txn_applies_all_or_nothing() {
    let s = Server::start(&[]);
    assert_eq!(kv_put(&s, "t/a", "1").await.0, 200);
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/b", "Value": "Mg=="}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": "Mw==", "Index": 999}},
    ]);
    let (st, text) = put(&s.url("/v1/txn"), ops.to_string()).await;
    assert_eq!(st, 409, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["Errors"][0]["OpIndex"], 1);
    assert_eq!(
        send(reqwest::Method::GET, s.url("/v1/kv/t/b"), "").await.0,
        404,
        "nothing written"
    );

    let (_, a) = get_json(&s.url("/v1/kv/t/a")).await;
    let idx = a[0]["ModifyIndex"].as_u64().unwrap();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/b", "Value": "Mg=="}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": "Mw==", "Index": idx}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/c"}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
        {"KV": {"Verb": "delete", "Key": "t/zzz"}},
    ]);
    let (st, text) = put(&s.url("/v1/txn"), ops.to_string()).await;
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["Errors"], Value::Null);
    assert_eq!(v["Results"].as_array().unwrap().len(), 3);
    let (_, _, raw) = send(reqwest::Method::GET, s.url("/v1/kv/t/a?raw"), "").await;
    assert_eq!(raw, b"3");
}

#[tokio::test]
async fn kv_bad_input_is_refused_and_writes_nothing() {
    let s = Server::start(&[]);
    let (st, _) = kv_put(&s, "big", vec![b'x'; 512 * 1024 + 1]).await;
    assert_eq!(st, 413);
    assert_eq!(
        kv_put(&s, "exact", vec![b'x'; 512 * 1024]).await.0,
        200,
        "512 KiB is allowed"
    );
    let long_key = "k".repeat(513);
    assert_eq!(kv_put(&s, &long_key, "x").await.0, 400);
    assert_eq!(kv_put(&s, "a?flags=-1", "x").await.0, 400);
    assert_eq!(kv_put(&s, "a?cas=abc", "x").await.0, 400);
    assert_eq!(kv_put(&s, "a?acquire=x&release=y", "x").await.0, 400);
    assert_eq!(kv_put(&s, "a?acquire=no-such-session", "x").await.0, 400);
    assert_eq!(
        send(reqwest::Method::PUT, s.url("/v1/kv/"), "x").await.0,
        400
    );

    let many: Vec<Value> = (0..65)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("k{i}")}}))
        .collect();
    let (st, _) = put(&s.url("/v1/txn"), Value::Array(many).to_string()).await;
    assert_eq!(st, 413);
    let huge = json!([{"KV": {"Verb": "set", "Key": "k", "Value": "A".repeat(600 * 1024)}}]);
    assert_eq!(put(&s.url("/v1/txn"), huge.to_string()).await.0, 413);
    assert_eq!(
        put(
            &s.url("/v1/txn"),
            r#"[{"KV":{"Verb":"explode","Key":"k"}}]"#
        )
        .await
        .0,
        400
    );
    assert_eq!(put(&s.url("/v1/txn"), r#"{"KV":{}}"#).await.0, 400);

    for body in [
        r#"{"TTL":"5s"}"#,
        r#"{"TTL":"25h"}"#,
        r#"{"TTL":"soon"}"#,
        r#"{"Behavior":"explode"}"#,
        r#"{"Node":"ghost"}"#,
    ] {
        let (st, text) = put(&s.url("/v1/session/create"), body).await;
        assert_eq!(st, 400, "{body}: {text}");
    }
    let (_, sessions) = get_json(&s.url("/v1/session/list")).await;
    assert_eq!(sessions, json!([]));
    let (_, keys) = get_json(&s.url("/v1/kv/?keys")).await;
    assert_eq!(keys, json!(["exact"]), "only the valid write landed");
}

#[tokio::test]
async fn kv_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    assert_eq!(kv_put(&s, "persist/me", "yes").await.0, 200);
    let sid = create_session(&s, json!({})).await;
    assert_eq!(
        kv_put(&s, &format!("persist/lock?acquire={sid}"), "")
            .await
            .1,
        "true"
    );
    s.kill();
    let s2 = Server::start_in(dir.path(), &[]);
    let (_, _, raw) = send(reqwest::Method::GET, s2.url("/v1/kv/persist/me?raw"), "").await;
    assert_eq!(raw, b"yes");
    let (_, e) = get_json(&s2.url("/v1/kv/persist/lock")).await;
    assert_eq!(e[0]["Session"].as_str().unwrap(), sid);
}

#[tokio::test]
async fn concurrent_writes_share_raft_entries_and_each_gets_its_own_outcome() {
    let s = Server::start(&[]);
    let writes = 64;
    let mut tasks = Vec::new();
    for n in 0..writes {
        let url = s.url(&format!("/v1/kv/group/{n}"));
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = send(reqwest::Method::PUT, url, format!("value-{n}")).await;
            assert_eq!((status, body.as_slice()), (200, b"true".as_slice()));
        }));
    }
    // Racing creates of one key in the same moment: however they are batched, exactly one wins.
    let mut racers = Vec::new();
    for n in 0..8 {
        let url = s.url("/v1/kv/group-race?cas=0");
        racers.push(tokio::spawn(async move {
            let (_, _, body) = send(reqwest::Method::PUT, url, format!("racer-{n}")).await;
            body == b"true"
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut winners = 0;
    for r in racers {
        winners += r.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);

    let (status, _, body) = send(reqwest::Method::GET, s.url("/v1/kv/group/?recurse"), "").await;
    assert_eq!(status, 200);
    let entries: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(entries.len(), writes);
    let mut indexes = std::collections::BTreeSet::new();
    for e in &entries {
        let key = e["Key"].as_str().unwrap();
        let n = key.rsplit('/').next().unwrap();
        let value = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            e["Value"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(value, format!("value-{n}").into_bytes(), "{key}");
        indexes.insert(e["ModifyIndex"].as_u64().unwrap());
    }
    // Writes that arrived together were committed together: fewer Raft entries than writes.
    assert!(
        indexes.len() < writes,
        "{writes} concurrent writes took {} Raft entries",
        indexes.len()
    );
}
