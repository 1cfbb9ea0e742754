//! When a fan-out writes directly to its members' sockets and when it queues for their
//! writers instead.
//!
//! A direct write (`crate::session::direct`, through the outbox's `DirectSink`) saves each delivery the wake-up and poll of the
//! member's session, but costs one `send` per delivery. Under heavy load queueing is cheaper:
//! the sessions' writers fall behind the publishers, find several messages queued and send
//! them in one vectored write each, which is what made burst fan-out cost about 2 µs per
//! delivery against nchan's 7 to 10 (BENCHMARKS.md); written directly, a burst costs one
//! `send` per delivery (about 5 to 10 µs, measured). So the fan-outs of the node count their
//! deliveries: while the rate over the last window (at least [`WINDOW`] long, idle time
//! included) stays under [`DIRECT_MAX_RATE`] they write directly (the latency-sensitive,
//! lightly loaded case); above it they queue, until a window shows the rate down again. A big
//! fan-out also looks at the rate every few hundred deliveries ([`FanOut`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deliveries per second above which fan-outs queue rather than write directly.
pub(crate) const DIRECT_MAX_RATE: u64 = 50_000;
/// Shortest span the rate is measured over.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);

/// Fan-out rate bookkeeping for the node (approximate under concurrent fan-outs: a lost
/// update only shifts one window).
struct Meter {
    /// Start of the current window, in nanoseconds since [`epoch`].
    window_start: AtomicU64,
    /// Deliveries in the current window.
    deliveries: AtomicU64,
    /// Whether the last complete window was under the rate.
    direct: AtomicBool,
}

static METER: Meter =
    Meter { window_start: AtomicU64::new(0), deliveries: AtomicU64::new(0), direct: AtomicBool::new(true) };

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Deliveries between two looks at the rate inside one fan-out.
const CHECK_EVERY: u32 = 256;

/// One fan-out's view of the meter: whether its next delivery may be written directly. A big
/// fan-out that started in direct mode looks at the rate again as it goes, so the first
/// message of a burst to 10,000 members does not pay a `send` per member all the way.
pub(crate) struct FanOut {
    direct: Cell<bool>,
    since_check: Cell<u32>,
    done: Cell<u64>,
}

impl FanOut {
    /// Starts a fan-out with the verdict of the last complete window.
    pub(crate) fn start() -> Self {
        Self { direct: Cell::new(METER.direct.load(Ordering::Relaxed)), since_check: Cell::new(0), done: Cell::new(0) }
    }

    /// Whether the next delivery may be written directly.
    pub(crate) fn next_direct(&self) -> bool {
        self.done.set(self.done.get() + 1);
        if !self.direct.get() {
            return false;
        }
        let n = self.since_check.get() + 1;
        if n < CHECK_EVERY {
            self.since_check.set(n);
            return true;
        }
        self.since_check.set(0);
        // The rate of the window so far, this fan-out included, over at least one window.
        let start = METER.window_start.load(Ordering::Relaxed);
        let span = now_ns().saturating_sub(start).max(WINDOW.as_nanos() as u64);
        let count = METER.deliveries.load(Ordering::Relaxed) + self.done.get();
        let direct = under_rate(count, span);
        self.direct.set(direct);
        direct
    }

    /// Ends the fan-out: its deliveries count in the window.
    pub(crate) fn end(self, deliveries: usize) {
        fan_out_ended(deliveries);
    }
}

/// Called when a fan-out has ended, with the number of deliveries it made.
fn fan_out_ended(deliveries: usize) {
    let count = METER.deliveries.fetch_add(deliveries as u64, Ordering::Relaxed) + deliveries as u64;
    let now = now_ns();
    let start = METER.window_start.load(Ordering::Relaxed);
    if let Some(direct) = window_verdict(start, now, count) {
        // One caller closes the window; the others keep counting into the next one.
        if METER.window_start.compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            METER.deliveries.fetch_sub(count, Ordering::Relaxed);
            METER.direct.store(direct, Ordering::Relaxed);
        }
    }
}

/// Once a window of at least [`WINDOW`] has passed: whether its rate allows direct writes.
fn window_verdict(start: u64, now: u64, deliveries: u64) -> Option<bool> {
    let elapsed = now.saturating_sub(start);
    if elapsed < WINDOW.as_nanos() as u64 {
        return None;
    }
    Some(under_rate(deliveries, elapsed))
}

/// Whether `deliveries` in `span_ns` is under [`DIRECT_MAX_RATE`] (without a division).
fn under_rate(deliveries: u64, span_ns: u64) -> bool {
    u128::from(deliveries) * 1_000_000_000 < u128::from(DIRECT_MAX_RATE) * u128::from(span_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_over_the_rate_queues_and_one_under_it_writes_directly() {
        let ms = 1_000_000u64;
        assert_eq!(window_verdict(0, 5 * ms, 1_000_000), None, "the window is not over yet");
        // 10,000 deliveries in 500 ms (paced, idle time included): 20,000/s.
        assert_eq!(window_verdict(0, 500 * ms, 10_000), Some(true));
        // 10,000 deliveries in 50 ms (back-to-back publishes): 200,000/s.
        assert_eq!(window_verdict(0, 50 * ms, 10_000), Some(false));
        assert_eq!(window_verdict(1_000 * ms, 1_100 * ms, 5_000), Some(false), "exactly the limit queues");
        assert_eq!(window_verdict(1_000 * ms, 1_100 * ms, 4_999), Some(true));
    }

    #[test]
    fn a_fan_out_counts_its_deliveries_and_stays_queued_once_queued() {
        let fan_out = FanOut::start();
        fan_out.direct.set(false);
        assert!((0..1000).all(|_| !fan_out.next_direct()));
        assert_eq!(fan_out.done.get(), 1000);
        // 10,000 deliveries within one window are far over the rate: the check switches.
        let fan_out = FanOut::start();
        fan_out.direct.set(true);
        fan_out.done.set(10_000);
        let switched = (0..CHECK_EVERY).map(|_| fan_out.next_direct()).last();
        assert_eq!(switched, Some(false));
    }
}
