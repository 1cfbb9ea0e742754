//! Faults (issue #9, part 2): TLS handshake garbage, subscribers that vanish without a Close,
//! log output that cannot be written, and log-view files that cannot be read. Tested
//! elsewhere: upstream killed mid-response (`upstream_dying_mid_body_aborts_the_client_without_hanging`)
//! and slow upstream → 504 (`silent_upstream_gives_504_after_response_timeout`), both in
//! tests/proxy_module.rs; a directory in place of a log file
//! (`logview_reports_an_unreadable_file_to_the_client`, tests/apps.rs).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::apps::Message;
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

// === TLS handshake garbage ===

fn client_config() -> Arc<rustls::ClientConfig> {
    trusting_client_config().0
}

/// A real ClientHello, as the first bytes a TLS client sends.
fn client_hello() -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(client_config(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100 && out[0] == 0x16, "a handshake record");
    out
}

/// Sends `bytes` (optionally then half-closes) and waits for the server to close. Returns what
/// it answered and how long it took.
async fn send_garbage(addr: SocketAddr, bytes: &[u8], half_close: bool) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(bytes).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await.expect("the server closed the connection") {
            Ok(0) | Err(_) => return (answer, started.elapsed()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// A WebSocket echo round trip and an HTTPS GET over fresh TLS connections.
async fn tls_client_served(addr: SocketAddr, round: usize) {
    let connector = tokio_rustls::TlsConnector::from(client_config());
    // HTTPS GET, proxied.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut answer)).await.unwrap().ok();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
    // wss:// echo.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake");
    let text = format!("over tls {round}");
    assert_eq!(ws_echo(&mut tls, &text).await, text);
}

/// Upgrades `io` at /websocket/echo, sends `text` and returns the echoed text.
async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, text: &str) -> String {
    let (head, mut buf) = common::upgrade_over(io, "/websocket/echo", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut out = BytesMut::new();
    encode_frame(&mut out, OpCode::Text, true, false, text.as_bytes(), Some([1, 2, 3, 4]));
    io.write_all(&out).await.unwrap();
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Some(WsIncoming::Text(t)) => return String::from_utf8(t.to_vec()).unwrap(),
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                let n = tokio::time::timeout(TIMEOUT, io.read_buf(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "closed before the echo");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_garbage_is_closed_and_tls_clients_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let up = start_upstream().await;
    let extra = format!(
        "[[listen]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n[limits]\nheader_read_timeout = \"2s\"\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let gate = start_gate(&basic_config(&extra), up.addr).await;
    let tls_addr = gate.server.listeners().iter().find(|l| l.tls).expect("a TLS listener").addr;
    tls_client_served(tls_addr, 0).await;

    let hello = client_hello();
    // Pseudo-random bytes (an LCG: reproducible), once starting like a handshake record.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let mut record_then_noise = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    record_then_noise.extend_from_slice(&random[..512]);
    let mut bad_hello = hello.clone();
    let len = bad_hello.len();
    bad_hello[len / 2..].iter_mut().for_each(|b| *b ^= 0x5a);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes", random.clone(), false),
        ("a handshake record header then noise", record_then_noise, false),
        ("plaintext HTTP to the TLS port", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), false),
        ("plaintext WebSocket upgrade to the TLS port", upgrade_request("/websocket/echo", "").into_bytes(), false),
        ("a corrupted ClientHello", bad_hello, false),
        ("a truncated ClientHello, then EOF", hello[..hello.len() / 2].to_vec(), true),
        ("nothing, then EOF", Vec::new(), true),
        // Stalls: closed by the handshake deadline (header_read_timeout).
        ("a truncated ClientHello, then silence", hello[..hello.len() / 2].to_vec(), false),
        ("a lone record header, then silence", hello[..5].to_vec(), false),
    ];
    for (round, (name, bytes, half_close)) in cases.iter().enumerate() {
        let (answer, took) = send_garbage(tls_addr, bytes, *half_close).await;
        assert!(!answer.starts_with(b"HTTP/"), "{name}: no HTTP answer on a TLS port");
        // At most a TLS alert record (content type 21) comes back.
        assert!(answer.is_empty() || answer[0] == 0x15, "{name}: answered {answer:02x?}");
        eprintln!("TLS garbage: {name}: closed after {took:?} ({} answer bytes)", answer.len());
        tls_client_served(tls_addr, round + 1).await;
    }
    assert_eq!(
        gate.server.metrics().tls_handshake_failures.get(),
        cases.len() as u64,
        "every garbage connection is counted once as a failed handshake"
    );
    // The plain listener is unaffected too.
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_text("plain").await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"plain"))));
    drop(ws);
    gate.server.shutdown().await;
}

// === subscribers vanishing without a Close ===

/// A chat member that keeps its own connection alive (pings) and collects what it receives.
struct Member {
    ws: WsClient,
    texts: Vec<String>,
}

impl Member {
    async fn join(addr: SocketAddr) -> Member {
        Member { ws: WsClient::connect(addr, "/chat").await, texts: Vec::new() }
    }

    /// One ping round trip: proves the connection is alive, keeps it from going idle, and
    /// collects whatever text arrived before the pong.
    async fn pump(&mut self) {
        self.ws.send_frame(OpCode::Ping, true, b"alive").await;
        loop {
            match self.ws.next().await.expect("member connection open") {
                WsIncoming::Pong(p) if &p[..] == b"alive" => return,
                WsIncoming::Text(t) => self.texts.push(String::from_utf8_lossy(&t).into_owned()),
                WsIncoming::Ping(_) | WsIncoming::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn room_members(gate: &Gate) -> usize {
    gate.server.hub().subscriptions().into_iter().find(|(name, _)| name.starts_with("chat:")).map_or(0, |(_, n)| n)
}

fn room_name(gate: &Gate) -> String {
    gate.server.hub().subscriptions().into_iter().find(|(name, _)| name.starts_with("chat:")).expect("the chat room").0
}

/// Pumps `stay` until `done` holds (at most 30 s).
async fn pump_until(gate: &Gate, stay: &mut Member, what: &str, done: impl Fn(&Gate) -> bool) {
    let started = Instant::now();
    while !done(gate) {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: still not true after 30 s");
        stay.pump().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_vanishing_without_a_close_leave_the_room_and_the_others_keep_receiving() {
    let up = start_upstream().await;
    let config = basic_config(
        "[apps.chat]\nkind = \"chat\"\nurls = [\"/chat\"]\n[websocket]\nping_interval = \"300ms\"\nidle_timeout = \"1500ms\"\n",
    );
    let gate = start_gate(&config, up.addr).await;
    let mut stay = Member::join(gate.addr).await;
    let reset = Member::join(gate.addr).await;
    let vanish = Member::join(gate.addr).await;
    let silent = Member::join(gate.addr).await;
    pump_until(&gate, &mut stay, "four members", |g| room_members(g) == 4).await;
    let room = room_name(&gate);
    let publish =
        |text: &str| gate.server.hub().multicast(&room, &Message::Text(Bytes::from(text.to_owned())), &[]).delivered;
    assert_eq!(publish("to four"), 4);

    // 1. The TCP connection is reset (RST), no Close frame.
    reset.ws.stream.set_zero_linger().unwrap();
    drop(reset);
    // 2. The socket is simply closed (FIN), no Close frame.
    drop(vanish);
    pump_until(&gate, &mut stay, "the vanished members left", |g| room_members(g) == 2).await;
    assert_eq!(publish("to two"), 2, "multicast goes on to the members left");

    // 3. Half-open: the peer stops answering (never reads, never sends; its kernel still ACKs).
    //    The idle timeout closes it (1001) and the close timeout ends it.
    let started = Instant::now();
    pump_until(&gate, &mut stay, "the silent member left", |g| room_members(g) == 1).await;
    let silent_gone = started.elapsed();
    assert_eq!(publish("to one"), 1);
    stay.pump().await;
    for text in ["to four", "to two", "to one"] {
        assert!(stay.texts.iter().any(|t| t == text), "the member who stayed got {text:?}: {:?}", stay.texts);
    }
    // Nothing left behind: one channel, one member, one active connection counted.
    assert_eq!(gate.server.hub().channel_count(), 1);
    let active =
        gate.server.metrics().connections_active.get_or_create(&wsgate::metrics::AppLabel { app: "chat".into() }).get();
    assert_eq!(active, 1, "connections_active{{app=\"chat\"}}");
    // What the silent peer finds when it reads again: pings, then Close 1001.
    let mut silent = silent;
    assert_eq!(silent.ws.expect_close().await, Some(1001));
    eprintln!("vanishing subscribers: the silent member was removed {silent_gone:?} after the others");
    drop((stay, silent));
    gate.server.shutdown().await;
}

// === log output that cannot be written ===

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_with_stderr(config: &Path, stderr: Stdio, log: &str) -> Spawned {
    Spawned(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `addr` accepts connections (the binary cannot tell us: its log is gone).
async fn wait_listening(child: &mut Spawned, addr: SocketAddr) {
    let started = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "wsgate exited at startup");
        assert!(started.elapsed() < Duration::from_secs(20), "wsgate did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Spawned, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.0.id().to_string()]).status().unwrap().success());
}

fn wait_exit(child: &mut Spawned, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "wsgate did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_on_a_full_disk_does_not_stop_the_server() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = basic_config("")
        .replace("{UPSTREAM}", &format!("http://{}", up.addr))
        .replace("127.0.0.1:0", &addr.to_string());
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, text).unwrap();
    // /dev/full: every write fails with ENOSPC. Debug level so nearly everything logs.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut gate = spawn_with_stderr(&config, Stdio::from(full), "debug");
    wait_listening(&mut gate, addr).await;
    for round in 0..20 {
        let mut ws = WsClient::connect(addr, "/websocket/echo").await;
        ws.send_text("disk full").await;
        assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"disk full"))), "round {round}");
        // Protocol error: logged at debug, closed 1002.
        ws.send_raw(&[0x81, 0x02, b'h', b'i']).await;
        assert_eq!(ws.expect_close().await, Some(1002));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(raw_request(&mut stream, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n").await.status, 200);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(raw_request(&mut stream, b"GARBAGE\r\n\r\n").await.status, 400);
        if round == 10 {
            // A reload logs several lines at info.
            signal(&gate, "-HUP");
        }
    }
    assert!(gate.0.try_wait().unwrap().is_none(), "wsgate is still running");
    // And it still shuts down cleanly.
    signal(&gate, "-TERM");
    let status = wait_exit(&mut gate, Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
}

// === log-view: a file that cannot be read ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logview_refuses_a_fifo_without_hanging_the_viewer_or_the_shutdown() {
    // A FIFO in place of a log file: opening it would block until a writer appears (root
    // included, unlike chmod 000). A directory in place of the file is in tests/apps.rs.
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("p.log");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let good = dir.path().join("good.log");
    std::fs::write(&good, "one\ntwo\n").unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = basic_config(&format!(
        "[apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [{:?}, {:?}]\nrefresh = \"100ms\"\n[limits]\nshutdown_timeout = \"2s\"\n",
        fifo.display().to_string(),
        good.display().to_string()
    ))
    .replace("{UPSTREAM}", &format!("http://{}", up.addr))
    .replace("127.0.0.1:0", &addr.to_string());
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, text).unwrap();
    let mut gate = spawn_with_stderr(&config, Stdio::null(), "info");
    wait_listening(&mut gate, addr).await;
    let mut ws = WsClient::connect(addr, "/logs").await;
    let json = |event: Option<WsIncoming>| -> serde_json::Value {
        match event {
            Some(WsIncoming::Text(t)) => serde_json::from_slice(&t).unwrap(),
            other => panic!("expected JSON text, got {other:?}"),
        }
    };
    assert_eq!(json(ws.next().await)["type"], "files");
    ws.send_text(r#"{"type":"subscribe","file":"p.log"}"#).await;
    let mut got = Vec::new();
    while !got.iter().any(|m: &serde_json::Value| m["type"] == "error") {
        got.push(json(ws.next().await));
    }
    let error = got.last().unwrap();
    assert_eq!(error["message"], "cannot read p.log: not a regular file", "{got:?}");
    // The other file is served as usual.
    ws.send_text(r#"{"type":"subscribe","file":"good.log"}"#).await;
    loop {
        let m = json(ws.next().await);
        if m["type"] == "lines" && m["file"] == "good.log" {
            assert_eq!(m["lines"], serde_json::json!(["one", "two"]));
            break;
        }
    }
    drop(ws);
    // A tail stuck opening the FIFO would keep the process alive after shutdown.
    signal(&gate, "-TERM");
    let status = wait_exit(&mut gate, Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
}
