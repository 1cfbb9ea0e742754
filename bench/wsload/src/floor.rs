//! `wsload floor`: the cheapest possible fan-out server, to measure the floor that any
//! server pays on this machine for one delivery.
//!
//! It accepts WebSocket upgrades on any path (no extensions), keeps the sockets and never
//! reads them again; every HTTP POST body becomes one unmasked text frame, encoded once and
//! written with one blocking `write` per subscriber, in order, before the POST is answered
//! (like nchan). No event loop, no per-subscriber state, no queue, no task: what remains of
//! its CPU per delivery is the kernel's share of a loopback send (the sender's TCP path, the
//! receiver's TCP processing done in softirq on the sender's CPU, and the receiver's wake-up)
//! plus one loop iteration. Comparing it with nchan and wsgate in one run says how much of a
//! server's CPU per delivery is left to optimise at all.
//!
//! Only for benchmarks on loopback: it trusts its clients (bounded heads and bodies aside).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

type Subscribers = Arc<Mutex<Vec<TcpStream>>>;

/// Set by every fan-out: the first connection after one starts a new run, whose load
/// generator has closed the previous run's subscribers.
static PUBLISHED: AtomicBool = AtomicBool::new(false);

/// Serves until the process is killed; returns only when the listener cannot be bound.
pub fn serve(listen: SocketAddr) -> Result<(), String> {
    if !listen.ip().is_loopback() {
        return Err(format!("{listen}: the floor server listens on loopback only"));
    }
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    eprintln!("wsload floor: listening on {listen}");
    let subscribers: Subscribers = Arc::default();
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            // Out of descriptors, most likely: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if PUBLISHED.swap(false, Ordering::Relaxed) {
            reap(&subscribers);
        }
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::with_capacity(1024);
        let Ok(head_len) = read_head(&mut stream, &mut buf) else { continue };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        match header(&head, "sec-websocket-key") {
            Some(key) => {
                let accept = derive_accept_key(key.as_bytes());
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).is_ok() {
                    subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
                }
            }
            None => {
                let subscribers = subscribers.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(None);
                    let _ = serve_publisher(stream, buf, head_len, &subscribers);
                });
            }
        }
    }
    Ok(())
}

/// Drops the subscribers whose client closed or sent anything (a Close): outside the measured
/// phase, at the start of the next run, so they neither hold descriptors nor cost writes.
fn reap(subscribers: &Subscribers) {
    let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    subs.retain(|s| {
        let open = s.set_nonblocking(true).is_ok()
            && matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        open && s.set_nonblocking(false).is_ok()
    });
}

/// Reads until the end of a request head; returns its length (the buffer may hold more).
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        if let Some(end) = crate::raw::find_head_end(buf) {
            return Ok(end);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Keep-alive loop of one publisher connection: each POST body is fanned out, then answered.
fn serve_publisher(mut stream: TcpStream, mut buf: Vec<u8>, mut head_len: usize, subscribers: &Subscribers) -> io::Result<()> {
    loop {
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let body_len: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if body_len > MAX_BODY {
            stream.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let frame = text_frame(&buf[head_len..head_len + body_len]);
        let delivered = fan_out(&frame, subscribers);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{delivered}", delivered.to_string().len());
        stream.write_all(answer.as_bytes())?;
        buf.drain(..head_len + body_len);
        head_len = read_head(&mut stream, &mut buf)?;
    }
}

/// One blocking write per subscriber; a subscriber whose write fails is dropped.
fn fan_out(frame: &[u8], subscribers: &Subscribers) -> usize {
    PUBLISHED.store(true, Ordering::Relaxed);
    let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    subs.retain_mut(|s| s.write_all(frame).is_ok());
    subs.len()
}

/// An unmasked, final text frame (RFC 6455 §5.2).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_headers() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        assert_eq!(&text_frame(&[b'x'; 200])[..4], &[0x81, 126, 0, 200]);
        let head = "GET /sub HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: abc \r\n\r\n";
        assert_eq!(header(head, "sec-websocket-key"), Some("abc"));
        assert_eq!(header(head, "content-length"), None);
    }
}
