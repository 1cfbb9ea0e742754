//! systemd integration (sd_notify(3), sd_listen_fds(3)): the only reader of `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `LISTEN_FDS`/`LISTEN_FDNAMES`. Without systemd every function is a no-op.
//!
//! The notify protocol as wsgate speaks it (DESIGN §8):
//! - `READY=1` (with `STATUS=`) once every listener is bound or adopted;
//! - `STATUS=` with listeners and connection counts, refreshed periodically;
//! - `WATCHDOG=1` every `WATCHDOG_USEC / 2`, only after a probe proved the runtime alive;
//! - on SIGHUP one datagram `RELOADING=1` + `MONOTONIC_USEC=`, then `READY=1` when the reload
//!   is over, also when the new configuration was rejected (else systemd stays "reloading");
//! - `STOPPING=1` when the drain starts.
//!
//! This module only reports; it never decides whether the service is healthy (the caller's
//! probe does).

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}

/// `READY=1` with a `STATUS=` line: startup (or a reload) is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=`: a free-form line `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd ≥ 253 requires both in one datagram).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading configuration")]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: the drain has started.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: draining connections")]);
}

/// Half of the watchdog timeout systemd asked for (`WATCHDOG_USEC`, honouring
/// `WATCHDOG_PID`), at most a day, or `None` when the watchdog is off. The cap keeps the
/// timers built from it clear of `Instant` overflow whatever the environment says; pinging
/// more often than asked is harmless.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| (d / 2).min(Duration::from_secs(86_400)))
}

/// Sends `WATCHDOG=1` every `interval` while `probe` succeeds. A probe that fails or does not
/// finish within `interval` sends nothing, so systemd's own timeout catches a wedged process;
/// because the loop itself runs on the runtime, a stalled runtime sends nothing either.
pub fn spawn_watchdog<P, F>(interval: Duration, probe: P) -> tokio::task::JoinHandle<()>
where
    P: Fn() -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::time::timeout(interval, probe()).await {
                Ok(true) => send(&[NotifyState::Watchdog]),
                Ok(false) => tracing::warn!("health probe failed; withholding the watchdog ping"),
                Err(_) => tracing::warn!("health probe timed out; withholding the watchdog ping"),
            }
        }
    })
}

/// Refreshes `STATUS=` every `interval` with what `line` returns.
pub fn spawn_status<L>(interval: Duration, line: L) -> tokio::task::JoinHandle<()>
where
    L: Fn() -> String + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(crate::time::deadline(interval), interval);
        loop {
            tick.tick().await;
            status(&line());
        }
    })
}

/// Whether a service manager listens for notifications (so periodic work is worth doing).
pub fn notify_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// A listening socket passed by the service manager.
#[derive(Debug)]
pub struct PassedSocket {
    /// Its `FileDescriptorName=` (`LISTEN_FDNAMES`); systemd's default is the socket unit's
    /// name, and `unknown` when no names were passed.
    pub name: String,
    /// The socket, still blocking.
    pub listener: TcpListener,
}

/// Takes the TCP listening sockets passed with `LISTEN_FDS` (only when `LISTEN_PID` is this
/// process). Non-TCP sockets are an error. Call once: the descriptors are owned afterwards.
pub fn take_listen_fds() -> std::io::Result<Vec<PassedSocket>> {
    // sd-notify checks LISTEN_PID and pairs descriptors with names; listenfd turns an index
    // into a std listener after checking the socket type (the conversion needs `unsafe`,
    // which wsgate forbids in its own code).
    let names: Vec<String> = sd_notify::listen_fds_with_names()?.map(|(_, name)| name).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut fds = listenfd::ListenFd::from_env();
    let mut passed = Vec::with_capacity(names.len());
    for (index, name) in names.into_iter().enumerate() {
        match fds.take_tcp_listener(index)? {
            Some(listener) => passed.push(PassedSocket { name, listener }),
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("passed socket {index} ({name}) is not a TCP listening socket"),
                ))
            }
        }
    }
    Ok(passed)
}
