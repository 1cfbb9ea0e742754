//! `GET /metrics`, `GET /healthz` and `GET /readyz`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tokio::sync::watch;

use super::{json, AdminState};
use crate::http::{full_body, Body};

/// The exposition format `prometheus-client` writes. It is OpenMetrics 1.0, not the older
/// Prometheus text format 0.0.4: counters are typed without `_total`, `build_info` is of
/// type `info`, and the text ends with `# EOF`. Prometheus picks its parser from this
/// Content-Type, and its 0.0.4 parser rejects the `info` type, so announcing `text/plain`
/// would make scrapes fail.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` checks: the public listeners accept (no drain has started), the upstream
/// accepts a TCP connection within a short timeout, and the broker is connected (the
/// in-memory broker always is).
#[derive(Clone)]
pub struct Readiness {
    /// `true` once shutdown has been signalled: the listeners stop accepting.
    pub draining: watch::Receiver<bool>,
    /// Number of public listeners bound.
    pub listeners: usize,
    /// `host:port` of the upstream.
    pub upstream: String,
    /// Time allowed for the upstream connect.
    pub upstream_timeout: Duration,
    /// The broker relaying to other nodes (`None`: this node alone).
    pub broker: Option<std::sync::Arc<dyn crate::pubsub::broker::Broker>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("listeners", &self.listeners)
            .field("upstream", &self.upstream)
            .field("broker", &self.broker.as_ref().map(|b| b.node().to_owned()))
            .finish_non_exhaustive()
    }
}

/// `GET /metrics`.
pub(crate) fn metrics(state: &AdminState) -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from(state.metrics.render())));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /healthz`: the process serves requests.
pub(crate) fn healthz() -> Response<Body> {
    let mut response = Response::new(full_body(Bytes::from_static(b"ok\n")));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `GET /readyz`: 200 when every check passes, 503 otherwise; the JSON body names each check.
pub(crate) async fn readyz(readiness: &Readiness) -> Response<Body> {
    let listeners = if *readiness.draining.borrow() {
        Err("draining: listeners closed".to_owned())
    } else if readiness.listeners == 0 {
        Err("no listener".to_owned())
    } else {
        Ok(())
    };
    let upstream =
        match tokio::time::timeout(readiness.upstream_timeout, tokio::net::TcpStream::connect(&readiness.upstream))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("{}: {error}", readiness.upstream)),
            Err(_) => Err(format!("{}: connect timed out after {:?}", readiness.upstream, readiness.upstream_timeout)),
        };
    let broker = match &readiness.broker {
        Some(broker) if !broker.is_connected() => Err("broker disconnected: reconnecting".to_owned()),
        _ => Ok(()),
    };
    let ready = listeners.is_ok() && upstream.is_ok() && broker.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let body = serde_json::json!({
        "ready": ready,
        "checks": { "listeners": show(&listeners), "upstream": show(&upstream), "broker": show(&broker) },
    });
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
