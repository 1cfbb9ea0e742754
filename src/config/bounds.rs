//! The allowed range of every duration, size and count in the configuration (pure).
//!
//! One table, [`BOUNDS`] for the fixed keys and [`APP_BOUNDS`] for the per-app ones, read by
//! `validate` (so `wsgate check` reports a value out of range with its key, file:line and the
//! range) and by the docs (config/wsgate.toml, docs/DESIGN.md §3). The ranges keep every value
//! where the server's arithmetic on it cannot overflow (`Instant + Duration` panics past about
//! 2^63 s; a size is multiplied and added) and where it does what the key promises: a 1 ns ping
//! period or a 1 TiB head buffer are mistakes, not settings. A new numeric key gets a row here.

use std::time::Duration;

use super::units::{format_duration, format_size};
use super::Issue;
use super::{AppConfig, Config};

/// A configured number and its kind, for the range check and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    /// A duration (`"30s"`).
    Duration(Duration),
    /// A byte size (`"1MiB"`).
    Size(u64),
    /// A plain count.
    Count(u64),
}

/// An inclusive range `min..=max` of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// Durations.
    Duration(Duration, Duration),
    /// Byte sizes.
    Size(u64, u64),
    /// Counts.
    Count(u64, u64),
}

impl Range {
    /// Whether `value` is of this range's kind and inside it.
    pub(crate) fn contains(self, value: Value) -> bool {
        match (self, value) {
            (Range::Duration(lo, hi), Value::Duration(v)) => lo <= v && v <= hi,
            (Range::Size(lo, hi), Value::Size(v)) | (Range::Count(lo, hi), Value::Count(v)) => lo <= v && v <= hi,
            _ => false,
        }
    }

    /// The range as written in a config file: `"100ms" to "1d"`, `"1KiB" to "1MiB"`, `1 to 10000000`.
    pub(crate) fn describe(self) -> String {
        match self {
            Range::Duration(lo, hi) => format!("\"{}\" to \"{}\"", format_duration(lo), format_duration(hi)),
            Range::Size(lo, hi) => format!("\"{}\" to \"{}\"", format_size(lo), format_size(hi)),
            Range::Count(lo, hi) => format!("{lo} to {hi}"),
        }
    }
}

/// A value as the message shows it.
fn show(value: Value) -> String {
    match value {
        Value::Duration(d) => format!("\"{}\"", format_duration(d)),
        Value::Size(n) => format!("\"{}\"", format_size(n)),
        Value::Count(n) => n.to_string(),
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One fixed key: its dotted path, its range, and how to read it from the tree.
pub(crate) struct Bound {
    /// Dotted key path (`limits.max_header_bytes`).
    pub path: &'static str,
    /// Allowed values.
    pub range: Range,
    /// The configured value.
    pub get: fn(&Config) -> Value,
}

/// One per-app key (`apps.NAME.<key>`); `get` answers `None` when the key is not written
/// (the default is inside the range).
pub(crate) struct AppBound {
    /// The key inside `[apps.NAME]`.
    pub key: &'static str,
    /// Allowed values.
    pub range: Range,
    /// The written value, if any.
    pub get: fn(&AppConfig) -> Option<Value>,
}

fn size(n: usize) -> Value {
    Value::Size(n as u64)
}

fn count(n: usize) -> Value {
    Value::Count(n as u64)
}

/// The fixed keys. Why each range (SECURITY.md has the same table):
/// - timeouts to the upstream: from 1ms (tests and LANs) to an hour for a TCP connect and a
///   day for a response head (long polls);
/// - `header_read_timeout` and `body_read_timeout` from 100ms: less refuses every real client;
///   at most an hour;
/// - `shutdown_timeout` 0 (do not wait) to a day;
/// - `ping_interval` and `idle_timeout` from 100ms (sub-second keepalive has uses, 1ns made
///   ~900 pings/s per connection) to a day (a longer silence is not "idle detection");
/// - `max_header_bytes` 1KiB (a browser's head fits) to 1MiB (each connection may buffer
///   that much before 431); `max_message_size` and `send_queue` at most 1GiB per connection;
/// - `max_connections` 1 to 10 million (more than any one process's descriptors).
pub(crate) const BOUNDS: &[Bound] = &[
    Bound {
        path: "upstream.connect_timeout",
        range: Range::Duration(MS, HOUR),
        get: |c| Value::Duration(c.upstream.connect_timeout),
    },
    Bound {
        path: "upstream.response_timeout",
        range: Range::Duration(MS, DAY),
        get: |c| Value::Duration(c.upstream.response_timeout),
    },
    Bound {
        path: "limits.max_connections",
        range: Range::Count(1, 10_000_000),
        get: |c| count(c.limits.max_connections),
    },
    Bound {
        path: "limits.header_read_timeout",
        range: Range::Duration(Duration::from_millis(100), HOUR),
        get: |c| Value::Duration(c.limits.header_read_timeout),
    },
    Bound {
        path: "limits.body_read_timeout",
        range: Range::Duration(Duration::from_millis(100), HOUR),
        get: |c| Value::Duration(c.limits.body_read_timeout),
    },
    Bound { path: "limits.max_header_bytes", range: Range::Size(KIB, MIB), get: |c| size(c.limits.max_header_bytes) },
    Bound {
        path: "limits.shutdown_timeout",
        range: Range::Duration(Duration::ZERO, DAY),
        get: |c| Value::Duration(c.limits.shutdown_timeout),
    },
    Bound {
        path: "websocket.max_message_size",
        range: Range::Size(1, GIB),
        get: |c| size(c.websocket.max_message_size),
    },
    Bound {
        path: "websocket.ping_interval",
        range: Range::Duration(Duration::from_millis(100), DAY),
        get: |c| Value::Duration(c.websocket.ping_interval),
    },
    Bound {
        path: "websocket.idle_timeout",
        range: Range::Duration(Duration::from_millis(100), DAY),
        get: |c| Value::Duration(c.websocket.idle_timeout),
    },
    Bound { path: "websocket.send_queue", range: Range::Size(1, GIB), get: |c| size(c.websocket.send_queue) },
];

/// The per-app keys:
/// - log-view `refresh` 10ms (a poll loop, not a spin) to an hour; `backlog_lines` and chat
///   `history` 0 to 100,000 (each is held in memory per file or room and sent on join);
/// - backend `callback_timeout` 1ms to an hour.
pub(crate) const APP_BOUNDS: &[AppBound] = &[
    AppBound {
        key: "refresh",
        range: Range::Duration(Duration::from_millis(10), HOUR),
        get: |a| a.refresh.map(Value::Duration),
    },
    AppBound { key: "backlog_lines", range: Range::Count(0, 100_000), get: |a| a.backlog_lines.map(count) },
    AppBound { key: "history", range: Range::Count(0, 100_000), get: |a| a.history.map(count) },
    AppBound {
        key: "callback_timeout",
        range: Range::Duration(MS, HOUR),
        get: |a| a.callback_timeout.map(Value::Duration),
    },
];

/// The message for a value outside its range.
fn out_of_range(value: Value, range: Range) -> String {
    format!("{} is out of range: allowed {}", show(value), range.describe())
}

/// Reports every value outside its range.
pub(crate) fn check(config: &Config, out: &mut Vec<Issue>) {
    for bound in BOUNDS {
        let value = (bound.get)(config);
        if !bound.range.contains(value) {
            out.push(Issue::new(bound.path, out_of_range(value, bound.range)));
        }
    }
    for (name, app) in &config.apps {
        for bound in APP_BOUNDS {
            if let Some(value) = (bound.get)(app) {
                if !bound.range.contains(value) {
                    out.push(Issue::new(format!("apps.{name}.{}", bound.key), out_of_range(value, bound.range)));
                }
            }
        }
    }
}

/// The range of a fixed key, for docs and tests.
#[cfg(test)]
pub(crate) fn range_of(path: &str) -> Option<Range> {
    BOUNDS
        .iter()
        .find(|b| b.path == path)
        .map(|b| b.range)
        .or_else(|| APP_BOUNDS.iter().find(|b| path.rsplit('.').next() == Some(b.key)).map(|b| b.range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppKind, Config};

    fn issues(c: &Config) -> Vec<Issue> {
        let mut out = Vec::new();
        check(c, &mut out);
        out
    }

    #[test]
    fn defaults_are_inside_every_range() {
        assert!(issues(&Config::default()).is_empty());
        let mut c = Config::default();
        for kind in [AppKind::LogView, AppKind::Chat, AppKind::Backend] {
            let mut app = AppConfig::new(kind);
            app.refresh = Some(app.refresh());
            app.backlog_lines = Some(app.backlog_lines());
            app.history = Some(app.history());
            app.callback_timeout = Some(app.callback_timeout());
            c.apps.insert(kind.to_string(), app);
        }
        assert!(issues(&c).is_empty(), "{:?}", issues(&c));
    }

    #[test]
    fn extremes_are_reported_with_key_and_range() {
        let mut c = Config::default();
        c.limits.header_read_timeout = Duration::MAX;
        c.limits.max_header_bytes = 1 << 40;
        c.limits.max_connections = 0;
        c.websocket.ping_interval = Duration::from_nanos(1);
        c.websocket.max_message_size = 1 << 40;
        let mut lv = AppConfig::new(AppKind::LogView);
        lv.backlog_lines = Some(usize::MAX);
        lv.refresh = Some(Duration::ZERO);
        c.apps.insert("lv".into(), lv);
        let out = issues(&c);
        let paths: Vec<&str> = out.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "limits.max_connections",
                "limits.header_read_timeout",
                "limits.max_header_bytes",
                "websocket.max_message_size",
                "websocket.ping_interval",
                "apps.lv.refresh",
                "apps.lv.backlog_lines",
            ]
        );
        assert_eq!(out[2].message, "\"1TiB\" is out of range: allowed \"1KiB\" to \"1MiB\"");
        assert_eq!(out[0].message, "0 is out of range: allowed 1 to 10000000");
        assert!(out[4].message.contains("allowed \"100ms\" to \"1day\""), "{}", out[4].message);
    }

    #[test]
    fn the_ends_of_each_range_are_allowed() {
        for bound in BOUNDS.iter().map(|b| b.range).chain(APP_BOUNDS.iter().map(|b| b.range)) {
            let (lo, hi) = match bound {
                Range::Duration(lo, hi) => (Value::Duration(lo), Value::Duration(hi)),
                Range::Size(lo, hi) => (Value::Size(lo), Value::Size(hi)),
                Range::Count(lo, hi) => (Value::Count(lo), Value::Count(hi)),
            };
            assert!(bound.contains(lo) && bound.contains(hi), "{}", bound.describe());
            // A value of another kind is never inside.
            assert!(!bound.contains(Value::Count(u64::MAX)) || matches!(bound, Range::Count(..)));
        }
        assert_eq!(range_of("limits.max_header_bytes"), Some(Range::Size(KIB, MIB)));
        assert_eq!(range_of("apps.x.history"), Some(Range::Count(0, 100_000)));
        // Every upper bound leaves `Instant::now() + d` far from overflow.
        for bound in BOUNDS {
            if let Range::Duration(_, hi) = bound.range {
                assert!(std::time::Instant::now().checked_add(hi.saturating_mul(1000)).is_some(), "{}", bound.path);
            }
        }
    }
}
