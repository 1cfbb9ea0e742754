//! JWT verification for the `pubsub` app: connection tokens and channel tokens (DESIGN §13).
//!
//! The algorithm family comes from the configured key (HMAC secret: HS256/384/512; RSA:
//! RS*/PS*; EC: ES256/ES384; Ed25519: EdDSA), never from the token alone, and `alg: none` is
//! refused by construction (the decoder has no such algorithm). Claims are deserialized into
//! typed structs, so a claim of the wrong JSON type (an `exp` given as a string) fails the
//! token instead of being skipped.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::jwks::Jwks;
use crate::config::pubsub::JwtConfig;

/// Shortest HMAC secret accepted (RFC 7518 §3.2: a key of at least the hash's size).
pub(crate) const MIN_HMAC_BYTES: usize = 32;

/// Claims of a connection token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ConnectionClaims {
    /// The user ("" when absent).
    #[serde(default)]
    pub sub: String,
    /// Expiry (seconds since the epoch); the connection is closed with 4009 when it passes.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Globs of channels this connection may subscribe to without a channel token.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Globs of channels this connection may publish to (namespaces with `publish = "token"`).
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Claims of a channel token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ChannelClaims {
    /// Must equal the connection's user.
    #[serde(default)]
    pub sub: String,
    /// The one channel it admits to (exact name).
    pub channel: String,
    /// Expiry.
    #[serde(default)]
    pub exp: Option<u64>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: signature, algorithm, audience, issuer, format, claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Where the verifying keys come from.
enum Keys {
    /// One key from the configuration.
    Fixed(DecodingKey),
    /// A JWK Set: the token's `kid` picks the key and its algorithms.
    Set(Arc<Jwks>),
}

/// Checks tokens against the configured key, or the key its `kid` names in a JWK Set.
pub(crate) struct Verifier {
    keys: Keys,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl Verifier {
    /// A verifier for `config` (reads the key file).
    pub(crate) fn from_config(config: &JwtConfig) -> Result<Self, String> {
        let (keys, algorithms) = match (&config.hmac_secret_file, &config.public_key_file, &config.jwks_url) {
            (None, None, Some(url)) => {
                let jwks = Jwks::new(url)?;
                if tokio::runtime::Handle::try_current().is_ok() {
                    Jwks::spawn_refresher(&jwks);
                }
                (Keys::Set(jwks), vec![Algorithm::RS256]) // replaced per token by its key's
            }
            (Some(path), None, None) => {
                let mut secret = read(path)?;
                while secret.last().is_some_and(u8::is_ascii_whitespace) {
                    secret.pop();
                }
                if secret.len() < MIN_HMAC_BYTES {
                    return Err(format!(
                        "{}: an HMAC secret needs at least {MIN_HMAC_BYTES} bytes (has {})",
                        path.display(),
                        secret.len()
                    ));
                }
                let hmac = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
                (Keys::Fixed(DecodingKey::from_secret(&secret)), hmac)
            }
            (None, Some(path), None) => {
                let pem = read(path)?;
                let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    let rsa = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256];
                    (key, [rsa.as_slice(), &[Algorithm::PS384, Algorithm::PS512]].concat())
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, vec![Algorithm::ES256, Algorithm::ES384])
                } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                    (key, vec![Algorithm::EdDSA])
                } else {
                    return Err(format!("{}: not a PEM RSA, EC or Ed25519 public key", path.display()));
                };
                (Keys::Fixed(key), algorithms)
            }
            _ => return Err("set exactly one of hmac_secret_file, public_key_file and jwks_url".into()),
        };

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.required_spec_claims.clear(); // exp is optional (no expiry); checked when present
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.leeway.unwrap_or(0);
        // A configured audience or issuer must be present, not merely right when present.
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Verifier { keys, validation })
    }

    /// With a JWK Set: fetches the set again when `token` names a `kid` it lacks (rate
    /// limited). Call before [`Verifier::verify`] where waiting is possible.
    pub(crate) async fn prepare(&self, token: &str) {
        if let (Keys::Set(jwks), Some(kid)) = (&self.keys, kid(token)) {
            jwks.ensure(&kid).await;
        }
    }

    /// Like [`Verifier::prepare`], in the background (for callers that cannot wait: the next
    /// attempt finds the key).
    pub(crate) fn prepare_later(&self, token: &str) {
        if let (Keys::Set(jwks), Some(kid)) = (&self.keys, kid(token)) {
            let jwks = jwks.clone();
            tokio::spawn(async move { jwks.ensure(&kid).await });
        }
    }

    /// Verifies `token` and returns its claims.
    pub(crate) fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let decoded = match &self.keys {
            Keys::Fixed(key) => jsonwebtoken::decode::<T>(token, key, &self.validation),
            Keys::Set(jwks) => {
                let kid = kid(token).ok_or_else(|| TokenError::Invalid("the token names no key (kid)".into()))?;
                let entry =
                    jwks.get(&kid).ok_or_else(|| TokenError::Invalid(format!("no key {kid:?} in the JWK Set")))?;
                let mut validation = self.validation.clone();
                validation.algorithms = entry.algorithms;
                jsonwebtoken::decode::<T>(token, &entry.key, &validation)
            }
        };
        match decoded {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }
}

/// The `kid` in a token's header.
fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(extra: impl FnOnce(&mut JwtConfig)) -> (Verifier, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [SECRET, b"\n"].concat()).unwrap();
        let mut config = JwtConfig {
            hmac_secret_file: Some(file.path().into()),
            public_key_file: None,
            jwks_url: None,
            audience: None,
            issuer: None,
            leeway: None,
        };
        extra(&mut config);
        (Verifier::from_config(&config).unwrap(), file)
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn sign(claims: serde_json::Value, key: &[u8]) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    #[test]
    fn good_expired_forged_and_mistyped_tokens() {
        let (v, _f) = verifier(|_| {});
        let c: ConnectionClaims = v.verify(&sign(json!({"sub":"alice","exp":now()+60}), SECRET)).unwrap();
        assert_eq!(c.sub, "alice");
        let c: ConnectionClaims = v.verify(&sign(json!({"sub":"bob"}), SECRET)).unwrap();
        assert_eq!(c.exp, None);
        assert_eq!(
            v.verify::<ConnectionClaims>(&sign(json!({"sub":"a","exp":now()-5}), SECRET)),
            Err(TokenError::Expired)
        );
        let forged = sign(json!({"sub":"a"}), b"another-secret-another-secret-xx");
        assert!(matches!(v.verify::<ConnectionClaims>(&forged), Err(TokenError::Invalid(_))));
        let mistyped = sign(json!({"sub":"a","exp":"never"}), SECRET);
        assert!(matches!(v.verify::<ConnectionClaims>(&mistyped), Err(TokenError::Invalid(_))));
        // alg none: header {"alg":"none"} with no signature.
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), b64(json!({"sub":"a"})));
        assert!(matches!(v.verify::<ConnectionClaims>(&none), Err(TokenError::Invalid(_))));
        // A connection token is not a channel token (no `channel` claim).
        assert!(v.verify::<ChannelClaims>(&sign(json!({"sub":"a"}), SECRET)).is_err());
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_configured() {
        let (v, _f) = verifier(|c| {
            c.audience = Some("wsgate".into());
            c.issuer = Some("https://app.example".into());
        });
        let ok = sign(json!({"sub":"a","aud":"wsgate","iss":"https://app.example"}), SECRET);
        assert!(v.verify::<ConnectionClaims>(&ok).is_ok());
        for claims in [
            json!({"sub":"a","aud":"other","iss":"https://app.example"}),
            json!({"sub":"a","iss":"https://app.example"}),
            json!({"sub":"a","aud":"wsgate","iss":"https://evil.example"}),
        ] {
            assert!(v.verify::<ConnectionClaims>(&sign(claims.clone(), SECRET)).is_err(), "{claims}");
        }
    }

    #[test]
    fn short_secrets_and_unknown_keys_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"short\n").unwrap();
        let config = JwtConfig {
            hmac_secret_file: Some(file.path().into()),
            public_key_file: None,
            jwks_url: None,
            audience: None,
            issuer: None,
            leeway: None,
        };
        assert!(Verifier::from_config(&config).unwrap_err().contains("at least 32 bytes"));
        let config = JwtConfig { hmac_secret_file: None, public_key_file: Some(file.path().into()), ..config };
        assert!(Verifier::from_config(&config).unwrap_err().contains("not a PEM"));
    }
}
