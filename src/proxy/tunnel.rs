//! The byte tunnel for upgrades on non-app URLs (any `Upgrade` protocol, e.g. a
//! WebSocket served by the upstream itself): the upgrade request is forwarded with
//! `Upgrade`/`Connection: upgrade` kept (RFC 9110 §7.8), and once the upstream has
//! answered `101 Switching Protocols` both connections are spliced together. The
//! bytes are never inspected.

use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::error::{ProxyError, UpstreamError};
use super::{downstream_response, failure_response, headers, ClientInfo, Proxy, ProxyBody};

impl Proxy {
    /// For an upgrade request on a non-app URL: forwards it keeping `Upgrade` and
    /// `Connection: upgrade`; if the upstream answers 101, returns the 101 to the
    /// client and spawns a task copying bytes both ways between the two upgraded
    /// connections. Any other answer is returned as from [`forward`](Self::forward).
    ///
    /// Requests that are not HTTP/1.1 upgrades (no `Upgrade` plus `Connection:
    /// upgrade`) are simply forwarded. The client's server connection must be
    /// served with upgrades enabled (`serve_connection_with_upgrades`).
    pub async fn tunnel(&self, req: Request<Incoming>, client: &ClientInfo) -> Response<ProxyBody> {
        match self.try_tunnel(req, client).await {
            Ok(resp) => resp,
            Err(err) => failure_response(&err, client),
        }
    }

    /// [`tunnel`](Self::tunnel), returning the failure instead of its answer.
    pub async fn try_tunnel(
        &self,
        mut req: Request<Incoming>,
        client: &ClientInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let protocol = match req.version() {
            // Upgrade is an HTTP/1.1 mechanism; HTTP/2 forbids the field (RFC 9113 §8.2.2).
            Version::HTTP_11 => headers::upgrade_protocol(req.headers()),
            _ => None,
        };
        let Some(protocol) = protocol else {
            return self.try_forward(req, client).await;
        };
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        let upstream_req = self.upstream_request(parts, body, client, Some(protocol.clone()))?;
        let mut resp = self.inner.pool.send(upstream_req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return downstream_response(resp, None);
        }

        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        // RFC 9110 §15.2.2: a 101 names the protocol switched to; if the upstream
        // forgot, it can only be the one requested.
        let switched_to = resp.headers().get(header::UPGRADE).cloned().unwrap_or(protocol);
        let mut answer = downstream_response(resp, Some(switched_to))?;
        // A 101 has no body; the upgraded bytes flow through the spliced sockets.
        *answer.body_mut() = Empty::new().map_err(|never| match never {}).boxed();
        tokio::spawn(splice(client_upgrade, upstream_upgrade, *client));
        Ok(answer)
    }
}

/// Waits for both sides to hand over their connections (the client's once hyper
/// has written our 101), then copies bytes both ways until both directions are
/// shut down or one fails.
async fn splice(client_side: OnUpgrade, upstream_side: OnUpgrade, client: ClientInfo) {
    let (client_io, upstream_io) = match tokio::try_join!(client_side, upstream_side) {
        Ok(pair) => pair,
        Err(e) => {
            let err = UpstreamError::Upgrade(Box::new(e));
            tracing::debug!(peer = %client.peer, kind = err.kind(), error = ?err, "tunnel not established");
            return;
        }
    };
    let mut client_io = TokioIo::new(client_io);
    let mut upstream_io = TokioIo::new(upstream_io);
    match tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
        Ok((up, down)) => tracing::debug!(
            peer = %client.peer, local = %client.local, bytes_to_upstream = up,
            bytes_to_client = down, "tunnel closed"
        ),
        Err(e) => {
            tracing::debug!(peer = %client.peer, local = %client.local, error = %e, "tunnel failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn switched_response_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("foo"));
        headers::to_downstream(&mut h, Version::HTTP_11, Some(HeaderValue::from_static("foo")));
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "foo");
    }
}
