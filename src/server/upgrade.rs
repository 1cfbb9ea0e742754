//! Accepting a WebSocket on an app URL: access checks, the RFC 6455 handshake answer, and the
//! session task started once hyper hands over the connection.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::access::{check_address, check_host, check_origin, Denied};
use super::{empty_body, full_body, text_response, AppRoute, Body, ConnectionSlot, State};
use crate::apps::PendingUpgrade;
use crate::metrics::ReasonLabel;
use crate::proxy::ClientInfo;
use crate::pubsub::channel::{ChannelHandle, ChannelInfo, ChannelQueue};
use crate::session::direct::{self, SessionIo};
use crate::ws::deflate::{negotiate_server, DeflateParams};
use crate::ws::handshake::{
    accept_key, extended_connect_response_headers, response_headers, select_protocol, validate_extended_connect,
    validate_upgrade, HandshakeError,
};

/// Whether `req` is an HTTP/2 WebSocket bootstrap (RFC 8441 §4): CONNECT with `:protocol`.
pub(super) fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::CONNECT
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Answers the upgrade request on `route` and, when accepted, spawns the session once hyper
/// hands the connection over.
pub(super) async fn accept(
    state: Arc<State>,
    client: ClientInfo,
    slot: Arc<ConnectionSlot>,
    route: Arc<AppRoute>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Over HTTP/2: keeps the connection from counting as idle while the session runs.
    let active = req.extensions_mut().remove::<super::h2_guard::Active>();
    let (response, start) = decide(&state, &client, route, &req).await;
    if let Some(start) = start {
        let task = async move {
            let _active = active;
            match on_upgrade.await {
                // The slot and the state (with its drain watch) live as long as the session.
                Ok(upgraded) => run_session(state, slot, start, SessionIo::from_upgraded(upgraded)).await,
                Err(error) => {
                    tracing::debug!(app = %start.route.name, %error, "upgrade failed after the handshake");
                    if start.decided {
                        start.route.app.on_accept_failed(&start.channel);
                    }
                }
            }
        };
        tokio::spawn(task);
    }
    response
}

/// An accepted WebSocket, waiting for its connection.
pub(super) struct SessionStart {
    route: Arc<AppRoute>,
    channel: ChannelHandle,
    queue: ChannelQueue,
    /// permessage-deflate as negotiated for this connection (RFC 7692), if it was.
    deflate: Option<DeflateParams>,
    /// RFC 8441 (HTTP/2) rather than an HTTP/1.1 upgrade.
    h2: bool,
    /// The app's `pre_accept` hook admitted it.
    decided: bool,
}

impl SessionStart {
    /// Queues the 101 ahead of anything the session will send (the fast path's handshakes),
    /// so it leaves with the app's first messages in one write. Done before the session's
    /// task starts: nothing else can be queued yet (the channel is not registered), and the
    /// bytes are not carried in the session's future for its whole life.
    pub(super) fn queue_head(&self, head: Bytes) {
        let _ = self.channel.queue_head(head);
    }
}

/// The answer to the upgrade request on `route` (HTTP/1.1, or RFC 8441 over HTTP/2): a
/// refusal, or the 101/200 with what the session needs. Access, Origin and handshake checks
/// and an app's [`pre_accept`](crate::apps::App::pre_accept) hook run here, before the 101.
pub(super) async fn decide<B>(
    state: &State,
    client: &ClientInfo,
    route: Arc<AppRoute>,
    req: &Request<B>,
) -> (Response<Body>, Option<SessionStart>) {
    let refusal = |response| (response, None);
    let refused = |reason: &'static str| state.metrics.handshake_failures.get_or_create(&ReasonLabel { reason }).inc();
    if let Err(denied) = check_address(client.peer.ip(), &route.allow) {
        refused(denied.reason());
        tracing::info!(app = %route.name, peer = %client.peer, reason = denied.reason(), "WebSocket refused");
        return refusal(text_response(StatusCode::FORBIDDEN, "403 Forbidden: client address not allowed\n"));
    }
    if let Err(denied) = check_host(route.host_rule.as_ref(), req.headers(), req.uri()) {
        refused(denied.reason());
        tracing::info!(app = %route.name, peer = %client.peer, reason = denied.reason(), "WebSocket refused");
        return refusal(host_refused());
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if let Err(denied) = check_origin(req.headers(), authority.as_deref(), &route.allowed_origins) {
        refused(denied.reason());
        tracing::info!(app = %route.name, peer = %client.peer, reason = denied.reason(), "WebSocket refused");
        return refusal(text_response(StatusCode::FORBIDDEN, "403 Forbidden: origin not allowed\n"));
    }
    // RFC 8441: over HTTP/2 the handshake is an extended CONNECT, answered with 200 and no key.
    let h2 = req.version() == http::Version::HTTP_2;
    let validated = if h2 {
        let protocol = req.extensions().get::<hyper::ext::Protocol>().map(|p| p.as_str().to_owned());
        validate_extended_connect(req.method(), protocol.as_deref(), req.headers())
    } else {
        validate_upgrade(req.method(), req.version(), req.headers())
    };
    let upgrade = match validated {
        Ok(upgrade) => upgrade,
        Err(error) => {
            refused(error.reason());
            return refusal(handshake_refused(&route, client, error));
        }
    };
    let protocol = select_protocol(&upgrade.protocols, &route.subprotocols).map(str::to_owned);
    // RFC 7692: the first acceptable permessage-deflate offer, unless compression is off.
    let deflate = if route.compression { negotiate_server(&upgrade.extensions) } else { None };
    let negotiated = deflate.as_ref().map(|(params, _)| *params);

    let info = ChannelInfo {
        id: state.ids.next_id(),
        app: route.name.clone(),
        url: route.url_of(req.uri().path()),
        peer: client.peer,
    };
    // Borrowed, not cloned: most apps have no pre-accept hook and never look at it.
    let pre_accept = route.app.pre_accept(&PendingUpgrade {
        channel: &info.id,
        url: req.uri().path_and_query().map_or(&*info.url, |p| p.as_str()),
        headers: req.headers(),
        peer: client.peer,
    });
    let decided = pre_accept.is_some();
    if let Some(decision) = pre_accept {
        if let Err(rejection) = decision.await {
            // The app (backend: its upstream callback, or the callback's failure) said no.
            refused("app_refused");
            tracing::info!(app = %route.name, peer = %client.peer, status = rejection.status.as_u16(), "WebSocket refused by the app");
            let mut response = Response::new(full_body(rejection.body));
            *response.status_mut() = rejection.status;
            *response.headers_mut() = rejection.headers;
            return refusal(response);
        }
    }
    let (channel, queue) = ChannelHandle::new(info, route.send_queue, route.slow_consumer);

    let mut response = Response::new(empty_body());
    if h2 {
        *response.status_mut() = StatusCode::OK;
        *response.headers_mut() = extended_connect_response_headers(protocol.as_deref());
    } else {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = response_headers(&accept_key(upgrade.key.as_bytes()), protocol.as_deref());
    }
    if let Some(Ok(value)) = deflate.map(|(_, answer)| http::HeaderValue::from_str(&answer)) {
        response.headers_mut().insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    (response, Some(SessionStart { route, channel, queue, deflate: negotiated, h2, decided }))
}

/// Runs an accepted WebSocket over `io` (the connection after the 101) until it ends: the
/// app's metrics, the hub's registration, the session. `slot` (and the state with its drain
/// watch) live as long as the session.
///
/// The set-up runs when this is called, not when the future is first polled, and the future
/// holds only what the end of the session needs: it is the session task's own state, kept for
/// the life of every idle connection (an `async fn` would also keep `start` and `io` in it).
pub(super) fn run_session(
    state: Arc<State>,
    slot: Arc<ConnectionSlot>,
    start: SessionStart,
    io: SessionIo,
) -> impl std::future::Future<Output = ()> {
    let SessionStart { route, channel, queue, deflate, h2, decided: _ } = start;
    let session_config = route.session.clone();
    tracing::debug!(app = %route.name, channel = %channel.id(), peer = %channel.peer(), http = if h2 { "2" } else { "1.1" }, deflate = deflate.is_some(), "WebSocket open");
    // The app's handles, resolved once per route (no label lookup per connection).
    let active = session_config.metrics.connections_active.clone();
    session_config.metrics.connections_total.inc();
    active.inc();
    state.hub.register(channel.clone());
    if !state.runtime.load().apps.contains_key(&*route.name) {
        // A reload removed the app while this upgrade was in flight: the reload's
        // sweep could not see the channel yet (RFC 6455 §7.4.1, 1001 going away).
        channel.close(crate::ws::close::code::GOING_AWAY, "app removed");
    }
    if state.drain.is_signalled() {
        // Shutdown began while this upgrade was in flight: its sweep of the hub (after the
        // signal) may have run before the registration above.
        channel.close(crate::ws::close::code::GOING_AWAY, super::SHUTDOWN_REASON);
    }
    let id = channel.id().clone();
    // Boxed: inline, the session's state machine would be laid out twice in this task's
    // (measured by the direct-write work: 5.0 KiB instead of 2.6 KiB per connection).
    let session = Box::pin(direct::run(io, channel, queue, route.app.clone(), session_config, deflate));
    let app_name = route.name.clone();
    drop(route);
    async move {
        let end = session.await;
        // Before unregistering: whoever sees the channel gone sees the gauge down.
        active.dec();
        state.hub.unregister(&id);
        tracing::debug!(app = %app_name, channel = %id, ?end, "WebSocket closed");
        drop(slot);
    }
}

/// The `auth` subrequest step (DESIGN §3), run before [`accept`] for apps with `auth`:
/// `Some(403)` refuses the client. A client that the address or Origin check will refuse
/// anyway is not asked about (`None`: `accept` refuses it with its own reason), so a refused
/// address never makes wsgate send a subrequest.
pub(super) async fn authorize<B>(
    state: &State,
    client: &ClientInfo,
    route: &AppRoute,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let auth = route.auth.as_ref()?;
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if check_address(client.peer.ip(), &route.allow).is_err()
        || check_host(route.host_rule.as_ref(), req.headers(), req.uri()).is_err()
        || check_origin(req.headers(), authority.as_deref(), &route.allowed_origins).is_err()
    {
        return None;
    }
    match auth.check(req.headers(), req.uri(), req.method(), client.peer.ip(), client.tls).await {
        Ok(()) => None,
        Err(refusal) => {
            state.metrics.handshake_failures.get_or_create(&ReasonLabel { reason: refusal.denied.reason() }).inc();
            tracing::info!(
                app = %route.name,
                peer = %client.peer,
                reason = refusal.denied.reason(),
                auth = auth.url().as_str(),
                detail = %refusal.detail,
                "WebSocket refused"
            );
            Some(text_response(StatusCode::FORBIDDEN, "403 Forbidden: not authorized\n"))
        }
    }
}

/// The page of a restricted app (one with an allow list) follows the same address and Host
/// rules as its WebSocket, so a rebinding page cannot load it either: `Some(refusal)`, or
/// `None` to serve it. Apps open to everyone serve their page to anyone.
pub(super) fn refuse_page<B>(
    state: &State,
    client: &ClientInfo,
    route: &AppRoute,
    req: &Request<B>,
) -> Option<Response<Body>> {
    let denied = check_address(client.peer.ip(), &route.allow)
        .and_then(|()| check_host(route.host_rule.as_ref(), req.headers(), req.uri()))
        .err()?;
    state.metrics.handshake_failures.get_or_create(&ReasonLabel { reason: denied.reason() }).inc();
    tracing::info!(app = %route.name, peer = %client.peer, reason = denied.reason(), "app page refused");
    Some(match denied {
        Denied::Host => host_refused(),
        _ => text_response(StatusCode::FORBIDDEN, "403 Forbidden: client address not allowed\n"),
    })
}

/// 421 for a Host outside the Host rule (see [`crate::host_rule::HostDenied::status`]).
fn host_refused() -> Response<Body> {
    let denied = crate::host_rule::HostDenied::Host;
    text_response(denied.status(), denied.body())
}

fn handshake_refused(route: &AppRoute, client: &ClientInfo, error: HandshakeError) -> Response<Body> {
    tracing::debug!(app = %route.name, peer = %client.peer, reason = error.reason(), "WebSocket handshake refused");
    let status = error.status();
    let mut response =
        text_response(status, &format!("{} {}: {error}\n", status.as_u16(), status.canonical_reason().unwrap_or("")));
    // RFC 6455 §4.2.2: a 426 tells the client which version we speak.
    response.headers_mut().extend(error.response_headers());
    response
}
