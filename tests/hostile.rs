//! Hostile clients (issue #9, part 1): each attack runs while a normal client keeps being
//! served (a WebSocket echo round trip and a proxied GET, over and over), and each attack gets
//! its defined answer (DESIGN §9). tests/bad_input.rs has the single-shot shapes; this file
//! has the floods, the trickles and the mass of dropped handshakes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use wsgate::ws::codec::{encode_frame, Decoder, DecoderConfig, Incoming as WsIncoming, OpCode, Role};

// === the normal client ===

/// A normal client served in a loop until stopped: an echo round trip on one long-lived
/// WebSocket, then a proxied GET on a fresh connection. Every round must succeed; a failure
/// panics inside the task and [`Canary::finish`] reports it.
struct Canary {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

fn canary(addr: SocketAddr) -> Canary {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let (stop2, rounds2) = (stop.clone(), rounds.clone());
    let task = tokio::spawn(async move {
        let mut ws = WsClient::connect(addr, "/websocket/echo").await;
        let mut n = 0u64;
        while !stop2.load(Ordering::SeqCst) {
            n += 1;
            let text = format!("canary {n}");
            ws.send_text(&text).await;
            match ws.next().await {
                Some(WsIncoming::Text(t)) => assert_eq!(&t[..], text.as_bytes(), "echo round trip {n}"),
                other => panic!("echo round trip {n}: {other:?}"),
            }
            assert_eq!(proxied_get(addr).await, 200, "proxied GET {n}");
            rounds2.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Canary { stop, rounds, task }
}

impl Canary {
    /// Waits until at least `more` further rounds have succeeded (the attack is then known to
    /// have run alongside successful rounds).
    async fn wait_rounds(&self, more: usize) {
        let target = self.rounds.load(Ordering::SeqCst) + more;
        let started = Instant::now();
        while self.rounds.load(Ordering::SeqCst) < target {
            assert!(!self.task.is_finished(), "the normal client failed");
            assert!(started.elapsed() < Duration::from_secs(30), "the normal client is not being served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop after one more round; panics if any round failed. Returns the rounds.
    async fn finish(self) -> usize {
        self.wait_rounds(1).await;
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("normal client finished")
            .expect("the normal client was served throughout");
        self.rounds.load(Ordering::SeqCst)
    }
}

async fn proxied_get(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    raw_request(&mut stream, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.status
}

/// Reads until EOF or error (a reset counts as closed); panics if the server keeps it open.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await.expect("server closed the connection in time")
        {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

// === slowloris ===

/// Sends `request` one byte every `pause` until done or the server closes; returns how many
/// bytes went out and everything the server answered.
async fn trickle(addr: SocketAddr, request: Vec<u8>, pause: Duration) -> (usize, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let writer = tokio::spawn(async move {
        for byte in request {
            if wr.write_all(&[byte]).await.is_err() {
                return;
            }
            sent2.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
        }
        // Keep the write half open: the server decides when the connection ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await.expect("server answered or closed")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // A complete response to a `Connection: close` request: the server closes next.
            }
        }
    }
    let at_close = sent.load(Ordering::SeqCst);
    writer.abort();
    (at_close, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_deadline_while_others_are_served() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[limits]\nheader_read_timeout = \"2s\"\n"), up.addr).await;
    let normal = canary(gate.addr);
    normal.wait_rounds(1).await;
    // Beyond the deadline: 300 header bytes, one every 25 ms (7.5 s in all) from 20 clients.
    // The deadline covers the whole head, so trickling bytes does not extend it.
    let slow_head = format!("GET /echo HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n", "a".repeat(260)).into_bytes();
    // Within the deadline: a short head trickled in about half a second is served.
    let quick_head = b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_vec();
    let mut beyond = Vec::new();
    for _ in 0..20 {
        beyond.push(tokio::spawn(trickle(gate.addr, slow_head.clone(), Duration::from_millis(25))));
    }
    let mut within = Vec::new();
    for _ in 0..5 {
        within.push(tokio::spawn(trickle(gate.addr, quick_head.clone(), Duration::from_millis(10))));
    }
    for task in within {
        let (_, answer) = task.await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "a slow but timely head is served: {text}");
    }
    for task in beyond {
        let (sent, answer) = task.await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(sent < slow_head.len(), "closed before the head was complete ({sent} of {} bytes)", slow_head.len());
        assert!(!text.contains(" 200 "), "never served: {text}");
    }
    let rounds = normal.finish().await;
    eprintln!("slowloris: normal client rounds during the attack: {rounds}");
    gate.server.shutdown().await;
}

// === request smuggling ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_400_and_never_reach_the_upstream() {
    // An upstream of its own so its connection counter sees nothing but this test.
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    for request in [
        // Differing duplicate Content-Length (RFC 9112 §6.3 item 5: unrecoverable error).
        &b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
        // obs-fold (RFC 9112 §5.2: a server may reject it with 400), in a normal and an
        // upgrade request.
        b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /websocket/echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n \tcontinued\r\nSec-WebSocket-Version: 13\r\n\r\n",
        // Transfer-Encoding whose final coding is not chunked (RFC 9112 §6.3 item 4).
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(gate.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = read_until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{:?} -> {text}", String::from_utf8_lossy(request));
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer, then close: {text}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "nothing ambiguous was forwarded");
    gate.server.shutdown().await;
}

/// How many response heads `text` (everything one connection received) holds.
fn responses(text: &str) -> usize {
    text.to_ascii_lowercase().matches("http/1.1 ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_framing_headers_reach_the_upstream_with_one_framing() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    // Identical duplicate Content-Length: RFC 9110 §8.6 lets a recipient treat it as the one
    // value. Either answer would be acceptable; what is checked is that the body is exactly 5
    // bytes, the pipelined request after it is its own request, and the upstream sees a single
    // Content-Length.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(
            b"POST /headers HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello\
              GET /echo?second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    if text.starts_with("http/1.1 400") {
        assert_eq!(responses(&text), 1, "refused outright: {text}");
    } else {
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert_eq!(responses(&text), 2, "two requests, two answers: {text}");
        assert_eq!(text.matches("\ncontent-length: 5\n").count(), 1, "the upstream saw one Content-Length 5: {text}");
        assert!(!text.contains("transfer-encoding: chunked\n"), "{text}");
        assert!(text.contains("x-upstream-path: /echo?second"), "the second request is separate: {text}");
    }
    // Content-Length with Transfer-Encoding: framed by Transfer-Encoding alone (RFC 9112
    // §6.3 item 3); what reaches the upstream must not carry both.
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    stream
        .write_all(b"POST /headers HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert_eq!(responses(&text), 1, "one response, then close (the smuggled request is not served): {text}");
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    let cl = body.contains("content-length:");
    let te = body.contains("transfer-encoding:");
    assert!(!(cl && te), "the upstream got both framings: {body}");
    assert!(!body.contains("content-length: 40"), "the client's Content-Length was not passed on: {body}");
    gate.server.shutdown().await;
}

// === frames: lengths, fragments, pings ===

/// A raw WebSocket connection whose two halves can be driven separately (a flood writes
/// while the reader waits for the Close).
async fn open_raw(addr: SocketAddr) -> (tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf, BytesMut) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let response = raw_request(&mut stream, upgrade_request("/websocket/echo", "").as_bytes()).await;
    assert_eq!(response.status, 101, "{}", response.head);
    let (rd, wr) = stream.into_split();
    (rd, wr, response.rest)
}

/// Reads server frames until a Close; returns its code and how many Pongs came before it.
async fn read_to_close(rd: &mut tokio::net::tcp::OwnedReadHalf, mut buf: BytesMut) -> (Option<u16>, usize) {
    let mut decoder = Decoder::new(DecoderConfig { role: Role::Client, max_message_size: 1 << 20 });
    let mut pongs = 0;
    loop {
        match decoder.decode(&mut buf).expect("valid frames from the server") {
            Some(WsIncoming::Close(frame)) => return (frame.map(|f| f.code), pongs),
            Some(WsIncoming::Pong(_)) => pongs += 1,
            Some(_) => {}
            None => {
                let n = tokio::time::timeout(TIMEOUT, rd.read_buf(&mut buf)).await.expect("Close in time").unwrap_or(0);
                assert!(n > 0, "connection closed without a Close frame");
            }
        }
    }
}

fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&mut out, opcode, fin, false, payload, Some([7, 7, 7, 7]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_length_fields_are_refused_from_the_header() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[websocket]\nmax_message_size = \"64KiB\"\n"), up.addr).await;
    let normal = canary(gate.addr);
    // A 64-bit length with its most significant bit set (RFC 6455 §5.2): 1002.
    // 2^62, a valid encoding far over the limit: 1009 from the header alone. Only the header
    // and mask are sent, so the answer cannot have waited for any payload.
    for (length, code) in [(u64::MAX, 1002), (1u64 << 63, 1002), (1u64 << 62, 1009), (u64::from(u32::MAX) + 1, 1009)] {
        let (mut rd, mut wr, rest) = open_raw(gate.addr).await;
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&length.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        wr.write_all(&head).await.unwrap();
        let (got, _) = read_to_close(&mut rd, rest).await;
        assert_eq!(got, Some(code), "length {length:#x}");
    }
    normal.finish().await;
    gate.server.shutdown().await;
}

/// Writes `frame` over and over (in batches of `per_write` copies) until the peer stops
/// reading or `stop` is set; returns the frames written.
fn flood(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    frame: BytesMut,
    per_write: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let batch: Bytes = frame.iter().copied().cycle().take(frame.len() * per_write).collect::<Vec<u8>>().into();
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&batch)).await {
                Ok(Ok(())) => sent += per_write,
                // Refused or no longer read: the server has stopped this connection.
                _ => break,
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_floods_end_with_1009_at_max_message_size() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config("[websocket]\nmax_message_size = \"64KiB\"\n"), up.addr).await;
    let normal = canary(gate.addr);
    // Tiny fragments of a message that never ends: 16 bytes each, sent until the server
    // answers. The reassembled message passes 64 KiB after 4097 fragments.
    // Then a flood of empty continuation frames, which add nothing to the message: each counts
    // one byte toward the limit, so it ends too (after 65536 frames, 384 KiB on the wire).
    for (name, payload) in [("16-byte fragments", &[b'x'; 16][..]), ("empty fragments", &[][..])] {
        let (mut rd, mut wr, rest) = open_raw(gate.addr).await;
        wr.write_all(&masked(OpCode::Binary, false, payload)).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = flood(wr, masked(OpCode::Continuation, false, payload), 256, stop.clone());
        let (code, _) = read_to_close(&mut rd, rest).await;
        stop.store(true, Ordering::SeqCst);
        let sent = writer.await.unwrap();
        assert_eq!(code, Some(1009), "{name}");
        let needed = if payload.is_empty() { 65536 } else { 4096 };
        assert!(sent >= needed, "{name}: closed after {sent} fragments");
        // The connection is closed for good: nothing more is read, EOF follows.
        let mut tail = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, rd.read_to_end(&mut tail)).await.expect("server closed TCP");
        eprintln!("{name}: 1009 after at least {sent} fragments sent");
    }
    normal.finish().await;
    gate.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_pongs_keeps_the_pong_queue_bounded() {
    let up = start_upstream().await;
    let gate = start_gate(&basic_config(""), up.addr).await;
    let normal = canary(gate.addr);
    // A short burst of Pings, read promptly, gets one Pong each, in order (Autobahn 2.10).
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    let mut burst = BytesMut::new();
    for i in 0..10 {
        encode_frame(&mut burst, OpCode::Ping, true, false, format!("payload-{i}").as_bytes(), Some([1, 2, 3, 4]));
    }
    ws.send_raw(&burst).await;
    for i in 0..10 {
        assert_eq!(ws.next().await, Some(WsIncoming::Pong(Bytes::from(format!("payload-{i}")))));
    }
    drop(ws);
    // A client that pings as fast as it can and reads nothing; a small receive buffer makes
    // the server's writes stall soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gate.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let response = raw_request(&mut stream, upgrade_request("/websocket/echo", "").as_bytes()).await;
    assert_eq!(response.status, 101);
    let id =
        gate.server.hub().channel_summaries().into_iter().find(|c| c.peer == local).expect("the flooder's channel").id;
    let channel = gate.server.hub().channel(id.as_str()).unwrap();
    const PINGS: u32 = 100_000;
    let mut peak = 0;
    let mut out = BytesMut::new();
    for i in 1..=PINGS {
        // 125-byte payload (the most a control frame carries) ending in the ping's number.
        let mut payload = [b'p'; 125];
        payload[121..].copy_from_slice(&i.to_be_bytes());
        encode_frame(&mut out, OpCode::Ping, true, false, &payload, Some([9, 8, 7, 6]));
        if i % 1000 == 0 {
            stream.write_all(&out).await.unwrap();
            out.clear();
            peak = peak.max(channel.queued_bytes());
        }
    }
    // Let the server read everything sent so far, then look at its queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peak = peak.max(channel.queued_bytes());
    // At most 16 Pongs (127 bytes each) wait; without a bound this is every unanswered Pong,
    // ~12 MiB less what the sockets hold.
    assert!(peak <= 16 * 127, "queued bytes for a ping flood: {peak}");
    normal.wait_rounds(3).await;
    // Now read: the Pongs that were written, then the latest Ping's answer (§5.5.3); the
    // connection is still healthy.
    let mut ws = WsClient::from_parts(stream, response.rest);
    ws.send_frame(OpCode::Ping, true, b"last").await;
    let mut pongs = 0;
    loop {
        match ws.next().await.expect("connection open") {
            WsIncoming::Pong(p) if &p[..] == b"last" => break,
            WsIncoming::Pong(_) => pongs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pongs < PINGS as usize, "pongs were coalesced: {pongs} for {PINGS} pings");
    ws.send_text("still echoing").await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"still echoing"))));
    eprintln!("ping flood: {PINGS} pings, {pongs} pongs written before the last, peak queued bytes {peak}");
    normal.finish().await;
    gate.server.shutdown().await;
}

// === 10,000 handshakes dropped half way ===

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// One sample of the admin listener's `/metrics` (0 when the series is absent).
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let head = raw_request(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
    assert_eq!(head.status, 200);
    let mut body = head.rest.to_vec();
    stream.read_to_end(&mut body).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_handshakes_dropped_half_way_leave_nothing_behind() {
    const TOTAL: usize = 10_000;
    // Both ends of a batch live at once in two processes: 200 stays far below the usual
    // 1024-descriptor soft limit whatever the machine.
    const BATCH: usize = 200;
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = spawn_binary(&dir, up.addr, "[admin]\naddr = \"127.0.0.1:0\"\n");
    let pid = gate.child.id();
    let normal = canary(gate.addr);
    normal.wait_rounds(5).await;
    let (fds_before, rss_before) = (open_fds(pid), proc_status_kib(pid, "VmRSS:"));
    let ws_before = metric(gate.admin, "wsgate_connections_active").await;
    let partial = [
        &b"GET /websocket/echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgr"[..],
        b"GET /websocket/echo HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        b"GET /websocket/e",
        b"",
    ];
    let mut fds_peak = fds_before;
    let started = Instant::now();
    for batch in 0..TOTAL / BATCH {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..BATCH {
            let addr = gate.addr;
            let n = batch * BATCH + i;
            tasks.spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let head = partial[n % partial.len()];
                if !head.is_empty() {
                    stream.try_write(head).ok();
                }
                if n % 2 == 0 {
                    // SO_LINGER 0: the close is a reset (RST), the other half end with FIN.
                    stream.set_zero_linger().unwrap();
                }
                drop(stream);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        fds_peak = fds_peak.max(open_fds(pid));
    }
    let attack = started.elapsed();
    normal.wait_rounds(3).await;
    // Everything is given back: descriptors, WebSocket gauge, memory.
    let settle = Instant::now();
    while open_fds(pid) > fds_before && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_after = open_fds(pid);
    assert!(fds_after <= fds_before, "descriptors back to baseline: {fds_before} before, {fds_after} after");
    assert_eq!(metric(gate.admin, "wsgate_connections_active").await, ws_before, "no half-made WebSocket counted");
    let open_fds_metric = metric(gate.admin, "process_open_fds").await;
    assert!(open_fds_metric as usize <= fds_before + 1, "process_open_fds {open_fds_metric} (before: {fds_before})");
    let rss_after = proc_status_kib(pid, "VmRSS:");
    let rss_peak = proc_status_kib(pid, "VmHWM:");
    eprintln!(
        "dropped handshakes: {TOTAL} in {attack:?}; fds {fds_before} -> peak {fds_peak} -> {fds_after}; \
         VmRSS {rss_before} KiB -> {rss_after} KiB (peak VmHWM {rss_peak} KiB)"
    );
    assert!(rss_after < rss_before + 8 * 1024, "RSS {rss_after} KiB vs baseline {rss_before} KiB");
    // Still serving: the normal client's last rounds, and a fresh upgrade.
    let mut ws = WsClient::connect(gate.addr, "/websocket/echo").await;
    ws.send_text("after").await;
    assert_eq!(ws.next().await, Some(WsIncoming::Text(Bytes::from_static(b"after"))));
    let rounds = normal.finish().await;
    eprintln!("dropped handshakes: normal client rounds {rounds}");
}
