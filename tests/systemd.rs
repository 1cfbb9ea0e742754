//! systemd integration and reload, against the real binary: the notify protocol seen on a
//! NOTIFY_SOCKET datagram socket, socket activation (systemd-socket-activate, and fds passed by
//! hand), and a SIGHUP reload under load (proxied requests on plain and TLS listeners, 100 open
//! WebSockets, an app added and removed, a certificate replaced).
//!
//! Every datagram received is printed with its arrival time (`--nocapture` shows them).

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{start_upstream, trusting_client_config, RecordingVerifier, WsClient};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use wsgate::ws::codec::Incoming as WsIncoming;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// The wsgate child process; killed if the test ends early.
struct Gate {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Gate {
    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "wsgate did not exit in time; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The receiving end of NOTIFY_SOCKET.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    started: Instant,
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify { socket, path, started: Instant::now(), seen: Vec::new() }
    }

    /// The next datagram within `limit`, or `None`.
    fn recv(&mut self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        eprintln!("[notify +{:>5} ms] {}", self.started.elapsed().as_millis(), text.trim_end().replace('\n', " | "));
        self.seen.push(text.clone());
        Some(text)
    }

    /// Skips datagrams until one satisfies `want`; panics after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no datagram with {what} within {limit:?}; seen: {:?}", self.seen);
            if let Some(d) = self.recv(left) {
                if want(&d) {
                    return d;
                }
            }
        }
    }
}

fn has(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| l == line)
}

fn field<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    datagram.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The addresses in a `STATUS=listening on A, B (tls); ...` line, with their TLS flag.
fn status_listeners(datagram: &str) -> Vec<(SocketAddr, bool)> {
    let status = field(datagram, "STATUS").expect("STATUS line");
    let list = status.strip_prefix("listening on ").and_then(|s| s.split(';').next()).expect("listener list");
    list.split(", ")
        .map(|item| match item.strip_suffix(" (tls)") {
            Some(addr) => (addr.parse().unwrap(), true),
            None => (item.parse().unwrap(), false),
        })
        .collect()
}

fn spawn(config: &Path, dir: &Path, envs: &[(&str, &str)]) -> Gate {
    let stderr = dir.join("wsgate.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"]).arg(config).env("RUST_LOG", "info").stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Gate { child: cmd.spawn().unwrap(), stderr }
}

fn config_text(upstream: SocketAddr, extra_listen: &str, extra_apps: &str) -> String {
    format!(
        r#"
[upstream]
url = "http://{upstream}"
connect_timeout = "1s"
response_timeout = "5s"

# The default admin address (127.0.0.1:9090) would collide between parallel tests.
[admin]
addr = "off"

[[listen]]
addr = "127.0.0.1:0"
{extra_listen}

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
{extra_apps}
"#
    )
}

#[test]
fn notify_protocol_ready_status_watchdog_reload_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(dir.path());
    let config = dir.path().join("wsgate.toml");
    // No upstream needed: proxied requests answer 502, which is still an answer.
    std::fs::write(&config, config_text("127.0.0.1:9".parse().unwrap(), "", "")).unwrap();
    let mut gate =
        spawn(&config, dir.path(), &[("NOTIFY_SOCKET", notify.path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);

    // READY=1 arrives with STATUS=, and the listener it names accepts at once.
    let ready = notify.wait_for("READY=1", Duration::from_secs(10), |d| has(d, "READY=1"));
    let listeners = status_listeners(&ready);
    assert_eq!(listeners.len(), 1, "{ready}");
    let addr = listeners[0].0;
    assert!(std::net::TcpStream::connect(addr).is_ok(), "connect to {addr} after READY=1");
    assert!(field(&ready, "STATUS").unwrap().contains("0 WebSockets"), "{ready}");

    // WATCHDOG=1 every WATCHDOG_USEC/2 = 200 ms: the first within 200 ms (+ generous slack for
    // a loaded CI machine), then about ten in the next two seconds.
    let t = Instant::now();
    notify.wait_for("WATCHDOG=1", Duration::from_millis(1000), |d| has(d, "WATCHDOG=1"));
    let first = t.elapsed();
    let mut pings = 0;
    let mut statuses = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        if let Some(d) = notify.recv(Duration::from_millis(300)) {
            pings += usize::from(has(&d, "WATCHDOG=1"));
            statuses += usize::from(field(&d, "STATUS").is_some());
        }
    }
    eprintln!("first WATCHDOG after {first:?}; {pings} pings and {statuses} STATUS refreshes in the next 2 s");
    assert!(first <= Duration::from_millis(1000), "first watchdog after {first:?}");
    assert!((6..=14).contains(&pings), "{pings} watchdog pings in 2 s at a 200 ms interval");
    assert!(statuses >= 5, "STATUS refreshed periodically: {statuses} in 2 s");

    // SIGHUP with a valid configuration: RELOADING=1 and MONOTONIC_USEC in one datagram, then
    // READY=1.
    gate.signal("-HUP");
    let reloading = notify.wait_for("RELOADING=1", Duration::from_secs(5), |d| has(d, "RELOADING=1"));
    let usec: u64 = field(&reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC with RELOADING=1").parse().unwrap();
    assert!(usec > 0);
    notify.wait_for("READY=1 after reload", Duration::from_secs(5), |d| has(d, "READY=1"));

    // SIGHUP with an invalid configuration: still RELOADING=1 … READY=1, the old configuration
    // keeps serving, the rejection is logged.
    std::fs::write(&config, "[upstream]\nurl = \"not a url\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n").unwrap();
    gate.signal("-HUP");
    let reloading2 = notify.wait_for("RELOADING=1", Duration::from_secs(5), |d| has(d, "RELOADING=1"));
    let usec2: u64 = field(&reloading2, "MONOTONIC_USEC").unwrap().parse().unwrap();
    assert!(usec2 > usec, "MONOTONIC_USEC increases: {usec} then {usec2}");
    let ready2 = notify.wait_for("READY=1 after a rejected reload", Duration::from_secs(5), |d| has(d, "READY=1"));
    assert_eq!(status_listeners(&ready2), listeners, "same listener after a rejected reload");
    assert!(gate.log().contains("configuration reload rejected"), "log:\n{}", gate.log());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "old config still serving: {answer}");

    // SIGTERM: STOPPING=1, exit 0.
    gate.signal("-TERM");
    notify.wait_for("STOPPING=1", Duration::from_secs(5), |d| has(d, "STOPPING=1"));
    assert!(gate.wait_exit(Duration::from_secs(10)).success());
}

/// A free port on 127.0.0.1 (bound and released; the tests bind it again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get_status(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", "t").body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// Retries `get_status` until the socket-activated child answers (it starts on the first
/// connection, so the first request may wait for it).
async fn get_with_retry(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), get_status(addr, path)).await {
            Ok(Ok(answer)) => return answer,
            other if Instant::now() > deadline => panic!("no answer from {addr}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_with_systemd_socket_activate() {
    let Ok(tool) = which("systemd-socket-activate") else {
        // The hand-passed test below covers the same path without the tool.
        eprintln!("systemd-socket-activate not installed; covered by socket_activation_fds_passed_by_hand");
        return;
    };
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wsgate.toml");
    // The [[listen]] address differs from the passed socket's on purpose: fd_name decides.
    let text =
        config_text(up.addr, "fd_name = \"http\"", "").replace("addr = \"127.0.0.1:0\"", "addr = \"127.0.0.1:1\"");
    std::fs::write(&config, text).unwrap();
    let stderr = dir.path().join("wsgate.log");
    let child = Command::new(tool)
        .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=http", "-E", "RUST_LOG=info", BIN, "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut gate = Gate { child, stderr };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = get_with_retry(addr, "/echo").await;
    assert_eq!(status, 200, "proxied through the passed socket");
    assert!(body.is_empty());
    let mut ws = WsClient::connect(addr, "/websocket/echo").await;
    ws.send_text("activated").await;
    assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"activated"));
    let log = gate.log();
    eprintln!("wsgate log:\n{log}");
    assert!(log.contains("adopted socket from systemd"), "{log}");
    assert!(!log.contains("127.0.0.1:1 "), "the configured address was not bound: {log}");
    drop(ws);
    gate.signal("-TERM");
    assert!(gate.wait_exit(Duration::from_secs(10)).success());
}

/// Starts wsgate the way systemd does for a socket unit, without systemd: Python binds
/// 127.0.0.1:`port`, puts the socket at fd 3 and execs wsgate with LISTEN_FDS=1,
/// LISTEN_PID=<its own pid, kept by exec> and LISTEN_FDNAMES=`name`.
fn spawn_with_passed_socket(port: u16, name: &str, config: &Path, dir: &Path) -> Gate {
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=sys.argv[2])
os.execve(sys.argv[3], sys.argv[3:], env)
"#;
    let stderr = dir.join("wsgate.log");
    let child = Command::new("python3")
        .args(["-c", script, &port.to_string(), name, BIN, "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Gate { child, stderr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_fds_passed_by_hand() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, config_text(up.addr, "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))).unwrap();
    let mut gate = spawn_with_passed_socket(port, "web", &config, dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // No fd_name in the config: the passed socket is matched by its address.
    let (status, _) = get_with_retry(addr, "/echo").await;
    assert_eq!(status, 200);
    let log = gate.log();
    assert!(log.contains("adopted socket from systemd") && log.contains("fd_name=web"), "{log}");
    gate.signal("-TERM");
    assert!(gate.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn socket_activation_without_the_named_socket_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, config_text("127.0.0.1:9".parse().unwrap(), "fd_name = \"https\"", "")).unwrap();
    let mut gate = spawn_with_passed_socket(port, "http", &config, dir.path());
    let status = gate.wait_exit(Duration::from_secs(10));
    let log = gate.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(r#"fd_name "https": systemd passed no socket of that name (passed: http)"#), "{log}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .ok_or(())
}

fn tls_connector() -> (tokio_rustls::TlsConnector, Arc<RecordingVerifier>) {
    let (config, verifier) = trusting_client_config();
    (tokio_rustls::TlsConnector::from(config), verifier)
}

/// One request over a fresh TLS connection (so every request is a new handshake).
async fn tls_get(connector: &tokio_rustls::TlsConnector, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls =
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", "t")
        .body(http_body_util::Full::new(Bytes::from_static(b"tls")))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if &body[..] != b"tls" {
        return Err(format!("body {body:?}"));
    }
    Ok(status)
}

fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_keeps_requests_and_websockets() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(dir.path());
    let (cert1, key1, der1) = write_cert(dir.path(), "one");
    let (cert2, key2, der2) = write_cert(dir.path(), "two");
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&cert1, &live_cert).unwrap();
    std::fs::copy(&key1, &live_key).unwrap();
    let tls_listen = format!(
        "[[listen]]\naddr = \"127.0.0.2:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        live_cert.display(),
        live_key.display()
    );
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, config_text(up.addr, &tls_listen, "")).unwrap();
    let gate = spawn(&config, dir.path(), &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    let ready =
        tokio::task::block_in_place(|| notify.wait_for("READY=1", Duration::from_secs(10), |d| has(d, "READY=1")));
    let listeners = status_listeners(&ready);
    let plain = listeners.iter().find(|l| !l.1).unwrap().0;
    let tls = listeners.iter().find(|l| l.1).unwrap().0;

    // 100 open WebSockets on the app that stays.
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(WsClient::connect(plain, "/websocket/echo").await);
    }
    // Before the reload /websocket/added is not an app: the upstream answers (404).
    assert_eq!(get_status(plain, "/websocket/added").await.unwrap().0, 404);

    // Load: 4 loops of keep-alive proxied requests (plain), 2 loops of new TLS connections.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let (connector, verifier) = tls_connector();
    let mut loops = Vec::new();
    for i in 0..6 {
        let (stop, ok, failures, connector) = (stop.clone(), ok.clone(), failures.clone(), connector.clone());
        loops.push(tokio::spawn(async move {
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                let result = if i < 4 {
                    if sender.is_none() {
                        let stream = TcpStream::connect(plain).await.unwrap();
                        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                        tokio::spawn(conn);
                        sender = Some(s);
                    }
                    let s: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>> =
                        sender.as_mut().unwrap();
                    let req = hyper::Request::post("/echo")
                        .header("host", "t")
                        .body(http_body_util::Full::new(Bytes::from_static(b"x")))
                        .unwrap();
                    match s.send_request(req).await {
                        Ok(resp) if resp.status() == 200 => {
                            match resp.into_body().collect().await.map(|b| b.to_bytes()) {
                                Ok(b) if &b[..] == b"x" => Ok(200),
                                other => Err(format!("body: {other:?}")),
                            }
                        }
                        Ok(resp) => Err(format!("status {}", resp.status())),
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    match tls_get(&connector, tls, "/echo").await {
                        Ok(200) => Ok(200),
                        Ok(s) => Err(format!("status {s}")),
                        Err(e) => Err(e),
                    }
                };
                match result {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(verifier.last.lock().unwrap().as_ref(), Some(&der1), "first certificate before the reload");

    // Reload: add an app, replace the certificate (same paths, new files).
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    // … and add a listener.
    let added = "[apps.added]\nkind = \"echo\"\nurls = [\"/websocket/added\"]\n";
    let more_listen = format!("{tls_listen}[[listen]]\naddr = \"127.0.0.3:0\"\n");
    std::fs::write(&config, config_text(up.addr, &more_listen, added)).unwrap();
    let before = ok.load(Ordering::Relaxed);
    gate.signal("-HUP");
    let ready = tokio::task::block_in_place(|| {
        notify.wait_for("RELOADING=1", Duration::from_secs(5), |d| has(d, "RELOADING=1"));
        notify.wait_for("READY=1", Duration::from_secs(5), |d| has(d, "READY=1"))
    });
    let after = status_listeners(&ready);
    assert_eq!(after.len(), 3, "{ready}");
    assert_eq!(&after[..2], &listeners[..], "kept listeners keep their ports");
    let third = after[2].0;
    assert_eq!(third.ip().to_string(), "127.0.0.3");
    assert_eq!(get_status(third, "/echo").await.unwrap().0, 200, "the added listener serves");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let total = ok.load(Ordering::Relaxed);
    let failed = failures.lock().unwrap().clone();
    eprintln!("requests: {total} ok ({} after SIGHUP), {} failed: {failed:?}", total - before, failed.len());
    assert!(failed.is_empty(), "failed requests across the reload: {failed:?}");
    assert!(total - before > 20, "load kept running across the reload");
    // The load's connector resumes sessions (no certificate in a resumed handshake): check
    // with a fresh one that full handshakes now present the new certificate.
    drop(verifier);
    let (fresh, fresh_verifier) = tls_connector();
    assert_eq!(tls_get(&fresh, tls, "/echo").await, Ok(200));
    assert_eq!(fresh_verifier.last.lock().unwrap().as_ref(), Some(&der2), "new TLS handshakes get the new certificate");

    // Every WebSocket survived and still echoes.
    for (i, ws) in sockets.iter_mut().enumerate() {
        let text = format!("after reload {i}");
        ws.send_text(&text).await;
        match ws.next().await {
            Some(WsIncoming::Text(t)) if t[..] == *text.as_bytes() => {}
            other => panic!("WebSocket {i} after the reload: {other:?}"),
        }
    }
    // The added app answers WebSockets.
    let mut added_ws = WsClient::connect(plain, "/websocket/added").await;
    added_ws.send_text("new app").await;
    assert!(matches!(added_ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"new app"));

    // Remove the app and the listener again: the app's WebSocket gets 1001, the listener
    // stops accepting, the 100 others are untouched.
    let mut on_third = TcpStream::connect(third).await.unwrap();
    std::fs::write(&config, config_text(up.addr, &tls_listen, "")).unwrap();
    gate.signal("-HUP");
    let ready = tokio::task::block_in_place(|| {
        notify.wait_for("RELOADING=1", Duration::from_secs(5), |d| has(d, "RELOADING=1"));
        notify.wait_for("READY=1", Duration::from_secs(5), |d| has(d, "READY=1"))
    });
    assert_eq!(status_listeners(&ready), listeners, "{ready}");
    // The accept loop ends asynchronously after READY=1: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(third).await.is_ok() {
        assert!(Instant::now() < deadline, "removed listener {third} still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A connection accepted before the removal is still served.
    let answer = common::raw_request(&mut on_third, b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 200, "established connection on a removed listener keeps working");
    assert_eq!(added_ws.expect_close().await, Some(1001), "removed app's WebSocket closes with 1001");
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send_text("still").await;
        assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"still"), "WebSocket {i}");
    }
    assert_eq!(get_status(plain, "/websocket/added").await.unwrap().0, 404, "the URL is proxied again");
    let log = gate.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    drop(gate);
}

/// `wsgate reload` (ExecReload=) as systemd runs it: the daemon's runtime directory in
/// $RUNTIME_DIRECTORY, the daemon's pid from --pid ($MAINPID under systemd).
fn wsgate_reload(dir: &Path, pid: u32) -> std::process::Output {
    Command::new(BIN)
        .args(["reload", "--timeout", "10s", "--pid", &pid.to_string()])
        .env("RUNTIME_DIRECTORY", dir)
        .env_remove("MAINPID")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_subcommand_reports_the_daemons_answer() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wsgate.toml");
    let base = config_text(up.addr, "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, &base).unwrap();
    let runtime_dir = dir.path().to_str().unwrap().to_owned();
    let mut gate = spawn(&config, dir.path(), &[("RUNTIME_DIRECTORY", &runtime_dir)]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_with_retry(addr, "/echo").await.0, 200);
    let pid = gate.child.id();

    // A valid change: exit 0, the new app serves.
    std::fs::write(&config, format!("{base}\n[apps.echo2]\nkind = \"echo\"\nurls = [\"/websocket/echo2\"]\n")).unwrap();
    let out = wsgate_reload(dir.path(), pid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valid reload: {stderr}\nlog:\n{}", gate.log());
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    let mut ws = WsClient::connect(addr, "/websocket/echo2").await;
    ws.send_text("hi").await;
    assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"hi"));

    // Valid TOML that cannot be applied: a port another socket holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    std::fs::write(&config, format!("{base}\n[[listen]]\naddr = \"{taken}\"\n")).unwrap();
    let out = wsgate_reload(dir.path(), pid);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "apply-time rejection must fail: {stderr}");
    assert!(stderr.contains("reload rejected") && stderr.contains(&taken.to_string()), "{stderr}");
    // The old configuration (echo2 included) keeps serving.
    assert_eq!(get_with_retry(addr, "/echo").await.0, 200);
    let mut ws = WsClient::connect(addr, "/websocket/echo2").await;
    ws.send_text("still").await;
    assert!(matches!(ws.next().await, Some(WsIncoming::Text(t)) if &t[..] == b"still"));

    // Invalid at check time (does not parse): rejected as well.
    std::fs::write(&config, "this is = = not toml").unwrap();
    let out = wsgate_reload(dir.path(), pid);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    // Back to a good file: accepted again (the generation keeps counting).
    std::fs::write(&config, &base).unwrap();
    let out = wsgate_reload(dir.path(), pid);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Without --pid the status file names the daemon.
    let out = Command::new(BIN)
        .args(["reload", "--timeout", "10s"])
        .env("RUNTIME_DIRECTORY", dir.path())
        .env_remove("MAINPID")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    gate.signal("-TERM");
    assert!(gate.wait_exit(Duration::from_secs(10)).success());
    // No daemon: a clear error, not a hang.
    let started = Instant::now();
    let out = wsgate_reload(dir.path(), pid);
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", String::from_utf8_lossy(&out.stderr));
    // No status file at all (a daemon without $RUNTIME_DIRECTORY): an error at once, no signal.
    let empty = tempfile::tempdir().unwrap();
    let out = wsgate_reload(empty.path(), std::process::id());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is missing"), "{stderr}");
}

#[test]
fn an_unadopted_passed_socket_is_named_in_the_bind_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wsgate.toml");
    // The passed socket is 127.0.0.1:PORT; the config asks for 0.0.0.0:PORT, which does not
    // match it and collides with it.
    std::fs::write(
        &config,
        config_text("127.0.0.1:9".parse().unwrap(), "", "").replace("127.0.0.1:0", &format!("0.0.0.0:{port}")),
    )
    .unwrap();
    let mut gate = spawn_with_passed_socket(port, "http", &config, dir.path());
    let status = gate.wait_exit(Duration::from_secs(10));
    let log = gate.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("\"http\" (127.0.0.1:{port})")), "{log}");
    assert!(log.contains("no [[listen]] entry adopted") && log.contains("disable"), "{log}");
}
