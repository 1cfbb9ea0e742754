//! Token keys from a JSON Web Key Set (RFC 7517) fetched over HTTP(S): `jwt.jwks_url`.
//!
//! The set is fetched when the app starts, again every [`REFRESH`], and again when a token
//! names a `kid` the cached set lacks (at most once per [`MIN_REFETCH`], so a stream of
//! tokens with made-up ids cannot turn wsgate into a load generator against the key server).
//! A failed fetch keeps the keys it had. Each key's algorithms come from the key itself (its
//! `alg`, or its type: RSA → RS*/PS*, EC P-256/P-384 → ES256/ES384, OKP Ed25519 → EdDSA);
//! symmetric (`oct`) keys are refused, since a published set is public. HTTPS trusts the
//! system's roots (`/etc/ssl/certs`), as `wsgate client` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::locks::lock;

/// How often the set is fetched again regardless of tokens.
pub(crate) const REFRESH: Duration = Duration::from_secs(600);
/// Fewest seconds between two fetches caused by unknown key ids.
pub(crate) const MIN_REFETCH: Duration = Duration::from_secs(2);
/// Limit on one fetch (connect, TLS, request, body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted.
const MAX_BYTES: usize = 1 << 20;

/// One usable key of the set.
#[derive(Clone)]
pub(crate) struct KeyEntry {
    /// The key.
    pub key: DecodingKey,
    /// What it may verify.
    pub algorithms: Vec<Algorithm>,
}

/// The cached set of one app and how to fetch it again.
pub(crate) struct Jwks {
    url: http::Uri,
    keys: ArcSwap<HashMap<String, KeyEntry>>,
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; a token waiting for a fetch in progress uses its result.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).field("keys", &self.keys.load().len()).finish()
    }
}

/// Checks a `jwks_url`: an absolute `http://` or `https://` URL with a host.
pub(crate) fn parse_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("{url:?}: an http:// or https:// URL with a host")),
    }
}

/// The algorithms a JWK may verify, from its `alg` or, without one, its key type.
fn algorithms(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![EdDSA],
        _ => return None, // oct (a shared secret in a public document) and unknown curves
    };
    match jwk.common.key_algorithm {
        Some(alg) => {
            let alg: Algorithm = alg.to_string().parse().ok()?;
            family.contains(&alg).then(|| vec![alg])
        }
        None => Some(family),
    }
}

/// The usable keys of a JWK Set document, by `kid`; keys without a `kid`, of a kind we do
/// not verify, or that do not parse are left out (one bad key does not spoil the set).
pub(crate) fn parse_set(body: &[u8]) -> Result<HashMap<String, KeyEntry>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut out = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let (Some(kid), Some(algorithms)) = (jwk.common.key_id.clone(), algorithms(&jwk)) else { continue };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, KeyEntry { key, algorithms });
        }
    }
    Ok(out)
}

impl Jwks {
    /// A set to be fetched from `url` (nothing is fetched yet).
    pub(crate) fn new(url: &str) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Jwks {
            url: parse_url(url)?,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }))
    }

    /// The cached key `kid`.
    pub(crate) fn get(&self, kid: &str) -> Option<KeyEntry> {
        self.keys.load().get(kid).cloned()
    }

    /// Makes sure key `kid` is known if the key server has it: fetches the set when `kid` is
    /// not cached and the last fetch is older than [`MIN_REFETCH`].
    pub(crate) async fn ensure(&self, kid: &str) {
        if self.keys.load().contains_key(kid) {
            return;
        }
        let _one = self.fetching.lock().await;
        if self.keys.load().contains_key(kid) {
            return; // a fetch that finished while we waited brought it
        }
        if lock(&self.last_fetch).is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        self.refresh_locked().await;
    }

    /// Fetches the set now (at start and every [`REFRESH`]).
    pub(crate) async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        self.refresh_locked().await;
    }

    async fn refresh_locked(&self) {
        *lock(&self.last_fetch) = Some(Instant::now());
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.url)).await;
        match fetched.unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}"))).and_then(|b| parse_set(&b))
        {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "pubsub: JWK Set fetched");
                self.keys.store(Arc::new(keys));
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "pubsub: cannot fetch the JWK Set; keeping the keys we had")
            }
        }
    }

    /// Refreshes every [`REFRESH`] until `jwks` is dropped (the first fetch at once).
    pub(crate) fn spawn_refresher(jwks: &Arc<Self>) {
        let weak = Arc::downgrade(jwks);
        tokio::spawn(async move {
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                jwks.refresh().await;
                drop(jwks);
                tokio::time::sleep(REFRESH).await;
            }
        });
    }
}

/// GETs `url` (HTTP/1.1, plain or TLS) and returns the body of a 200 answer.
async fn fetch(url: &http::Uri) -> Result<Bytes, String> {
    let tls = url.scheme_str() == Some("https");
    let host = url.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
    let request = http::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, url.authority().map_or(host.as_str(), |a| a.as_str()))
        .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
        .header(http::header::USER_AGENT, concat!("wsgate/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if tls {
        let connector = crate::client::tls_connector(None).map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let stream = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        send(hyper_util::rt::TokioIo::new(stream), request).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BYTES).collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(body.to_bytes())
}

async fn send<T>(io: T, request: http::Request<Empty<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_keep_usable_keys_only() {
        let set = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"EC","crv":"P-256","kid":"ec","alg":"RS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"weird","kid":"w"},
            {"kty":"EC","crv":"P-256","kid":"ec2","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_set(set).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ec2", "ed"], "no oct, no kid-less, no alg/type mismatch, no unknown type");
        assert_eq!(keys["ed"].algorithms, [Algorithm::EdDSA]);
        assert_eq!(keys["ec2"].algorithms, [Algorithm::ES256]);
        assert!(parse_set(b"[]").is_err());
        assert!(parse_url("ftp://x/keys").is_err());
        assert!(parse_url("/keys").is_err());
        assert!(parse_url("https://id.example/.well-known/jwks.json").is_ok());
    }
}
