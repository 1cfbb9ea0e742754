//! `handshake`: C workers each repeatedly open a WebSocket (TCP connect + upgrade, wait for
//! the 101), optionally exchange one message, and close cleanly (Close frame, wait for the
//! server's Close and its TCP close); handshakes/s, open latency, failures by kind, server
//! CPU per handshake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::conn::{ConnOpts, Target};
use crate::payload::{self, Stamp};
use crate::raw::{self, Event};
use crate::stats;

pub struct HandshakeCfg {
    pub target: Target,
    pub conns: usize,
    /// Stop after this long (measured phase)...
    pub duration: Duration,
    /// ... or after this many handshakes in total, whichever comes first (0: no count).
    pub count: u64,
    /// Send one stamped text message after the 101 and wait for one data message back.
    pub exchange: bool,
    /// Text frame sent after the 101 without waiting for an answer (e.g. a subscribe command).
    pub sub_init: Option<String>,
    pub size: usize,
    pub deflate: bool,
    pub close_timeout: Duration,
    pub conn_opts: ConnOpts,
    pub pids: Vec<u32>,
    pub pid_tree: bool,
    pub progress: bool,
}

#[derive(Default)]
struct WorkerReport {
    /// TCP connect + upgrade, until the 101 head is read.
    open_ns: Vec<u64>,
    tcp_ns: Vec<u64>,
    /// Exchange round trip, when asked for.
    exchange_ns: Vec<u64>,
    /// From sending Close to the server's TCP close.
    close_ns: Vec<u64>,
    failures: BTreeMap<String, u64>,
    no_close_reply: u64,
    deflate_accepted: u64,
}

struct Shared {
    done: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    count: u64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// Claims one more attempt; false once the count is reached or the time is up.
    fn claim(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
    fn note(&self, e: String) {
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(e);
        }
    }
}

async fn worker(w: usize, cfg: Arc<HandshakeCfg>, sh: Arc<Shared>, run: u32) -> WorkerReport {
    let mut rep = WorkerReport::default();
    let base = Instant::now();
    let mut i = 0usize;
    while sh.claim() {
        // Spread over source addresses: worker w's i-th connection.
        let idx = w + i * cfg.conns;
        i += 1;
        let (mut ws, times) = match raw::open(&cfg.target, idx, &cfg.conn_opts, cfg.deflate).await {
            Ok(x) => x,
            Err(e) => {
                *rep.failures.entry(e.kind()).or_default() += 1;
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.note(format!("open: {e}"));
                // Back off a little so a refusing server does not turn into a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        rep.open_ns.push(times.tcp_ns + times.upgrade_ns);
        rep.tcp_ns.push(times.tcp_ns);
        rep.deflate_accepted += ws.deflate() as u64;
        let mut failed = None;
        if let Some(init) = &cfg.sub_init
            && let Err(e) = ws.send_text(init).await
        {
            failed = Some(("init_send".to_string(), e.to_string()));
        }
        if failed.is_none() && cfg.exchange {
            let text =
                payload::encode(Stamp { kind: b'E', run, seq: idx as u64, ts_ns: base.elapsed().as_nanos() as u64 }, cfg.size);
            let t0 = Instant::now();
            let r = tokio::time::timeout(cfg.close_timeout, async {
                ws.send_text(&text).await.map_err(|e| ("exchange_send".to_string(), e.to_string()))?;
                loop {
                    match ws.recv().await {
                        Ok(Some(Event::Data(m))) if m.data == text.as_bytes() => return Ok(()),
                        Ok(Some(Event::Data(_))) => continue, // e.g. a welcome message
                        Ok(Some(Event::Close(c))) => {
                            ws.answer_close().await;
                            return Err(("exchange_closed".to_string(), format!("server closed with {c:?}")));
                        }
                        Ok(None) => return Err(("exchange_eof".to_string(), "eof".into())),
                        Err(e) => return Err(("exchange_error".to_string(), e)),
                    }
                }
            })
            .await;
            match r {
                Ok(Ok(())) => rep.exchange_ns.push(t0.elapsed().as_nanos() as u64),
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some(("exchange_timeout".into(), "no echo".into())),
            }
        }
        if let Some((kind, detail)) = failed {
            *rep.failures.entry(kind).or_default() += 1;
            sh.failed.fetch_add(1, Ordering::Relaxed);
            sh.note(detail);
            continue;
        }
        let t0 = Instant::now();
        match ws.close(cfg.close_timeout).await {
            Ok(true) => {}
            Ok(false) => rep.no_close_reply += 1,
            Err(e) => {
                let kind = if e.contains("timed out") { "close_timeout" } else { "close_error" };
                *rep.failures.entry(kind.into()).or_default() += 1;
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.note(e);
                continue;
            }
        }
        rep.close_ns.push(t0.elapsed().as_nanos() as u64);
        let n = sh.done.fetch_add(1, Ordering::Relaxed) + 1;
        if sh.count > 0 && n >= sh.count {
            sh.stop.store(true, Ordering::Relaxed);
        }
    }
    rep
}

pub async fn run(cfg: HandshakeCfg) -> Value {
    let cfg = Arc::new(cfg);
    let run = payload::new_run_id();
    let sh = Arc::new(Shared {
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        count: cfg.count,
        first_error: Mutex::new(None),
    });
    let mut out = json!({
        "mode": "handshake", "url": cfg.target.url, "conns": cfg.conns,
        "duration_s": cfg.duration.as_secs_f64(), "count": cfg.count, "exchange": cfg.exchange,
        "deflate_offered": cfg.deflate, "sources": cfg.conn_opts.sources,
    });
    let pids = if cfg.pid_tree { stats::pid_tree(&cfg.pids) } else { cfg.pids.clone() };
    out["measured_pids"] = json!(pids.len());
    let cpu0 = stats::self_cpu_s();
    let scpu0 = stats::procs_cpu_ns(&pids);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..cfg.conns).map(|w| tokio::spawn(worker(w, cfg.clone(), sh.clone(), run))).collect();

    // Progress once a second on stderr; stop at the deadline or when the count is reached.
    let deadline = t0 + cfg.duration;
    let mut last = (t0, 0u64);
    while !sh.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()))).await;
        if cfg.progress && last.0.elapsed() >= Duration::from_secs(1) {
            let d = sh.done.load(Ordering::Relaxed);
            let rate = (d - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "wsload handshake: {:5.1} s  {d} done ({rate:.0}/s)  {} failed",
                t0.elapsed().as_secs_f64(),
                sh.failed.load(Ordering::Relaxed)
            );
            last = (Instant::now(), d);
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    // Handshakes started before the stop finish (each bounded by the connect and close timeouts).
    let bound = cfg.conn_opts.connect_timeout + cfg.close_timeout * 2 + Duration::from_secs(5);
    let mut reports = Vec::new();
    let collect = async {
        for h in handles {
            if let Ok(r) = h.await {
                reports.push(r);
            }
        }
    };
    let timed_out = tokio::time::timeout(bound, collect).await.is_err();
    let span = t0.elapsed().as_secs_f64();
    let cpu1 = stats::self_cpu_s();
    let scpu1 = stats::procs_cpu_ns(&pids);

    let (mut open, mut tcp, mut exch, mut close) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let (mut no_close_reply, mut deflate_accepted) = (0u64, 0u64);
    for r in reports {
        open.extend(r.open_ns);
        tcp.extend(r.tcp_ns);
        exch.extend(r.exchange_ns);
        close.extend(r.close_ns);
        for (k, v) in r.failures {
            *failures.entry(k).or_default() += v;
        }
        no_close_reply += r.no_close_reply;
        deflate_accepted += r.deflate_accepted;
    }
    let done = sh.done.load(Ordering::Relaxed);
    let failed: u64 = failures.values().sum();
    out["handshakes"] = json!(done);
    out["failed"] = json!(failed);
    out["failures"] = json!(failures);
    out["no_close_reply"] = json!(no_close_reply);
    out["deflate_accepted"] = json!(deflate_accepted);
    out["span_s"] = json!(stats::round3(span));
    out["handshakes_per_s"] = json!(if span > 0.0 { (done as f64 / span).round() } else { 0.0 });
    out["latency"] = stats::latency_summary(&mut open);
    out["tcp_connect"] = stats::latency_summary(&mut tcp);
    out["close"] = stats::latency_summary(&mut close);
    if cfg.exchange {
        out["exchange"] = stats::latency_summary(&mut exch);
    }
    out["client_cpu_s"] = json!(stats::round3(cpu1 - cpu0));
    if timed_out {
        out["workers_timed_out"] = json!(true);
    }
    if !cfg.pids.is_empty() {
        let s = (scpu1 - scpu0) as f64 / 1e9;
        out["server_cpu_s"] = json!(stats::round3(s));
        out["server_cpu_us_per_handshake"] = json!(if done > 0 { stats::round2(s * 1e6 / done as f64) } else { 0.0 });
    }
    if let Some(e) = sh.first_error.lock().ok().and_then(|g| g.clone()) {
        out["first_error"] = json!(e);
    }
    if done == 0 {
        out["error"] = json!("no handshake completed");
    }
    out
}
