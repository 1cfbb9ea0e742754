//! 64 MiB bodies through the proxy in both directions, with memory bounded: the
//! proxy must stream, never buffer a whole body. Alone in its test binary so the
//! process's peak RSS (`VmHWM`) is attributable to this test.

mod common;

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use common::inproc::*;
use common::upstream::*;

const LEN: u64 = 64 << 20;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn vm(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Reads the whole body, checking every byte against the pattern; `pause` after
/// each MiB makes a slow reader (backpressure must reach the upstream).
async fn verify(mut body: Incoming, len: u64, pause: Option<Duration>) {
    let mut offset = 0u64;
    let mut next_pause = 1u64 << 20;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, pattern(offset + i as u64), "byte {}", offset + i as u64);
        }
        offset += data.len() as u64;
        if let Some(p) = pause {
            if offset >= next_pause {
                next_pause += 1 << 20;
                tokio::time::sleep(p).await;
            }
        }
    }
    assert_eq!(offset, len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_64_mib_stream_through_without_buffering() {
    let up = start_dump_upstream().await;
    let proxy = start_proxy(settings(up.addr)).await;
    let base = vm("VmRSS");

    tokio::time::timeout(Duration::from_secs(240), async {
        // 64 MiB up, echoed back by the upstream while it still arrives: both
        // directions stream at once.
        let mut client = h1_client(proxy).await;
        let req = Request::post("/echo").header("host", "h").body(Generated::new(LEN).boxed()).unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        verify(resp.into_body(), LEN, None).await;

        // 64 MiB down to a slow reader.
        let req = Request::get(format!("/big/{LEN}")).header("host", "h").body(body_of("")).unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], LEN.to_string());
        verify(resp.into_body(), LEN, Some(Duration::from_millis(15))).await;
    })
    .await
    .expect("transfers finish");

    let peak = vm("VmHWM");
    let grown = peak.saturating_sub(base);
    eprintln!("RSS at start {} KiB, peak {} KiB, growth {} KiB", base >> 10, peak >> 10, grown >> 10);
    assert!(grown < 32 << 20, "peak RSS grew by {} MiB: bodies are being buffered", grown >> 20);
}
