//! The JSON shapes of the API: request bodies in, catalog objects out.
//!
//! Bodies are decoded as Consul decodes them (`lib.DecodeJSON`: Go's `encoding/json` with
//! unknown fields disallowed): field names match case-insensitively, the snake_case aliases
//! Consul's structs declare are accepted (`enable_tag_override`, `args`, …), an unknown field
//! is a 400 naming it, `null` means "not given", durations are Go strings ("10s") or integer
//! nanoseconds, and the Content-Type is not looked at. Fields Consul accepts that Beacon has no
//! use for (`Proxy`, `Connect`, `Token`, …) are accepted and ignored ([`Ignored`]). Keys inside
//! user maps (`Meta`, `NodeMeta`, `Header`, `TaggedAddresses`) keep their case.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::{Map, Value, json};

use super::ApiError;
use crate::model::{
    Check, CheckDefinition, CheckStatus, Node, Service, TaggedAddress, Weights, format_duration,
    parse_duration,
};
use crate::model::{CheckSpec, ServiceSpec};

/// Object fields whose values are user maps: their own keys are data, not field names.
const MAP_FIELDS: &[&str] = &[
    "meta",
    "nodemeta",
    "servicemeta",
    "header",
    "taggedaddresses",
];

/// Decodes a request body into `T` with Go-like leniency. Errors read like Consul's.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let fail = |e: String| ApiError::BadRequest(format!("Request decode failed: {e}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| fail(e.to_string()))?;
    if !value.is_object() {
        return Err(fail(format!(
            "expected a JSON object, got {}",
            kind(&value)
        )));
    }
    decode_value(value)
}

/// Decodes a JSON array body (e.g. a transaction) whose items are objects.
pub fn decode_list<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, ApiError> {
    let fail = |e: String| ApiError::BadRequest(format!("Request decode failed: {e}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| fail(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(fail(format!("expected a JSON array, got {}", kind(&value))));
    };
    items
        .into_iter()
        .map(|item| {
            if item.is_object() {
                decode_value(item)
            } else {
                Err(fail(format!(
                    "expected objects in the array, got {}",
                    kind(&item)
                )))
            }
        })
        .collect()
}

/// A field Consul's request struct has and Beacon does not use: accepted (so it is not an
/// unknown field) and ignored.
pub type Ignored = Option<de::IgnoredAny>;

fn decode_value<T: DeserializeOwned>(original: Value) -> Result<T, ApiError> {
    let fail = |e: String| ApiError::BadRequest(format!("Request decode failed: {e}"));
    let value = normalize(original.clone());
    // A catalog registration's `Service` is an object (inside it, `Service` is the name).
    if let Some(service) = value.get("service")
        && !service.is_object()
    {
        return Err(fail(format!(
            "service: expected an object, got {}",
            kind(service)
        )));
    }
    check_objects(&value).map_err(fail)?;
    if let Some(service) = value.get("service") {
        check_objects(service).map_err(fail)?;
    }
    serde_json::from_value(value).map_err(|e| fail(consul_message(&e.to_string(), &original)))
}

/// serde's "unknown field `servicewieghts`, expected one of …" (about a normalized name) as
/// Go's `json: unknown field "ServiceWieghts"`, with the name as the client wrote it.
fn consul_message(serde: &str, original: &Value) -> String {
    let Some(rest) = serde.strip_prefix("unknown field `") else {
        return serde.to_string();
    };
    let normalized = rest.split('`').next().unwrap_or_default();
    let written = find_key(original, normalized).unwrap_or_else(|| normalized.to_string());
    format!("json: unknown field {written:?}")
}

fn find_key(value: &Value, normalized: &str) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if normalize_key(k) == normalized {
                Some(k.clone())
            } else {
                find_key(v, normalized)
            }
        }),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, normalized)),
        _ => None,
    }
}

/// A field name as the structs below spell it: lower case, without underscores, so that
/// `EnableTagOverride`, `enableTagOverride` and `enable_tag_override` are one name.
fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Fields whose values are objects. serde would also accept an array for a struct, which Go
/// refuses; refuse it here too.
const OBJECT_FIELDS: &[&str] = &["check", "weights", "definition", "kv"];

fn check_objects(value: &Value) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    for (k, v) in map {
        let is_object_field = OBJECT_FIELDS.contains(&k.as_str());
        if is_object_field && !v.is_object() {
            return Err(format!("{k}: expected an object, got {}", kind(v)));
        }
        if k == "checks" {
            let Value::Array(items) = v else {
                return Err(format!("checks: expected an array, got {}", kind(v)));
            };
            if let Some(bad) = items.iter().find(|i| !i.is_object()) {
                return Err(format!("checks: expected objects, got {}", kind(bad)));
            }
            items.iter().try_for_each(check_objects)?;
        } else if is_object_field {
            check_objects(v)?;
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let key = normalize_key(&k);
                    let v = if MAP_FIELDS.contains(&key.as_str()) {
                        normalize_user_map(v)
                    } else {
                        normalize(v)
                    };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn normalize_user_map(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

/// A Go duration: a string ("10s") or integer nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Nanos(i64),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "invalid duration: expected a string like \"10s\" or integer nanoseconds",
            )
        })? {
            Raw::Text(s) => parse_duration(&s)
                .map(GoDuration)
                .map_err(de::Error::custom),
            Raw::Nanos(n) if n >= 0 => Ok(GoDuration(Duration::from_nanos(n as u64))),
            Raw::Nanos(n) => Err(de::Error::custom(format!("time: invalid duration {n}ns"))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightsIn {
    pub passing: Option<u32>,
    pub warning: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaggedAddressIn {
    pub address: String,
    pub port: u16,
}

/// `AgentServiceRegistration` (Consul's `structs.ServiceDefinition`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceIn {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    #[serde(rename = "taggedaddresses")]
    pub tagged_addresses: BTreeMap<String, TaggedAddressIn>,
    pub weights: Option<WeightsIn>,
    #[serde(rename = "enabletagoverride")]
    pub enable_tag_override: bool,
    pub kind: String,
    pub check: Option<CheckIn>,
    pub checks: Vec<CheckIn>,
    #[serde(rename = "socketpath")]
    pub _socket_path: Ignored,
    #[serde(rename = "token")]
    pub _token: Ignored,
    #[serde(rename = "proxy")]
    pub _proxy: Ignored,
    #[serde(rename = "connect")]
    pub _connect: Ignored,
    #[serde(rename = "locality")]
    pub _locality: Ignored,
    #[serde(rename = "namespace")]
    pub _namespace: Ignored,
    #[serde(rename = "partition")]
    pub _partition: Ignored,
}

/// `AgentServiceCheck` / `AgentCheckRegistration` / `CheckType` (Consul's `CheckType` and
/// `CheckDefinition`; in a catalog registration `HealthCheck` with its `Definition`).
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckIn {
    pub id: String,
    #[serde(rename = "checkid")]
    pub check_id: String,
    pub name: String,
    pub status: Option<String>,
    pub notes: String,
    pub output: String,
    #[serde(rename = "serviceid")]
    pub service_id: String,
    pub http: String,
    pub method: String,
    pub header: BTreeMap<String, Vec<String>>,
    pub body: String,
    #[serde(rename = "tlsskipverify")]
    pub tls_skip_verify: bool,
    pub tcp: String,
    pub ttl: Option<GoDuration>,
    pub interval: Option<GoDuration>,
    pub timeout: Option<GoDuration>,
    #[serde(rename = "deregistercriticalserviceafter")]
    pub deregister_critical_service_after: Option<GoDuration>,
    #[serde(rename = "successbeforepassing")]
    pub success_before_passing: u32,
    #[serde(rename = "failuresbeforecritical")]
    pub failures_before_critical: u32,
    // Check kinds Beacon does not run; present only to refuse them clearly.
    pub args: Option<Value>,
    #[serde(rename = "scriptargs")]
    pub script_args: Option<Value>,
    pub grpc: Option<Value>,
    pub udp: Option<Value>,
    #[serde(rename = "h2ping")]
    pub h2_ping: Option<Value>,
    #[serde(rename = "dockercontainerid")]
    pub docker_container_id: Option<Value>,
    #[serde(rename = "aliasnode")]
    pub alias_node: Option<Value>,
    #[serde(rename = "aliasservice")]
    pub alias_service: Option<Value>,
    #[serde(rename = "osservice")]
    pub os_service: Option<Value>,
    /// Catalog registrations carry the probe settings under `Definition`.
    pub definition: Option<Box<CheckIn>>,
    // Accepted as Consul accepts them; Beacon does not use them.
    #[serde(rename = "token")]
    pub _token: Ignored,
    #[serde(rename = "node")]
    pub _node: Ignored,
    #[serde(rename = "servicename")]
    pub _service_name: Ignored,
    #[serde(rename = "servicetags")]
    pub _service_tags: Ignored,
    #[serde(rename = "type")]
    pub _type: Ignored,
    #[serde(rename = "exposedport")]
    pub _exposed_port: Ignored,
    #[serde(rename = "tlsservername")]
    pub _tls_server_name: Ignored,
    #[serde(rename = "disableredirects")]
    pub _disable_redirects: Ignored,
    #[serde(rename = "tcpusetls")]
    pub _tcp_use_tls: Ignored,
    #[serde(rename = "h2pingusetls")]
    pub _h2_ping_use_tls: Ignored,
    #[serde(rename = "grpcusetls")]
    pub _grpc_use_tls: Ignored,
    #[serde(rename = "shell")]
    pub _shell: Ignored,
    #[serde(rename = "failuresbeforewarning")]
    pub _failures_before_warning: Ignored,
    #[serde(rename = "outputmaxsize")]
    pub _output_max_size: Ignored,
    #[serde(rename = "proxyhttp")]
    pub _proxy_http: Ignored,
    #[serde(rename = "proxygrpc")]
    pub _proxy_grpc: Ignored,
    #[serde(rename = "peername")]
    pub _peer_name: Ignored,
    #[serde(rename = "namespace")]
    pub _namespace: Ignored,
    #[serde(rename = "partition")]
    pub _partition: Ignored,
    #[serde(rename = "createindex")]
    pub _create_index: Ignored,
    #[serde(rename = "modifyindex")]
    pub _modify_index: Ignored,
}

pub fn parse_status(raw: &str) -> Result<CheckStatus, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::BadRequest(format!("Invalid check status: {raw:?}")))
}

impl CheckIn {
    /// Validates a check the agent will run, as Consul's `CheckType.Validate`.
    pub fn definition(&self) -> Result<CheckDefinition, ApiError> {
        let invalid = |m: &str| ApiError::BadRequest(format!("Invalid check: {m}"));
        let unsupported = [
            (self.args.is_some() || self.script_args.is_some(), "Script"),
            (self.grpc.is_some(), "GRPC"),
            (self.udp.is_some(), "UDP"),
            (self.h2_ping.is_some(), "H2PING"),
            (self.docker_container_id.is_some(), "Docker"),
            (
                self.alias_node.is_some() || self.alias_service.is_some(),
                "Alias",
            ),
            (self.os_service.is_some(), "OSService"),
        ];
        if let Some((_, kind)) = unsupported.iter().find(|(present, _)| *present) {
            return Err(invalid(&format!(
                "{kind} checks are not supported by Beacon"
            )));
        }
        let ttl = self.ttl.map(|d| d.0);
        let interval = self.interval.map(|d| d.0);
        if ttl.is_some() && interval.is_some() {
            return Err(invalid("Interval and TTL cannot both be specified"));
        }
        let probe = !self.http.is_empty() || !self.tcp.is_empty();
        if probe && interval.is_none_or(|i| i.is_zero()) {
            return Err(invalid(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
            ));
        }
        if !probe && ttl.is_none() {
            return Err(invalid("must be one of HTTP, TCP or TTL"));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(invalid("TTL must be > 0 for TTL checks"));
        }
        if !(self.http.is_empty()
            || self.http.starts_with("http://")
            || self.http.starts_with("https://"))
        {
            return Err(invalid(&format!(
                "HTTP must be an http:// or https:// URL, got {:?}",
                self.http
            )));
        }
        if self.timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(invalid("Timeout must be > 0"));
        }
        Ok(CheckDefinition {
            http: self.http.clone(),
            method: self.method.clone(),
            header: self.header.clone(),
            body: self.body.clone(),
            tls_skip_verify: self.tls_skip_verify,
            tcp: self.tcp.clone(),
            ttl,
            interval,
            timeout: self.timeout.map(|d| d.0),
            deregister_critical_service_after: self.deregister_critical_service_after.map(|d| d.0),
            success_before_passing: self.success_before_passing,
            failures_before_critical: self.failures_before_critical,
        })
    }

    pub fn status(&self) -> Result<Option<CheckStatus>, ApiError> {
        self.status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_status)
            .transpose()
    }

    /// The agent check this describes, owned by `service_id` (or the node when empty).
    pub fn to_agent_check(
        &self,
        check_id: String,
        default_name: String,
        service_id: String,
    ) -> Result<CheckSpec, ApiError> {
        Ok(CheckSpec {
            check_id: check_id.into(),
            name: if self.name.is_empty() {
                default_name.into()
            } else {
                self.name.as_str().into()
            },
            status: self.status()?,
            notes: self.notes.clone(),
            output: self.output.clone(),
            service_id: service_id.into(),
            definition: self.definition()?,
        })
    }
}

impl ServiceIn {
    /// Validates the registration and splits it into the service and its checks.
    pub fn into_registration(self) -> Result<(ServiceSpec, Vec<CheckSpec>), ApiError> {
        if self.name.is_empty() {
            return Err(ApiError::BadRequest("Missing service name".into()));
        }
        if let Ok(ip) = self.address.parse::<IpAddr>()
            && ip.is_unspecified()
        {
            return Err(ApiError::BadRequest("Invalid service address".into()));
        }
        validate_meta(&self.meta)?;
        let id = if self.id.is_empty() {
            self.name.clone()
        } else {
            self.id.clone()
        };
        // As Consul's `ServiceDefinition.CheckTypes`: an empty `Check` is no check at all (an
        // empty entry of `Checks` is still judged).
        let mut inline: Vec<&CheckIn> = self
            .check
            .iter()
            .filter(|c| **c != CheckIn::default())
            .collect();
        inline.extend(self.checks.iter());
        let many = inline.len() > 1;
        let mut checks = Vec::new();
        for (n, check) in inline.into_iter().enumerate() {
            let check_id = match (check.check_id.is_empty(), check.id.is_empty()) {
                (false, _) => check.check_id.clone(),
                (true, false) => check.id.clone(),
                (true, true) if many => format!("service:{id}:{}", n + 1),
                (true, true) => format!("service:{id}"),
            };
            let name = format!("Service '{}' check", self.name);
            checks.push(check.to_agent_check(check_id, name, id.clone())?);
        }
        let service = ServiceSpec {
            id: id.into(),
            name: self.name.into(),
            tags: self.tags,
            address: self.address.into(),
            port: self.port,
            meta: self.meta.into(),
            tagged_addresses: self
                .tagged_addresses
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        TaggedAddress {
                            address: v.address,
                            port: v.port,
                        },
                    )
                })
                .collect(),
            weights: weights(self.weights),
            enable_tag_override: self.enable_tag_override,
            kind: self.kind.into(),
        };
        Ok((service, checks))
    }
}

pub fn weights(w: Option<WeightsIn>) -> Weights {
    let w = w.unwrap_or_default();
    Weights {
        passing: w.passing.filter(|p| *p > 0).unwrap_or(1),
        warning: w.warning.unwrap_or(1),
    }
}

/// The agent endpoint's weights rule (Consul's `ValidateWeights`, applied by
/// `/v1/agent/service/register` only: the catalog defaults them, and Consul's Go client always
/// sends `{"Passing":0,"Warning":0}` there).
pub fn validate_agent_weights(service: &ServiceIn) -> Result<(), ApiError> {
    match &service.weights {
        Some(w) if w.passing.is_some_and(|p| p < 1) => Err(ApiError::BadRequest(
            "Invalid Weights: Passing must be greater than 0".into(),
        )),
        _ => Ok(()),
    }
}

/// Consul's service meta limits.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::BadRequest(format!("Invalid service meta: {m}")));
    if meta.len() > 64 {
        return bad(format!("{} pairs exceeds the limit of 64", meta.len()));
    }
    for (k, v) in meta {
        if k.is_empty()
            || k.len() > 128
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(format!(
                "key {k:?} must be 1-128 characters of [A-Za-z0-9_-]"
            ));
        }
        if k.starts_with("consul-") {
            return bad(format!("key {k:?} uses the reserved prefix consul-"));
        }
        if v.len() > 512 {
            return bad(format!("value of {k:?} exceeds 512 characters"));
        }
    }
    Ok(())
}

// === output ===

pub fn node_json(n: &Node) -> Value {
    json!({
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "Meta": n.meta,
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

fn tagged_addresses_json(s: &Service) -> Value {
    Value::Object(
        s.tagged_addresses
            .iter()
            .map(|(k, v)| (k.clone(), json!({"Address": v.address, "Port": v.port})))
            .collect(),
    )
}

/// A service as `/v1/health/service` and `/v1/catalog/node` show it.
pub fn service_json(s: &Service) -> Value {
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Address": s.address,
        "TaggedAddresses": tagged_addresses_json(s),
        "Meta": s.meta,
        "Port": s.port,
        "Weights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "EnableTagOverride": s.enable_tag_override,
        "Kind": s.kind,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// A service as the agent endpoints show it.
/// A service as `/v1/agent/services` shows it; an empty `Kind` and `TaggedAddresses` are
/// left out, as Consul's `api.AgentService` (`omitempty`) does.
pub fn agent_service_json(s: &Service, datacenter: &str) -> Value {
    let mut v = json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "Weights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "EnableTagOverride": s.enable_tag_override,
        "Datacenter": datacenter,
    });
    if !s.kind.is_empty() {
        v["Kind"] = json!(s.kind);
    }
    if !s.tagged_addresses.is_empty() {
        v["TaggedAddresses"] = tagged_addresses_json(s);
    }
    v
}

/// A flat `/v1/catalog/service/:name` entry.
pub fn catalog_service_json(n: &Node, s: &Service) -> Value {
    json!({
        "ID": n.id,
        "Node": n.name,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": n.tagged_addresses,
        "NodeMeta": n.meta,
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": tagged_addresses_json(s),
        "ServiceWeights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

fn definition_json(d: &CheckDefinition) -> Value {
    let dur = |d: Option<Duration>| d.map(format_duration).unwrap_or_default();
    let mut out = json!({
        "Interval": dur(d.interval),
        "Timeout": dur(d.timeout),
        "DeregisterCriticalServiceAfter": dur(d.deregister_critical_service_after),
    });
    if !d.http.is_empty() {
        out["HTTP"] = json!(d.http);
        out["Method"] = json!(d.method);
        out["Header"] = json!(d.header);
        out["TLSSkipVerify"] = json!(d.tls_skip_verify);
    }
    if !d.tcp.is_empty() {
        out["TCP"] = json!(d.tcp);
    }
    if d.ttl.is_some() {
        out["TTL"] = json!(dur(d.ttl));
    }
    out
}

/// A check, with the name and tags of its service when it has one.
pub fn check_json(c: &Check, service: Option<&Service>) -> Value {
    json!({
        "Node": c.node,
        "CheckID": c.check_id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": service.map(|s| s.name.as_str()).unwrap_or(""),
        "ServiceTags": service.map(|s| s.tags.clone()).unwrap_or_default(),
        "Type": c.definition.kind(),
        "Interval": c.definition.interval.map(format_duration).unwrap_or_default(),
        "Timeout": c.definition.timeout.map(format_duration).unwrap_or_default(),
        "Definition": definition_json(&c.definition),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

/// A service definition from a config file (Consul's `service` block: snake_case or the API's
/// names) as the agent's registration endpoint decodes it: the service and its checks.
/// Errors read like the endpoint's 400s.
pub fn service_definition(def: &Value) -> Result<(ServiceSpec, Vec<CheckSpec>), ApiError> {
    if !def.is_object() {
        return Err(ApiError::BadRequest(format!(
            "expected a service object, got {}",
            kind(def)
        )));
    }
    let service: ServiceIn = decode_value(def.clone())?;
    validate_agent_weights(&service)?;
    service.into_registration()
}

/// A check definition from a config file (Consul's `check` block), as the agent's check
/// registration endpoint decodes it.
pub fn check_definition(def: &Value) -> Result<CheckSpec, ApiError> {
    if !def.is_object() {
        return Err(ApiError::BadRequest(format!(
            "expected a check object, got {}",
            kind(def)
        )));
    }
    check_registration(decode_value(def.clone())?)
}

/// A decoded check body as the agent registers it: it needs a name; its ID is the first of
/// `ID`, `CheckID` and `Name` given.
pub fn check_registration(check: CheckIn) -> Result<CheckSpec, ApiError> {
    if check.name.is_empty() {
        return Err(ApiError::BadRequest("Missing check name".into()));
    }
    let id = [&check.id, &check.check_id, &check.name]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
    check.to_agent_check(id, check.name.clone(), check.service_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_case_insensitively_and_refuses_unknown_fields() {
        let unknown: Result<ServiceIn, _> = decode(br#"{"name":"web","Unknown":{"x":1}}"#);
        assert_eq!(
            unknown.unwrap_err().to_string(),
            "Request decode failed: json: unknown field \"Unknown\""
        );
        let body = br#"{"name":"web","ID":"w1","PORT":80,"tags":["a"],"Proxy":{"x":1},
                        "Meta":{"Version":"2"},"check":{"ttl":"30s","Deregister_Critical_Service_After":"90m"}}"#;
        let s: ServiceIn = decode(body).unwrap();
        assert_eq!((s.name.as_str(), s.id.as_str(), s.port), ("web", "w1", 80));
        assert_eq!(
            s.meta.get("Version").map(String::as_str),
            Some("2"),
            "meta keys keep their case"
        );
        let check = s.check.unwrap();
        assert_eq!(check.ttl, Some(GoDuration(Duration::from_secs(30))));
        assert_eq!(
            check.deregister_critical_service_after,
            Some(GoDuration(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn durations_accept_nanoseconds_and_reject_garbage() {
        let c: CheckIn = decode(br#"{"TTL": 1500000000}"#).unwrap();
        assert_eq!(c.ttl, Some(GoDuration(Duration::from_millis(1500))));
        let err = decode::<CheckIn>(br#"{"TTL": "soon"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(decode::<ServiceIn>(br#"{"Name":"web","Port":"eighty"}"#).is_err());
        assert!(decode::<ServiceIn>(br#"{"Name":"web","Port":70000}"#).is_err());
        assert!(decode::<ServiceIn>(br#"{"Name":"web","Tags":"v1"}"#).is_err());
        assert!(decode::<ServiceIn>(b"{not json").is_err());
        assert!(decode::<ServiceIn>(br#"["web"]"#).is_err());
        assert!(decode::<ServiceIn>(br#"{"Name":"web","Check":["5s"]}"#).is_err());
        assert!(decode::<ServiceIn>(br#"{"Name":"web","Checks":[["5s"]]}"#).is_err());
    }

    #[test]
    fn null_means_absent() {
        let s: ServiceIn = decode(br#"{"Name":"web","Tags":null,"Check":null}"#).unwrap();
        assert!(s.tags.is_empty() && s.check.is_none());
    }

    #[test]
    fn inline_check_ids_follow_consul() {
        let s: ServiceIn =
            decode(br#"{"Name":"web","Checks":[{"TTL":"5s"},{"TTL":"6s"}]}"#).unwrap();
        let (svc, checks) = s.into_registration().unwrap();
        assert_eq!(svc.id, "web");
        let ids: Vec<_> = checks.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "service:web:2"]);
    }

    #[test]
    fn check_validation() {
        let bad = [
            r#"{"TTL":"5s","Interval":"5s"}"#,
            r#"{"HTTP":"http://x"}"#,
            r#"{"TCP":"127.0.0.1:1","Interval":"0s"}"#,
            r#"{"TTL":"0s"}"#,
            r#"{"Args":["/bin/true"],"Interval":"5s"}"#,
            r#"{"Name":"nothing"}"#,
            r#"{"TTL":"5s","Status":"great"}"#,
        ];
        for body in bad {
            let c: CheckIn = decode(body.as_bytes()).unwrap();
            assert!(
                c.to_agent_check("x".into(), "x".into(), String::new())
                    .is_err(),
                "{body} should be refused"
            );
        }
    }
}
