//! Deadlines from durations that come from outside (the configuration, the environment, the
//! command line). `Instant + Duration` panics when the sum overflows the clock, so every such
//! deadline is taken here: one past what the clock can hold is ~30 years away instead, which
//! is "never" for a connection. Configuration bounds (`config::bounds`) keep configured
//! durations far from that point already; this is the second line.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years, the "far future" tokio itself uses for unbounded sleeps.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`, saturating at ~30 years from `now` (at `now` itself if even that
/// overflows, which no real clock does).
pub(crate) fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after.min(FAR_FUTURE)).unwrap_or(now)
}

/// [`deadline_after`] from now.
pub(crate) fn deadline(after: Duration) -> Instant {
    deadline_after(Instant::now(), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::ZERO), now);
        assert_eq!(deadline_after(now, Duration::from_secs(30)), now + Duration::from_secs(30));
        for huge in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(5_000_000_000_000_000 * 3600), /* the "5000000000000000h" */
        ] {
            assert_eq!(deadline_after(now, huge), now + FAR_FUTURE);
        }
        assert!(deadline(Duration::MAX) > Instant::now());
    }
}
