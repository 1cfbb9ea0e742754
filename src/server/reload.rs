//! SIGHUP reload (DESIGN §8), with nginx's semantics in one process: load and validate the new
//! configuration, build everything that can fail (apps, certificates, new sockets) *before*
//! touching the running server, then commit in an order that drops nothing:
//!
//! 1. bind (or adopt) the listeners the new configuration adds;
//! 2. swap the runtime (routes, apps, upstream, limits): new requests and handshakes see it,
//!    in-flight requests finish on the runtime they loaded (an old upstream pool drains with
//!    them);
//! 3. swap certificates in each kept TLS listener's resolver (new handshakes only);
//! 4. stop the accept loops of removed listeners (their established connections go on);
//! 5. close the WebSockets of removed apps with 1001 (going away). WebSockets of kept apps keep
//!    their session, even when the app's settings changed.
//!
//! Anything failing before step 2 rejects the reload as a whole and the old configuration
//! keeps serving. Listeners are matched between configurations by `(addr, fd_name)` as
//! written in the configuration (so `127.0.0.1:0` keeps its resolved port).
//!
//! Socket activation (`LISTEN_FDS`): an entry with `fd_name` adopts the passed socket of that
//! name and is an error when systemd passed sockets but none of that name; when the process was
//! not socket-activated at all, `fd_name` is ignored and `addr` bound. An entry without
//! `fd_name` adopts a passed socket whose local address equals `addr`, else binds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::listen::{self, ListenerShared, TlsSetup};
use super::tls::{self, CertResolver};
use super::{build_runtime, BoundListener, RunningServer, StartError, State};
use crate::config::{Config, ConfigError, ListenConfig};
use crate::metrics::ResultLabel;
use crate::systemd::PassedSocket;
use crate::ws::close::code;

/// Why a reload was rejected (the running configuration is kept).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration does not load or validate.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The new configuration cannot be applied (app, certificate, socket).
    #[error(transparent)]
    Apply(#[from] StartError),
}

/// What a successful reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Apps served now that were not before.
    pub apps_added: Vec<String>,
    /// Apps no longer served (their WebSockets were closed with 1001).
    pub apps_removed: Vec<String>,
    /// Listeners opened.
    pub listeners_added: Vec<SocketAddr>,
    /// Listeners closed.
    pub listeners_removed: Vec<SocketAddr>,
    /// WebSockets closed because their app was removed.
    pub websockets_closed: usize,
}

struct ActiveListener {
    config: ListenConfig,
    bound: BoundListener,
    shared: Arc<ListenerShared>,
    stop: watch::Sender<bool>,
}

/// The server's listeners plus any sockets systemd passed that no entry has taken yet.
pub(crate) struct Listeners {
    active: Vec<ActiveListener>,
    passed: Vec<PassedSocket>,
    activated: bool,
}

/// One `[[listen]]` entry of a new configuration, ready to commit.
pub(crate) struct Prepared {
    config: ListenConfig,
    /// `Some` for an entry that is new (the socket is open already).
    socket: Option<(TcpListener, SocketAddr)>,
    /// The name of the systemd socket it adopted, if it did.
    adopted: Option<String>,
    /// The certificate for a TLS entry.
    key: Option<(Arc<CertifiedKey>, Arc<TlsSetup>)>,
}

/// Locks the listener set; a panic elsewhere while it was held leaves nothing half-done that
/// a reader could trip over (entries are pushed or removed whole).
pub(crate) fn lock(listeners: &Mutex<Listeners>) -> MutexGuard<'_, Listeners> {
    crate::locks::lock(listeners)
}

fn same_entry(a: &ListenConfig, b: &ListenConfig) -> bool {
    a.addr == b.addr && a.fd_name == b.fd_name
}

impl Listeners {
    pub(crate) fn new(passed: Vec<PassedSocket>) -> Self {
        let activated = !passed.is_empty();
        Self { active: Vec::new(), passed, activated }
    }

    pub(crate) fn bound(&self) -> Vec<BoundListener> {
        self.active.iter().map(|l| l.bound).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.active.len()
    }

    /// Loads every certificate of `config` and opens the sockets of entries not served yet.
    /// Nothing running is touched; dropping the result closes the new sockets again.
    pub(crate) fn prepare(&mut self, config: &Config) -> Result<Vec<Prepared>, StartError> {
        let mut prepared = Vec::with_capacity(config.listen.len());
        for entry in &config.listen {
            let key = match &entry.tls {
                Some(t) => {
                    let map = |source| StartError::Tls { addr: entry.addr, source };
                    let key = tls::load_certified_key(&t.cert, &t.key).map_err(map)?;
                    let resolver = Arc::new(CertResolver::new(key.clone()));
                    let server_config = tls::server_config(resolver.clone(), &t.cert).map_err(map)?;
                    Some((key, Arc::new(TlsSetup { acceptor: TlsAcceptor::from(server_config), resolver })))
                }
                None => None,
            };
            let (socket, adopted) = if self.active.iter().any(|a| same_entry(&a.config, entry)) {
                (None, None)
            } else {
                match self.open(entry) {
                    Ok((socket, adopted)) => (Some(socket), adopted),
                    Err(error) => {
                        // Give adopted sockets back so a later attempt can take them.
                        self.return_passed(prepared);
                        return Err(error);
                    }
                }
            };
            prepared.push(Prepared { config: entry.clone(), socket, adopted, key });
        }
        Ok(prepared)
    }

    fn return_passed(&mut self, prepared: Vec<Prepared>) {
        // Sockets adopted from systemd cannot be obtained again: keep them for a later attempt.
        for p in prepared {
            if let (Some(name), Some((listener, _))) = (p.adopted, p.socket) {
                if let Ok(std) = listener.into_std() {
                    self.passed.push(PassedSocket { name, listener: std });
                }
            }
        }
    }

    /// Adopts a passed socket for `entry` or binds `entry.addr` (rules in the module docs).
    /// Returns the socket and, when adopted, the name systemd passed it under.
    fn open(&mut self, entry: &ListenConfig) -> Result<((TcpListener, SocketAddr), Option<String>), StartError> {
        let activation = |e: std::io::Error| StartError::Activation(format!("listen {}: {e}", entry.addr));
        let position = match &entry.fd_name {
            Some(name) if self.activated => {
                Some(self.passed.iter().position(|p| &p.name == name).ok_or_else(|| {
                    StartError::Activation(format!(
                        "listen {}: fd_name \"{name}\": systemd passed no socket of that name (passed: {})",
                        entry.addr,
                        self.passed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?)
            }
            Some(_) => None,
            None => self.passed.iter().position(|p| p.listener.local_addr().ok() == Some(entry.addr)),
        };
        match position {
            Some(index) => {
                let passed = self.passed.remove(index);
                let opened = listen::adopt(passed.listener).map_err(activation)?;
                tracing::info!(addr = %opened.1, fd_name = %passed.name, "adopted socket from systemd");
                Ok((opened, Some(passed.name)))
            }
            None => listen::bind(entry.addr).map(|opened| (opened, None)).map_err(|source| {
                // The usual cause under systemd: wsgate.socket holds the port for an address
                // no entry names, so the socket was not adopted and the bind collides with it.
                match self.unadopted_on_port(entry.addr.port()) {
                    Some(passed) if source.kind() == std::io::ErrorKind::AddrInUse => StartError::Activation(format!(
                        "listen {addr}: cannot bind: {source}: systemd passed the socket {passed} (wsgate.socket), which no [[listen]] entry adopted; \
                         make a [[listen]] addr equal its address (or set fd_name to its name), or disable the socket unit (systemctl disable --now wsgate.socket)",
                        addr = entry.addr,
                    )),
                    _ => StartError::Bind { addr: entry.addr, source },
                }
            }),
        }
    }

    /// "`name` (address)" of a passed, not adopted socket listening on `port`.
    fn unadopted_on_port(&self, port: u16) -> Option<String> {
        self.passed.iter().find_map(|p| {
            let addr = p.listener.local_addr().ok()?;
            (addr.port() == port).then(|| format!("\"{}\" ({addr})", p.name))
        })
    }

    /// Makes `prepared` the listener set: starts new listeners, updates TLS of kept ones,
    /// stops removed ones (after the new ones run). Returns (added, removed) addresses.
    pub(crate) fn commit(&mut self, state: &Arc<State>, prepared: Vec<Prepared>) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut old = std::mem::take(&mut self.active);
        let mut added = Vec::new();
        for p in prepared {
            let tls_on = p.key.is_some();
            match p.socket {
                Some((listener, addr)) => {
                    let shared = Arc::new(ListenerShared::default());
                    shared.tls.store(p.key.map(|(_, setup)| setup));
                    let (stop, stopped) = watch::channel(false);
                    tracing::info!(%addr, tls = tls_on, "listening");
                    state.accept_loops.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    tokio::spawn(listen::accept_loop(state.clone(), listener, shared.clone(), stopped));
                    added.push(addr);
                    self.active.push(ActiveListener {
                        config: p.config,
                        bound: BoundListener { addr, tls: tls_on },
                        shared,
                        stop,
                    });
                }
                None => {
                    let Some(index) = old.iter().position(|a| same_entry(&a.config, &p.config)) else {
                        continue; // prepare() opened a socket for every entry not in `old`
                    };
                    let mut kept = old.remove(index);
                    match (p.key, kept.shared.tls.load_full()) {
                        // Same listener, new certificate: swap it in the resolver so the
                        // rustls config (and its session resumption state) stays.
                        (Some((key, _)), Some(current)) => current.resolver.set(key),
                        (Some((_, setup)), None) => kept.shared.tls.store(Some(setup)),
                        (None, _) => kept.shared.tls.store(None),
                    }
                    kept.bound.tls = tls_on;
                    kept.config = p.config;
                    self.active.push(kept);
                }
            }
        }
        let removed = old
            .into_iter()
            .map(|gone| {
                tracing::info!(addr = %gone.bound.addr, "listener removed; its connections continue");
                gone.stop.send_replace(true);
                gone.bound.addr
            })
            .collect();
        (added, removed)
    }

    pub(crate) fn warn_unused_passed(&mut self) {
        for p in &self.passed {
            let addr = p.listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown address".into());
            tracing::warn!(
                fd_name = %p.name,
                %addr,
                "socket passed by systemd matches no [[listen]] entry and is not used: make a [[listen]] addr equal {addr} (or set fd_name = \"{}\"), or disable the socket unit",
                p.name
            );
        }
    }
}

impl RunningServer {
    /// Applies a newly loaded configuration (see the module docs), or rejects it and keeps the
    /// running one. Counts `config_reloads_total{result}` and logs the outcome either way.
    /// Listeners, limits, upstream, TLS and apps change; `[admin]`, `[broker]` and `[log]`
    /// need a restart.
    pub async fn reload(&self, loaded: Result<Config, ConfigError>) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload(loaded);
        let label = ResultLabel { result: if result.is_ok() { "ok" } else { "error" } };
        self.state.metrics.config_reloads.get_or_create(&label).inc();
        match &result {
            Ok(summary) => tracing::info!(?summary, "configuration reloaded"),
            Err(error) => tracing::error!("configuration reload rejected, keeping the running configuration: {error}"),
        }
        result
    }

    fn try_reload(&self, loaded: Result<Config, ConfigError>) -> Result<ReloadSummary, ReloadError> {
        let config = loaded?;
        let state = &self.state;
        let old = state.runtime.load_full();
        for (section, changed) in [
            ("admin", old.config.admin != config.admin),
            ("broker", old.config.broker != config.broker),
            ("log", old.config.log != config.log),
        ] {
            if changed {
                tracing::warn!("[{section}] changed: takes effect after a restart");
            }
        }
        let runtime = build_runtime(&config, &state.hub, &state.channels, &state.metrics, Some(&old))?;
        let mut listeners = lock(&self.listeners);
        let prepared = listeners.prepare(&config)?;

        // Commit: nothing below can fail.
        let apps_added: Vec<String> = runtime.apps.keys().filter(|n| !old.apps.contains_key(*n)).cloned().collect();
        let apps_removed: Vec<String> = old.apps.keys().filter(|n| !runtime.apps.contains_key(*n)).cloned().collect();
        state.runtime.store(Arc::new(runtime));
        let (listeners_added, listeners_removed) = listeners.commit(state, prepared);
        drop(listeners);
        let mut websockets_closed = 0;
        if !apps_removed.is_empty() {
            for summary in state.hub.channel_summaries() {
                if apps_removed.contains(&summary.app) {
                    if let Some(channel) = state.hub.channel(summary.id.as_str()) {
                        // RFC 6455 §7.4.1: 1001 "going away" — the endpoint is gone.
                        channel.close(code::GOING_AWAY, "app removed");
                        websockets_closed += 1;
                    }
                }
            }
        }
        Ok(ReloadSummary { apps_added, apps_removed, listeners_added, listeners_removed, websockets_closed })
    }
}
