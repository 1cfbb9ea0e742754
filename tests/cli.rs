//! The `wsgate` binary: `check` exit codes and messages, `run` with signals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_a_good_config_and_the_embedded_demo() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[apps.echo]\nkind = \"echo\"\nurls = [\"/e\"]\n");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("test is successful"));
    let demo = Command::new(BIN).args(["check", "--config", "config/wsgate.toml"]).output().unwrap();
    assert!(demo.status.success(), "the shipped example validates: {}", String::from_utf8_lossy(&demo.stderr));
}

#[test]
fn check_names_the_bad_key_and_its_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[limits]\nmax_conections = 5\n");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wsgate.toml:5"), "file and line named: {err}");
    assert!(err.contains("limits.max_conections"), "key path named: {err}");

    let path = write_config(&dir, "[upstream]\nurl = \"http://127.0.0.1:8000\"\nconnect_timeout = \"fast\"\n");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wsgate.toml:3") && err.contains("upstream.connect_timeout"), "{err}");
}

/// Issue 16: values `check` used to accept and that broke the server (a header deadline that
/// overflows `Instant`, a 1 TiB head buffer, a 1 ns ping, 10^12 history lines). Each is one
/// line naming file:line, the key and the allowed range; the exit status is 1.
#[test]
fn check_rejects_absurd_durations_sizes_counts() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstream]\nurl = \"http://127.0.0.1:8000\"\nresponse_timeout = \"400days\"\n\
                [limits]\nheader_read_timeout = \"5000000000000000h\"\nmax_header_bytes = \"1TiB\"\nmax_connections = 0\n\
                [websocket]\nping_interval = \"1ns\"\nsend_queue = \"2GiB\"\n\
                [apps.chat]\nkind = \"chat\"\nurls = [\"/chat\"]\nhistory = 1000000000000\n\
                [apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [\"/var/log/x.log\"]\nbacklog_lines = 1000000000000\nrefresh = \"1ns\"\n";
    let path = write_config(&dir, text);
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        ("3", "upstream.response_timeout", "allowed \"1ms\" to \"1day\""),
        ("5", "limits.header_read_timeout", "allowed \"100ms\" to \"1h\""),
        ("6", "limits.max_header_bytes", "\"1TiB\" is out of range: allowed \"1KiB\" to \"1MiB\""),
        ("7", "limits.max_connections", "0 is out of range: allowed 1 to 10000000"),
        ("9", "websocket.ping_interval", "\"1ns\" is out of range: allowed \"100ms\" to \"1day\""),
        ("10", "websocket.send_queue", "allowed \"1B\" to \"1GiB\""),
        ("14", "apps.chat.history", "1000000000000 is out of range: allowed 0 to 100000"),
        ("19", "apps.lv.backlog_lines", "allowed 0 to 100000"),
        ("20", "apps.lv.refresh", "allowed \"10ms\" to \"1h\""),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "one line per problem, then the verdict: {err}");
    for (line, (at, key, range)) in lines.iter().zip(expected) {
        let prefix = format!("{}:{at}: {key}: ", path.display());
        assert!(line.starts_with(&prefix) && line.contains(range), "{line:?} should be {prefix}...{range}");
    }
    assert!(lines[expected.len()].contains("test failed"), "{err}");
}

#[test]
fn check_reports_an_env_override_by_its_variable_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[upstream]\nurl = \"http://127.0.0.1:8000\"\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("WSGATE_LIMITS__MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WSGATE_LIMITS__MAX_CONNECTIONS"), "{err}");
}

#[test]
fn check_fails_on_overlapping_urls_and_unreadable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[apps.a]\nkind = \"echo\"\nurls = [\"/x\"]\n\n[apps.b]\nkind = \"echo\"\nurls = [\"/x\"]\n";
    let path = write_config(&dir, text);
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    let text = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[[listen]]\naddr = \"127.0.0.1:0\"\ntls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n";
    let path = write_config(&dir, text);
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cert.pem"));
}

/// Starts the binary on a config with port 0 and returns the child and its bound address,
/// read from the "listening" log line.
fn spawn_gate(config: &std::path::Path) -> (std::process::Child, std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()) {
                    if let Ok(addr) = addr.parse::<std::net::SocketAddr>() {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("wsgate logged its listening address");
    (child, addr, reader)
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("wsgate did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_finishes_inflight_requests() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let text = basic_config("[limits]\nshutdown_timeout = \"8s\"\n")
        .replace("{UPSTREAM}", &format!("http://{}", up.addr))
        .replace("response_timeout = \"2s\"", "response_timeout = \"10s\"");
    let path = write_config(&dir, &text);
    let (mut child, addr, reader) = spawn_gate(&path);

    let mut ws = WsClient::connect(addr, "/websocket/echo").await;
    // An in-flight proxied request: the upstream answers /slow after 5 s.
    let mut inflight = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut inflight, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(&child, "-TERM");
    assert_eq!(ws.expect_close().await, Some(1001));
    ws.send_frame(wsgate::ws::codec::OpCode::Close, true, &1001u16.to_be_bytes()).await;
    // New connections are refused once the listener is closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed during the drain");
    // The in-flight request still completes.
    let resp = read_head(&mut inflight).await;
    assert_eq!(resp.status, 200, "in-flight request finished: {}", resp.head);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10))).await.unwrap();
    assert!(status.success(), "exit 0 after a graceful drain, got {status:?}");
    reader.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_kill_the_server() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &basic_config("").replace("{UPSTREAM}", &format!("http://{}", up.addr)));
    let (mut child, addr, reader) = spawn_gate(&path);
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = WsClient::connect(addr, "/websocket/echo").await;
    ws.send_text("still here").await;
    assert!(matches!(ws.next().await, Some(wsgate::ws::codec::Incoming::Text(_))));
    signal(&child, "-INT");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10))).await.unwrap();
    assert!(status.success());
    reader.join().unwrap();
}
