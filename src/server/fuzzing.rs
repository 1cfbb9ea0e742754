//! Fuzz bodies for the two inputs the server reads besides WebSocket frames: the
//! configuration file and the HTTP request head. `fuzz/` (cargo-fuzz targets `config` and
//! `router`) and `src/fuzz_smoke.rs` (seed replay plus a bounded random loop under plain
//! `cargo test`) call the same functions, like [`crate::ws::fuzzing`]. Each function panics
//! only when a property is broken; any input is otherwise fine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Uri, Version};
use ipnet::IpNet;

use super::access::{auth_request_headers, check_origin};
use super::router::{connection_has_upgrade, Route, Router};
use crate::config::{self, AppKind, CliOverrides, Config, ConfigSource, DEMO_CONFIG};
use crate::proxy::headers::{self as fwd, ForwardContext, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::proxy::{request_host, upstream_uri};
use crate::ws::handshake::{is_websocket_upgrade, validate_upgrade};

/// The configuration file on arbitrary bytes, through what `wsgate check` runs: load
/// (figment layering, unknown keys, validation) and then [`super::check`] (apps, admin
/// token, broker settings, TLS files). Properties: no panic; a refused config yields at
/// least one error, each a single non-empty line (`file:line: key: message`).
///
/// Bytes that are not UTF-8 are what `wsgate check` refuses when reading the file; they
/// are read lossily here so that the parser still sees the rest of them.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let source = ConfigSource::Text { name: "fuzz.toml".to_owned(), text };
    let config = match config::load(source, &CliOverrides::default()) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.entries().is_empty(), "a refused config without an error");
            for entry in error.entries() {
                let line = entry.to_string();
                assert!(!entry.message.trim().is_empty(), "empty error message: {line:?}");
                assert!(!line.contains('\n'), "error spans lines: {line:?}");
            }
            return;
        }
    };
    // Numeric extremes (issue 16): an accepted config holds every duration, size and count
    // inside its bound, so no `Instant + Duration` or size arithmetic of the server overflows.
    for bound in config::bounds::BOUNDS {
        let value = (bound.get)(&config);
        assert!(bound.range.contains(value), "{} = {value:?} accepted outside {}", bound.path, bound.range.describe());
    }
    for app in config.apps.values() {
        for bound in config::bounds::APP_BOUNDS {
            if let Some(value) = (bound.get)(app) {
                assert!(
                    bound.range.contains(value),
                    "{} = {value:?} accepted outside {}",
                    bound.key,
                    bound.range.describe()
                );
            }
        }
    }
    for d in [
        config.upstream.connect_timeout,
        config.upstream.response_timeout,
        config.limits.header_read_timeout,
        config.limits.shutdown_timeout,
        config.websocket.ping_interval,
        config.websocket.idle_timeout,
    ] {
        assert!(std::time::Instant::now().checked_add(d).is_some(), "{d:?} overflows a deadline");
    }
    // `check` reads the files the config names. A FIFO or a device (`/dev/stdin`,
    // `/dev/zero`) would block or never end: an operator's choice, not a parser's answer.
    if !files_of(&config).all(ordinary) {
        return;
    }
    if let Err(problems) = super::check(&config) {
        assert!(!problems.is_empty(), "check failed without a problem");
        for problem in problems {
            assert!(!problem.message.trim().is_empty(), "empty problem from check");
        }
    }
}

/// Every file `check` may read.
fn files_of(config: &Config) -> impl Iterator<Item = &Path> {
    let tls = config.listen.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| [t.cert.as_path(), t.key.as_path()]);
    let other =
        [config.admin.token_file.as_deref(), config.broker.password_file.as_deref(), config.broker.ca_file.as_deref()];
    tls.chain(other.into_iter().flatten())
}

/// A path that is missing, a regular file or a directory: reading it ends.
fn ordinary(path: &Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.is_file() || m.is_dir())
}

/// One app of the routing table used by [`router`]: its name and whether it has a page.
#[derive(Debug, PartialEq, Eq)]
struct App {
    name: String,
    page: bool,
}

/// The app URLs of the embedded demo config plus a root-level app, as the server builds them.
fn table() -> &'static (Router<App>, Vec<String>) {
    static TABLE: OnceLock<(Router<App>, Vec<String>)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let demo = ConfigSource::Text { name: "demo".into(), text: DEMO_CONFIG.into() };
        let mut config = config::load(demo, &CliOverrides::default()).unwrap_or_default();
        let mut extra = config::AppConfig::new(AppKind::LogView);
        extra.urls = vec!["/".to_owned()];
        config.apps.insert("fuzz-root".to_owned(), extra);
        let mut router = Router::default();
        let mut paths = Vec::new();
        for (name, app) in &config.apps {
            let entry =
                Arc::new(App { name: name.clone(), page: matches!(app.kind, AppKind::Chat | AppKind::LogView) });
            for url in &app.urls {
                router.insert(url, entry.clone());
                paths.push(url.clone());
                paths.push(format!("{}/connect", url.trim_end_matches('/')));
            }
        }
        (router, paths)
    })
}

/// A request head as hyper's HTTP/1 server hands it to us: parsed by `httparse` (at most
/// 100 fields, hyper's default), then method, target and fields converted to `http` types.
/// `None` where hyper answers 400 (or waits for more bytes) before any of our code runs.
pub fn parse_head(data: &[u8]) -> Option<Request<()>> {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut fields);
    if !matches!(parsed.parse(data), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri: Uri = parsed.path?.parse().ok()?;
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request)
}

/// An HTTP/1 request head (arbitrary bytes) through every decision the server makes before
/// bytes go anywhere: routing on the exact path, upgrade detection, the handshake checks
/// and, for proxied requests, the upstream target and the rewritten header section.
///
/// Properties: no panic; an app route only for a byte-exact app URL (no normalisation, so
/// no second spelling of an app URL reaches an app); a WebSocket upgrade on an app URL is
/// never proxied; a tunnel only for an HTTP/1.1 `Upgrade` + `Connection: upgrade`; towards
/// the upstream no hop-by-hop field or `Proxy-Authorization` survives (RFC 9110 §7.6.1),
/// an untrusted client's forwarding fields are replaced by its address, `Via` carries our
/// loop marker, and the target keeps the client's path and query.
pub fn router(data: &[u8]) {
    let Some(request) = parse_head(data) else {
        return;
    };
    let (router, paths) = table();
    let (method, version, headers) = (request.method(), request.version(), request.headers());
    let path = request.uri().path();
    let route = router.classify(method, version, path, headers, |app| app.page);
    let exact = paths.iter().any(|p| p == path);
    match &route {
        Route::WebSocket(app) | Route::Page(app) => {
            assert!(exact, "app route for a path that is not an app URL: {path:?}");
            assert_eq!(router.app(path).map(|a| &a.name), Some(&app.name));
        }
        Route::Tunnel => {
            assert_eq!(version, Version::HTTP_11, "tunnel for a non-1.1 request");
            assert!(headers.contains_key(header::UPGRADE) && connection_has_upgrade(headers));
        }
        Route::Proxy => {}
    }
    if exact && is_websocket_upgrade(headers) {
        assert!(matches!(route, Route::WebSocket(_)), "app-URL upgrade not sent to the app");
    }
    match route {
        Route::WebSocket(_) => websocket_checks(&request),
        Route::Page(_) => {
            assert!(method == Method::GET || method == Method::HEAD, "page for {method}");
        }
        Route::Tunnel | Route::Proxy => {
            let tunnel = matches!(route, Route::Tunnel);
            for (peer, trusted, tls) in
                [(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), false, false), (IpAddr::V6(Ipv6Addr::LOCALHOST), true, true)]
            {
                forwarded(&request, SocketAddr::new(peer, 40000), trusted, tls, tunnel);
            }
        }
    }
}

/// What runs for an upgrade on an app URL before the 101: the handshake, the Origin check
/// and the `auth` subrequest's header section.
fn websocket_checks(request: &Request<()>) {
    let headers = request.headers();
    let _ = validate_upgrade(request.method(), request.version(), headers);
    let authority = request.uri().authority().map(Authority::as_str);
    let _ = check_origin(headers, authority, &[]);
    let _ = check_origin(headers, authority, &["https://example.org".to_owned(), "*".to_owned()]);
    let peer = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
    let sub = auth_request_headers(headers, request.uri(), request.method(), peer, false);
    assert_eq!(sub.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes), Some(&b"192.0.2.9"[..]));
    for name in sub.keys() {
        let allowed = [
            header::COOKIE.as_str(),
            header::AUTHORIZATION.as_str(),
            header::ORIGIN.as_str(),
            "x-original-uri",
            "x-original-method",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ];
        assert!(allowed.contains(&name.as_str()), "auth subrequest leaks {name}");
    }
}

/// The request the proxy would send upstream for `request` from `peer` (mirrors
/// `Proxy::upstream_request`, which refuses `CONNECT` and `Via` loops first), checked.
fn forwarded(request: &Request<()>, peer: SocketAddr, trusted: bool, tls: bool, tunnel: bool) {
    if request.method() == Method::CONNECT || fwd::via_has_pseudonym(request.headers()) {
        return;
    }
    let upstream: Authority = Authority::from_static("127.0.0.1:8000");
    let target = upstream_uri(Scheme::HTTP, upstream, request.uri());
    let target = match target {
        Ok(target) => target,
        Err(error) => panic!("no upstream target for {:?}: {error}", request.uri()),
    };
    let client_pq = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    assert_eq!(target.path_and_query().map(|pq| pq.as_str()), Some(client_pq));

    let (parts, ()) = request.clone().into_parts();
    let host = request_host(&parts);
    let upgrade = if tunnel { fwd::upgrade_protocol(&parts.headers) } else { None };
    let restored = upgrade.is_some();
    let nets: Vec<IpNet> = if trusted { vec![IpNet::from(peer.ip())] } else { Vec::new() };
    let ctx = ForwardContext::new(peer, tls, &nets);
    let mut out: HeaderMap = parts.headers;
    fwd::to_upstream(&mut out, &ctx, host.clone(), parts.version, upgrade);

    for gone in ["te", "transfer-encoding", "keep-alive", "proxy-connection", "proxy-authorization"] {
        assert!(!out.contains_key(gone), "{gone} forwarded upstream");
    }
    if restored {
        assert_eq!(out.get_all(header::CONNECTION).iter().count(), 1);
        assert_eq!(out.get(header::CONNECTION).map(HeaderValue::as_bytes), Some(&b"upgrade"[..]));
        assert!(out.contains_key(header::UPGRADE));
    } else {
        assert!(!out.contains_key(header::CONNECTION) && !out.contains_key(header::UPGRADE));
    }
    assert_eq!(out.get_all(&X_FORWARDED_FOR).iter().count(), 1);
    assert_eq!(out.get_all(header::FORWARDED).iter().count(), 1);
    assert_eq!(out.get_all(header::VIA).iter().count(), 1);
    let xff = out.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes).unwrap_or_default();
    let peer_text = ctx.peer.to_string();
    if ctx.trusted {
        assert!(xff.ends_with(peer_text.as_bytes()), "peer not appended to X-Forwarded-For");
    } else {
        assert_eq!(xff, peer_text.as_bytes(), "untrusted X-Forwarded-For kept");
        let forwarded = out.get(header::FORWARDED).map(HeaderValue::as_bytes).unwrap_or_default();
        assert!(forwarded.starts_with(format!("for={peer_text};").as_bytes()));
    }
    assert_eq!(out.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes), Some(ctx.proto().as_bytes()));
    assert_eq!(out.get(header::HOST), host.as_ref(), "Host is not the request's authority");
    assert_eq!(out.get(&X_FORWARDED_HOST), host.as_ref());
    assert!(fwd::via_has_pseudonym(&out), "no loop marker in Via");

    // The same field section as an upstream response on its way to the client.
    let mut back = out;
    fwd::to_downstream(&mut back, Version::HTTP_11, None);
    for gone in ["connection", "upgrade", "te", "transfer-encoding", "keep-alive", "proxy-connection"] {
        assert!(!back.contains_key(gone), "{gone} forwarded downstream");
    }
}

/// The differential property of the fast path: the request it forwards is one the full path
/// would forward too (`headers::check_request` accepts it), and the head it sends upstream
/// (`fast`, parsed back) has the same fields as `headers::to_upstream` makes of the same client
/// head, and the same framing: the full path re-derives the length from the body, which is the
/// client's one `Content-Length`.
fn same_as_full_path(client_head: &[u8], fast: &httparse::Request<'_, '_>, body_len: usize, ctx: &ForwardContext) {
    let Some(request) = parse_head(client_head) else {
        panic!("the fast path forwarded a head hyper refuses: {:?}", String::from_utf8_lossy(client_head));
    };
    let (mut parts, ()) = request.into_parts();
    assert_eq!(
        fwd::check_request(parts.version, &parts.headers),
        Ok(()),
        "the full path refuses what the fast path forwarded"
    );
    let client_length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map_or(Some(0), |v| v.trim().parse::<usize>().ok());
    assert_eq!(client_length, Some(body_len), "the fast path framed the body differently from the client's length");
    let host = crate::proxy::request_host(&parts);
    fwd::to_upstream(&mut parts.headers, ctx, host, parts.version, None);
    let mut full: Vec<(String, Vec<u8>)> =
        parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let mut fast: Vec<(String, Vec<u8>)> = fast
        .headers
        .iter()
        // The length is compared as framing above (the full path leaves it to hyper).
        .filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    full.sort();
    fast.sort();
    assert_eq!(
        fast,
        full,
        "the fast path's upstream fields differ from the full path's for {:?}",
        String::from_utf8_lossy(client_head)
    );
}

/// The proxy fast path's HTTP/1.1 parsing ([`crate::proxy::h1`]) on arbitrary bytes, read as
/// a client's request head, as an upstream's response head and as a chunked body. Properties:
/// no panic; a forwarded request's head lies within the input, and the head sent upstream is
/// one complete HTTP/1.1 head without hop-by-hop fields, with one `X-Forwarded-For`, our
/// `Via` last and at most one `Content-Length`, which frames the body forwarded with it; a final response's head lies within the input, and the head for the client is
/// one complete head that frames the body as planned; where a chunked body ends does not
/// depend on how its bytes arrive.
pub fn proxy_h1(data: &[u8]) {
    use crate::proxy::h1::{self, ChunkedEnd, Framing, RequestPlan, ResponsePlan};
    let ctx = ForwardContext::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1), false, &[]);
    if let RequestPlan::Forward(plan) = h1::plan_request(data, &ctx, |path| path == "/app") {
        assert!(plan.head_len <= data.len(), "head beyond the input");
        let mut fields = [httparse::EMPTY_HEADER; 2 * h1::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let parsed = req.parse(&plan.upstream_head);
        assert_eq!(
            parsed,
            Ok(httparse::Status::Complete(plan.upstream_head.len())),
            "upstream head: {:?}",
            String::from_utf8_lossy(&plan.upstream_head)
        );
        assert_eq!(req.version, Some(1));
        for hop in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "expect",
        ] {
            assert!(!req.headers.iter().any(|h| h.name.eq_ignore_ascii_case(hop)), "{hop} sent upstream");
        }
        assert_eq!(req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).count(), 1);
        let via: Vec<&[u8]> =
            req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("via")).map(|h| h.value).collect();
        assert!(via.len() == 1 && via[0].ends_with(b"1.1 wsgate"), "Via: {via:?}");
        // The body forwarded with the head is the one the upstream will read: one plain length.
        assert!(plan.body_len <= h1::MAX_FAST_BODY);
        let lengths: Vec<&[u8]> =
            req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).map(|h| h.value).collect();
        assert!(lengths.len() <= 1, "Content-Length sent twice");
        let sent = lengths
            .first()
            .map_or(Some(0), |v| std::str::from_utf8(v).ok().and_then(|v| v.trim().parse::<usize>().ok()));
        assert_eq!(sent, Some(plan.body_len), "Content-Length sent upstream does not frame the body");
        same_as_full_path(&data[..plan.head_len], &req, plan.body_len, &ctx);
    }
    for head_method in [false, true] {
        let mut rest = data;
        // Interim responses are consumed in a loop by the caller; so here.
        for _ in 0..8 {
            match h1::plan_response(rest, head_method, true) {
                ResponsePlan::Interim(len) => {
                    assert!(len > 0 && len <= rest.len());
                    rest = &rest[len..];
                }
                ResponsePlan::Ready(head) => {
                    assert!(head.head_len <= rest.len());
                    let mut fields = [httparse::EMPTY_HEADER; 2 * h1::MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut fields);
                    assert_eq!(
                        resp.parse(&head.client_head),
                        Ok(httparse::Status::Complete(head.client_head.len())),
                        "client head: {:?}",
                        String::from_utf8_lossy(&head.client_head)
                    );
                    let has = |name: &str| resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
                    assert_eq!(has("transfer-encoding"), head.framing == Framing::Chunked);
                    if head.framing == Framing::Chunked {
                        assert!(!has("content-length"), "Content-Length beside chunked");
                    }
                    if head_method {
                        assert_eq!(head.framing, Framing::Empty);
                    }
                    break;
                }
                ResponsePlan::Incomplete | ResponsePlan::Invalid(_) => break,
            }
        }
    }
    let whole = {
        let mut end = ChunkedEnd::default();
        end.advance(data).map(|used| (used, end.is_done()))
    };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let parts = {
        let mut end = ChunkedEnd::default();
        let mut pending: Vec<u8> = data[..split].to_vec();
        let mut passed = 0;
        let first = end.advance(&pending);
        first.and_then(|used| {
            passed += used;
            pending.drain(..used);
            if end.is_done() {
                return Ok((passed, true));
            }
            pending.extend_from_slice(&data[split..]);
            let used = end.advance(&pending)?;
            Ok((passed + used, end.is_done()))
        })
    };
    match (whole, parts) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunked end depends on the split at {split}"),
        (Err(_), Err(_)) => {}
        // A line cut by the split may be refused as too long before its end is seen.
        (Ok(_), Err(_)) => {}
        (Err(error), Ok(b)) => panic!("whole: {error}, split at {split}: {b:?}"),
    }
}
