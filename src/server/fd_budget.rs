//! How many client connections the process's descriptor limit can carry.
//!
//! Each proxied connection may hold two descriptors (the client's and an upstream one), and
//! the process needs some of its own beside them (listeners, the admin listener, log-view
//! files, Redis, the journal). Past the budget a connection is refused at accept, so the
//! process never runs out of descriptors and the admin listener and the clients already
//! connected are always served (issue 15: 20,000 idle connections exhausted them and a
//! normal client hung for seconds).

/// Descriptors kept for the process itself, whatever the connections take.
pub(super) const RESERVED: u64 = 256;
/// Descriptors one client connection may hold (its own and an upstream connection).
pub(super) const PER_CONNECTION: u64 = 2;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as nginx's `worker_rlimit_nofile` or Go's
/// runtime do) and returns the soft limit in force after it; `None` when it cannot be read.
/// A refused `setrlimit` (`EPERM`, e.g. from the unit's `SystemCallFilter=~@resources` with
/// `SystemCallErrorNumber=EPERM`) keeps the current limit; the unit sets `LimitNOFILE=`.
pub(super) fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    raise_with(getrlimit(Resource::Nofile), |raised| setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from))
}

fn raise_with(
    limit: rustix::process::Rlimit,
    set: impl FnOnce(rustix::process::Rlimit) -> std::io::Result<()>,
) -> Option<u64> {
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match set(raised) {
            Ok(()) => return raised.current,
            Err(error) => tracing::debug!(%error, "cannot raise the open-file limit; keeping the current one"),
        }
    }
    limit.current
}

/// Client connections a soft limit of `nofile` descriptors carries (`usize::MAX` unlimited).
pub(super) fn connection_capacity(nofile: Option<u64>) -> usize {
    match nofile {
        None => usize::MAX,
        Some(n) => usize::try_from(n.saturating_sub(RESERVED) / PER_CONNECTION).unwrap_or(usize::MAX).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_keeps_the_reserve() {
        assert_eq!(connection_capacity(Some(1024)), 384);
        assert_eq!(connection_capacity(Some(100)), 1);
        assert_eq!(connection_capacity(None), usize::MAX);
        assert_eq!(
            connection_capacity(Some(u64::MAX)),
            usize::try_from((u64::MAX - RESERVED) / 2).unwrap_or(usize::MAX)
        );
    }

    #[test]
    fn a_refused_setrlimit_keeps_the_current_limit() {
        use rustix::process::Rlimit;
        let limit = Rlimit { current: Some(1024), maximum: Some(4096) };
        let refused = raise_with(limit, |_| Err(std::io::Error::from_raw_os_error(1)));
        assert_eq!(refused, Some(1024));
        assert_eq!(raise_with(limit, |_| Ok(())), Some(4096));
        // Already at the hard limit: no call at all.
        let at_max = Rlimit { current: Some(4096), maximum: Some(4096) };
        assert_eq!(raise_with(at_max, |_| panic!("setrlimit called")), Some(4096));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let after = raise_nofile().expect("readable");
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(Some(after), limit.current);
        assert_eq!(limit.current, limit.maximum);
    }
}
