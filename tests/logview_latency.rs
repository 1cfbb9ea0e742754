//! Measurement (ignored by default): time from a line appended to a log file to its arrival
//! at a log-view WebSocket client, with inotify and with polling only.
//!
//! ```sh
//! cargo test --release --test logview_latency -- --ignored --nocapture
//! ```
//! Each line carries the time it was written (µs since the start); the client subtracts it
//! from the time the `lines` message arrived. Lines are appended every 25 ms (not in step
//! with the poll timer), 200 per mode.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use wsgate::ws::codec::Incoming as WsIncoming;

const LINES: usize = 200;
const GAP: Duration = Duration::from_millis(25);

async fn measure(extra: &str) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.log");
    std::fs::write(&path, "").unwrap();
    let up = start_upstream().await;
    let config = basic_config(&format!(
        "[apps.lv]\nkind = \"log-view\"\nurls = [\"/logs\"]\nfiles = [{:?}]\nbacklog_lines = 0\n{extra}\n",
        path.display().to_string()
    ));
    let gate = start_gate(&config, up.addr).await;
    let mut ws = WsClient::connect(gate.addr, "/logs").await;
    let _files = ws.next().await;
    ws.send_text(r#"{"type":"subscribe","file":0}"#).await;
    let _backlog = ws.next().await;
    let start = Instant::now();
    let writer_path = path.clone();
    let writer = tokio::spawn(async move {
        let mut file = std::fs::OpenOptions::new().append(true).open(&writer_path).unwrap();
        for i in 0..LINES {
            tokio::time::sleep(GAP).await;
            writeln!(file, "{} line {i}", start.elapsed().as_micros()).unwrap();
        }
    });
    let mut latencies = Vec::with_capacity(LINES);
    while latencies.len() < LINES {
        let Some(WsIncoming::Text(text)) = ws.next().await else { continue };
        let now = start.elapsed();
        let m: serde_json::Value = serde_json::from_slice(&text).unwrap();
        for line in m["lines"].as_array().into_iter().flatten() {
            let written: u64 = line.as_str().unwrap().split(' ').next().unwrap().parse().unwrap();
            latencies.push(now - Duration::from_micros(written));
        }
    }
    writer.await.unwrap();
    drop(ws);
    gate.server.shutdown().await;
    latencies.sort();
    latencies
}

fn report(mode: &str, latencies: &[Duration]) {
    let pct =
        |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len() - 1)];
    println!(
        "log-view latency, {mode}: n={} p50={:.2?} p99={:.2?} max={:.2?}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn logview_append_to_client_latency() {
    report("inotify (refresh 1s)", &measure("refresh = \"1s\"").await);
    report("polling only (inotify = false, refresh 1s)", &measure("refresh = \"1s\"\ninotify = false").await);
    report("polling only (inotify = false, refresh 100ms)", &measure("refresh = \"100ms\"\ninotify = false").await);
}
