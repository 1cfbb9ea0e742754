//! Log output: `[log] format` = `text`, `json`, `journald` or `auto` (DESIGN §12).
//!
//! Every format writes one line per event to stderr:
//! - `text`: `2026-12-05T23:18:19.123456Z  INFO message key=value` (ANSI colours on a terminal);
//! - `json`: one object per line, `{"timestamp","level","target","message","fields","spans"}`;
//! - `journald`: `<3>ERROR message key=value`, the sd-daemon priority prefix that journald
//!   parses on a service's stdout/stderr stream (`SyslogLevelPrefix=yes`, systemd's default),
//!   so `journalctl -p err` finds wsgate's errors. No timestamp: the journal adds its own.
//! - `auto` (default): `journald` when stderr is the journal (`JOURNAL_STREAM` names stderr's
//!   device and inode), `text` otherwise.
//!
//! Why the prefix on stderr rather than the native protocol (tracing-journald, datagrams to
//! `/run/systemd/journal/socket`): the stream systemd hands us is already the journal, so the
//! prefix needs no second channel that can be missing (containers, `ProtectSystem`, a chroot),
//! keeps the order of everything written to stderr, needs no fallback path and no new crate,
//! and a line that cannot be written is dropped like any other (DESIGN §12).

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The format actually used once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human-readable lines with a timestamp.
    Text,
    /// One JSON object per line.
    Json,
    /// Lines with the `<N>` journal priority prefix.
    Journald,
}

/// Resolves `format` against the environment: `auto` is journald when stderr is the journal.
pub fn resolve(format: LogFormat) -> Output {
    match format {
        LogFormat::Text => Output::Text,
        LogFormat::Json => Output::Json,
        LogFormat::Journald => Output::Journald,
        LogFormat::Auto if stderr_is_journal() => Output::Journald,
        LogFormat::Auto => Output::Text,
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds
/// `<device>:<inode>` of that stream, and a child whose stderr was redirected elsewhere
/// inherits the variable but not the descriptor, so both are compared.
pub fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = expected.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

/// `"<dev>:<ino>"`, both decimal.
fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.split_once(':')?;
    Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?))
}

/// The syslog priority journald stores for a tracing level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Installs the global subscriber: the filter is `RUST_LOG` when set and valid, else
/// `[log] level`, else `info`. Call once, before the first event.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let output = resolve(config.format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output == Output::Text && std::io::stderr().is_terminal())
        .with_target(false)
        // A failed log write (stderr on a full disk, a closed pipe) must not take the server
        // down: by default tracing-subscriber reports it with `eprintln!`, which panics when
        // stderr itself cannot be written, and that panic killed wsgate at its first log line.
        .log_internal_errors(false);
    match output {
        Output::Text => builder.init(),
        Output::Json => builder.event_format(Json).init(),
        Output::Journald => {
            builder.event_format(Journald(tracing_subscriber::fmt::format().without_time().with_target(false))).init()
        }
    }
}

/// Prefixes each line of the wrapped format with `<N>`, N the journal priority.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// One JSON object per event; serde_json escapes control characters, so it stays one line.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldsToJson::default();
        event.record(&mut fields);
        // Written key by key to keep this order (serde_json's map would sort the keys).
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        write!(writer, "{{\"timestamp\":{}", Value::String(now))?;
        write!(writer, ",\"level\":{}", Value::String(meta.level().as_str().into()))?;
        write!(writer, ",\"target\":{}", Value::String(meta.target().into()))?;
        write!(writer, ",\"message\":{}", Value::String(fields.message.unwrap_or_default()))?;
        if !fields.fields.is_empty() {
            write!(writer, ",\"fields\":{}", Value::Object(fields.fields))?;
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|s| Value::String(s.name().into())).collect();
            if !spans.is_empty() {
                write!(writer, ",\"spans\":{}", Value::Array(spans))?;
            }
        }
        writeln!(writer, "}}")
    }
}

/// Collects an event's fields: `message` apart, the others typed where tracing says so.
#[derive(Default)]
struct FieldsToJson {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl FieldsToJson {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().into(), value);
        }
    }
}

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn journal_stream_parses() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn explicit_formats_resolve_to_themselves() {
        assert_eq!(resolve(LogFormat::Text), Output::Text);
        assert_eq!(resolve(LogFormat::Json), Output::Json);
        assert_eq!(resolve(LogFormat::Journald), Output::Journald);
    }
}
