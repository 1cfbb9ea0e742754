//! The server: startup order (config → apps → TLS → listeners), the per-request dispatch, and
//! the drain on shutdown. Business logic lives in `proxy`, `ws`, `apps` and `pubsub`.

pub(crate) mod access;
pub(crate) mod auth;
mod connection;
mod fastpath;
mod fd_budget;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod h2_guard;
mod listen;
pub(crate) mod reload;
pub(crate) mod router;
pub(crate) mod shutdown;
mod sse;
pub(crate) mod tls;
mod upgrade;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::admin::{self, AdminError, AdminState};
use crate::apps::pubsub::engine::Engine as PubSubChannels;
use crate::apps::{self, App};
use crate::config::{AppConfig, Config};
use crate::metrics::{KindLabel, Metrics};
use crate::proxy::{ClientInfo, Proxy, ProxyFailure, ProxySettings, Side};
use crate::pubsub::budget::SlowConsumerPolicy;
use crate::pubsub::channel::ChannelIdGenerator;
use crate::pubsub::Hub;
use crate::session::SessionConfig;
use router::{Route, Router};
use shutdown::{Drain, DrainWatch};

pub(crate) use crate::http::{empty_body, full_body, text_response};
pub use crate::http::{Body, BoxError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An app could not be built.
    #[error(transparent)]
    App(#[from] apps::AppError),
    /// A certificate or key is unusable.
    #[error("listen {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// What is wrong.
        source: tls::TlsError,
    },
    /// The admin listener could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The `[broker]` settings are unusable (unreadable file, bad URL or certificate).
    #[error("broker: {0}")]
    Broker(String),
    /// A listener could not be bound.
    #[error("listen {addr}: cannot bind: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The sockets passed by systemd (`LISTEN_FDS`) are unusable or do not match `[[listen]]`.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// Everything the server keeps per app URL.
pub struct AppRoute {
    /// The app's name in the configuration.
    pub name: Arc<str>,
    /// Its URLs as configured (a channel on one of them shares the string).
    pub urls: Vec<Arc<str>>,
    /// Its behaviour.
    pub app: Arc<dyn App>,
    /// Client address allow list (empty = all).
    pub allow: Vec<IpNet>,
    /// The Host rule, for an app with an allow list (DNS rebinding); `None` = any Host.
    pub host_rule: Option<crate::host_rule::HostRule>,
    /// Allowed origins (empty = same origin).
    pub allowed_origins: Vec<String>,
    /// The `auth` subrequest, when configured.
    pub auth: Option<auth::AuthCheck>,
    /// Subprotocols the app speaks, in order of preference.
    pub subprotocols: Vec<String>,
    /// Session limits and timers (shared by the route's sessions).
    pub session: Arc<SessionConfig>,
    /// Outbound queue budget in bytes.
    pub send_queue: usize,
    /// Slow-consumer policy.
    pub slow_consumer: SlowConsumerPolicy,
    /// Whether permessage-deflate is negotiated (`[websocket] compression`).
    pub compression: bool,
}

impl AppRoute {
    /// The path a channel connected to, as the route's own string when it is one of the
    /// configured URLs (no copy per connection), else a new one.
    pub(crate) fn url_of(&self, path: &str) -> Arc<str> {
        self.urls.iter().find(|url| ***url == *path).cloned().unwrap_or_else(|| path.into())
    }
}

impl std::fmt::Debug for AppRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRoute").field("name", &self.name).finish_non_exhaustive()
    }
}

/// One bound listener, as reported to callers (and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundListener {
    /// The local address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// Shared by every connection of the server. It holds a [`DrainWatch`], so the drain completes
/// only when the last connection (and session) holding it has ended.
pub(crate) struct State {
    /// What a reload replaces; each request and connection loads it once.
    runtime: ArcSwap<Runtime>,
    active_connections: AtomicUsize,
    /// Accept loops running (the watchdog probe compares it with the listener count).
    accept_loops: AtomicUsize,
    /// Connections the descriptor limit carries ([`fd_budget`]); `max_connections` above it
    /// is capped here.
    connection_capacity: usize,
    ids: ChannelIdGenerator,
    hub: Arc<Hub>,
    /// The `pubsub` apps' channels (history, presence), kept across reloads.
    channels: Arc<PubSubChannels>,
    metrics: Arc<Metrics>,
    drain: DrainWatch,
}

/// The part of the server built from the configuration and swapped whole on reload: routes,
/// upstream, limits. In-flight requests keep the `Arc` they loaded, so an old upstream pool
/// drains with its requests.
pub(crate) struct Runtime {
    router: Router<AppRoute>,
    /// The apps by name with the configuration they were built from (kept across reloads
    /// when unchanged, so their state survives).
    apps: BTreeMap<String, (AppConfig, Arc<dyn App>)>,
    proxy: Proxy,
    /// The configuration this runtime was built from.
    config: Config,
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    state: Arc<State>,
    listeners: Arc<Mutex<reload::Listeners>>,
    reload_lock: tokio::sync::Mutex<()>,
    admin: Option<SocketAddr>,
    drain: Drain,
}

impl RunningServer {
    /// The listeners, in configuration order.
    pub fn listeners(&self) -> Vec<BoundListener> {
        reload::lock(&self.listeners).bound()
    }

    /// The admin listener's bound address (`None` when `[admin] addr = "off"`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The hub of this server's channels and subscriptions.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.state.hub
    }

    /// The server's metrics (rendered by the admin listener's `GET /metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// A handle for periodic status lines and the watchdog's health probe. It does not keep
    /// the server alive.
    pub fn monitor(&self) -> Monitor {
        Monitor { state: Arc::downgrade(&self.state), listeners: self.listeners.clone() }
    }

    /// Stops accepting, closes WebSockets with 1001 and waits for in-flight requests, at most
    /// `shutdown_timeout`. Returns `true` when everything finished in time.
    pub async fn shutdown(self) -> bool {
        let RunningServer { state, listeners, reload_lock, drain, admin: _ } = self;
        let timeout = state.runtime.load().config.limits.shutdown_timeout;
        let hub = state.hub.clone();
        drop((state, listeners, reload_lock));
        // Signalled before the sweep: a WebSocket registered after the sweep sees the signal
        // at its start (`upgrade::run_session`), one registered before is closed by it.
        drain.signal();
        hub.close_all(crate::ws::close::code::GOING_AWAY, SHUTDOWN_REASON);
        let finished = drain.drain(timeout).await;
        if let Some(broker) = hub.broker() {
            broker.close();
        }
        finished
    }
}

/// Status and health of a running server, for systemd (see [`RunningServer::monitor`]).
#[derive(Clone)]
pub struct Monitor {
    state: std::sync::Weak<State>,
    listeners: Arc<Mutex<reload::Listeners>>,
}

impl Monitor {
    /// One line for `STATUS=`: the listeners and the connection counts.
    pub fn status_line(&self) -> String {
        let listeners = reload::lock(&self.listeners).bound();
        let addrs: Vec<String> =
            listeners.iter().map(|l| if l.tls { format!("{} (tls)", l.addr) } else { l.addr.to_string() }).collect();
        let (connections, websockets) = match self.state.upgrade() {
            Some(state) => (state.active_connections.load(Ordering::Relaxed), state.hub.channel_count()),
            None => (0, 0),
        };
        format!("listening on {}; {connections} connections, {websockets} WebSockets", addrs.join(", "))
    }

    /// Whether the server is alive: the runtime runs a freshly spawned task, every listener's
    /// accept loop is running, and the hub's locks can be taken.
    pub async fn probe(&self) -> bool {
        if tokio::spawn(async {}).await.is_err() {
            return false;
        }
        let expected = reload::lock(&self.listeners).len();
        let Some(state) = self.state.upgrade() else { return false };
        let _ = state.hub.channel_count();
        // A removed listener's loop may still be winding down (more loops than listeners);
        // fewer means a loop died.
        state.accept_loops.load(Ordering::Acquire) >= expected
    }
}

/// Builds the apps, loads certificates, binds every listener (or adopts the sockets systemd
/// passed, see [`reload::open_listener`]) and starts serving.
pub async fn start(config: &Config) -> Result<RunningServer, StartError> {
    let passed = crate::systemd::take_listen_fds().map_err(|e| StartError::Activation(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::with_metrics(metrics.clone()));
    let node = config.broker.node.clone().unwrap_or_else(node_name);
    crate::pubsub::broker::attach(
        &config.broker,
        &node,
        &hub,
        crate::pubsub::broker::BrokerCounters {
            errors: metrics.broker_errors.clone(),
            undelivered: metrics.broker_undelivered.clone(),
            connect_failures: metrics.broker_connect_failures.clone(),
            missed: metrics.broker_missed.clone(),
        },
    )
    .map_err(StartError::Broker)?;
    let channels = PubSubChannels::new(hub.clone());
    // Cluster mode: with Redis, the pubsub apps' channels live there (DESIGN §13).
    if let Ok(Some(settings)) = crate::pubsub::broker::redis_settings(&config.broker) {
        channels.attach_cluster(crate::apps::pubsub::cluster::Cluster::start(&settings, &node, hub.clone()));
    }
    let runtime = build_runtime(config, &hub, &channels, &metrics, None)?;
    let admin_listener = match config.admin.addr {
        Some(addr) => {
            let token = admin::load_token(config.admin.token_file.as_deref())?;
            Some((admin::bind(addr)?, token))
        }
        None => None,
    };
    let mut listeners = reload::Listeners::new(passed);
    let prepared = listeners.prepare(config)?;

    let connection_capacity = fd_budget::connection_capacity(fd_budget::raise_nofile());
    if config.limits.max_connections > connection_capacity {
        tracing::warn!(
            max_connections = config.limits.max_connections,
            capacity = connection_capacity,
            "limits.max_connections exceeds what the open-file limit carries (two descriptors per connection and a reserve); connections past the capacity are refused with 503: raise LimitNOFILE= (ulimit -n)"
        );
    }
    let drain = Drain::new();
    let state = Arc::new(State {
        runtime: ArcSwap::from_pointee(runtime),
        active_connections: AtomicUsize::new(0),
        accept_loops: AtomicUsize::new(0),
        connection_capacity,
        ids: ChannelIdGenerator::new(node),
        hub,
        channels,
        metrics,
        drain: drain.watch(),
    });
    listeners.commit(&state, prepared);
    listeners.warn_unused_passed();
    let mut admin_addr = None;
    if let Some((listener, token)) = admin_listener {
        let addr = listener.local_addr().map_err(|source| AdminError::Bind { addr: listener_addr(config), source })?;
        let admin_state = Arc::new(AdminState {
            hub: state.hub.clone(),
            channels: state.channels.clone(),
            metrics: state.metrics.clone(),
            token,
            host_rule: crate::host_rule::HostRule::new(&config.admin.allowed_hosts),
            max_body: config.websocket.max_message_size,
            readiness: admin::health::Readiness {
                draining: state.drain.receiver(),
                listeners: listeners.len(),
                upstream: config.upstream.url.authority(),
                upstream_timeout: config.upstream.connect_timeout.min(Duration::from_secs(1)),
                broker: state.hub.broker().cloned(),
            },
            publish_window: crate::pubsub::PublishWindow::default(),
        });
        // Logged as `admin=`, not `addr=`: scripts find the public listener by `addr=`.
        tracing::info!(admin = %addr, token = admin_state.token.is_some(), "admin listener (metrics, health, control API)");
        tokio::spawn(admin::serve(listener, admin_state, state.drain.receiver()));
        admin_addr = Some(addr);
    }
    Ok(RunningServer {
        state,
        listeners: Arc::new(Mutex::new(listeners)),
        reload_lock: tokio::sync::Mutex::new(()),
        admin: admin_addr,
        drain,
    })
}

fn listener_addr(config: &Config) -> SocketAddr {
    config.admin.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The node part of channel ids when `[broker] node` is not set: the process id keeps ids
/// unique between nodes on one host.
fn node_name() -> String {
    format!("n{}", std::process::id())
}

/// Builds routes, apps and upstream from `config`. Apps whose configuration is unchanged since
/// `previous` are reused; an unchanged upstream keeps its connection pool.
fn build_runtime(
    config: &Config,
    hub: &Arc<Hub>,
    channels: &Arc<PubSubChannels>,
    metrics: &Metrics,
    previous: Option<&Runtime>,
) -> Result<Runtime, StartError> {
    let mut router = Router::default();
    let mut built = BTreeMap::new();
    for (name, app_config) in &config.apps {
        if app_config.urls.is_empty() {
            continue; // an app without URLs is off (seed semantics)
        }
        let reused =
            previous.and_then(|p| p.apps.get(name)).filter(|(old, _)| old == app_config).map(|(_, app)| app.clone());
        let app = match reused {
            Some(app) => app,
            None => apps::build(name, app_config, hub, channels)?,
        };
        built.insert(name.clone(), (app_config.clone(), app.clone()));
        let ws = &config.websocket;
        let route = Arc::new(AppRoute {
            name: name.as_str().into(),
            urls: app_config.urls.iter().map(|url| url.as_str().into()).collect(),
            app,
            allow: app_config.allow().into_owned(),
            host_rule: (!app_config.allow().is_empty())
                .then(|| crate::host_rule::HostRule::new(&app_config.allowed_hosts)),
            allowed_origins: app_config.allowed_origins(ws).to_vec(),
            auth: app_config.auth.clone().map(|url| auth::AuthCheck::new(url, config.upstream.connect_timeout)),
            subprotocols: app_config.subprotocols.clone(),
            session: Arc::new(SessionConfig {
                max_message_size: ws.max_message_size,
                ping_interval: ws.ping_interval,
                idle_timeout: ws.idle_timeout,
                metrics: metrics.app_counters(name),
                ..SessionConfig::default()
            }),
            send_queue: ws.send_queue,
            slow_consumer: ws.slow_consumer,
            compression: ws.compression,
        });
        for url in &app_config.urls {
            router.insert(url, route.clone());
        }
    }
    let proxy = match previous {
        Some(p)
            if p.config.upstream == config.upstream
                && p.config.limits.body_read_timeout == config.limits.body_read_timeout =>
        {
            p.proxy.clone()
        }
        _ => Proxy::new(ProxySettings {
            upstream: config.upstream.url.uri().clone(),
            connect_timeout: config.upstream.connect_timeout,
            response_timeout: config.upstream.response_timeout,
            trusted_proxies: config.upstream.trusted_proxies.clone(),
            body_read_timeout: config.limits.body_read_timeout,
        }),
    };
    // Every pubsub app's namespaces, in config order: the first match sets a channel's history.
    let namespaces = config
        .apps
        .values()
        .filter(|a| a.kind == crate::config::AppKind::PubSub && a.is_enabled())
        .flat_map(|a| a.namespaces.iter().filter_map(|ns| apps::pubsub::engine::Namespace::new(ns).ok()))
        .collect();
    channels.set_namespaces(namespaces);
    Ok(Runtime { router, apps: built, proxy, config: config.clone() })
}

/// Counts a connection against `max_connections` while it lives.
pub(crate) struct ConnectionSlot {
    state: Arc<State>,
}

impl ConnectionSlot {
    /// Takes a slot, or `None` when the server is full (`max_connections` of the current
    /// runtime: a reload lowering it refuses new connections only).
    fn acquire(state: &Arc<State>) -> Option<Self> {
        let max = state.runtime.load().config.limits.max_connections.min(state.connection_capacity);
        let previous = state.active_connections.fetch_add(1, Ordering::AcqRel);
        if previous >= max {
            state.active_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self { state: state.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.active_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one request: app handshake, app page, or the upstream.
async fn handle(
    state: Arc<State>,
    client: ClientInfo,
    slot: Option<Arc<ConnectionSlot>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(slot) = slot else {
        let mut response =
            text_response(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: too many connections\n");
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return Ok(response);
    };
    // One load per request: a reload during the request does not change what it sees.
    let runtime = state.runtime.load_full();
    let mut route = runtime
        .router
        .classify(req.method(), req.version(), req.uri().path(), req.headers(), |app| app.app.page().is_some());
    if upgrade::is_extended_connect(&req) {
        // RFC 8441 WebSocket over HTTP/2 on an app URL; other extended CONNECTs keep their route.
        if let Some(app) = runtime.router.app(req.uri().path()) {
            route = Route::WebSocket(app);
        }
    }
    if sse::wants_event_stream(&req) {
        if let Some(app) = runtime.router.app(req.uri().path()).filter(|a| a.app.serves_event_streams()) {
            let response = upgrade::refuse_page(&state, &client, app, &req)
                .unwrap_or_else(|| sse::serve(state.clone(), &client, slot, app, &req));
            return Ok(response);
        }
    }
    let response = match route {
        Route::WebSocket(app) => {
            let app = app.clone();
            match upgrade::authorize(&state, &client, &app, &req).await {
                Some(refused) => refused,
                None => upgrade::accept(state.clone(), client, slot, app, req).await,
            }
        }
        Route::Page(app) => upgrade::refuse_page(&state, &client, app, &req)
            .unwrap_or_else(|| page_response(&req, app.app.page().unwrap_or_default())),
        Route::Tunnel => {
            let started = Instant::now();
            let response = runtime.proxy.tunnel(req, &client).await;
            record_proxied(&state.metrics, &response, started);
            response.map(|b| b.map_err(Into::into).boxed())
        }
        Route::Proxy if req.version() == http::Version::HTTP_2 => {
            forward_detached(state.clone(), runtime.clone(), client, req).await
        }
        Route::Proxy => {
            let started = Instant::now();
            let response = runtime.proxy.forward(req, &client).await;
            record_proxied(&state.metrics, &response, started);
            response.map(|b| b.map_err(Into::into).boxed())
        }
    };
    Ok(response)
}

/// The reason of the 1001 Close every WebSocket gets when the server shuts down.
pub(crate) const SHUTDOWN_REASON: &str = "server shutting down";

/// Bytes of an abandoned upstream response read to its end so that its connection returns
/// to the pool; a longer one closes its connection instead.
const ABANDONED_DRAIN_LIMIT: usize = 64 * 1024;

/// Forwards an HTTP/2 request in a task of its own. A client may reset its stream at any
/// time (hyper then drops this future): dropping the exchange would abandon its upstream
/// connection, so a reset storm opened one upstream connection per reset. The task instead
/// finishes the exchange (bounded by the upstream timeouts) and, when nobody waits for the
/// answer any more, reads a short response to its end so its connection returns to the pool.
async fn forward_detached(
    state: Arc<State>,
    runtime: Arc<Runtime>,
    client: ClientInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let started = Instant::now();
        let response = runtime.proxy.forward(req, &client).await;
        record_proxied(&state.metrics, &response, started);
        if let Err(response) = answer.send(response) {
            let timeout = runtime.proxy.settings().response_timeout;
            let _ = tokio::time::timeout(timeout, drain_abandoned(response.into_body())).await;
        }
    });
    match answered.await {
        Ok(response) => response.map(|b| b.map_err(Into::into).boxed()),
        // The task panicked.
        Err(_) => text_response(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"),
    }
}

/// Reads `body` to its end, at most [`ABANDONED_DRAIN_LIMIT`] bytes.
async fn drain_abandoned<B: http_body::Body + Unpin>(mut body: B)
where
    B::Data: bytes::Buf,
{
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(bytes::Buf::remaining(data));
            if read > ABANDONED_DRAIN_LIMIT {
                return;
            }
        }
    }
}

/// Counts a proxied request: status class, time to the response head, and the upstream's
/// failure kind when the proxy answered for it (its [`ProxyFailure`] extension).
fn record_proxied<B>(metrics: &Metrics, response: &Response<B>, started: Instant) {
    let upstream_failure =
        response.extensions().get::<ProxyFailure>().filter(|f| f.side == Side::Upstream).map(|f| f.kind);
    record_proxy_outcome(metrics, response.status(), upstream_failure, started.elapsed());
}

/// Counts a proxied request from its parts: status, the upstream failure's kind if we
/// answered for the upstream, and the time to the response head.
fn record_proxy_outcome(
    metrics: &Metrics,
    status: StatusCode,
    upstream_failure: Option<&'static str>,
    head_time: Duration,
) {
    metrics.proxy_request_duration.observe(head_time.as_secs_f64());
    metrics.proxy_requests.get_or_create(&Metrics::status_class(status)).inc();
    if let Some(kind) = upstream_failure {
        metrics.upstream_errors.get_or_create(&KindLabel { kind }).inc();
    }
}

fn page_response(req: &Request<Incoming>, html: &'static str) -> Response<Body> {
    let body =
        if req.method() == http::Method::HEAD { empty_body() } else { full_body(Bytes::from_static(html.as_bytes())) };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(html.len()));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", header::HeaderValue::from_static("nosniff"));
    response
}

/// One problem found by [`check`]: what is wrong, and the configuration key it is about
/// when there is one (so the caller can name the file and line that set it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckProblem {
    /// Dotted key path (`listen.0.tls.key`), when the problem is about one value.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{key}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl CheckProblem {
    fn plain(message: String) -> Self {
        CheckProblem { key: None, message }
    }

    /// A TLS problem of listener `index`, keyed to the file it is about.
    pub fn tls(index: usize, error: &tls::TlsError) -> Self {
        let file = match error {
            tls::TlsError::Key { .. } => "key",
            tls::TlsError::Certificate { .. } | tls::TlsError::Config { .. } => "cert",
        };
        CheckProblem { key: Some(format!("listen.{index}.tls.{file}")), message: error.to_string() }
    }
}

/// Everything `start` would verify without binding ports: apps can be built and every TLS
/// certificate and key can be used. Returns every problem found.
pub fn check(config: &Config) -> Result<(), Vec<CheckProblem>> {
    let mut problems = Vec::new();
    let hub = Arc::new(Hub::new());
    if let Err(error) = build_runtime(config, &hub, &PubSubChannels::new(hub.clone()), &Metrics::new(), None) {
        problems.push(CheckProblem::plain(error.to_string()));
    }
    if config.admin.addr.is_some() {
        if let Err(error) = admin::load_token(config.admin.token_file.as_deref()) {
            problems.push(CheckProblem::plain(error.to_string()));
        }
    }
    if let Err(error) = crate::pubsub::broker::redis_settings(&config.broker) {
        problems.push(CheckProblem::plain(StartError::Broker(error).to_string()));
    }
    for (index, listen) in config.listen.iter().enumerate() {
        if let Some(tls) = &listen.tls {
            if let Err(source) = tls::load_server_config(&tls.cert, &tls.key) {
                problems.push(CheckProblem::tls(index, &source));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
