//! `pubsub`: channels the clients subscribe to themselves (DESIGN §13), under JWT auth, with
//! history, exact recovery and presence. This module holds the per-connection part (who the
//! client is, what it may do, what it is subscribed to); [`engine::Engine`] holds the channels.
//!
//! Close codes of this app: 1003 binary frame, 1007 a frame that is not JSON, 4009 the
//! connection token expired. Every other problem is an error reply and the connection stays.

pub(crate) mod cluster;
pub mod engine;
pub(crate) mod events;
pub(crate) mod jwks;
pub(crate) mod model;
pub(crate) mod protocol;
pub(crate) mod token;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use self::engine::{Engine, EngineError, Info, Namespace, Position};
use self::protocol::{error, reply, Command, ErrorCode, Failure, Request, Subscribe};
use self::token::{ChannelClaims, ConnectionClaims, TokenError, Verifier};
use super::{App, AppError, EventEncoder, EventStreamRequest, Message, PendingUpgrade, PreAccept, Rejection};
use crate::config::pubsub::{Access, NamespaceConfig};
use crate::config::AppConfig;
use crate::locks::lock;
use crate::pubsub::{ChannelHandle, ChannelId};

/// Close code when the connection token expires.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4009;
/// Commands of one connection waiting for their turn; more are answered with error 106.
const MAX_PENDING_COMMANDS: usize = 1024;

/// Work for a connection's worker, done strictly in arrival order (a command's engine call
/// may wait on Redis in cluster mode; its replies and effects must not overtake each other).
enum Job {
    /// A client command.
    Command(Request),
    /// An event stream's subscription (from its URL).
    Stream(Subscribe, String),
    /// The connection ended: leave every channel.
    Close,
}

/// Who a connected client is.
#[derive(Debug, Default)]
struct Identity {
    user: String,
    channels: Vec<glob::Pattern>,
    publish: Vec<glob::Pattern>,
    expires: Option<u64>,
}

impl Identity {
    fn from_claims(claims: ConnectionClaims) -> Self {
        let globs = |list: Vec<String>| list.iter().filter_map(|g| glob::Pattern::new(g).ok()).collect();
        Identity {
            user: claims.sub,
            channels: globs(claims.channels),
            publish: globs(claims.publish),
            expires: claims.exp,
        }
    }
}

#[derive(Debug, Default)]
struct Connection {
    /// `None` until the client is connected (token checked, or anonymous allowed). Shared, so
    /// a command takes it without copying its patterns.
    identity: Option<Arc<Identity>>,
    subscriptions: HashSet<String>,
    /// Closes the connection when its token expires.
    expiry: Option<tokio::task::AbortHandle>,
    /// The connection's worker.
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    /// Commands queued to the worker and not done yet.
    queued: Arc<AtomicUsize>,
}

/// The pubsub app.
pub struct PubSub {
    /// This app, for the connections' workers.
    me: Weak<PubSub>,
    engine: Arc<Engine>,
    verifier: Option<Verifier>,
    namespaces: Vec<Namespace>,
    max_subscriptions: usize,
    connections: Mutex<HashMap<ChannelId, Connection>>,
    /// Identities proven by `?token=` before the 101, taken by `on_open`.
    pending: Mutex<HashMap<ChannelId, Identity>>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub").field("namespaces", &self.namespaces.len()).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `token` query parameter of a request URL.
fn query_token(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

/// Who sent a command, and how its connection stands towards the command's channel.
struct Caller {
    identity: Arc<Identity>,
    /// Subscribed to the command's channel.
    subscribed: bool,
    /// Subscriptions the connection holds.
    subscriptions: usize,
}

impl Caller {
    /// Presence and history are for subscribers.
    fn must_be_subscribed(&self) -> Result<(), Failure> {
        if self.subscribed {
            Ok(())
        } else {
            Err(Failure::new(ErrorCode::PermissionDenied, "subscribe to the channel first"))
        }
    }
}

/// An engine error as the client sees it.
fn engine_failure(e: EngineError) -> Failure {
    Failure::new(e.code(), e.to_string())
}

/// Counts a refused token by reason.
fn count_token_failure(engine: &Engine, reason: &'static str) {
    if let Some(m) = engine.metrics() {
        m.pubsub_token_failures.get_or_create(&crate::metrics::ReasonLabel { reason }).inc();
    }
}

fn reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Expired => "expired",
        TokenError::Invalid(_) => "invalid",
    }
}

fn token_failure(e: &TokenError) -> Failure {
    match e {
        TokenError::Expired => Failure::new(ErrorCode::TokenExpired, "token expired"),
        TokenError::Invalid(why) => Failure::new(ErrorCode::Unauthorized, why.clone()),
    }
}

impl PubSub {
    /// Builds the app `name` (reads its JWT key file).
    pub fn new(name: &str, config: &AppConfig, engine: Arc<Engine>) -> Result<Arc<Self>, AppError> {
        let setting = |key, reason| AppError::Setting { name: name.to_owned(), key, reason };
        let verifier = match &config.jwt {
            Some(jwt) => {
                Some(Verifier::from_config(jwt).map_err(|e| AppError::Key { name: name.to_owned(), reason: e })?)
            }
            None => None,
        };
        let namespaces = config
            .namespaces
            .iter()
            .map(Namespace::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| setting("namespaces", "a pattern is not a valid glob"))?;
        Ok(Arc::new_cyclic(|me| PubSub {
            me: me.clone(),
            engine,
            verifier,
            namespaces,
            max_subscriptions: config.max_subscriptions(),
            connections: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }))
    }

    /// Registers `channel` as a connection of this app and starts its worker.
    fn open_connection(&self, channel: &ChannelHandle) {
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        let connection = Connection { jobs: Some(jobs), ..Connection::default() };
        let queued = connection.queued.clone();
        lock(&self.connections).insert(channel.id().clone(), connection);
        tokio::spawn(worker(self.me.clone(), channel.clone(), queue, queued));
    }

    /// Queues `job` to the connection's worker; `false` when the connection has none.
    fn queue(&self, channel: &ChannelHandle, job: Job) -> bool {
        let connections = lock(&self.connections);
        let Some(jobs) = connections.get(channel.id()).and_then(|c| c.jobs.as_ref()) else { return false };
        jobs.send(job).is_ok()
    }

    /// One command, answered (the worker calls this in arrival order).
    async fn run_command(&self, channel: &ChannelHandle, request: Request) {
        let id = request.id;
        let outcome = match request.command {
            Ok(command) => self.handle(channel, id, command).await,
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok((_, Value::Null)) => {} // answered already
            Ok((command, body)) => Self::send(channel, &reply(id, command, body)),
            Err(failure) => Self::send(channel, &error(id, &failure)),
        }
    }

    /// Leaves every channel of a connection that ended.
    async fn leave_all(&self, channel: &ChannelHandle) {
        let connection = lock(&self.connections).remove(channel.id());
        if let Some(connection) = connection {
            if let Some(expiry) = connection.expiry {
                expiry.abort();
            }
            for name in connection.subscriptions {
                self.engine.unsubscribe(&name, channel.id()).await;
            }
        }
    }

    /// Whether clients must show a connection token.
    fn needs_token(&self) -> bool {
        self.verifier.is_some()
    }

    fn send(channel: &ChannelHandle, value: &Value) {
        // A full queue is the slow-consumer policy's business; nothing more to do here.
        let _ = channel.send_text(&value.to_string());
    }

    /// Verifies `token` as claims `T`, counting a refusal by its reason.
    fn verify<T: serde::de::DeserializeOwned>(&self, verifier: &Verifier, token: &str) -> Result<T, TokenError> {
        verifier.verify(token).inspect_err(|e| count_token_failure(&self.engine, reason(e)))
    }

    /// Marks `channel` connected as `identity` and arms its expiry; the `connect` reply.
    fn connect(&self, channel: &ChannelHandle, identity: Identity) -> Value {
        let answer = json!({
            "client": channel.id().as_str(),
            "user": identity.user,
            "expires": identity.expires,
        });
        let expiry = identity.expires.map(|exp| {
            let wait = Duration::from_secs(exp.saturating_sub(unix_now()));
            let handle = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                handle.close(CLOSE_TOKEN_EXPIRED, "token expired");
            })
            .abort_handle()
        });
        let mut connections = lock(&self.connections);
        let connection = connections.entry(channel.id().clone()).or_default();
        if let Some(old) = connection.expiry.take() {
            old.abort();
        }
        connection.identity = Some(Arc::new(identity));
        connection.expiry = expiry;
        answer
    }

    async fn handle(
        &self,
        channel: &ChannelHandle,
        id: Option<u64>,
        command: Command,
    ) -> Result<(&'static str, Value), Failure> {
        if let Command::Connect { token } = command {
            return Ok(("connect", self.handle_connect(channel, token).await?));
        }
        let caller = self.caller(channel, command.channel().unwrap_or_default())?;
        match command {
            Command::Connect { .. } => unreachable!("handled above"),
            Command::Subscribe(s) => {
                self.handle_subscribe(channel, id, &s, &caller).await?;
                Ok(("subscribe", Value::Null)) // the engine queued the reply under the channel's lock
            }
            Command::Unsubscribe { channel: name } => {
                self.namespace(&name)?;
                let was = lock(&self.connections).get_mut(channel.id()).is_some_and(|c| c.subscriptions.remove(&name));
                if was {
                    self.engine.unsubscribe(&name, channel.id()).await;
                }
                Ok(("unsubscribe", json!({})))
            }
            Command::Publish { channel: name, data } => {
                Ok(("publish", self.handle_publish(channel, &name, data, &caller).await?))
            }
            Command::Presence { channel: name } => {
                self.namespace(&name)?;
                caller.must_be_subscribed()?;
                let clients = self.engine.presence(&name).await.map_err(engine_failure)?;
                let clients: serde_json::Map<_, _> =
                    clients.into_iter().map(|(client, user)| (client, json!({ "user": user }))).collect();
                Ok(("presence", json!({ "clients": clients })))
            }
            Command::History { channel: name, limit, since } => {
                self.namespace(&name)?;
                caller.must_be_subscribed()?;
                let since = since.map(|s| Position { offset: s.offset, epoch: s.epoch });
                let page = self
                    .engine
                    .history(&name, limit.unwrap_or(usize::MAX), since.as_ref())
                    .await
                    .map_err(engine_failure)?;
                Ok((
                    "history",
                    json!({ "publications": page.publications, "offset": page.position.offset, "epoch": page.position.epoch }),
                ))
            }
        }
    }

    /// `connect`: verifies the token (when the app asks for one) and records who the client is.
    async fn handle_connect(&self, channel: &ChannelHandle, token: Option<String>) -> Result<Value, Failure> {
        let identity = match (&self.verifier, token) {
            (Some(verifier), Some(token)) => {
                verifier.prepare(&token).await;
                Identity::from_claims(self.verify(verifier, &token).map_err(|e| token_failure(&e))?)
            }
            (Some(_), None) => {
                count_token_failure(&self.engine, "missing");
                return Err(Failure::new(ErrorCode::Unauthorized, "connect needs a token"));
            }
            (None, _) => Identity::default(),
        };
        Ok(self.connect(channel, identity))
    }

    /// Who sent a command other than `connect`, and how it stands towards `target` (the
    /// command's channel); refused until the connection has sent `connect`.
    fn caller(&self, channel: &ChannelHandle, target: &str) -> Result<Caller, Failure> {
        let connections = lock(&self.connections);
        let connection = connections.get(channel.id());
        let Some(identity) = connection.and_then(|c| c.identity.clone()) else {
            return Err(Failure::new(ErrorCode::Unauthorized, "send connect with a token first"));
        };
        Ok(Caller {
            identity,
            subscribed: connection.is_some_and(|c| c.subscriptions.contains(target)),
            subscriptions: connection.map_or(0, |c| c.subscriptions.len()),
        })
    }

    /// The settings of the namespace `name` belongs to.
    fn namespace(&self, name: &str) -> Result<NamespaceConfig, Failure> {
        engine::find(&self.namespaces, name)
            .map(|ns| ns.config.clone())
            .ok_or_else(|| Failure::new(ErrorCode::UnknownChannel, format!("no namespace matches channel {name:?}")))
    }

    /// `subscribe`: the namespace's rule, the connection's limit and the tokens, then the
    /// engine (which queues the reply, the recovered publications and the join).
    async fn handle_subscribe(
        &self,
        channel: &ChannelHandle,
        id: Option<u64>,
        s: &Subscribe,
        caller: &Caller,
    ) -> Result<(), Failure> {
        let ns = self.namespace(&s.channel)?;
        // A channel the server unsubscribed it from (push `unsubscribe`) may be taken again.
        if caller.subscribed && self.engine.is_member(&s.channel, channel.id()) {
            return Err(Failure::new(ErrorCode::AlreadySubscribed, "already subscribed"));
        }
        if caller.subscriptions >= self.max_subscriptions {
            return Err(Failure::new(
                ErrorCode::LimitExceeded,
                format!("at most {} subscriptions per connection", self.max_subscriptions),
            ));
        }
        if let (Some(verifier), Some(token)) = (&self.verifier, &s.token) {
            verifier.prepare(token).await;
        }
        let identity = &caller.identity;
        self.may_subscribe(s, ns.subscribe, &identity.user, &identity.channels)?;
        self.subscribe(channel, s, &identity.user, id).await.map_err(engine_failure)
    }

    /// `publish`: the namespace's rule (and the token's `publish` globs), then the engine.
    async fn handle_publish(
        &self,
        channel: &ChannelHandle,
        name: &str,
        data: Value,
        caller: &Caller,
    ) -> Result<Value, Failure> {
        let ns = self.namespace(name)?;
        let allowed = match ns.publish {
            Access::Any => true,
            Access::Token => caller.identity.publish.iter().any(|g| g.matches(name)),
            Access::None => false,
        };
        if !allowed {
            return Err(Failure::new(ErrorCode::PermissionDenied, "publishing to this channel is not allowed"));
        }
        let info = Info { user: caller.identity.user.clone(), client: channel.id().as_str().to_owned() };
        let p = self.engine.publish(name, data, Some(info)).await.map_err(engine_failure)?;
        Ok(json!({ "offset": p.offset, "epoch": p.epoch }))
    }

    /// Whether the namespace's `subscribe` rule and the tokens admit `user` to `s.channel`.
    fn may_subscribe(&self, s: &Subscribe, rule: Access, user: &str, globs: &[glob::Pattern]) -> Result<(), Failure> {
        let denied =
            || Failure::new(ErrorCode::PermissionDenied, format!("not allowed to subscribe to {:?}", s.channel));
        match rule {
            Access::Any => Ok(()),
            Access::None => Err(denied()),
            Access::Token => {
                if let Some(token) = &s.token {
                    let verifier = self
                        .verifier
                        .as_ref()
                        .ok_or_else(|| Failure::new(ErrorCode::Unauthorized, "this app verifies no tokens"))?;
                    let claims: ChannelClaims = self.verify(verifier, token).map_err(|e| token_failure(&e))?;
                    if claims.channel != s.channel || claims.sub != user {
                        count_token_failure(&self.engine, "wrong_channel");
                        return Err(Failure::new(
                            ErrorCode::PermissionDenied,
                            "the channel token is for another channel or another user",
                        ));
                    }
                    Ok(())
                } else if globs.iter().any(|g| g.matches(&s.channel)) {
                    Ok(())
                } else {
                    Err(denied())
                }
            }
        }
    }

    async fn subscribe(
        &self,
        channel: &ChannelHandle,
        s: &Subscribe,
        user: &str,
        id: Option<u64>,
    ) -> Result<(), EngineError> {
        let since =
            s.recover.then(|| Position { offset: s.offset.unwrap_or(0), epoch: s.epoch.clone().unwrap_or_default() });
        self.engine
            .subscribe(&s.channel, channel, user, since.as_ref(), |position, recovered| {
                let mut body = json!({ "channel": s.channel, "offset": position.offset, "epoch": position.epoch });
                if s.recover {
                    body["recovered"] = json!(recovered.is_some());
                    body["publications"] = json!(recovered.unwrap_or_default());
                }
                reply(id, "subscribe", body)
            })
            .await?;
        if let Some(connection) = lock(&self.connections).get_mut(channel.id()) {
            connection.subscriptions.insert(s.channel.clone());
        }
        Ok(())
    }
}

fn refuse(status: http::StatusCode, text: &str) -> Box<Rejection> {
    let mut rejection = Rejection::text(status, &format!("{text}\n"));
    if status == http::StatusCode::UNAUTHORIZED {
        rejection
            .headers
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"wsgate\""));
    }
    Box::new(rejection)
}

impl PubSub {
    /// Who the client of an event stream is: `?token=` or `Authorization: Bearer`.
    fn stream_identity(&self, request: &EventStreamRequest<'_>) -> Result<Identity, Box<Rejection>> {
        let Some(verifier) = &self.verifier else { return Ok(Identity::default()) };
        let bearer = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let Some(token) = query_token(request.url).or(bearer) else {
            count_token_failure(&self.engine, "missing");
            return Err(refuse(http::StatusCode::UNAUTHORIZED, "a token is needed (?token= or Authorization: Bearer)"));
        };
        self.verify::<ConnectionClaims>(verifier, &token).map(Identity::from_claims).map_err(|e| {
            verifier.prepare_later(&token); // a key rotated in: the browser's next try finds it
            refuse(http::StatusCode::UNAUTHORIZED, &e.to_string())
        })
    }

    /// Starts an event stream; on `Err` nothing of it is left behind.
    fn start_stream(&self, channel: &ChannelHandle, request: &EventStreamRequest<'_>) -> Result<(), Box<Rejection>> {
        use http::StatusCode;
        let identity = self.stream_identity(request)?;
        let query = request.url.split_once('?').map(|(_, q)| q);
        let channels: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, _)| k == "channel")
            .map(|(_, v)| v.into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if channels.is_empty() {
            return Err(refuse(StatusCode::BAD_REQUEST, "name at least one channel: ?channel=NAME (repeatable)"));
        }
        if channels.len() > self.max_subscriptions {
            let text = format!("at most {} channels per stream", self.max_subscriptions);
            return Err(refuse(StatusCode::BAD_REQUEST, &text));
        }
        for name in &channels {
            protocol::check_channel(name).map_err(|e| refuse(StatusCode::BAD_REQUEST, &e))?;
            let ns = engine::find(&self.namespaces, name)
                .ok_or_else(|| refuse(StatusCode::NOT_FOUND, &format!("no namespace matches channel {name:?}")))?;
            let s = Subscribe { channel: name.clone(), token: None, recover: false, offset: None, epoch: None };
            self.may_subscribe(&s, ns.config.subscribe, &identity.user, &identity.channels)
                .map_err(|f| refuse(StatusCode::FORBIDDEN, &f.message))?;
        }
        // Last-Event-ID: recover every channel it names; one we cannot read recovers none
        // (and each subscribe event says recovered:false).
        let last = request.headers.get("last-event-id").and_then(|v| v.to_str().ok());
        let positions = last.map(|id| events::decode_id(id).unwrap_or_default());
        let user = identity.user.clone();
        self.connect(channel, identity);
        for name in channels {
            let since = positions
                .as_ref()
                .map(|p| p.get(&name).cloned().unwrap_or(Position { offset: u64::MAX, epoch: String::new() }));
            let s = Subscribe {
                channel: name,
                token: None,
                recover: since.is_some(),
                offset: since.as_ref().map(|p| p.offset),
                epoch: since.map(|p| p.epoch),
            };
            self.queue(channel, Job::Stream(s, user.clone()));
        }
        Ok(())
    }
}

impl App for PubSub {
    fn serves_event_streams(&self) -> bool {
        true
    }

    fn open_event_stream(
        &self,
        channel: &ChannelHandle,
        request: &EventStreamRequest<'_>,
    ) -> Result<Box<dyn EventEncoder>, Box<Rejection>> {
        self.open_connection(channel);
        match self.start_stream(channel, request) {
            Ok(()) => Ok(Box::new(events::Events::default())),
            Err(rejection) => {
                self.on_close(channel, None);
                Err(rejection)
            }
        }
    }

    fn pre_accept(&self, request: &PendingUpgrade<'_>) -> Option<PreAccept> {
        self.verifier.as_ref()?;
        let token = query_token(request.url)?;
        let app = self.me.upgrade()?;
        let channel = request.channel.clone();
        Some(Box::pin(async move {
            let verifier = app.verifier.as_ref().ok_or_else(|| *refuse(http::StatusCode::UNAUTHORIZED, "no key"))?;
            verifier.prepare(&token).await;
            match app.verify::<ConnectionClaims>(verifier, &token) {
                Ok(claims) => {
                    lock(&app.pending).insert(channel, Identity::from_claims(claims));
                    Ok(())
                }
                Err(e) => Err(*refuse(http::StatusCode::UNAUTHORIZED, &e.to_string())),
            }
        }))
    }

    fn on_accept_failed(&self, channel: &ChannelHandle) {
        lock(&self.pending).remove(channel.id());
    }

    fn on_open(&self, channel: &ChannelHandle) {
        let proven = lock(&self.pending).remove(channel.id());
        self.open_connection(channel);
        match proven {
            Some(identity) => {
                self.connect(channel, identity);
            }
            None if !self.needs_token() => {
                self.connect(channel, Identity::default());
            }
            None => {}
        }
    }

    fn on_message(&self, channel: &ChannelHandle, message: Message) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                channel.close(crate::ws::close::code::UNSUPPORTED, "binary frames are not accepted; send JSON text");
                return;
            }
        };
        let Some(request) = protocol::parse(&text) else {
            channel.close(crate::ws::close::code::INVALID_DATA, "not JSON");
            return;
        };
        let queued = lock(&self.connections).get(channel.id()).map(|c| c.queued.clone());
        let Some(queued) = queued else { return };
        if queued.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_COMMANDS {
            queued.fetch_sub(1, Ordering::AcqRel);
            let failure = Failure::new(ErrorCode::LimitExceeded, "too many commands waiting; wait for replies");
            Self::send(channel, &error(request.id, &failure));
            return;
        }
        if !self.queue(channel, Job::Command(request)) {
            queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn on_close(&self, channel: &ChannelHandle, _code: Option<u16>) {
        // The worker leaves the channels after the commands queued before the close.
        let expiry = lock(&self.connections).get_mut(channel.id()).and_then(|c| c.expiry.take());
        if let Some(expiry) = expiry {
            expiry.abort();
        }
        if !self.queue(channel, Job::Close) {
            lock(&self.connections).remove(channel.id());
        }
    }
}

/// A connection's worker: runs its jobs one at a time, in order, until the connection ends.
async fn worker(
    app: Weak<PubSub>,
    channel: ChannelHandle,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(job) = jobs.recv().await {
        let Some(app) = app.upgrade() else { return };
        match job {
            Job::Command(request) => {
                app.run_command(&channel, request).await;
                queued.fetch_sub(1, Ordering::AcqRel);
            }
            Job::Stream(s, user) => {
                if let Err(e) = app.subscribe(&channel, &s, &user, None).await {
                    let push = json!({ "push": { "channel": s.channel, "unsubscribe": {
                        "code": e.code() as u16, "reason": e.to_string() } } });
                    PubSub::send(&channel, &push);
                }
            }
            Job::Close => {
                app.leave_all(&channel).await;
                return;
            }
        }
    }
}
