//! Settings of the `pubsub` app (DESIGN §13): token verification and channel namespaces.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units;

/// `[apps.NAME.jwt]`: how connection and channel tokens are verified. Absent = anonymous
/// connections are allowed (namespaces with `subscribe = "token"` then need channel tokens,
/// which cannot be verified, so they refuse everyone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256/384/512: the key is the file's bytes less trailing whitespace (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// RS*/PS* (RSA), ES256/ES384 (EC) or EdDSA (Ed25519): a PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// A JWK Set (RFC 7517) fetched over `http://` or `https://`: tokens name their key by
    /// `kid`; refetched every 10 minutes and when a token names an unknown `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Required `aud` claim, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Required `iss` claim, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<u64>,
}

/// Who may do something on a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Every connected client.
    Any,
    /// A client whose connection claims name the channel (`channels` / `publish` globs) or,
    /// for subscribe, that shows a channel token.
    Token,
    /// No client (the control API still may publish).
    #[default]
    None,
}

/// `[[apps.NAME.namespaces]]`: rules for the channels whose name matches `pattern`; the first
/// matching namespace wins, and a channel that matches none is refused (error 102).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Glob on the channel name (`*`, `?`, `[…]`).
    pub pattern: String,
    /// Who may subscribe (default any).
    #[serde(default = "any")]
    pub subscribe: Access,
    /// Who may publish from a connection (default none; the control API always may).
    #[serde(default)]
    pub publish: Access,
    /// Publications kept per channel for history and recovery (default 0 = none).
    #[serde(default)]
    pub history: usize,
    /// How long a publication stays in the history (default 10m).
    #[serde(default, with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<Duration>,
    /// Presence queries and join/leave pushes (default false).
    #[serde(default)]
    pub presence: bool,
}

fn any() -> Access {
    Access::Any
}

impl NamespaceConfig {
    /// The history's time to live (default 10 minutes).
    pub fn history_ttl(&self) -> Duration {
        self.history_ttl.unwrap_or(Duration::from_secs(600))
    }
}

/// Most publications one channel keeps.
pub const MAX_HISTORY: usize = 100_000;
/// Most subscriptions one connection may hold (default of `max_subscriptions`).
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;
