//! The web UI at `/ui/`: three static files embedded in the binary (`ui/index.html`,
//! `ui/app.js`, `ui/app.css`; plain HTML and JavaScript, no build step) that read the same HTTP
//! API as any client, kept live with blocking queries. Every path under `/ui/` that is not an
//! asset answers the page, whose script routes by URL (Consul's UI paths:
//! `/ui/<dc>/services`, `/ui/<dc>/kv/…`), so a view's URL can be shared and reloaded.
//!
//! `GET /` redirects to the UI when it is on (`ui_config.enabled`, `--ui`, `--dev`), and says
//! how to turn it on otherwise, in Consul's words.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Api;

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Consul's answer to `GET /` with the UI off.
const DISABLED: &str = "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the \
                        agent configuration and restart.";

/// `GET /`: the UI (301, as Consul), or how to enable it.
pub async fn root(State(api): State<Api>) -> Response {
    if api.ui {
        to_ui()
    } else {
        (StatusCode::OK, DISABLED).into_response()
    }
}

/// `GET /ui`: the page's canonical address has the slash.
pub async fn bare(State(api): State<Api>) -> Response {
    if api.ui { to_ui() } else { disabled() }
}

fn to_ui() -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/ui/")]).into_response()
}

/// `GET /ui/{*path}`: an asset, or the page for any view's URL.
pub async fn page(State(api): State<Api>, path: Option<axum::extract::Path<String>>) -> Response {
    if !api.ui {
        return disabled();
    }
    let path = path.map(|p| p.0).unwrap_or_default();
    let (body, content_type) = match path.as_str() {
        "assets/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "assets/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        p if p.starts_with("assets/") => return StatusCode::NOT_FOUND.into_response(),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The page is tiny and changes with the binary: never a stale copy after an upgrade.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Never inside another site's frame (its Save and Delete buttons could be
            // clickjacked); a <meta> policy cannot say this.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("frame-ancestors 'none'"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

fn disabled() -> Response {
    (StatusCode::NOT_FOUND, DISABLED).into_response()
}
