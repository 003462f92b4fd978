//! `/v1/kv/*` and `/v1/txn`: Consul's key/value API.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::dto::Ignored;
use super::{Api, ApiError, Params, dto, json};
use crate::catalog::{Applied, ApplyError, Command, TxnOp};
use crate::model::{Index, KvEntry};

/// Consul's `kv_max_value_size`.
pub const MAX_VALUE: usize = 512 * 1024;
pub const MAX_KEY: usize = 512;
/// Consul's transaction limits.
pub const MAX_TXN_OPS: usize = 64;
pub const MAX_TXN_BYTES: usize = 512 * 1024;

fn too_large(message: String) -> Response {
    (StatusCode::PAYLOAD_TOO_LARGE, format!("{message}\n")).into_response()
}

pub fn entry_json(e: &KvEntry) -> Value {
    let mut out = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(STANDARD.encode(&e.value)) },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if !e.session.is_empty() {
        out["Session"] = json!(e.session);
    }
    out
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.len() > MAX_KEY {
        return Err(ApiError::BadRequest(format!(
            "Key too long: {} bytes, the limit is {MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

fn number(params: &Params, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Invalid {name} value {v:?}: expected an unsigned integer"
                ))
            })
        })
        .transpose()
}

fn not_found(index: Index) -> Response {
    let mut r = StatusCode::NOT_FOUND.into_response();
    r.headers_mut()
        .insert("X-Consul-Index", index.max(1).into());
    r
}

pub async fn get_root(state: State<Api>, params: Params) -> Result<Response, ApiError> {
    get(state, Path(String::new()), params).await
}

pub async fn get(
    State(api): State<Api>,
    Path(key): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let state = api.view.load();
    let table_index = state.indexes().kv;
    if params.has("keys") {
        let separator = params.get("separator").unwrap_or("");
        let mut keys: Vec<String> = Vec::new();
        let index = state.kv_prefix_index(&key);
        for e in state.kv_prefix(&key) {
            let rest = &e.key[key.len()..];
            let listed = match (separator.is_empty(), rest.find(separator)) {
                (false, Some(pos)) => e.key[..key.len() + pos + separator.len()].to_string(),
                _ => e.key.clone(),
            };
            if keys.last() != Some(&listed) {
                keys.push(listed);
            }
        }
        if keys.is_empty() {
            return Ok(not_found(index));
        }
        return Ok(json(index, &json!(keys), &params));
    }
    if params.has("recurse") {
        let entries: Vec<&KvEntry> = state.kv_prefix(&key).collect();
        let index = state.kv_prefix_index(&key);
        if entries.is_empty() {
            return Ok(not_found(index));
        }
        let body: Vec<Value> = entries.into_iter().map(entry_json).collect();
        return Ok(json(index, &Value::Array(body), &params));
    }
    let Some(entry) = state.kv_get(&key) else {
        return Ok(not_found(table_index));
    };
    if params.has("raw") {
        let mut r = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            entry.value.clone(),
        )
            .into_response();
        r.headers_mut()
            .insert("X-Consul-Index", state.kv_entry_index(entry).max(1).into());
        return Ok(r);
    }
    Ok(json(
        state.kv_entry_index(entry),
        &json!([entry_json(entry)]),
        &params,
    ))
}

fn bool_response(b: bool) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        if b { "true" } else { "false" },
    )
        .into_response()
}

pub async fn put(
    State(api): State<Api>,
    Path(key): Path<String>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    if body.len() > MAX_VALUE {
        return Ok(too_large(format!(
            "Request body(value) too large: {} bytes, the limit is {MAX_VALUE}",
            body.len()
        )));
    }
    let flags = number(&params, "flags")?.unwrap_or(0);
    let cas = number(&params, "cas")?;
    let value = body.to_vec();
    let command = match (params.get("acquire"), params.get("release")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "Conflicting flags: acquire and release".into(),
            ));
        }
        (Some(session), None) => Command::KvAcquire {
            key,
            value,
            flags,
            session: session.to_string(),
        },
        (None, Some(session)) => Command::KvRelease {
            key,
            value,
            flags,
            session: session.to_string(),
        },
        (None, None) => Command::KvSet {
            key,
            value,
            flags,
            cas,
        },
    };
    match api.writer.write(command).await? {
        Ok(Applied::Bool(b)) => Ok(bool_response(b)),
        Ok(_) => Ok(bool_response(true)),
        Err(ApplyError::UnknownSession(s)) => {
            Err(ApiError::BadRequest(format!("invalid session {s:?}")))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn put_root() -> ApiError {
    ApiError::BadRequest("Missing key name".into())
}

pub async fn delete_root(state: State<Api>, params: Params) -> Result<Response, ApiError> {
    if !params.has("recurse") {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    delete(state, Path(String::new()), params).await
}

pub async fn delete(
    State(api): State<Api>,
    Path(key): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let cas = number(&params, "cas")?;
    let command = Command::KvDelete {
        key,
        recurse: params.has("recurse"),
        cas,
    };
    match api.writer.write(command).await?? {
        Applied::Bool(b) => Ok(bool_response(b)),
        _ => Ok(bool_response(true)),
    }
}

// === transactions ===

/// Consul's `api.KVTxnOp`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct TxnKv {
    verb: String,
    key: String,
    value: Option<String>,
    flags: u64,
    index: u64,
    session: String,
    #[serde(rename = "namespace")]
    _namespace: Ignored,
    #[serde(rename = "partition")]
    _partition: Ignored,
}

/// One operation of `PUT /v1/txn` (Consul's `api.TxnOp`): only KV is supported; the other
/// kinds are known (and refused by name) rather than unknown fields.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct TxnItem {
    kv: Option<TxnKv>,
    #[serde(rename = "node")]
    _node: Ignored,
    #[serde(rename = "service")]
    _service: Ignored,
    #[serde(rename = "check")]
    _check: Ignored,
    #[serde(rename = "session")]
    _session: Ignored,
}

fn txn_op(n: usize, item: TxnItem) -> Result<TxnOp, String> {
    let kv = item
        .kv
        .ok_or_else(|| format!("op {n}: only KV operations are supported"))?;
    if kv.key.len() > MAX_KEY {
        return Err(format!("op {n}: key too long"));
    }
    let value = match &kv.value {
        Some(v) => STANDARD
            .decode(v)
            .map_err(|e| format!("op {n}: Value is not valid base64: {e}"))?,
        None => Vec::new(),
    };
    let (key, flags, index, session) = (kv.key, kv.flags, kv.index, kv.session);
    Ok(match kv.verb.as_str() {
        "set" => TxnOp::Set { key, value, flags },
        "cas" => TxnOp::Cas {
            key,
            value,
            flags,
            index,
        },
        "lock" => TxnOp::Lock {
            key,
            value,
            flags,
            session,
        },
        "unlock" => TxnOp::Unlock {
            key,
            value,
            flags,
            session,
        },
        "get" => TxnOp::Get { key },
        "get-tree" => TxnOp::GetTree { key },
        "check-index" => TxnOp::CheckIndex { key, index },
        "check-session" => TxnOp::CheckSession { key, session },
        "check-not-exists" => TxnOp::CheckNotExists { key },
        "delete" => TxnOp::Delete { key },
        "delete-tree" => TxnOp::DeleteTree { key },
        "delete-cas" => TxnOp::DeleteCas { key, index },
        other => return Err(format!("op {n}: unknown KV verb {other:?}")),
    })
}

/// A transaction's items as catalog operations; the first bad one is a 400 naming it.
fn txn_ops(items: Vec<TxnItem>) -> Result<Vec<TxnOp>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(n, item)| txn_op(n, item))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::BadRequest)
}

/// Every request body this module decodes as JSON (`/v1/txn`), for `crate::fuzz`: bad input
/// must be refused with an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    let _ = dto::decode_list::<TxnItem>(body).and_then(txn_ops);
}

pub async fn txn(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > MAX_TXN_BYTES {
        return Ok(too_large(format!(
            "Request body too large: {} bytes, the limit is {MAX_TXN_BYTES}",
            body.len()
        )));
    }
    let items: Vec<TxnItem> = dto::decode_list(&body)?;
    if items.len() > MAX_TXN_OPS {
        return Ok(too_large(format!(
            "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
            items.len()
        )));
    }
    let ops = txn_ops(items)?;
    let content = [(header::CONTENT_TYPE, "application/json")];
    match api.writer.write(Command::Txn(ops)).await? {
        Ok(Applied::Txn(entries)) => {
            let results: Vec<Value> = entries
                .iter()
                .map(|e| json!({"KV": entry_json(e)}))
                .collect();
            Ok((
                content,
                json!({"Results": results, "Errors": null}).to_string(),
            )
                .into_response())
        }
        Ok(_) => Ok((content, json!({"Results": [], "Errors": null}).to_string()).into_response()),
        Err(ApplyError::Txn(errors)) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| json!({"OpIndex": e.op_index, "What": e.what}))
                .collect();
            Ok((
                StatusCode::CONFLICT,
                content,
                json!({"Results": null, "Errors": errors}).to_string(),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}
