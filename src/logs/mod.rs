//! The agent's log as a stream, for `GET /v1/agent/monitor`: the binary installs a formatting
//! layer whose writer ([`MonitorWriter`]) copies every line it logs, with its level, to
//! whoever subscribes. Lines nobody is watching are dropped at once (a broadcast channel with
//! no receivers), so monitoring costs nothing while unused.
//!
//! `file` writes the log to Consul's rotated `log_file`; `json` formats `log_json` lines.

pub mod file;
pub mod json;

use std::io::Write;
use std::sync::{Arc, LazyLock};

use tokio::sync::broadcast;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// How many lines a slow monitor may fall behind before it skips ahead.
const BACKLOG: usize = 1024;

static LINES: LazyLock<broadcast::Sender<(Level, Arc<str>)>> =
    LazyLock::new(|| broadcast::channel(BACKLOG).0);

/// Every line logged from now on, with its level. Only what passes the agent's own log level
/// is there (`log_level`, or `RUST_LOG`).
pub fn subscribe() -> broadcast::Receiver<(Level, Arc<str>)> {
    LINES.subscribe()
}

/// A `tracing_subscriber` writer that sends each formatted event to the monitors.
#[derive(Clone, Copy, Default)]
pub struct MonitorWriter;

/// One event's line, sent when the formatter is done with it.
pub struct Line {
    level: Level,
    bytes: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if LINES.receiver_count() > 0 && !self.bytes.is_empty() {
            let text = String::from_utf8_lossy(&self.bytes);
            let _ = LINES.send((self.level, Arc::from(text.trim_end())));
        }
    }
}

impl<'a> MakeWriter<'a> for MonitorWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            level: Level::INFO,
            bytes: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            level: *meta.level(),
            bytes: Vec::new(),
        }
    }
}
