//! One run of an HTTP or TCP check.

use std::time::Duration;

use crate::model::{CheckDefinition, CheckStatus};

/// Consul keeps at most this much check output.
const OUTPUT_MAX: usize = 4096;

pub async fn run(
    client: &reqwest::Client,
    def: &CheckDefinition,
    timeout: Duration,
) -> (CheckStatus, String) {
    if !def.http.is_empty() {
        http(client, def, timeout).await
    } else if !def.tcp.is_empty() {
        tcp(&def.tcp, timeout).await
    } else {
        (CheckStatus::Critical, "no probe defined".into())
    }
}

async fn http(
    client: &reqwest::Client,
    def: &CheckDefinition,
    timeout: Duration,
) -> (CheckStatus, String) {
    let method = if def.method.is_empty() {
        "GET"
    } else {
        def.method.as_str()
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return (
            CheckStatus::Critical,
            format!("invalid HTTP method {method:?}"),
        );
    };
    let mut request = client.request(method.clone(), &def.http).timeout(timeout);
    for (name, values) in &def.header {
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    if !def.body.is_empty() {
        request = request.body(def.body.clone());
    }
    match request.send().await {
        Ok(response) => {
            let code = response.status();
            let body = response.text().await.unwrap_or_default();
            let mut output = format!("HTTP {method} {}: {code} Output: {body}", def.http);
            truncate(&mut output);
            let status = if code.is_success() {
                CheckStatus::Passing
            } else if code.as_u16() == 429 {
                CheckStatus::Warning
            } else {
                CheckStatus::Critical
            };
            (status, output)
        }
        Err(e) => (
            CheckStatus::Critical,
            format!("HTTP {method} {}: {}", def.http, crate::report::chain(&e)),
        ),
    }
}

async fn tcp(addr: &str, timeout: Duration) -> (CheckStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (CheckStatus::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (CheckStatus::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => (
            CheckStatus::Critical,
            format!("dial tcp {addr}: i/o timeout"),
        ),
    }
}

fn truncate(s: &mut String) {
    if s.len() > OUTPUT_MAX {
        let mut end = OUTPUT_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
