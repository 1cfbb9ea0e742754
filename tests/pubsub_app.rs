//! Issue 19 on one node, over real sockets: the `pubsub` app's protocol and errors, JWT
//! connection and channel tokens (HMAC, Ed25519, ES256), expiry during a connection, presence,
//! the control API's `/v1/publish`, `/v1/presence`, `/v1/history`, and a randomized property
//! test of exact recovery with publishers running concurrently.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pubsub::{admin, check_exact_recovery, error_code, Client};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "test-secret-test-secret-test-secret!";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A pubsub app at /live with `jwt` (a TOML body for `[apps.live.jwt]`, or "" for none).
fn config(jwt: &str, history: usize) -> String {
    let jwt = if jwt.is_empty() { String::new() } else { format!("[apps.live.jwt]\n{jwt}\n") };
    basic_config(&format!(
        r#"[apps.live]
kind = "pubsub"
urls = ["/live"]
max_subscriptions = 4
{jwt}
[[apps.live.namespaces]]
pattern = "chat:*"
subscribe = "any"
publish = "any"
history = {history}
presence = true

[[apps.live.namespaces]]
pattern = "news:*"
subscribe = "any"
publish = "none"
history = {history}

[[apps.live.namespaces]]
pattern = "private:*"
subscribe = "token"
publish = "token"

[admin]
addr = "127.0.0.1:0"
"#
    ))
}

/// One sample of `/metrics` (0 when absent).
async fn metric(admin_addr: SocketAddr, series: &str) -> f64 {
    let mut stream = TcpStream::connect(admin_addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut all)).await.unwrap().unwrap();
    all.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn anonymous_clients_subscribe_publish_and_get_every_error_code() {
    let up = start_upstream().await;
    let gate = start_gate(&config("", 100), up.addr).await;
    let mut a = Client::open(gate.addr, "/live").await;
    let mut b = Client::open(gate.addr, "/live").await;
    let hello = a.call("connect", json!({})).await;
    let a_id = hello["connect"]["client"].as_str().unwrap().to_owned();
    assert_eq!(hello["connect"]["user"], "");

    let sub = a.call("subscribe", json!({"channel":"chat:1"})).await;
    assert_eq!((sub["subscribe"]["offset"].as_u64(), sub["subscribe"]["channel"].as_str()), (Some(0), Some("chat:1")));
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    b.call("subscribe", json!({"channel":"chat:1"})).await;
    // a sees b join (presence on in chat:*)
    let join = a.push().await;
    assert_eq!(join["join"]["user"], "", "{join}");

    let published = a.call("publish", json!({"channel":"chat:1","data":{"text":"hi"}})).await;
    assert_eq!(published["publish"], json!({"offset":1,"epoch":epoch}));
    for client in [&mut a, &mut b] {
        let p = client.push().await;
        assert_eq!(p["channel"], "chat:1");
        assert_eq!(p["pub"]["offset"], 1);
        assert_eq!(p["pub"]["data"], json!({"text":"hi"}));
        assert_eq!(p["pub"]["info"]["client"], a_id.as_str());
    }
    let presence = a.call("presence", json!({"channel":"chat:1"})).await;
    assert_eq!(presence["presence"]["clients"].as_object().unwrap().len(), 2, "{presence}");
    let history = b.call("history", json!({"channel":"chat:1","limit":10})).await;
    assert_eq!(history["history"]["publications"][0]["data"], json!({"text":"hi"}));

    // The error codes, each with its id echoed and the connection kept.
    assert_eq!(error_code(&a.call("subscribe", json!({"channel":"elsewhere"})).await), 102);
    assert_eq!(error_code(&a.call("publish", json!({"channel":"news:1","data":1})).await), 103);
    assert_eq!(error_code(&a.call("subscribe", json!({"channel":"private:1"})).await), 103);
    assert_eq!(error_code(&a.call("rpc", json!({})).await), 104);
    assert_eq!(error_code(&a.call("subscribe", json!({"channel":"chat:1"})).await), 105);
    for i in 2..=4 {
        a.call("subscribe", json!({ "channel": format!("chat:{i}") })).await;
    }
    assert_eq!(error_code(&a.call("subscribe", json!({"channel":"chat:5"})).await), 106);
    assert_eq!(error_code(&a.call("subscribe", json!({"channel":"chat:6","bogus":true})).await), 107);
    assert_eq!(error_code(&b.call("presence", json!({"channel":"news:1"})).await), 103, "not subscribed");
    b.call("subscribe", json!({"channel":"news:1"})).await;
    assert_eq!(error_code(&b.call("presence", json!({"channel":"news:1"})).await), 108, "presence off");
    let stale = json!({"channel":"chat:1","since":{"offset":0,"epoch":"not-the-epoch"}});
    assert_eq!(error_code(&b.call("history", stale).await), 112);

    // b leaves: a sees the leave.
    b.call("unsubscribe", json!({"channel":"chat:1"})).await;
    let leave = loop {
        let p = a.push().await;
        if p.get("leave").is_some() {
            break p;
        }
    };
    assert_eq!(leave["channel"], "chat:1");

    // Not JSON at all: 1007; binary: 1003.
    b.ws.send_text("this is not json").await;
    assert_eq!(b.ws.expect_close().await, Some(1007));
    a.ws.send_frame(wsgate::ws::codec::OpCode::Binary, true, b"\x00\x01").await;
    assert_eq!(a.ws.expect_close().await, Some(1003));
    drop((a, b)); // a client that never answers a Close would hold the shutdown for its timeout
    gate.server.shutdown().await;
}

#[tokio::test]
async fn tokens_decide_who_connects_and_subscribes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, format!("{SECRET}\n")).unwrap();
    let jwt = format!("hmac_secret_file = \"{}\"\naudience = \"wsgate\"", key.display());
    let up = start_upstream().await;
    let gate = start_gate(&config(&jwt, 10), up.addr).await;
    let good = |sub: &str, extra: Value| {
        let mut claims = json!({"sub": sub, "aud": "wsgate", "exp": now() + 300});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        hs256(claims)
    };

    // ?token= is checked before the 101: a bad one gets 401 and no WebSocket.
    for token in [
        "garbage".to_owned(),
        hs256(json!({"sub":"a","aud":"wsgate","exp": now() - 10})),
        hs256(json!({"sub":"a","aud":"elsewhere"})),
    ] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        let response = raw_request(&mut stream, upgrade_request(&format!("/live?token={token}"), "").as_bytes()).await;
        assert_eq!(response.status, 401, "{token}: {}", response.head);
    }
    let mut by_query = Client::open(gate.addr, &format!("/live?token={}", good("quinn", json!({})))).await;
    let sub = by_query.call("subscribe", json!({"channel":"chat:q"})).await;
    assert!(sub.get("subscribe").is_some(), "connected by ?token=: {sub}");

    let mut c = Client::open(gate.addr, "/live").await;
    assert_eq!(error_code(&c.call("subscribe", json!({"channel":"chat:1"})).await), 101, "connect first");
    assert_eq!(error_code(&c.call("connect", json!({})).await), 101);
    let expired = hs256(json!({"sub":"alice","aud":"wsgate","exp": now() - 5}));
    assert_eq!(error_code(&c.call("connect", json!({ "token": expired })).await), 109);
    let wrong_key = encode(
        &Header::default(),
        &json!({"sub":"alice","aud":"wsgate"}),
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    assert_eq!(error_code(&c.call("connect", json!({ "token": wrong_key })).await), 101);
    assert_eq!(error_code(&c.call("connect", json!({ "token": hs256(json!({"sub":"alice","aud":"x"})) })).await), 101);
    assert_eq!(error_code(&c.call("connect", json!({ "token": hs256(json!({"sub":"alice"})) })).await), 101, "no aud");
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), b64(json!({"sub":"alice","aud":"wsgate"})));
    assert_eq!(error_code(&c.call("connect", json!({ "token": none })).await), 101, "alg none");

    let hello = c.call("connect", json!({ "token": good("alice", json!({"channels":["private:team*"]})) })).await;
    assert_eq!(hello["connect"]["user"], "alice", "{hello}");
    // Channel tokens: for this channel and this user only.
    let channel_token = |channel: &str, sub: &str| hs256(json!({"sub": sub, "channel": channel, "aud": "wsgate"}));
    assert_eq!(error_code(&c.call("subscribe", json!({"channel":"private:1"})).await), 103);
    let other_channel = json!({"channel":"private:1","token": channel_token("private:2", "alice")});
    assert_eq!(error_code(&c.call("subscribe", other_channel).await), 103);
    let other_user = json!({"channel":"private:1","token": channel_token("private:1", "bob")});
    assert_eq!(error_code(&c.call("subscribe", other_user).await), 103);
    let expired_channel = json!({"channel":"private:1","token": hs256(json!({"sub":"alice","channel":"private:1","aud":"wsgate","exp":now()-5}))});
    assert_eq!(error_code(&c.call("subscribe", expired_channel).await), 109);
    let right = c.call("subscribe", json!({"channel":"private:1","token": channel_token("private:1", "alice")})).await;
    assert!(right.get("subscribe").is_some(), "{right}");
    // The connection's `channels` claim admits without a channel token.
    let by_claim = c.call("subscribe", json!({"channel":"private:team7"})).await;
    assert!(by_claim.get("subscribe").is_some(), "{by_claim}");
    // publish = "token" needs the `publish` claim: alice has none.
    assert_eq!(error_code(&c.call("publish", json!({"channel":"private:1","data":1})).await), 103);

    // A token that expires during the connection closes it with 4009.
    let mut short = Client::open(gate.addr, "/live").await;
    let r = short.call("connect", json!({ "token": hs256(json!({"sub":"s","aud":"wsgate","exp": now() + 2})) })).await;
    assert!(r.get("connect").is_some(), "{r}");
    let started = std::time::Instant::now();
    assert_eq!(short.ws.expect_close().await, Some(4009));
    assert!(started.elapsed() < Duration::from_secs(4));
    let admin_addr = gate.server.admin_addr().unwrap();
    let failures = |reason: &'static str| format!("wsgate_pubsub_token_failures_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(admin_addr, &failures("expired")).await, 3.0, "?token=, connect, channel token");
    assert_eq!(metric(admin_addr, &failures("invalid")).await, 6.0);
    assert_eq!(metric(admin_addr, &failures("missing")).await, 1.0);
    assert_eq!(metric(admin_addr, &failures("wrong_channel")).await, 2.0);
    drop((short, c, by_query));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn public_key_tokens_ed25519_and_es256() {
    for (alg, algorithm) in
        [(&rcgen::PKCS_ED25519, Algorithm::EdDSA), (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)]
    {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("jwt.pub");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let private = pair.serialize_pem();
        let encoding = if algorithm == Algorithm::EdDSA {
            EncodingKey::from_ed_pem(private.as_bytes())
        } else {
            EncodingKey::from_ec_pem(private.as_bytes())
        }
        .unwrap();
        let up = start_upstream().await;
        let gate = start_gate(&config(&format!("public_key_file = \"{}\"", public.display()), 10), up.addr).await;
        let mut c = Client::open(gate.addr, "/live").await;
        let token = encode(&Header::new(algorithm), &json!({"sub":"kim","exp":now()+60}), &encoding).unwrap();
        let hello = c.call("connect", json!({ "token": token })).await;
        assert_eq!(hello["connect"]["user"], "kim", "{algorithm:?}: {hello}");
        // An HMAC token signed with the public key's text (the classic confusion) is refused.
        let confused = encode(
            &Header::default(),
            &json!({"sub":"eve"}),
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
        )
        .unwrap();
        assert_eq!(error_code(&c.call("connect", json!({ "token": confused })).await), 101);
        drop(c);
        gate.server.shutdown().await;
    }
}

#[tokio::test]
async fn control_api_publishes_with_offsets_and_answers_presence_and_history() {
    let up = start_upstream().await;
    let gate = start_gate(&config("", 3), up.addr).await;
    let admin_addr = gate.server.admin_addr().unwrap();
    let mut c = Client::open(gate.addr, "/live").await;
    c.call("subscribe", json!({"channel":"news:1"})).await;
    for i in 1..=5 {
        let (status, body) =
            admin(admin_addr, "POST", "/v1/publish", &json!({"channel":"news:1","data":i}).to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["offset"].as_u64(), body["delivered"].as_u64()), (Some(i), Some(1)));
        let p = c.push().await;
        assert_eq!((p["pub"]["offset"].as_u64(), p["pub"]["data"].as_u64()), (Some(i), Some(i)));
        assert!(p["pub"].get("info").is_none(), "no publisher info from the control API: {p}");
    }
    let (status, body) = admin(admin_addr, "GET", "/v1/history/news:1?limit=2", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(body["offset"], 5);
    let (status, body) = admin(admin_addr, "GET", "/v1/presence/news:1", "").await;
    assert_eq!((status, body["code"].as_u64()), (409, Some(108)));
    c.call("subscribe", json!({"channel":"chat:x"})).await;
    let (status, body) = admin(admin_addr, "GET", "/v1/presence/chat:x", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["clients"].as_object().unwrap().len(), 1, "{body}");
    assert_eq!(metric(admin_addr, "wsgate_pubsub_presence_clients{namespace=\"chat:*\"}").await, 1.0);
    for (body, status, code) in [
        ("not json", 400, 107),
        (r#"{"channel":"news:1"}"#, 400, 107),
        (r#"{"channel":"","data":1}"#, 400, 107),
        (r#"{"channel":"nowhere","data":1}"#, 404, 102),
    ] {
        let (s, answer) = admin(admin_addr, "POST", "/v1/publish", body).await;
        assert_eq!((s, answer["code"].as_u64()), (status, Some(code)), "{body}: {answer}");
    }
    drop(c);
    gate.server.shutdown().await;
}

/// Random interleavings: two publishers (a client and the control API) run concurrently
/// with subscribers that drop their connection at random moments and come back with
/// `recover` from the last offset they saw. Every subscriber must end with exactly the
/// publications 1..=N, in order, once each, with the data the publishers got offsets for.
// Several worker threads: publishers, subscribers and wsgate's connections really run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_is_exact_under_concurrent_publishing() {
    const PER_PUBLISHER: u64 = 150;
    const SUBSCRIBERS: usize = 4;
    let up = start_upstream().await;
    let gate = start_gate(&config("", 1000), up.addr).await;
    let admin_addr = gate.server.admin_addr().unwrap();
    check_exact_recovery(&[gate.addr], gate.addr, admin_addr, PER_PUBLISHER, SUBSCRIBERS).await;
    gate.server.shutdown().await;
}

#[tokio::test]
async fn recovery_past_the_history_says_recovered_false() {
    let up = start_upstream().await;
    let gate = start_gate(&config("", 3), up.addr).await;
    let mut c = Client::open(gate.addr, "/live").await;
    let sub = c.call("subscribe", json!({"channel":"chat:r"})).await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for i in 0..10 {
        c.call("publish", json!({"channel":"chat:r","data":i})).await;
    }
    let mut late = Client::open(gate.addr, "/live").await;
    // 7..=10 would be needed after offset 6: 8, 9, 10 are kept but not 7.
    let r = late.call("subscribe", json!({"channel":"chat:r","recover":true,"offset":6,"epoch":epoch})).await;
    assert_eq!(r["subscribe"]["recovered"], false, "{r}");
    assert_eq!(r["subscribe"]["offset"], 10);
    assert_eq!(r["subscribe"]["publications"], json!([]));
    let mut exact = Client::open(gate.addr, "/live").await;
    let r = exact.call("subscribe", json!({"channel":"chat:r","recover":true,"offset":7,"epoch":epoch})).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["publications"].as_array().unwrap().len(), 3);
    let mut other_epoch = Client::open(gate.addr, "/live").await;
    let r = other_epoch.call("subscribe", json!({"channel":"chat:r","recover":true,"offset":10,"epoch":"old"})).await;
    assert_eq!(r["subscribe"]["recovered"], false, "{r}");
    let admin_addr = gate.server.admin_addr().unwrap();
    assert_eq!(
        metric(admin_addr, "wsgate_pubsub_recoveries_total{namespace=\"chat:*\",outcome=\"recovered\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin_addr, "wsgate_pubsub_recoveries_total{namespace=\"chat:*\",outcome=\"not_recovered\"}").await,
        2.0
    );
    assert_eq!(metric(admin_addr, "wsgate_pubsub_publications_total{namespace=\"chat:*\"}").await, 10.0);
    assert_eq!(metric(admin_addr, "wsgate_pubsub_history_publications{namespace=\"chat:*\"}").await, 3.0);
    drop((c, late, exact, other_epoch));
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsgate_publish_channel_from_the_command_line() {
    let up = start_upstream().await;
    let gate = start_gate(&config("", 10), up.addr).await;
    let admin_addr = gate.server.admin_addr().unwrap();
    let mut c = Client::open(gate.addr, "/live").await;
    c.call("subscribe", json!({"channel":"news:cli"})).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, format!("[upstream]\nurl = \"http://{}\"\n\n[admin]\naddr = \"{admin_addr}\"\n", up.addr))
        .unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
                .args(["publish", "--config"])
                .arg(&config)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    // JSON data goes as JSON, other text as a string; the answer carries the offset.
    let (code, out, err) = run(vec!["--channel".into(), "news:cli".into(), r#"{"n":1}"#.into()]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((answer["offset"].as_u64(), answer["delivered"].as_u64()), (Some(1), Some(1)), "{out}");
    assert_eq!(c.push().await["pub"]["data"], json!({"n":1}));
    let (code, _, err) = run(vec!["--channel".into(), "news:cli".into(), "deploy done".into()]).await.unwrap();
    assert_eq!(code, Some(0), "{err}");
    let p = c.push().await;
    assert_eq!((p["pub"]["offset"].as_u64(), &p["pub"]["data"]), (Some(2), &json!("deploy done")));
    // A channel no namespace matches: exit 1 with the reason.
    let (code, _, err) = run(vec!["--channel".into(), "nowhere".into(), "1".into()]).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("no namespace matches"), "{err}");
    drop(c);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn public_key_tokens_rsa_rs256_and_ps256() {
    // An RSA key pair from openssl (rcgen on ring cannot generate RSA keys).
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("rsa.key");
    let public = dir.path().join("rsa.pub");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private.to_str().unwrap()]);
    run(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let encoding = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&config(&format!("public_key_file = \"{}\"", public.display()), 10), up.addr).await;
    for algorithm in [Algorithm::RS256, Algorithm::PS256] {
        let mut c = Client::open(gate.addr, "/live").await;
        let token = encode(&Header::new(algorithm), &json!({"sub":"rosa","exp":now()+60}), &encoding).unwrap();
        let hello = c.call("connect", json!({ "token": token })).await;
        assert_eq!(hello["connect"]["user"], "rosa", "{algorithm:?}: {hello}");
        drop(c);
    }
    // The public key's text used as an HMAC secret (algorithm confusion) is refused.
    let mut c = Client::open(gate.addr, "/live").await;
    let confused =
        encode(&Header::default(), &json!({"sub":"eve"}), &EncodingKey::from_secret(&std::fs::read(&public).unwrap()))
            .unwrap();
    assert_eq!(error_code(&c.call("connect", json!({ "token": confused })).await), 101);
    drop(c);
    gate.server.shutdown().await;
}

/// A JWK Set served over HTTP by the test: the body can be swapped (key rotation) and the
/// fetches are counted.
struct KeyServer {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

async fn key_server(body: String) -> KeyServer {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let body = Arc::new(Mutex::new(body));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (b, f) = (body.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (b, f) = (b.clone(), f.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let text = b.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(text),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    KeyServer { url, body, fetches }
}

/// An Ed25519 key pair: its JWK (with `kid`) and a signing key.
fn ed25519_jwk(kid: &str) -> (Value, EncodingKey) {
    use base64::Engine;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
    let jwk = json!({"kty":"OKP","crv":"Ed25519","kid":kid,"use":"sig","x":x});
    (jwk, EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap())
}

fn ed_token(kid: &str, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    encode(&header, &json!({"sub":sub,"exp":now()+60}), key).unwrap()
}

#[tokio::test]
async fn jwks_keys_rotate_without_a_restart() {
    let (jwk1, key1) = ed25519_jwk("k1");
    let (jwk2, key2) = ed25519_jwk("k2");
    let server = key_server(json!({ "keys": [jwk1.clone()] }).to_string()).await;
    let up = start_upstream().await;
    let gate = start_gate(&config(&format!("jwks_url = \"{}\"", server.url), 10), up.addr).await;

    // k1 is in the set: a connection token signed with it passes, before the 101 too.
    let mut c = Client::open(gate.addr, "/live").await;
    let hello = c.call("connect", json!({ "token": ed_token("k1", &key1, "ana") })).await;
    assert_eq!(hello["connect"]["user"], "ana", "{hello}");
    let path = format!("/live?token={}", ed_token("k1", &key1, "bo"));
    let mut by_query = Client::open(gate.addr, &path).await;
    assert!(by_query.call("subscribe", json!({"channel":"chat:1"})).await.get("subscribe").is_some());

    // A token naming k1 but signed with another key, and one naming no key, are refused.
    assert_eq!(error_code(&c.call("connect", json!({ "token": ed_token("k1", &key2, "eve") })).await), 101);
    let no_kid = encode(&Header::new(Algorithm::EdDSA), &json!({"sub":"eve"}), &key1).unwrap();
    assert_eq!(error_code(&c.call("connect", json!({ "token": no_kid })).await), 101);

    // The issuer rotates to k2: a k2 token is accepted once wsgate refetches the set because
    // of the unknown kid (at most once per 2 s), with no restart.
    *server.body.lock().unwrap() = json!({ "keys": [jwk2] }).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = c.call("connect", json!({ "token": ed_token("k2", &key2, "cy") })).await;
        if reply["connect"]["user"] == "cy" {
            break;
        }
        assert_eq!(error_code(&reply), 101, "{reply}");
        assert!(std::time::Instant::now() < deadline, "k2 never picked up: {reply}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // k1 left the set: its tokens are refused now.
    assert_eq!(error_code(&c.call("connect", json!({ "token": ed_token("k1", &key1, "ana") })).await), 101);

    // Tokens with made-up key ids do not turn wsgate into a load generator.
    let before = server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..30 {
        let bogus = ed_token(&format!("made-up-{i}"), &key2, "eve");
        assert_eq!(error_code(&c.call("connect", json!({ "token": bogus })).await), 101);
    }
    let extra = server.fetches.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(extra <= 2, "{extra} fetches for 30 unknown key ids in well under 2 s");
    drop((c, by_query));
    gate.server.shutdown().await;
}
