//! One error type for every handler: a status code and a plain-text message, as Consul sends.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::agent::AgentError;
use crate::catalog::ApplyError;
use crate::cluster::{ClusterError, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// 401: what Consul answers on the ACL endpoints while ACLs are disabled.
    #[error("{0}")]
    Unauthorized(String),
    /// 429: the leader's write queue is full (Consul's rate-limit answer).
    #[error("{0}")]
    TooManyRequests(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        (
            status,
            [("content-type", "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Busy => ApiError::TooManyRequests(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::OtherCluster { .. } | ClusterError::UnknownServer(_) => {
                ApiError::BadRequest(e.to_string())
            }
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        if e.is_not_found() {
            ApiError::NotFound(e.to_string())
        } else {
            ApiError::BadRequest(e.to_string())
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound(m) => ApiError::NotFound(m),
            AgentError::BadRequest(m) => ApiError::BadRequest(m),
            AgentError::Write(w) => w.into(),
            AgentError::Rejected(r) => r.into(),
        }
    }
}
