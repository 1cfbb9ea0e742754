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
    let path = write_config(
        &dir,
        "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[apps.echo]\nkind = \"echo\"\nurls = [\"/e\"]\n",
    );
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("test is successful"));
    let demo = Command::new(BIN).args(["check", "--config", "config/wsgate.toml"]).output().unwrap();
    assert!(demo.status.success(), "the shipped example validates: {}", String::from_utf8_lossy(&demo.stderr));
}

#[test]
fn check_tries_the_pubsub_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "only-16-bytes!!!\n").unwrap();
    let app = |jwt: &str| {
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:8000\"\n\n[apps.live]\nkind = \"pubsub\"\nurls = [\"/live\"]\n\
             [apps.live.jwt]\n{jwt}\n[[apps.live.namespaces]]\npattern = \"*\"\n"
        )
    };
    for (jwt, expected) in [
        (format!("hmac_secret_file = \"{}\"", short.display()), "at least 32 bytes (has 16)".to_owned()),
        ("hmac_secret_file = \"/nonexistent/jwt.key\"".to_owned(), "/nonexistent/jwt.key".to_owned()),
        (format!("public_key_file = \"{}\"", short.display()), "not a PEM RSA, EC or Ed25519 public key".to_owned()),
    ] {
        let path = write_config(&dir, &app(&jwt));
        let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{jwt}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("apps.live.jwt") && err.contains(&expected), "{jwt}: {err}");
    }
    let good = dir.path().join("good.key");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
    let path = write_config(&dir, &app(&format!("hmac_secret_file = \"{}\"", good.display())));
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

// ---- issue 17: log formats, check --as-user, what a newcomer sees ----

/// A config whose TLS listener cannot start (the certificate is missing): `run` logs one
/// ERROR and exits 1, after an INFO "starting" line. Returns the file, for line numbers.
fn failing_tls_config(dir: &tempfile::TempDir, format: &str) -> std::path::PathBuf {
    let text = format!(
        "[log]\nformat = \"{format}\"\n[[listen]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }}\n[admin]\naddr = \"off\"\n"
    );
    write_config(dir, &text)
}

/// Runs `run` with stderr in a file (so its device and inode are known) and returns it.
fn run_to_file(config: &std::path::Path, journal_stream: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut command = Command::new(BIN);
    command.args(["run", "--config"]).arg(config).env_remove("RUST_LOG").env_remove("JOURNAL_STREAM").stderr(file);
    match journal_stream {
        Some("this file") => command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        Some(other) => command.env("JOURNAL_STREAM", other),
        None => &mut command,
    };
    let status = command.status().unwrap();
    assert_eq!(status.code(), Some(1), "a missing certificate stops run");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn log_format_text_json_journald() {
    let dir = tempfile::tempdir().unwrap();
    let config = failing_tls_config(&dir, "text");
    let text = run_to_file(&config, None);
    let error = text.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("an ERROR line: {text}"));
    assert!(error.starts_with("20") && error.contains(" ERROR cannot start: "), "timestamp, level, message: {error}");
    assert!(!text.contains("<3>") && !text.contains('{'), "{text}");

    let config = failing_tls_config(&dir, "json");
    let json = run_to_file(&config, None);
    let mut levels = Vec::new();
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("one object per line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        levels.push(v["level"].as_str().unwrap_or_default().to_string());
        if v["message"] == "starting" {
            assert_eq!(v["fields"]["version"], env!("CARGO_PKG_VERSION"), "fields kept typed apart: {line}");
        }
    }
    assert!(levels.contains(&"INFO".to_string()) && levels.contains(&"ERROR".to_string()), "{json}");

    let config = failing_tls_config(&dir, "journald");
    let journal = run_to_file(&config, None);
    assert!(journal.lines().any(|l| l.starts_with("<6>") && l.contains("starting")), "{journal}");
    assert!(journal.lines().any(|l| l.starts_with("<3>") && l.contains("cannot start")), "{journal}");
    assert!(journal.lines().all(|l| l.starts_with('<')), "every line has a priority: {journal}");
}

/// `auto` (the default) writes journal priorities only when JOURNAL_STREAM names stderr
/// itself: a variable inherited by a process whose stderr goes elsewhere changes nothing.
#[test]
fn log_format_auto_follows_journal_stream() {
    let dir = tempfile::tempdir().unwrap();
    let config = failing_tls_config(&dir, "auto");
    let journal = run_to_file(&config, Some("this file"));
    let error = journal.lines().find(|l| l.contains("cannot start")).unwrap_or_else(|| panic!("{journal}"));
    assert!(error.starts_with("<3>"), "ERROR at priority 3 when stderr is the journal: {journal}");
    assert!(journal.lines().any(|l| l.starts_with("<6>") && l.contains("starting")), "{journal}");
    let elsewhere = run_to_file(&config, Some("1:2"));
    assert!(!elsewhere.contains("<3>") && elsewhere.contains(" ERROR cannot start"), "{elsewhere}");
    let plain = run_to_file(&config, None);
    assert!(!plain.contains("<3>"), "{plain}");
}

/// A TLS file that cannot be read names the config line that gave it, in `check` and `run`.
#[test]
fn tls_file_errors_name_the_config_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = failing_tls_config(&dir, "text");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix =
        format!("{}:5: listen.0.tls.cert: /nonexistent/cert.pem: cannot read certificate chain", config.display());
    assert!(err.lines().any(|l| l.starts_with(&prefix)), "{prefix} in: {err}");
    let run = run_to_file(&config, None);
    assert!(run.contains(&format!("{}:5: listen.0.tls.cert: ", config.display())), "{run}");
}

#[test]
fn check_as_user_finds_files_the_service_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[apps.logs]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [\"/var/log/wsgate-test-absent.log\", \"/tmp/wsgate-test-app.log\"]\n",
        token.display()
    );
    let config = write_config(&dir, &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Without --as-user: passes, warns about /tmp, and (as root) suggests --as-user.
    let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warning = format!("{}:7: apps.logs.files.1: warning: /tmp/wsgate-test-app.log is hidden from the service by its unit's PrivateTmp=yes", config.display());
    assert!(err.lines().any(|l| l.starts_with(&warning)), "{warning} in: {err}");
    if rustix::process::geteuid().is_root() {
        assert!(err.contains("--as-user wsgate"), "root gets the hint: {err}");
    }

    let out = Command::new(BIN).args(["check", "--as-user", "nobody", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = format!("{}:3: admin.token_file: {}: not readable by user nobody", config.display(), token.display());
    assert!(err.lines().any(|l| l.starts_with(&line) && l.contains("mode 0600")), "{line} in: {err}");
    assert!(!err.contains("wsgate-test-absent.log:"), "a log-view file that does not exist yet is not an error: {err}");
    assert!(!err.contains("hint:"), "{err}");

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN).args(["check", "--as-user", "nobody", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        Command::new(BIN).args(["check", "--as-user", "no-such-user-here", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"no-such-user-here\""));
}

/// Every config problem in one run, in plain words: type errors, unknown keys and the
/// semantic rules of the values that did parse, in the same section.
#[test]
fn check_reports_every_problem_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[limits]\nmax_connections = \"many\"\nfoo = 1\n[apps.e]\nkind = \"echo\"\nurls = [\"/e\"]\nhistory = 5\n[apps.c]\nkind = \"chat\"\nurls = [\"nope\"]\nhistory = true\n[apps.off]\nkind = \"echo\"\n";
    let config = write_config(&dir, text);
    let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let p = config.display();
    for expected in [
        format!("{p}:2: limits.max_connections: wrong type: found \"many\", expected a whole number"),
        format!("{p}:3: limits.foo: unknown key"),
        format!("{p}:7: apps.e.history: not a setting of an `echo` app"),
        format!("{p}:10: apps.c.urls.0: \"nope\" must start with '/'"),
        format!("{p}:11: apps.c.history: wrong type: found true, expected a whole number"),
    ] {
        assert!(err.lines().any(|l| l.starts_with(&expected)), "{expected:?} in: {err}");
    }
    assert!(!err.contains("usize") && !err.contains("a `echo`"), "{err}");

    // A URL without the scheme: the hint must not suggest a path (the upstream takes none).
    let out =
        Command::new(BIN).args(["check", "--upstream", "127.0.0.1:8000", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("option --upstream: upstream.url: invalid URL \"127.0.0.1:8000\": expected an absolute http:// URL, e.g. \"http://127.0.0.1:8000\""), "{err}");
    assert!(!err.contains("host:port/"), "{err}");
}

#[test]
fn check_and_run_say_which_apps_are_on_and_off() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"off\"\n[apps.chat]\nkind = \"chat\"\nurls = [\"/c\", \"/c/ops\"]\n[apps.echo]\nkind = \"echo\"\nurls = [\"/e\"]\n[apps.orders]\nkind = \"backend\"\ncallback = \"http://127.0.0.1:9/cb\"\n";
    let config = write_config(&dir, text);
    let out = Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("wsgate: app orders (backend) is off: no urls"), "{err}");

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let done = line.contains("is not reachable");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    let addr = log
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("listening line: {log}"));
    for expected in [
        format!("app chat (chat): http://{addr}/c http://{addr}/c/ops"),
        format!("app echo (echo): ws://{addr}/e"),
        "app orders (backend) is off: no urls".to_string(),
        "upstream http://127.0.0.1:9: every request no app serves is forwarded there".to_string(),
        "upstream http://127.0.0.1:9 is not reachable".to_string(),
    ] {
        assert!(log.contains(&expected), "{expected:?} in: {log}");
    }
}

#[test]
fn publish_names_chat_rooms_and_speaks_to_users() {
    let help = Command::new(BIN).args(["publish", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("chat/ops") && !help.contains("seed"), "{help}");
    let out = Command::new(BIN).args(["publish", "--config", "config/wsgate.toml", "chat/dev", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chat app \"chat\" has no room \"dev\"; its rooms: chat/chat, chat/ops"), "{err}");
}

#[test]
fn pages_carry_an_inline_icon() {
    // Else every page load asks the upstream for /favicon.ico (a 502 while nothing runs there).
    for page in [include_str!("../assets/chat.html"), include_str!("../assets/logview.html")] {
        assert!(page.contains("<link rel=\"icon\" href=\"data:"), "an inline (data: URL) icon");
    }
}
