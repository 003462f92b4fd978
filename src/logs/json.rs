//! `log_json`: one JSON object per line with hclog's field names, as Consul writes them
//! (`@level`, `@message`, `@module`, `@timestamp`, then the event's own fields), so log
//! pipelines built for Consul find their fields. tracing-subscriber's own JSON format names them
//! differently (`level`, `fields.message`, `target`), hence this small formatter.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The `FormatEvent` for `log_json`.
pub struct Hclog;

impl<S, N> FormatEvent<S, N> for Hclog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "@level".into(),
            Value::from(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert(
            "@message".into(),
            fields.0.remove("message").unwrap_or(Value::from("")),
        );
        line.insert(
            "@module".into(),
            Value::from(meta.target().replace("::", ".")),
        );
        line.insert("@timestamp".into(), Value::from(timestamp()));
        line.extend(fields.0);
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Now in RFC 3339 with microseconds, UTC (hclog writes the local zone; agents run in UTC).
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

/// An event's fields as JSON values (numbers and booleans as such, the rest as text).
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
}
