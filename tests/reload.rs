//! Reload semantics in-process (`RunningServer::reload`): an in-flight request finishes on the
//! upstream it started with while new requests use the new one; limits apply to new
//! connections only; a rejected configuration changes nothing.

mod common;

use common::{http_get, start_gate, start_upstream, WsClient};
use wsgate::config::{self, CliOverrides, ConfigSource};
use wsgate::ws::codec::Incoming as WsIncoming;

fn load(text: String) -> Result<wsgate::config::Config, wsgate::config::ConfigError> {
    config::load(ConfigSource::Text { name: "reload.toml".into(), text }, &CliOverrides::default())
}

/// Waits until the server has seen every earlier client connection close (the client side
/// closing first does not free the server's slot at once).
async fn idle(server: &wsgate::server::RunningServer) {
    let monitor = server.monitor();
    for _ in 0..250 {
        if monitor.status_line().contains("; 0 connections") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("connections still open: {}", monitor.status_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_old_upstream() {
    let old_up = start_upstream().await;
    let new_up = start_upstream().await;
    // /slow answers after 5 s: allow it.
    let toml = common::basic_config("").replace("response_timeout = \"2s\"", "response_timeout = \"10s\"");
    let gate = start_gate(&toml, old_up.addr).await;
    let addr = gate.addr;
    let slow = tokio::spawn(async move { http_get(addr, "/slow").await });
    // In flight once the old upstream has its connection (the request follows on it).
    for _ in 0..500 {
        if old_up.accepts() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(old_up.accepts(), 1, "the request reached the old upstream");

    // Switch the upstream, lower max_connections to 1 and add an app while /slow is in flight.
    let text = toml.replace("{UPSTREAM}", &format!("http://{}", new_up.addr))
        + "\n[limits]\nmax_connections = 1\n\n[apps.more]\nkind = \"echo\"\nurls = [\"/websocket/more\"]\n";
    let summary = gate.server.reload(load(text)).await.expect("reload accepted");
    assert_eq!(summary.apps_added, vec!["more".to_owned()]);
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"late"[..]), "the in-flight request finished");
    assert_eq!(old_up.connections.load(std::sync::atomic::Ordering::Relaxed), 1);

    // New requests go to the new upstream (one connection at a time now; the /slow client's
    // connection frees its slot once the server has seen it close).
    idle(&gate.server).await;
    assert_eq!(http_get(addr, "/echo").await.0, 200);
    assert_eq!(new_up.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(old_up.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    idle(&gate.server).await;
    let mut ws = WsClient::connect(addr, "/websocket/more").await;
    // max_connections = 1 is taken by the WebSocket: a second connection is refused with 503.
    assert_eq!(http_get(addr, "/echo").await.0, 503);
    ws.send_text("more").await;
    assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"more"));

    // A rejected reload (a TLS listener whose certificate cannot be read) changes nothing.
    let bad = toml.replace("{UPSTREAM}", &format!("http://{}", old_up.addr))
        + "\n[[listen]]\naddr = \"127.0.0.1:0\"\ntls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n";
    let error = gate.server.reload(load(bad)).await.expect_err("rejected");
    assert!(error.to_string().contains("/nonexistent/cert.pem"), "{error}");
    ws.send_text("still").await;
    assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"still"));
    drop(ws);
    gate.server.shutdown().await;
}
