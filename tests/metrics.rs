//! Metrics after known traffic (DESIGN §7): the text `Metrics::render()` produces (what the
//! admin listener serves at `GET /metrics`) is parsed and every count checked exactly.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http_get, raw_request, start_gate, start_upstream, upgrade_request, WsClient};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsgate::config::{self, CliOverrides, ConfigSource};
use wsgate::ws::codec::Incoming as WsIncoming;

/// `series → value` for every sample line (`name{labels} value`), comments skipped.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} missing; have {:?}", samples.keys().collect::<Vec<_>>()))
}

const CONFIG: &str = r#"
[upstream]
url = "{UPSTREAM}"
connect_timeout = "1s"
response_timeout = "5s"

[[listen]]
addr = "127.0.0.1:0"

[[listen]]
addr = "127.0.0.2:0"
tls = { cert = "{CERT}", key = "{KEY}" }

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_known_traffic() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let toml = CONFIG.replace("{CERT}", cert.to_str().unwrap()).replace("{KEY}", key.to_str().unwrap());
    let gate = start_gate(&toml, up.addr).await;
    let tls_addr = gate.server.listeners()[1].addr;

    // N proxied requests: 7 answered 200, 3 answered 404 by the upstream.
    for _ in 0..7 {
        assert_eq!(http_get(gate.addr, "/echo").await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(http_get(gate.addr, "/nothing-here").await.0, 404);
    }

    // M = 5 WebSocket messages on one connection, echoed back; payloads < 126 bytes, so each
    // server frame is 2 header bytes + payload.
    let messages = ["a", "bb", "ccc", "hello world", "0123456789"];
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    for m in messages {
        ws.send_text(m).await;
        assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if t[..] == *m.as_bytes()));
    }
    let payload: usize = messages.iter().map(|m| m.len()).sum();
    {
        let text = gate.server.metrics().render();
        let s = parse(&text);
        assert_eq!(value(&s, r#"wsgate_connections_active{app="echo"}"#), 1.0, "{text}");
    }
    ws.send_frame(wsgate::ws::codec::OpCode::Close, true, &1000u16.to_be_bytes()).await;
    assert_eq!(ws.expect_close().await, Some(1000));

    // Two refused handshakes: wrong version (426) and a bad key (400).
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let r = raw_request(&mut s, upgrade_request("/websocket/echo", "").replace("Version: 13", "Version: 8").as_bytes())
        .await;
    assert_eq!(r.status, 426);
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let r = raw_request(
        &mut s,
        upgrade_request("/websocket/echo", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);

    // One failed TLS handshake: plain HTTP bytes sent to the TLS listener.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink)).await;

    // Reloads: one rejected (bad upstream URL), one accepted pointing at a closed port, then
    // 2 requests that fail upstream (connect refused → 502).
    let bad = config::load(
        ConfigSource::Text { name: "bad.toml".into(), text: "[upstream]\nurl = 5\n".into() },
        &CliOverrides::default(),
    );
    assert!(gate.server.reload(bad).await.is_err());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = toml.replace("{UPSTREAM}", &format!("http://{closed}"));
    let good = config::load(ConfigSource::Text { name: "good.toml".into(), text }, &CliOverrides::default());
    assert!(gate.server.reload(good).await.is_ok());
    for _ in 0..2 {
        assert_eq!(http_get(gate.addr, "/echo").await.0, 502);
    }

    // The session's counters are updated when it ends; wait for the hub to see it gone.
    for _ in 0..100 {
        if gate.server.hub().channel_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = gate.server.metrics().render();
    eprintln!("{text}");
    let s = parse(&text);
    let expect = [
        (r#"wsgate_proxy_requests_total{status_class="2xx"}"#, 7.0),
        (r#"wsgate_proxy_requests_total{status_class="4xx"}"#, 3.0),
        (r#"wsgate_proxy_requests_total{status_class="5xx"}"#, 2.0),
        ("wsgate_proxy_request_duration_seconds_count", 12.0),
        (r#"wsgate_upstream_errors_total{kind="connect"}"#, 2.0),
        (r#"wsgate_connections_total{app="echo"}"#, 1.0),
        (r#"wsgate_connections_active{app="echo"}"#, 0.0),
        (r#"wsgate_messages_received_total{app="echo"}"#, messages.len() as f64),
        (r#"wsgate_messages_sent_total{app="echo"}"#, messages.len() as f64),
        (r#"wsgate_bytes_received_total{app="echo"}"#, payload as f64),
        (r#"wsgate_bytes_sent_total{app="echo"}"#, (payload + 2 * messages.len()) as f64),
        (r#"wsgate_handshake_failures_total{reason="unsupported_version"}"#, 1.0),
        (r#"wsgate_handshake_failures_total{reason="bad_key"}"#, 1.0),
        ("wsgate_tls_handshake_failures_total", 1.0),
        (r#"wsgate_config_reloads_total{result="ok"}"#, 1.0),
        (r#"wsgate_config_reloads_total{result="error"}"#, 1.0),
        (r#"wsgate_build_info{version="0.1.0"}"#, 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&s, series), want, "{series}");
    }
    // Process metrics from /proc/self, without the wsgate_ prefix.
    assert!(value(&s, "process_resident_memory_bytes") > 1e6);
    assert!(value(&s, "process_open_fds") >= 5.0);
    assert!(value(&s, "process_max_fds") >= value(&s, "process_open_fds"));
    assert!(value(&s, "process_virtual_memory_bytes") > value(&s, "process_resident_memory_bytes"));
    assert!(value(&s, "process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = value(&s, "process_start_time_seconds");
    assert!(start <= now && start > now - 3600.0, "start {start}, now {now}");
    assert!(text.ends_with("# EOF\n"));
    gate.server.shutdown().await;
}
