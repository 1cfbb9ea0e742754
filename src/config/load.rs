//! Loading: figment layering and error attribution (DESIGN §3, ecosystem.md (d)).
//!
//! Layers, later wins: built-in defaults → the TOML file → `WSGATE_*` environment (`__`
//! nests) → CLI flags. figment's own messages name neither the line nor the real variable
//! and leak its `default.` profile into key paths, so every error is rebuilt here as one
//! line: `wsgate.toml:12: upstream.connect_timeout: <message>`, `env WSGATE_LIMITS__MAX_CONNECTIONS:
//! limits.max_connections: <message>`, or `<key.path>: <message>`.
//!
//! To report as many errors as possible in one run, unknown keys are found by walking the
//! merged tree, each section (and each app) is extracted on its own, and validation runs
//! over what did extract.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    validate, AdminConfig, AppConfig, AppKind, BrokerConfig, Config, LimitsConfig, ListenConfig, LogConfig, TlsConfig,
    UpstreamConfig, WebSocketConfig,
};

/// The annotated example config, embedded: used when no config is named and
/// [`DEFAULT_CONFIG_PATH`] does not exist, so a newcomer gets a working demo.
pub const DEMO_CONFIG: &str = include_str!("../../config/wsgate.toml");

/// Where the packaged config lives.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wsgate/wsgate.toml";

/// Name of the embedded demo config in error messages.
const DEMO_NAME: &str = "(built-in demo config)";

/// Environment variable prefix; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "WSGATE_";

/// `WSGATE_*` variables that are not settings (read by the CLI itself).
const ENV_IGNORED: &[&str] = &["config"];

/// Which TOML text to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE`: the file must exist.
    File(PathBuf),
    /// No `--config`: [`DEFAULT_CONFIG_PATH`] if it exists, else [`DEMO_CONFIG`].
    Default,
    /// In-memory text (tests, reload from a buffer); `name` stands for the file name.
    Text {
        /// Shown where a file name would be.
        name: String,
        /// The TOML.
        text: String,
    },
}

impl ConfigSource {
    /// How the source is named in messages: the file path, or "embedded demo config" when
    /// no file is given and the default path does not exist.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Default if Path::new(DEFAULT_CONFIG_PATH).exists() => DEFAULT_CONFIG_PATH.to_string(),
            ConfigSource::Default => "embedded demo config".to_string(),
            ConfigSource::Text { name, .. } => name.clone(),
        }
    }
}

/// The CLI flags that override config values; only set fields override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--listen ADDR` (repeatable): replaces `[[listen]]` with plain listeners.
    pub listen: Vec<SocketAddr>,
    /// `--upstream URL`: replaces `upstream.url`.
    pub upstream: Option<String>,
    /// `--log-level FILTER`: replaces `log.level`.
    pub log_level: Option<String>,
}

/// Where a bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorSource {
    /// The TOML file (or text), with the 1-based line of the key when known.
    File {
        /// File name as given (or the `Text` name).
        file: String,
        /// Line of the key.
        line: Option<usize>,
    },
    /// An environment variable, by its real name.
    Env {
        /// e.g. `WSGATE_UPSTREAM__URL`.
        var: String,
    },
    /// A command-line flag.
    Cli {
        /// e.g. `--upstream`.
        flag: &'static str,
    },
    /// Built-in default or a rule spanning several values.
    Unknown,
}

/// One problem, attributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Where the value was written.
    pub source: ErrorSource,
    /// Dotted key path (`apps.echo.urls.0`); empty for whole-file problems.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ErrorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ErrorSource::File { file, line: Some(line) } => write!(f, "{}:{line}: ", OneLine(file))?,
            ErrorSource::File { file, line: None } => write!(f, "{}: ", OneLine(file))?,
            ErrorSource::Env { var } => write!(f, "env {}: ", OneLine(var))?,
            ErrorSource::Cli { flag } => write!(f, "option {flag}: ")?,
            ErrorSource::Unknown => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", OneLine(&self.path))?;
        }
        write!(f, "{}", OneLine(&self.message))
    }
}

/// Text shown with its control characters escaped (`\n`, `\u{1b}`): a quoted TOML key or
/// an environment variable may hold any of them, and one problem must stay one line (and
/// must not move a terminal's cursor).
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Every problem found while loading; `Display` prints one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    entries: Vec<ErrorEntry>,
}

impl ConfigError {
    /// The problems: file ones by line, then environment, CLI, and unattributed ones.
    pub fn entries(&self) -> &[ErrorEntry] {
        &self.entries
    }

    fn single(source: ErrorSource, message: String) -> Self {
        ConfigError { entries: vec![ErrorEntry { source, path: String::new(), message }] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads, merges and validates the configuration.
///
/// Reads the environment (`WSGATE_*`) and, for [`ConfigSource::File`] and
/// [`ConfigSource::Default`], the file system; binds nothing.
pub fn load(source: ConfigSource, overrides: &CliOverrides) -> Result<Config, ConfigError> {
    let (name, text) = match source {
        ConfigSource::File(path) => (path.display().to_string(), read(&path)?),
        ConfigSource::Default => {
            let path = Path::new(DEFAULT_CONFIG_PATH);
            if path.exists() {
                (DEFAULT_CONFIG_PATH.to_string(), read(path)?)
            } else {
                (DEMO_NAME.to_string(), DEMO_CONFIG.to_string())
            }
        }
        ConfigSource::Text { name, text } => (name, text),
    };
    load_text(name, text, overrides)
}

/// Where `key` (a dotted path such as `listen.0.tls.key`) is written in `source`'s TOML: the
/// file name as messages show it and the 1-based line of the deepest part of the path the
/// file writes. `None` when the file cannot be read or writes none of it (a default, a value
/// from the environment). For messages about a value after loading (a TLS key that cannot
/// be read), so they name the line like the loader's own errors.
pub fn locate(source: &ConfigSource, key: &str) -> Option<(String, usize)> {
    let (name, text) = match source {
        ConfigSource::File(path) => (path.display().to_string(), std::fs::read_to_string(path).ok()?),
        ConfigSource::Default => {
            let path = Path::new(DEFAULT_CONFIG_PATH);
            if path.exists() {
                (DEFAULT_CONFIG_PATH.to_string(), std::fs::read_to_string(path).ok()?)
            } else {
                (DEMO_NAME.to_string(), DEMO_CONFIG.to_string())
            }
        }
        ConfigSource::Text { name, text } => (name.clone(), text.clone()),
    };
    let doc = toml_edit::ImDocument::parse(text.as_str()).ok()?;
    let mut offset = None;
    walk_item(doc.as_item(), &split_path(key), &mut offset);
    offset.map(|o| (name, line_at(&text, o)))
}

/// `file:line: key: ` for a message about the value at `key` (see [`locate`]); just
/// `key: ` when the file does not write it.
pub fn key_prefix(source: &ConfigSource, key: &str) -> String {
    match locate(source, key) {
        Some((file, line)) => format!("{}:{line}: {key}: ", OneLine(&file)),
        None => format!("{key}: "),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            ErrorSource::File { file: path.display().to_string(), line: None },
            format!("cannot read config file: {e}"),
        )
    })
}

/// The layer a value came from, recorded in each provider's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Defaults,
    File,
    Env,
    Cli,
}

impl Layer {
    const ALL: [Layer; 4] = [Layer::Defaults, Layer::File, Layer::Env, Layer::Cli];

    fn marker(self) -> Source {
        Source::Custom(format!("wsgate-layer:{self:?}"))
    }

    fn of(meta: &Metadata) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| meta.source.as_ref() == Some(&l.marker()))
    }
}

/// A provider with our own metadata, so values can be traced to their layer.
struct Tagged<P> {
    inner: P,
    meta: Metadata,
}

impl<P: Provider> Tagged<P> {
    fn new(inner: P, name: impl Into<String>, layer: Layer) -> Self {
        Tagged { inner, meta: Metadata::from(name.into(), layer.marker()) }
    }
}

impl<P: Provider> Provider for Tagged<P> {
    fn metadata(&self) -> Metadata {
        self.meta.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// The CLI layer: only flags that were given appear, so absent flags override nothing.
#[derive(Serialize)]
struct CliLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<CliUpstream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<CliListen>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<CliLog>,
}

#[derive(Serialize)]
struct CliUpstream {
    url: String,
}

#[derive(Serialize)]
struct CliListen {
    addr: SocketAddr,
}

#[derive(Serialize)]
struct CliLog {
    level: String,
}

impl CliLayer {
    fn from(o: &CliOverrides) -> Self {
        CliLayer {
            upstream: o.upstream.clone().map(|url| CliUpstream { url }),
            listen: (!o.listen.is_empty()).then(|| o.listen.iter().map(|&addr| CliListen { addr }).collect()),
            log: o.log_level.clone().map(|level| CliLog { level }),
        }
    }
}

fn cli_flag(path: &[String]) -> &'static str {
    match path.first().map(String::as_str) {
        Some("listen") => "--listen",
        Some("upstream") => "--upstream",
        _ => "--log-level",
    }
}

/// Everything needed to turn a key path into an [`ErrorSource`].
struct Attribution<'a> {
    figment: &'a Figment,
    /// The merged tree, values tagged with their provider.
    merged: Option<Value>,
    file_name: String,
    file_text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
    /// `(key path, real variable name)` for each `WSGATE_*` variable.
    env_vars: Vec<(Vec<String>, String)>,
}

impl<'a> Attribution<'a> {
    fn source(&self, path: &[String]) -> ErrorSource {
        let Some((layer, depth)) = self.layer_of(path) else {
            return ErrorSource::Unknown;
        };
        match layer {
            Layer::File => ErrorSource::File { file: self.file_name.clone(), line: self.line_of(path) },
            Layer::Env => match self.env_var(path, depth) {
                Some(var) => ErrorSource::Env { var },
                None => ErrorSource::Unknown,
            },
            Layer::Cli => ErrorSource::Cli { flag: cli_flag(path) },
            Layer::Defaults => ErrorSource::Unknown,
        }
    }

    /// The layer of the deepest value that exists along `path`, and how deep it is.
    fn layer_of(&self, path: &[String]) -> Option<(Layer, usize)> {
        let mut value = self.merged.as_ref()?;
        let mut found = None;
        for (depth, key) in path.iter().enumerate() {
            let next = match value {
                Value::Dict(_, d) => d.get(key.as_str()),
                Value::Array(_, a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(v) => {
                    value = v;
                    found = Some((v.tag(), depth + 1));
                }
                None => break,
            }
        }
        let (tag, depth) = found?;
        Some((Layer::of(self.figment.get_metadata(tag)?)?, depth))
    }

    /// 1-based line of the deepest key (or array element) of `path` found in the file.
    fn line_of(&self, path: &[String]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut offset = None;
        walk_item(doc.as_item(), path, &mut offset);
        offset.map(|o| line_at(self.file_text, o))
    }

    /// The real name of the variable that set `path` or a parent of it; when `path` is
    /// missing below depth `found` (a rule about an absent key), a variable that set a
    /// sibling under the deepest existing table.
    fn env_var(&self, path: &[String], found: usize) -> Option<String> {
        let ancestor = self.env_vars.iter().filter(|(p, _)| path.starts_with(p)).max_by_key(|(p, _)| p.len());
        if let Some((_, name)) = ancestor {
            return Some(name.clone());
        }
        if found < path.len() {
            let base = &path[..found];
            return self.env_vars.iter().find(|(p, _)| p.starts_with(base)).map(|(_, n)| n.clone());
        }
        Some(format!("{ENV_PREFIX}{}", path.join("__").to_uppercase()))
    }
}

// Walks the toml_edit tree along `path`, keeping the start of the deepest key found.
fn walk_item(item: &toml_edit::Item, path: &[String], offset: &mut Option<usize>) {
    if let Some(v) = item.as_value() {
        return walk_value(v, path, offset);
    }
    if let Some(aot) = item.as_array_of_tables() {
        let Some((key, rest)) = path.split_first() else {
            return;
        };
        if let Some(t) = key.parse::<usize>().ok().and_then(|i| aot.get(i)) {
            *offset = t.span().map(|s| s.start).or(*offset);
            walk_table(t, rest, offset);
        }
        return;
    }
    if let Some(t) = item.as_table_like() {
        walk_table(t, path, offset);
    }
}

fn walk_table(table: &dyn toml_edit::TableLike, path: &[String], offset: &mut Option<usize>) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if let Some((k, v)) = table.get_key_value(key) {
        *offset = k.span().or_else(|| v.span()).map(|s| s.start).or(*offset);
        walk_item(v, rest, offset);
    }
}

fn walk_value(value: &toml_edit::Value, path: &[String], offset: &mut Option<usize>) {
    match value {
        toml_edit::Value::InlineTable(t) => walk_table(t, path, offset),
        toml_edit::Value::Array(a) => {
            let Some((key, rest)) = path.split_first() else {
                return;
            };
            if let Some(v) = key.parse::<usize>().ok().and_then(|i| a.get(i)) {
                *offset = v.span().map(|s| s.start).or(*offset);
                walk_value(v, rest, offset);
            }
        }
        _ => {}
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|&&b| b == b'\n').count() + 1
}

/// `WSGATE_*` variables as figment's `Env::prefixed(..).split("__")` sees them.
fn env_vars() -> Vec<(Vec<String>, String)> {
    std::env::vars_os()
        .filter_map(|(k, _)| {
            let name = k.to_string_lossy().trim().to_string();
            let rest = name
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .and_then(|_| name.get(ENV_PREFIX.len()..))?;
            let key = rest.replace("__", ".").to_ascii_lowercase();
            if ENV_IGNORED.contains(&key.as_str()) || key.split('.').any(str::is_empty) {
                return None;
            }
            Some((key.split('.').map(str::to_string).collect(), name))
        })
        .collect()
}

fn load_text(name: String, text: String, overrides: &CliOverrides) -> Result<Config, ConfigError> {
    // Syntax first, with toml_edit, which keeps spans: its line is exact and the same parse
    // then serves for key lines.
    let doc = match toml_edit::ImDocument::parse(text.as_str()) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_at(&text, s.start));
            let message = format!("syntax error: {}", e.message().trim_end().replace('\n', "; "));
            return Err(ConfigError::single(ErrorSource::File { file: name, line }, message));
        }
    };

    let env = Env::prefixed(ENV_PREFIX).split("__").ignore(ENV_IGNORED);
    let figment = Figment::new()
        .merge(Tagged::new(Serialized::defaults(Config::default()), "built-in defaults", Layer::Defaults))
        .merge(Tagged::new(Toml::string(&text), name.clone(), Layer::File))
        .merge(Tagged::new(env, "environment", Layer::Env))
        .merge(Tagged::new(Serialized::defaults(CliLayer::from(overrides)), "command line", Layer::Cli));

    let attribution = Attribution {
        figment: &figment,
        merged: figment.find_value("").ok(),
        file_name: name,
        file_text: &text,
        doc: Some(doc),
        env_vars: env_vars(),
    };

    let mut errors = Errors { attribution: &attribution, entries: Vec::new(), failed: Vec::new() };
    let root = match &attribution.merged {
        Some(v) => v.clone(),
        None => {
            // A provider failed to produce data at all (e.g. unreadable environment).
            if let Err(e) = figment.find_value("") {
                errors.figment(e, &[]);
            }
            return Err(ConfigError { entries: errors.entries });
        }
    };
    unknown_keys(&root, &mut errors);

    let defaults = Config::default();
    let config = Config {
        upstream: errors.section("upstream").unwrap_or(defaults.upstream),
        listen: errors.section("listen").unwrap_or(defaults.listen),
        admin: errors.section("admin").unwrap_or(defaults.admin),
        limits: errors.section("limits").unwrap_or(defaults.limits),
        websocket: errors.section("websocket").unwrap_or(defaults.websocket),
        broker: errors.section("broker").unwrap_or(defaults.broker),
        log: errors.section("log").unwrap_or(defaults.log),
        apps: apps(&root, &mut errors),
    };

    // Validate what extracted; skip rules about sections that failed (they would report
    // on stand-in defaults).
    for issue in validate(&config) {
        let path = split_path(&issue.path);
        if errors.failed.iter().any(|f| path.starts_with(f)) {
            continue;
        }
        errors.push(path, issue.message);
    }

    if errors.entries.is_empty() {
        return Ok(config);
    }
    // Read like compiler output: the file top to bottom, then the other sources.
    let mut entries = errors.entries;
    entries.sort_by_key(|e| match &e.source {
        ErrorSource::File { line, .. } => (0, line.unwrap_or(0)),
        ErrorSource::Env { .. } => (1, 0),
        ErrorSource::Cli { .. } => (2, 0),
        ErrorSource::Unknown => (3, 0),
    });
    Err(ConfigError { entries })
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Collects attributed errors without duplicates.
struct Errors<'a> {
    attribution: &'a Attribution<'a>,
    entries: Vec<ErrorEntry>,
    /// Paths whose extraction failed.
    failed: Vec<Vec<String>>,
}

impl Errors<'_> {
    fn push(&mut self, path: Vec<String>, message: String) {
        let entry = ErrorEntry { source: self.attribution.source(&path), path: path.join("."), message };
        if !self.entries.contains(&entry) {
            self.entries.push(entry);
        }
    }

    /// Extracts one section (or app) on its own, so one bad section does not hide others.
    ///
    /// serde stops at the first bad value of a section, so each bad value is taken out and
    /// the rest extracted again (up to [`MAX_PASSES`] times): every bad value is reported in
    /// one run, and validation still sees the section's good values. The keys taken out are
    /// recorded in `failed`, so no rule reports on the defaults that stood in for them. A
    /// required key cannot be taken out: the section is then given up as a whole.
    fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let prefix = split_path(key);
        let mut error = match self.attribution.figment.extract_inner::<T>(key) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let mut value = self.attribution.figment.find_value(key).ok();
        let mut removed: Vec<Vec<String>> = Vec::new();
        for _ in 0..MAX_PASSES {
            let mut give_up = false;
            for e in error {
                let (path, message) = describe(&e, &prefix);
                if matches!(e.kind, Kind::MissingField(_)) {
                    give_up = true;
                    if removed.iter().any(|r| path.starts_with(r)) {
                        // Missing only because it was taken out: already reported.
                        continue;
                    }
                }
                let taken = value.as_mut().and_then(|v| take_out(v, path.get(prefix.len()..).unwrap_or_default()));
                match taken {
                    Some(relative) => {
                        let mut full = prefix.clone();
                        full.extend(relative);
                        removed.push(full);
                    }
                    None => give_up = true,
                }
                self.push(path, message);
            }
            let Some(rest) = value.as_ref().filter(|_| !give_up) else {
                break;
            };
            let retry = Figment::from(Serialized::default(key, rest.clone()));
            match retry.extract_inner::<T>(key) {
                Ok(v) => {
                    self.failed.extend(removed);
                    return Some(v);
                }
                Err(e) => error = e,
            }
        }
        self.failed.push(prefix);
        None
    }

    /// Converts each error of figment's chain.
    fn figment(&mut self, error: figment::Error, prefix: &[String]) {
        for e in error {
            let (path, message) = describe(&e, prefix);
            self.push(path, message);
        }
    }
}

/// How many times one section is extracted again after taking out a bad value.
const MAX_PASSES: usize = 32;

/// The key path and plain-words message of one figment error.
fn describe(e: &figment::Error, prefix: &[String]) -> (Vec<String>, String) {
    let mut path = fix_path(e.path.clone(), prefix, e.profile.as_ref());
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            unknown_key_message(expected)
        }
        Kind::MissingField(field) => {
            path.push(field.to_string());
            "missing (required)".to_string()
        }
        Kind::UnknownVariant(found, expected) => {
            format!("unknown value {found:?} (expected one of: {})", expected.join(", "))
        }
        Kind::InvalidType(actual, expected) => {
            format!("wrong type: found {}, expected {}", plain_actual(actual), plain_expected(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {}, expected {}", plain_actual(actual), plain_expected(expected))
        }
        Kind::InvalidLength(len, expected) => {
            format!("wrong length: found {len}, expected {}", plain_expected(expected))
        }
        other => other.to_string(),
    };
    (path, message)
}

/// A value as the config file spells it, not serde's type names ("string \"x\"", "map").
fn plain_actual(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Bool(v) => v.to_string(),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Char(v) => format!("{:?}", v.to_string()),
        Actual::Str(v) => format!("{v:?}"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

/// serde's expectation in plain words: `usize` is "a whole number", `a boolean` is
/// "true or false", `a sequence` is "a list", `struct X` / `a map` is "a table".
fn plain_expected(expected: &str) -> String {
    let words = match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" | "u128" => "a whole number (0 or more)",
        "isize" | "i8" | "i16" | "i32" | "i64" | "i128" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "string" | "str" => "a string (in quotes)",
        "a sequence" | "sequence" => "a list [...]",
        "a map" | "map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => return other.to_string(),
    };
    words.to_string()
}

/// Takes the value at `path` (relative to `value`) out of its table, so the rest can be
/// extracted again. An element of a list takes the whole list out (removing one element
/// would renumber the others). Returns the path actually taken out, `None` when nothing was.
fn take_out(value: &mut Value, path: &[String]) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    match value {
        Value::Dict(_, dict) => {
            let child = dict.get_mut(first.as_str())?;
            if !rest.is_empty() {
                if let Some(mut deeper) = take_out_inner(child, rest) {
                    deeper.insert(0, first.clone());
                    return Some(deeper);
                }
            }
            dict.remove(first.as_str());
            Some(vec![first.clone()])
        }
        _ => None,
    }
}

/// [`take_out`] below a key: a table recurses; a list (or a scalar) cannot lose a part.
fn take_out_inner(value: &mut Value, path: &[String]) -> Option<Vec<String>> {
    match value {
        Value::Dict(..) => take_out(value, path),
        _ => None,
    }
}

/// figment's paths: `extract_inner` appends the section instead of prepending it, and the
/// `default` profile can leak in front.
fn fix_path(mut path: Vec<String>, prefix: &[String], profile: Option<&Profile>) -> Vec<String> {
    if profile.is_some_and(|p| *p == Profile::Default) && path.first().is_some_and(|p| p == "default") {
        path.remove(0);
    }
    if prefix.is_empty() || path.starts_with(prefix) {
        return path;
    }
    if path.ends_with(prefix) {
        let keep = path.len() - prefix.len();
        path.truncate(keep);
    }
    let mut full = prefix.to_vec();
    full.extend(path);
    full
}

fn unknown_key_message(expected: &[&str]) -> String {
    format!("unknown key (expected one of: {})", expected.join(", "))
}

/// Extracts each app on its own; names that cannot be addressed by a dotted figment path
/// are reported here (the others by validation).
fn apps(root: &Value, errors: &mut Errors<'_>) -> BTreeMap<String, AppConfig> {
    let Some(Value::Dict(_, apps)) = root.find_ref("apps") else {
        return errors.section("apps").unwrap_or_default();
    };
    let mut out = BTreeMap::new();
    for name in apps.keys() {
        if name.contains('.') || name.is_empty() {
            errors.push(vec!["apps".into(), name.clone()], "app names may only use A-Z, a-z, 0-9, '_' and '-'".into());
            continue;
        }
        if let Some(app) = errors.section::<AppConfig>(&format!("apps.{name}")) {
            out.insert(name.clone(), app);
        }
    }
    out
}

/// Reports every unknown key in the merged tree (serde stops at the first).
fn unknown_keys(root: &Value, errors: &mut Errors<'_>) {
    let Value::Dict(_, top) = root else { return };
    let mut path = Vec::new();
    check_dict(top, fields_of::<Config>(), &path, errors);
    for (key, value) in top {
        path.clear();
        path.push(key.clone());
        match (key.as_str(), value) {
            ("upstream", Value::Dict(_, d)) => check_dict(d, fields_of::<UpstreamConfig>(), &path, errors),
            ("admin", Value::Dict(_, d)) => check_dict(d, fields_of::<AdminConfig>(), &path, errors),
            ("limits", Value::Dict(_, d)) => check_dict(d, fields_of::<LimitsConfig>(), &path, errors),
            ("websocket", Value::Dict(_, d)) => check_dict(d, fields_of::<WebSocketConfig>(), &path, errors),
            ("broker", Value::Dict(_, d)) => check_dict(d, fields_of::<BrokerConfig>(), &path, errors),
            ("log", Value::Dict(_, d)) => check_dict(d, fields_of::<LogConfig>(), &path, errors),
            ("listen", Value::Array(_, list)) => {
                for (i, item) in list.iter().enumerate() {
                    let Value::Dict(_, d) = item else { continue };
                    path.truncate(1);
                    path.push(i.to_string());
                    check_dict(d, fields_of::<ListenConfig>(), &path, errors);
                    if let Some(Value::Dict(_, tls)) = d.get("tls") {
                        path.push("tls".into());
                        check_dict(tls, fields_of::<TlsConfig>(), &path, errors);
                        path.pop();
                    }
                }
            }
            ("apps", Value::Dict(_, apps)) => {
                for (name, app) in apps {
                    let Value::Dict(_, d) = app else { continue };
                    path.truncate(1);
                    path.push(name.clone());
                    check_dict(d, fields_of::<AppConfig>(), &path, errors);
                    foreign_app_keys(d, &path, errors);
                    if let Some(Value::Dict(_, jwt)) = d.get("jwt") {
                        path.push("jwt".into());
                        check_dict(jwt, fields_of::<super::pubsub::JwtConfig>(), &path, errors);
                        path.pop();
                    }
                    if let Some(Value::Array(_, list)) = d.get("namespaces") {
                        for (i, item) in list.iter().enumerate() {
                            let Value::Dict(_, ns) = item else { continue };
                            path.truncate(2);
                            path.extend(["namespaces".into(), i.to_string()]);
                            check_dict(ns, fields_of::<super::pubsub::NamespaceConfig>(), &path, errors);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn check_dict(dict: &Dict, fields: &'static [&'static str], path: &[String], errors: &mut Errors<'_>) {
    for key in dict.keys() {
        if !fields.contains(&key.as_str()) {
            let mut p = path.to_vec();
            p.push(key.clone());
            errors.push(p, unknown_key_message(fields));
        }
    }
}

/// Keys of another app kind, as written (validation repeats this on the typed tree, where
/// an empty list is invisible; duplicates are merged).
fn foreign_app_keys(app: &Dict, path: &[String], errors: &mut Errors<'_>) {
    let Some(kind) = app.get("kind").and_then(|k| k.deserialize::<AppKind>().ok()) else {
        return;
    };
    let fields = fields_of::<AppConfig>();
    for key in app.keys() {
        if fields.contains(&key.as_str()) && !validate::is_app_key(kind, key) {
            let mut p = path.to_vec();
            p.push(key.clone());
            errors.push(p, validate::foreign_key_message(kind));
        }
    }
}

/// The field names serde expects for struct `T`, read from its `Deserialize` impl, so the
/// unknown-key walk can never drift from the schema.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);

    #[derive(Debug)]
    struct Stop;

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field probe")
        }
    }

    impl std::error::Error for Stop {}

    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    impl<'de> serde::Deserializer<'de> for &mut Probe {
        type Error = Stop;

        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

#[cfg(test)]
// figment's `Jail` closures return its large error type; not ours to shrink.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::config::{AppKind, BrokerKind, LogFormat, SlowConsumerPolicy};
    use figment::Jail;
    use std::time::Duration;

    fn text(t: &str) -> ConfigSource {
        ConfigSource::Text { name: "wsgate.toml".into(), text: t.into() }
    }

    fn load_text_ok(t: &str) -> Config {
        match load(text(t), &CliOverrides::default()) {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    fn load_err(t: &str) -> String {
        match load(text(t), &CliOverrides::default()) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn pubsub_settings_are_checked_to_the_nested_key() {
        let ok = load_text_ok(
            "[apps.live]\nkind = \"pubsub\"\nurls = [\"/live\"]\n[apps.live.jwt]\nhmac_secret_file = \"/etc/k\"\n\
             [[apps.live.namespaces]]\npattern = \"news:*\"\nhistory = 10\nhistory_ttl = \"1m\"\npresence = true\n",
        );
        let live = &ok.apps["live"];
        assert_eq!(live.namespaces[0].history, 10);
        assert_eq!(live.namespaces[0].history_ttl(), std::time::Duration::from_secs(60));
        let e = load_err(
            "[apps.live]\nkind = \"pubsub\"\nurls = [\"/live\"]\n[apps.live.jwt]\nhmac_secret = \"x\"\n\
             [[apps.live.namespaces]]\npattern = \"a\"\nhistroy = 1\n[[apps.live.namespaces]]\npattern = \"[\"\n\
             history = 1000000\n",
        );
        assert!(e.contains("wsgate.toml:5: apps.live.jwt.hmac_secret: unknown key"), "{e}");
        assert!(e.contains("apps.live.namespaces.0.histroy: unknown key"), "{e}");
        let e = load_err(
            "[apps.live]\nkind = \"pubsub\"\nurls = [\"/live\"]\n[apps.live.jwt]\naudience = \"x\"\n\
             [[apps.live.namespaces]]\npattern = \"[\"\nhistory = 1000000\n",
        );
        assert!(e.contains("apps.live.jwt: set exactly one of hmac_secret_file, public_key_file and jwks_url"), "{e}");
        assert!(e.contains("apps.live.namespaces.0.pattern: \"[\" is not a valid pattern"), "{e}");
        assert!(e.contains("apps.live.namespaces.0.history: at most 100000"), "{e}");
        let e = load_err("[apps.live]\nkind = \"pubsub\"\nurls = [\"/live\"]\n");
        assert!(e.contains("apps.live.namespaces: a pubsub app needs at least one"), "{e}");
        let e = load_err("[apps.e]\nkind = \"echo\"\nurls = [\"/e\"]\n[[apps.e.namespaces]]\npattern = \"a\"\n");
        assert!(e.contains("apps.e.namespaces: not a setting of an `echo` app"), "{e}");
    }

    #[test]
    fn control_characters_in_a_key_are_escaped_so_each_problem_stays_one_line() {
        // Found by the `config` fuzz target: a quoted key with an escaped newline made
        // the "unknown key" problem span two lines.
        let e = load_err("[\"a\\nb\\u001b\"]\nx = 1\n");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("wsgate.toml:1: a\\nb\\u{1b}: unknown key"), "{e}");
    }

    /// Runs `f` with no `WSGATE_*` variables from the outer environment.
    fn jail(f: impl FnOnce(&mut Jail) -> figment::error::Result<()>) {
        Jail::expect_with(|jail| {
            jail.clear_env();
            f(jail)
        });
    }

    #[test]
    fn empty_file_gives_defaults() {
        jail(|_| {
            assert_eq!(load_text_ok(""), Config::default());
            Ok(())
        });
    }

    #[test]
    fn demo_config_loads_and_validates() {
        jail(|_| {
            let c = load_text_ok(DEMO_CONFIG);
            assert_eq!(
                c.listen,
                vec![ListenConfig { addr: "127.0.0.1:8080".parse().unwrap(), tls: None, fd_name: None }]
            );
            assert_eq!(c.upstream.url.as_str(), "http://127.0.0.1:8000");
            assert_eq!(c.admin.addr, Some("127.0.0.1:9090".parse().unwrap()));
            let apps: Vec<_> = c.app_urls().collect();
            assert_eq!(
                apps,
                [("chat", "/websocket/chat"), ("chat", "/websocket/chat/ops"), ("echo", "/websocket/echo")]
            );
            assert_eq!(c.apps["echo"].kind, AppKind::Echo);
            assert_eq!(c.apps["chat"].kind, AppKind::Chat);
            // The example states the defaults: apart from the app it equals them.
            let mut d = c.clone();
            d.apps.clear();
            assert_eq!(d, Config::default());
            Ok(())
        });
    }

    #[test]
    fn demo_config_commented_sections_are_valid() {
        // Uncommenting the later apps' sections must give a valid config.
        jail(|_| {
            let mut t = String::new();
            let mut in_app = false;
            for line in DEMO_CONFIG.lines() {
                if line.starts_with("# [apps.") {
                    in_app = true;
                }
                let rest = line.strip_prefix("# ").unwrap_or("");
                let is_toml = rest.starts_with('[')
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
                if in_app && is_toml {
                    t.push_str(rest);
                } else if !in_app {
                    t.push_str(line);
                }
                t.push('\n');
            }
            let c = load_text_ok(&t);
            assert_eq!(c.apps.len(), 5, "{t}");
            assert_eq!(c.apps["live"].namespaces[0].history, 100);
            assert_eq!(c.apps["log-view"].files.len(), 2);
            assert_eq!(
                c.apps["orders"].callback.as_ref().map(|u| u.as_str()),
                Some("http://127.0.0.1:8000/wsgate/callback")
            );
            Ok(())
        });
    }

    const FULL: &str = r#"
[upstream]
url = "http://10.0.0.5:8081"
connect_timeout = "500ms"
response_timeout = "1m 30s"
trusted_proxies = ["10.0.0.0/8", "::1/128"]

[[listen]]
addr = "127.0.0.1:8080"

[[listen]]
addr = "[::]:8443"
tls = { cert = "/etc/wsgate/cert.pem", key = "/etc/wsgate/key.pem" }

[admin]
addr = "0.0.0.0:9090"
token_file = "/etc/wsgate/admin.token"

[limits]
max_connections = 5000
header_read_timeout = "5s"
max_header_bytes = 32768
shutdown_timeout = "0s"

[websocket]
max_message_size = "64KB"
ping_interval = "10s"
idle_timeout = "1m"
send_queue = "1.5MiB"
slow_consumer = "drop"
compression = false
allowed_origins = ["https://example.com"]

[broker]
kind = "redis"
url = "redis://127.0.0.1:6379"

[log]
level = "wsgate=debug,info"
format = "journald"

[apps.chat]
kind = "chat"
urls = ["/websocket/chat", "/websocket/chat2"]
history = 10
auth = "http://10.0.0.5:8081/auth"
allowed_origins = ["*"]

[apps.log-view]
kind = "log-view"
urls = ["/admin/websocket/log-view"]
files = ["/var/log/nginx/access.log", "/var/log/nginx/error.log"]
refresh = "2s"
backlog_lines = 20

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
subprotocols = ["echo.v1"]
allow = ["192.168.0.0/16"]

[apps.orders]
kind = "backend"
urls = ["/ws/orders"]
callback = "http://127.0.0.1:8000/wsgate/callback"
callback_timeout = "3s"

[apps.off]
kind = "echo"
"#;

    #[test]
    fn full_file() {
        jail(|_| {
            let c = load_text_ok(FULL);
            assert_eq!(c.upstream.url.authority(), "10.0.0.5:8081");
            assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
            assert_eq!(c.upstream.response_timeout, Duration::from_secs(90));
            assert_eq!(c.upstream.trusted_proxies.len(), 2);
            assert_eq!(c.listen.len(), 2);
            assert_eq!(c.listen[1].tls.as_ref().map(|t| t.key.clone()), Some("/etc/wsgate/key.pem".into()));
            assert_eq!(c.admin.token_file, Some("/etc/wsgate/admin.token".into()));
            assert_eq!(c.limits.max_connections, 5000);
            assert_eq!(c.limits.max_header_bytes, 32768);
            assert_eq!(c.limits.shutdown_timeout, Duration::ZERO);
            assert_eq!(c.websocket.max_message_size, 64_000);
            assert_eq!(c.websocket.send_queue, 1_572_864);
            assert_eq!(c.websocket.slow_consumer, SlowConsumerPolicy::Drop);
            assert!(!c.websocket.compression);
            assert_eq!(c.broker.kind, BrokerKind::Redis);
            assert_eq!(c.log.format, LogFormat::Journald);
            assert_eq!(c.apps.len(), 5);
            assert_eq!(c.apps["chat"].history(), 10);
            assert_eq!(c.apps["chat"].allowed_origins(&c.websocket), ["*"]);
            assert_eq!(c.apps["log-view"].refresh(), Duration::from_secs(2));
            assert_eq!(c.apps["log-view"].backlog_lines(), 20);
            assert_eq!(c.apps["log-view"].allow().len(), 2);
            assert_eq!(c.apps["echo"].allow().len(), 1);
            assert_eq!(c.apps["orders"].callback_timeout(), Duration::from_secs(3));
            assert!(!c.apps["off"].is_enabled());
            assert_eq!(c.app_urls().count(), 5);
            Ok(())
        });
    }

    #[test]
    fn serialized_tree_loads_back() {
        jail(|_| {
            let c = load_text_ok(FULL);
            let value = figment::Figment::from(Serialized::defaults(&c)).extract::<Config>().unwrap();
            assert_eq!(value, c);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_line_and_expected_keys() {
        jail(|_| {
            let e = load_err("[upstream]\nurll = \"http://x:1\"\n");
            assert_eq!(
                e,
                "wsgate.toml:2: upstream.urll: unknown key (expected one of: url, connect_timeout, response_timeout, trusted_proxies, fast_path)"
            );
            Ok(())
        });
    }

    #[test]
    fn all_unknown_keys_reported() {
        jail(|_| {
            let e = load_err("colour = 1\n[upstream]\nurll = \"x\"\ntimeout = 3\n[[listen]]\naddr = \"127.0.0.1:1\"\ntls = { cert = \"c\", kye = \"k\" }\n[apps.e]\nkind = \"echo\"\nfile = []\n");
            let lines: Vec<&str> = e.lines().collect();
            assert!(lines.contains(&"wsgate.toml:1: colour: unknown key (expected one of: upstream, listen, admin, limits, websocket, broker, log, apps)"), "{e}");
            assert!(lines.iter().any(|l| l.starts_with("wsgate.toml:3: upstream.urll: unknown key")), "{e}");
            assert!(lines.iter().any(|l| l.starts_with("wsgate.toml:4: upstream.timeout: unknown key")), "{e}");
            assert!(
                lines.iter().any(|l| l.starts_with(
                    "wsgate.toml:7: listen.0.tls.kye: unknown key (expected one of: cert, key)"
                )),
                "{e}"
            );
            assert!(lines.iter().any(|l| l.starts_with("wsgate.toml:10: apps.e.file: unknown key")), "{e}");
            Ok(())
        });
    }

    #[test]
    fn wrong_types_name_line() {
        jail(|_| {
            let e = load_err("[limits]\nmax_connections = 5\nheader_read_timeout = \"fast\"\n");
            assert!(e.starts_with("wsgate.toml:3: limits.header_read_timeout: invalid duration \"fast\""), "{e}");
            let e = load_err("[upstream]\n\nconnect_timeout = 30\n");
            assert_eq!(
                e,
                "wsgate.toml:3: upstream.connect_timeout: a duration needs a unit: write \"30s\" (or \"30ms\")"
            );
            let e = load_err("[websocket]\ncompression = \"yes\"\n");
            assert!(
                e.starts_with(
                    "wsgate.toml:2: websocket.compression: wrong type: found \"yes\", expected true or false"
                ),
                "{e}"
            );
            let e = load_err("[[listen]]\naddr = \"127.0.0.1:80\"\n[[listen]]\naddr = \"nowhere\"\n");
            assert!(e.starts_with("wsgate.toml:4: listen.1.addr: "), "{e}");
            let e = load_err("[websocket]\nslow_consumer = \"panic\"\n");
            assert_eq!(
                e,
                "wsgate.toml:2: websocket.slow_consumer: unknown value \"panic\" (expected one of: close, drop)"
            );
            let e = load_err("[apps.e]\nkind = \"echo\"\nurls = [\"/a\", 5]\n");
            assert!(e.starts_with("wsgate.toml:3: apps.e.urls.1: wrong type"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn errors_from_several_sections_are_all_reported() {
        jail(|_| {
            let e = load_err("[upstream]\nurl = \"https://x\"\n[limits]\nmax_header_bytes = \"lots\"\n[apps.a]\nkind = \"echo\"\nurls = [\"/a\"]\nhistory = \"many\"\n[apps.b]\nkind = \"chat\"\nurls = [\"/a/connect\"]\n[apps.c]\nurls = [\"/c\"]\n");
            let lines: Vec<&str> = e.lines().collect();
            assert!(
                lines
                    .iter()
                    .any(|l| l
                        .starts_with("wsgate.toml:2: upstream.url: invalid URL \"https://x\": scheme must be http")),
                "{e}"
            );
            assert!(lines.iter().any(|l| l.starts_with("wsgate.toml:4: limits.max_header_bytes: invalid size")), "{e}");
            assert!(lines.iter().any(|l| l.starts_with("wsgate.toml:8: apps.a.history: wrong type")), "{e}");
            assert!(lines.contains(&"wsgate.toml:12: apps.c.kind: missing (required)"), "{e}");
            assert!(lines.contains(&"wsgate.toml:8: apps.a.history: not a setting of an `echo` app"), "{e}");
            // Validation ran on what extracted: app a extracted without its bad `history`,
            // so b's "/a/connect" is compared with a's "/a" in the same run, and nothing
            // about the parts taken out is reported twice.
            assert!(
                lines.contains(&"wsgate.toml:11: apps.b.urls.0: \"/a/connect\" overlaps apps.a.urls.0 \"/a\" (counting the /connect alias)"),
                "{e}"
            );
            assert_eq!(lines.len(), 6, "{e}");
            assert!(lines[0].starts_with("wsgate.toml:2:") && lines[5].starts_with("wsgate.toml:12:"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn validation_errors_carry_lines() {
        jail(|_| {
            let e = load_err("[apps.a]\nkind = \"echo\"\nurls = [\"/x\"]\n\n[apps.b]\nkind = \"chat\"\nurls = [\n  \"/y\",\n  \"/x/connect\",\n]\n[apps.echo]\nkind = \"echo\"\nfiles = [\"/var/log/syslog\"]\n[admin]\naddr = \"0.0.0.0:9090\"\n");
            assert_eq!(
                e,
                "wsgate.toml:9: apps.b.urls.1: \"/x/connect\" overlaps apps.a.urls.0 \"/x\" (counting the /connect alias)\n\
                 wsgate.toml:13: apps.echo.files: not a setting of an `echo` app\n\
                 wsgate.toml:15: admin.addr: 0.0.0.0:9090 is not loopback: set admin.token_file so the control API needs a token"
            );
            Ok(())
        });
    }

    #[test]
    fn keys_of_other_kinds_even_when_empty() {
        jail(|_| {
            let e = load_err("[apps.echo]\nkind = \"echo\"\nurls = [\"/e\"]\nfiles = []\n[apps.chat]\nkind = \"chat\"\ncallback = \"http://127.0.0.1:1/cb\"\n");
            assert_eq!(
                e,
                "wsgate.toml:4: apps.echo.files: not a setting of an `echo` app\n\
                 wsgate.toml:7: apps.chat.callback: not a setting of a `chat` app"
            );
            let e = load_err("[apps.b]\nkind = \"backend\"\nurls = [\"/b\"]\ncallback = \"http://127.0.0.1:1/cb\"\nauth = \"https://127.0.0.1/auth\"\n");
            assert_eq!(
                e,
                "wsgate.toml:5: apps.b.auth: invalid URL \"https://127.0.0.1/auth\": scheme must be http, not https"
            );
            Ok(())
        });
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        jail(|_| {
            let e = load_err("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
            assert!(e.starts_with("wsgate.toml:3: syntax error: "), "{e}");
            let e = load_err("[log]\n[log]\n");
            assert!(e.starts_with("wsgate.toml:2: syntax error: "), "{e}");
            Ok(())
        });
    }

    #[test]
    fn rule_spanning_defaults_has_no_source() {
        jail(|_| {
            let e = load_err("[websocket]\nidle_timeout = \"10s\"\n");
            assert_eq!(e, "websocket.ping_interval: must be shorter than websocket.idle_timeout (10s), or healthy idle connections are closed");
            Ok(())
        });
    }

    #[test]
    fn syntax_error_keeps_line() {
        jail(|_| {
            let e = load_err("[upstream]\nurl = \"http://x:1\"\nconnect_timeout = = 3\n");
            assert!(e.starts_with("wsgate.toml:3: syntax error: "), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        jail(|jail| {
            let path = jail.directory().join("missing.toml");
            let e = load(ConfigSource::File(path.clone()), &CliOverrides::default()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: cannot read config file", path.display())), "{e}");
            Ok(())
        });
    }

    #[test]
    fn file_source_uses_path_in_messages() {
        jail(|jail| {
            jail.create_file("gw.toml", "[log]\nformat = \"xml\"\n")?;
            let path = jail.directory().join("gw.toml");
            let e = load(ConfigSource::File(path.clone()), &CliOverrides::default()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}:2: log.format: unknown value \"xml\"", path.display())), "{e}");
            jail.create_file("ok.toml", "[log]\nlevel = \"debug\"\n")?;
            let c = load(ConfigSource::File(jail.directory().join("ok.toml")), &CliOverrides::default()).unwrap();
            assert_eq!(c.log.level, "debug");
            Ok(())
        });
    }

    #[test]
    fn default_source_is_demo_or_etc() {
        jail(|_| {
            let c = load(ConfigSource::Default, &CliOverrides::default());
            if !Path::new(DEFAULT_CONFIG_PATH).exists() {
                assert_eq!(c.unwrap().app_urls().count(), 3);
            }
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file() {
        jail(|jail| {
            jail.set_env("WSGATE_UPSTREAM__URL", "http://127.0.0.1:9000");
            jail.set_env("WSGATE_LIMITS__MAX_CONNECTIONS", "5");
            jail.set_env("WSGATE_WEBSOCKET__PING_INTERVAL", "5s");
            jail.set_env("WSGATE_CONFIG", "/ignored.toml");
            let c = load_text_ok("[limits]\nmax_connections = 10\n");
            assert_eq!(c.upstream.url.as_str(), "http://127.0.0.1:9000");
            assert_eq!(c.limits.max_connections, 5);
            assert_eq!(c.websocket.ping_interval, Duration::from_secs(5));
            Ok(())
        });
    }

    #[test]
    fn env_errors_name_the_variable() {
        jail(|jail| {
            jail.set_env("WSGATE_LIMITS__MAX_CONNECTIONS", "lots");
            let e = load_err(DEMO_CONFIG);
            assert!(
                e.starts_with("env WSGATE_LIMITS__MAX_CONNECTIONS: limits.max_connections: wrong type: found \"lots\""),
                "{e}"
            );
            Ok(())
        });
        jail(|jail| {
            jail.set_env("WSGATE_UPSTREAM_URL", "http://x:1");
            jail.set_env("WSGATE_BROKER__KIND", "redis");
            let e = load_err("");
            let lines: Vec<&str> = e.lines().collect();
            assert!(lines.iter().any(|l| l.starts_with("env WSGATE_UPSTREAM_URL: upstream_url: unknown key")), "{e}");
            // A validation error whose value came from the environment.
            assert!(
                lines.contains(
                    &"env WSGATE_BROKER__KIND: broker.url: required when broker.kind = \"redis\" (or sentinels and master_name)"
                ),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn cli_overrides_win_over_env() {
        jail(|jail| {
            jail.set_env("WSGATE_UPSTREAM__URL", "http://127.0.0.1:9000");
            jail.set_env("WSGATE_LOG__LEVEL", "debug");
            let cli = CliOverrides {
                listen: vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()],
                upstream: Some("http://127.0.0.1:7000".into()),
                log_level: None,
            };
            let c = load(text(DEMO_CONFIG), &cli).unwrap();
            assert_eq!(c.upstream.url.as_str(), "http://127.0.0.1:7000");
            assert_eq!(c.listen.iter().map(|l| l.addr.port()).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(c.log.level, "debug");
            let bad = CliOverrides { upstream: Some("ftp://x".into()), ..CliOverrides::default() };
            let e = load(text(DEMO_CONFIG), &bad).unwrap_err().to_string();
            assert!(e.starts_with("option --upstream: upstream.url: invalid URL \"ftp://x\""), "{e}");
            Ok(())
        });
    }

    #[test]
    fn env_array_error_names_the_variable() {
        jail(|jail| {
            jail.set_env("WSGATE_LISTEN", r#"[{addr="127.0.0.1:1"},{addr="nope"}]"#);
            let e = load_err("");
            assert_eq!(
                e,
                "env WSGATE_LISTEN: listen.1.addr: invalid address \"nope\": expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::]:8443\""
            );
            Ok(())
        });
    }

    #[test]
    fn unaddressable_app_names() {
        jail(|_| {
            let e = load_err("[apps.\"a.b\"]\nkind = \"echo\"\n\n[apps.\"x y\"]\nkind = \"echo\"\n");
            assert_eq!(
                e,
                "wsgate.toml:1: apps.a.b: app names may only use A-Z, a-z, 0-9, '_' and '-'\n\
                 wsgate.toml:4: apps.x y: app names may only use A-Z, a-z, 0-9, '_' and '-'"
            );
            Ok(())
        });
    }

    #[test]
    fn fields_probe_reads_schema() {
        assert_eq!(fields_of::<TlsConfig>(), ["cert", "key"]);
        assert_eq!(fields_of::<Config>().len(), 8);
    }
}
