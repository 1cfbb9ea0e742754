//! The chat and log-view apps and the per-app access controls, over real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CHAT: &str = r#"
[apps.chat]
kind = "chat"
urls = ["/chat/a", "/chat/b"]
history = 3
"#;

/// Connects to a chat room and consumes the history up to `history_end`.
async fn chat_join(addr: SocketAddr, path: &str) -> (WsClient, Vec<Value>) {
    let mut ws = WsClient::connect(addr, path).await;
    let room = ws.json().await;
    assert_eq!(room["type"], "room", "the room's name and members come first: {room}");
    assert!(room["name"].is_string() && room["members"].is_array(), "{room}");
    let mut history = Vec::new();
    loop {
        let m = ws.json().await;
        if m["type"] == "history_end" {
            assert_eq!(m["count"].as_u64(), Some(history.len() as u64));
            return (ws, history);
        }
        history.push(m);
    }
}

#[tokio::test]
async fn chat_rooms_are_isolated_and_messages_carry_user_text_and_ts() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a1, _) = chat_join(gate.addr, "/chat/a").await;
    let (mut a2, _) = chat_join(gate.addr, "/chat/a/connect").await; // the alias is the same room
    let (mut b1, _) = chat_join(gate.addr, "/chat/b").await;

    a1.send_json(json!({"type":"message","user":"alice","text":"hi"})).await;
    for ws in [&mut a1, &mut a2] {
        let join = ws.json().await;
        assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("alice")));
        let m = ws.json().await;
        assert_eq!(
            (m["type"].as_str(), m["user"].as_str(), m["text"].as_str()),
            (Some("message"), Some("alice"), Some("hi"))
        );
        let ts = m["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T", "RFC 3339: {ts}");
    }
    b1.silent(Duration::from_millis(300)).await;

    // and the other way round
    b1.send_json(json!({"type":"message","user":"bob","text":"only b"})).await;
    assert_eq!(b1.json().await["type"], "join");
    assert_eq!(b1.json().await["text"], "only b");
    a1.silent(Duration::from_millis(300)).await;
    a2.silent(Duration::from_millis(1)).await;
    // Closing the clients first lets the drain finish at once.
    drop((a1, a2, b1));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_history_join_leave_and_renames() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, history) = chat_join(gate.addr, "/chat/a").await;
    assert!(history.is_empty());
    a.send_json(json!({"type":"join","user":"ann"})).await;
    let join = a.json().await;
    assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("ann")));
    assert!(join["ts"].is_string());
    for i in 1..=5 {
        a.send_json(json!({"type":"message","user":"ann","text":format!("m{i}")})).await;
        assert_eq!(a.json().await["text"], format!("m{i}"));
    }
    // a newcomer gets the last `history` (3) messages, oldest first, and no notices
    let (mut b, history) = chat_join(gate.addr, "/chat/a").await;
    let texts: Vec<&str> = history.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    assert!(history.iter().all(|m| m["type"] == "message" && m["user"] == "ann"));
    // the other room's history is its own
    let (_c, other) = chat_join(gate.addr, "/chat/b").await;
    assert!(other.is_empty());

    // b is named by its first message: join then message, to both
    b.send_json(json!({"type":"message","user":"bea","text":"hello"})).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.json().await["user"], "bea");
        assert_eq!(ws.json().await["text"], "hello");
    }
    // a rename is a leave then a join
    b.send_json(json!({"type":"join","user":"beatrix"})).await;
    let leave = a.json().await;
    assert_eq!((leave["type"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bea")));
    let join = a.json().await;
    assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("beatrix")));
    // closing the connection announces the leave to the others
    b.send_frame(wsgate::ws::codec::OpCode::Close, true, &1000u16.to_be_bytes()).await;
    loop {
        let m = a.json().await;
        if m["type"] == "leave" {
            assert_eq!(m["user"], "beatrix");
            break;
        }
    }
    // Closing the clients first lets the drain finish at once.
    drop((a, _c));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_refuses_bad_input_with_an_error_to_the_sender_only() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, _) = chat_join(gate.addr, "/chat/a").await;
    let (mut other, _) = chat_join(gate.addr, "/chat/a").await;
    let long_text = "x".repeat(wsgate::apps::chat::MAX_TEXT_CHARS + 1);
    let long_user = "u".repeat(wsgate::apps::chat::MAX_USER_CHARS + 1);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid JSON"),
        (json!({"type":"message","user":"a","text":long_text}).to_string(), "message text too long"),
        (json!({"type":"message","user":long_user,"text":"x"}).to_string(), "user name too long"),
        (json!({"type":"message","user":"  ","text":"x"}).to_string(), "user name is empty"),
        (json!({"type":"message","user":"a","text":""}).to_string(), "message text is empty"),
        (json!({"type":"message","user":"a"}).to_string(), "\"text\" is missing"),
        (json!({"type":"nuke"}).to_string(), "unknown message type"),
        ("[1,2]".into(), "expected an object"),
    ];
    for (input, expected) in cases {
        a.send_text(&input).await;
        let m = a.json().await;
        assert_eq!(m["type"], "error", "{input}");
        let message = m["message"].as_str().unwrap();
        assert!(message.contains(expected), "{input:.60} -> {message}");
    }
    a.send_frame(wsgate::ws::codec::OpCode::Binary, true, b"\x00\x01").await;
    assert!(a.json().await["message"].as_str().unwrap().contains("binary"));
    other.silent(Duration::from_millis(300)).await;
    // the connection survived all of it
    a.send_json(json!({"type":"message","user":"a","text":"still here"})).await;
    assert_eq!(a.json().await["type"], "join");
    assert_eq!(a.json().await["text"], "still here");
    // Closing the clients first lets the drain finish at once.
    drop((a, other));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_text_that_looks_like_html_is_passed_through_as_data() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let (mut a, _) = chat_join(gate.addr, "/chat/a").await;
    let nasty = r#"<script>alert(1)</script><img src=x onerror="alert(2)"> & "quotes" \ ☃"#;
    a.send_json(json!({"type":"message","user":"<b>mallory</b>","text":nasty})).await;
    let _join = a.json().await;
    let m = a.json().await;
    assert_eq!(m["text"], nasty);
    assert_eq!(m["user"], "<b>mallory</b>");
    // Closing the clients first lets the drain finish at once.
    drop(a);
    gate.server.shutdown().await;
}

#[tokio::test]
async fn chat_page_is_served_on_plain_get() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(CHAT), up.addr).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let r = raw_request(&mut s, b"GET /chat/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let page = wsgate::apps::chat::PAGE;
    assert!(!page.contains("innerHTML"), "the page must render text as text");
    // No external assets (the inline icon's SVG namespace is a name, not a load).
    let page = page.replace("http://www.w3.org/2000/svg", "");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="), "no external assets");
    gate.server.shutdown().await;
}

// === log-view ===

fn logview_config(files: &[std::path::PathBuf], extra: &str) -> String {
    let list: Vec<String> = files.iter().map(|f| format!("{:?}", f.display().to_string())).collect();
    basic_config(&format!(
        "[apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [{}]\nbacklog_lines = 3\nrefresh = \"100ms\"\n{extra}\n{CHAT}",
        list.join(", ")
    ))
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

/// Opens the log-view socket and checks the file list it announces.
async fn logview_open(addr: SocketAddr, names: &[&str]) -> WsClient {
    let mut ws = WsClient::connect(addr, "/logs").await;
    let files = ws.json().await;
    assert_eq!(files["type"], "files");
    let listed: Vec<&str> = files["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(listed, names);
    ws
}

/// Collects `lines` messages until `want` lines arrived (notices are returned separately).
async fn collect_lines(ws: &mut WsClient, want: usize) -> (Vec<String>, Vec<String>) {
    let (mut lines, mut notices) = (Vec::new(), Vec::new());
    while lines.len() < want {
        let m = ws.json().await;
        match m["type"].as_str() {
            Some("lines") => {
                lines.extend(m["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()))
            }
            Some("notice") => notices.push(m["message"].as_str().unwrap().to_owned()),
            _ => panic!("unexpected {m}"),
        }
    }
    (lines, notices)
}

#[tokio::test]
async fn logview_refuses_unlisted_names_paths_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    append(&a, "secret-free line\n");
    let up = start_upstream().await;
    let gate = start_gate(&logview_config(&[a.clone(), dir.path().join("b.log")], ""), up.addr).await;
    let mut ws = logview_open(gate.addr, &["a.log", "b.log"]).await;
    let attempts = [
        json!("../../etc/passwd"),
        json!("/etc/passwd"),
        json!(a.display().to_string()),
        json!("a.log/../../../etc/passwd"),
        json!("c.log"),
        json!(2),
        json!(-1),
        json!(1e9),
        json!({"path": "/etc/passwd"}),
    ];
    for file in attempts {
        ws.send_json(json!({"type":"subscribe","file":file})).await;
        let m = ws.json().await;
        assert_eq!(m["type"], "error", "{file} -> {m}");
        assert!(m.get("lines").is_none());
    }
    ws.send_json(json!({"type":"subscribe","path":"/etc/passwd"})).await;
    assert_eq!(ws.json().await["message"], "\"file\" is missing");
    ws.send_text("{").await;
    assert!(ws.json().await["message"].as_str().unwrap().starts_with("invalid JSON"));
    // the connection is still usable, and a listed name works
    ws.send_json(json!({"type":"subscribe","file":"a.log"})).await;
    assert_eq!(ws.json().await, json!({"type":"lines","file":"a.log","lines":["secret-free line"],"backlog":true}));
    // Closing the clients first lets the drain finish at once.
    drop(ws);
    gate.server.shutdown().await;
}

/// Connects from `local` (e.g. 127.0.0.2, loopback but not 127.0.0.1/32) and returns the
/// status of the upgrade answer.
async fn upgrade_status_from(local: &str, addr: SocketAddr, path: &str, extra: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    raw_request(&mut stream, upgrade_request(path, extra).as_bytes()).await.status
}

#[tokio::test]
async fn logview_is_loopback_only_by_default_and_allow_replaces_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let up = start_upstream().await;
    let gate = start_gate(&logview_config(std::slice::from_ref(&a), ""), up.addr).await;
    assert_eq!(upgrade_status_from("127.0.0.1", gate.addr, "/logs", "").await, 101);
    assert_eq!(upgrade_status_from("127.0.0.2", gate.addr, "/logs", "").await, 403, "127.0.0.2 is not 127.0.0.1/32");
    assert_eq!(upgrade_status_from("127.0.0.2", gate.addr, "/chat/a", "").await, 101, "other apps are open");
    gate.server.shutdown().await;

    let gate = start_gate(&logview_config(&[a], "allow = [\"127.0.0.2/32\"]"), up.addr).await;
    assert_eq!(upgrade_status_from("127.0.0.2", gate.addr, "/logs", "").await, 101);
    assert_eq!(upgrade_status_from("127.0.0.1", gate.addr, "/logs", "").await, 403);
    gate.server.shutdown().await;
}

async fn follow_rotation_truncation_and_copytruncate(extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("app.log");
    for i in 1..=5 {
        append(&a, &format!("old {i}\n"));
    }
    let up = start_upstream().await;
    let gate = start_gate(&logview_config(&[a.clone(), dir.path().join("later.log")], extra), up.addr).await;
    let mut ws = logview_open(gate.addr, &["app.log", "later.log"]).await;
    let mut other = logview_open(gate.addr, &["app.log", "later.log"]).await;
    for v in [&mut ws, &mut other] {
        v.send_json(json!({"type":"subscribe","file":0})).await;
        assert_eq!(v.json().await["lines"], json!(["old 3", "old 4", "old 5"]), "the backlog");
    }
    let members: Vec<_> =
        gate.server.hub().subscriptions().into_iter().filter(|(n, _)| n.starts_with("logview:")).collect();
    assert_eq!(members, [("logview:lv:0".to_owned(), 2)], "both viewers on one file subscription");

    append(&a, "new 1\nnew 2\n");
    assert_eq!(collect_lines(&mut ws, 2).await.0, ["new 1", "new 2"]);
    assert_eq!(collect_lines(&mut other, 2).await.0, ["new 1", "new 2"]);

    // rotation: rename, a last line into the renamed file, then a new file
    std::fs::rename(&a, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "late old\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    append(&a, "rotated 1\n");
    let (lines, notices) = collect_lines(&mut ws, 2).await;
    assert_eq!(lines, ["late old", "rotated 1"], "{notices:?}");

    // truncation in place
    std::fs::OpenOptions::new().write(true).open(&a).unwrap().set_len(0).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&a, "after truncate\n");
    let (lines, notices) = collect_lines(&mut ws, 1).await;
    assert_eq!(lines, ["after truncate"]);
    assert!(notices.iter().any(|n| n.contains("truncated")), "{notices:?}");

    // copytruncate: copy away, truncate, the writer goes on
    append(&a, "before copy\n");
    assert_eq!(collect_lines(&mut ws, 1).await.0, ["before copy"]);
    std::fs::copy(&a, dir.path().join("app.log.2")).unwrap();
    std::fs::OpenOptions::new().write(true).open(&a).unwrap().set_len(0).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    append(&a, "after copytruncate\n");
    assert_eq!(collect_lines(&mut ws, 1).await.0, ["after copytruncate"]);

    // a file that does not exist yet
    ws.send_json(json!({"type":"subscribe","file":"later.log"})).await;
    let backlog = ws.json().await;
    assert_eq!(backlog["lines"], json!([]));
    assert!(ws.json().await["message"].as_str().unwrap().contains("does not exist"));
    append(&dir.path().join("later.log"), "born\n");
    assert_eq!(collect_lines(&mut ws, 1).await.0, ["born"]);
    let metrics = gate.server.metrics().render();
    let sent = series_value(&metrics, "wsgate_logview_lines_total");
    assert!(sent >= 4, "logview_lines_total counts the lines read: {sent}");
    // Closing the clients first lets the drain finish at once.
    drop((ws, other));
    gate.server.shutdown().await;
}

#[tokio::test]
async fn logview_follows_rotation_truncation_and_copytruncate_with_inotify() {
    follow_rotation_truncation_and_copytruncate("").await;
}

#[tokio::test]
async fn logview_follows_rotation_truncation_and_copytruncate_by_polling() {
    follow_rotation_truncation_and_copytruncate("inotify = false").await;
}

#[tokio::test]
async fn logview_reports_an_unreadable_file_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dir.log");
    std::fs::create_dir(&d).unwrap();
    let up = start_upstream().await;
    let gate = start_gate(&logview_config(&[d], ""), up.addr).await;
    let mut ws = logview_open(gate.addr, &["dir.log"]).await;
    ws.send_json(json!({"type":"subscribe","file":"dir.log"})).await;
    assert_eq!(ws.json().await["lines"], json!([]));
    let error = ws.json().await;
    assert_eq!(error["type"], "error");
    assert!(error["message"].as_str().unwrap().starts_with("cannot read dir.log"), "{error}");
    // Closing the clients first lets the drain finish at once.
    drop(ws);
    gate.server.shutdown().await;
}

// === auth subrequest ===

/// A real HTTP auth endpoint: 204 when the request carries `Cookie: session=good`, 403
/// otherwise; it records the headers it saw.
async fn start_auth_server() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>) {
    use http_body_util::Empty;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let ok = req
                            .headers()
                            .get_all("cookie")
                            .iter()
                            .any(|c| c.to_str().unwrap_or("").contains("session=good"));
                        let mut headers = req.headers().clone();
                        headers.insert("x-test-path", req.uri().path().parse().unwrap());
                        record.lock().unwrap().push(headers);
                        let status = if ok { 204 } else { 403 };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder().status(status).body(Empty::<bytes::Bytes>::new()).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn auth_subrequest_admits_2xx_and_refuses_anything_else_with_403() {
    let (auth, seen) = start_auth_server().await;
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = logview_config(&[dir.path().join("a.log")], &format!("auth = \"http://{auth}/auth/check\""));
    let gate = start_gate(&config, up.addr).await;
    assert_eq!(
        upgrade_status_from(
            "127.0.0.1",
            gate.addr,
            "/logs?x=1",
            "Cookie: session=good\r\nAuthorization: Basic eA==\r\n"
        )
        .await,
        101
    );
    {
        let seen = seen.lock().unwrap();
        let h = &seen[0];
        assert_eq!(h["x-test-path"], "/auth/check");
        assert_eq!(h["cookie"], "session=good");
        assert_eq!(h["authorization"], "Basic eA==");
        assert_eq!(h["x-original-uri"], "/logs?x=1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert!(h.get("sec-websocket-key").is_none(), "only the listed headers go to the auth endpoint");
    }
    assert_eq!(upgrade_status_from("127.0.0.1", gate.addr, "/logs", "Cookie: session=bad\r\n").await, 403);
    assert_eq!(upgrade_status_from("127.0.0.1", gate.addr, "/logs", "").await, 403);
    // a client the allow list refuses never causes a subrequest
    let before = seen.lock().unwrap().len();
    assert_eq!(upgrade_status_from("127.0.0.2", gate.addr, "/logs", "Cookie: session=good\r\n").await, 403);
    assert_eq!(seen.lock().unwrap().len(), before);
    // Every refusal is counted with its reason: two auth denials, one address refusal.
    let metrics = gate.server.metrics().render();
    assert!(metrics.contains("wsgate_handshake_failures_total{reason=\"auth_denied\"} 2"), "{metrics}");
    assert!(metrics.contains("wsgate_handshake_failures_total{reason=\"address_denied\"} 1"), "{metrics}");
    gate.server.shutdown().await;

    // an auth endpoint that is down refuses (fails closed)
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let config =
        basic_config(&format!("[apps.chat]\nkind = \"chat\"\nurls = [\"/c\"]\nauth = \"http://{dead}/auth\"\n"));
    let gate = start_gate(&config, up.addr).await;
    assert_eq!(upgrade_status_from("127.0.0.1", gate.addr, "/c", "Cookie: session=good\r\n").await, 403);
    assert_eq!(
        upgrade_status_from("127.0.0.1", gate.addr, "/websocket/echo", "").await,
        101,
        "apps without auth are unaffected"
    );
    gate.server.shutdown().await;
}
