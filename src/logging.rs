//! `--log FILE --log-format text|json --debug`: log lines shaped like runc's (logrus) output.
//!
//! podman reads the runtime's `oci-log` file as JSON and containerd decodes `log.json`, both
//! expecting logrus' keys (`level`, `msg`, `time`, sorted), so tracing's own JSON formatter
//! (which nests fields and adds `target`) is replaced by the small layer below.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, registry::LookupSpan};

/// Sends every tracing event at `warn` and above (`debug` and above with `--debug`) to `log`
/// (appended, created if missing) or to stderr. Calling it twice keeps the first setup.
pub fn init(log: Option<&Path>, json: bool, debug: bool) -> std::io::Result<()> {
    let sink: Box<dyn Write + Send> = match log {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let layer = LogLineLayer {
        sink: Mutex::new(sink),
        json,
    };
    // Already initialised (a test, or a second call) is fine: the first setup stays.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(level))
        .try_init();
    Ok(())
}

/// Writes one line per event, in one `write` so concurrent appenders do not interleave.
struct LogLineLayer {
    sink: Mutex<Box<dyn Write + Send>>,
    json: bool,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for LogLineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let time = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = format_line(
            self.json,
            *event.metadata().level(),
            &fields.message,
            &fields.extra,
            &time,
        );
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
    }
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    extra: BTreeMap<String, String>,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra
                .insert(field.name().to_string(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.extra
                .insert(field.name().to_string(), format!("{value:?}"));
        }
    }
}

/// logrus' level names: note `warning`, not `warn`.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One log line with its newline. JSON: logrus' `JSONFormatter`, keys sorted, so a plain
/// error is exactly `{"level":"error","msg":"…","time":"…"}`. Text: logrus' `TextFormatter`
/// without colours, `time="…" level=error msg="…" key=value`.
pub fn format_line(
    json: bool,
    level: Level,
    msg: &str,
    fields: &BTreeMap<String, String>,
    time: &str,
) -> String {
    if json {
        let mut obj: BTreeMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        obj.insert("level", level_name(level));
        obj.insert("msg", msg);
        obj.insert("time", time);
        let mut line = serde_json::to_string(&obj).unwrap_or_default();
        line.push('\n');
        line
    } else {
        let mut line = format!(
            "time={} level={} msg={}",
            quote(time),
            level_name(level),
            quote(msg)
        );
        for (k, v) in fields {
            let _ = write!(line, " {k}={}", quote_if_needed(v));
        }
        line.push('\n');
        line
    }
}

fn quote(s: &str) -> String {
    // Go's %q and Rust's Debug agree on the cases that matter here: quotes, backslashes,
    // newlines and control characters are escaped.
    format!("{s:?}")
}

fn quote_if_needed(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c));
    if plain { s.to_string() } else { quote(s) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "2026-01-02T03:04:05.123456789+01:00";

    #[test]
    fn json_error_line_is_exactly_what_runc_writes() {
        let line = format_line(
            true,
            Level::ERROR,
            "container \"c1\" does not exist",
            &BTreeMap::new(),
            TIME,
        );
        assert_eq!(
            line,
            format!(
                "{{\"level\":\"error\",\"msg\":\"container \\\"c1\\\" does not exist\",\"time\":\"{TIME}\"}}\n"
            )
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
    }

    #[test]
    fn json_fields_are_sorted_among_the_fixed_keys() {
        let fields = BTreeMap::from([("id".to_string(), "c1".to_string())]);
        let line = format_line(true, Level::WARN, "hi", &fields, TIME);
        assert!(line.starts_with("{\"id\":\"c1\",\"level\":\"warning\",\"msg\":\"hi\""));
    }

    #[test]
    fn text_line_is_logrus_shaped() {
        let fields = BTreeMap::from([
            ("id".to_string(), "c1".to_string()),
            ("path".to_string(), "a b".to_string()),
        ]);
        let line = format_line(false, Level::ERROR, "no \"such\" thing", &fields, TIME);
        assert_eq!(
            line,
            format!(
                "time=\"{TIME}\" level=error msg=\"no \\\"such\\\" thing\" id=c1 path=\"a b\"\n"
            )
        );
    }

    #[test]
    fn log_file_is_appended_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        std::fs::write(&path, "earlier\n").unwrap();
        let layer = LogLineLayer {
            sink: Mutex::new(Box::new(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap(),
            )),
            json: true,
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("boom");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(text.starts_with("earlier\n"));
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["msg"], "boom");
        assert_eq!(v["level"], "error");
    }
}
