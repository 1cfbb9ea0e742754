//! Graceful drain: one signal, tracked tasks, an outer deadline.
//!
//! [`Drain`] owns the only sender of the shutdown signal (it is deliberately not `Clone`, as
//! hyper-util's `GracefulShutdown`). Every connection and session holds a [`DrainWatch`]; the
//! drain is complete when all watches have been dropped.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The owner of the shutdown signal.
#[derive(Debug)]
pub(crate) struct Drain {
    signal: watch::Sender<bool>,
    tracker: mpsc::Sender<()>,
    finished: mpsc::Receiver<()>,
}

/// A tracked task's view of the drain: whether shutdown has been signalled. Dropping it tells
/// the [`Drain`] that the task is done.
#[derive(Debug, Clone)]
pub(crate) struct DrainWatch {
    signal: watch::Receiver<bool>,
    _tracker: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain with no tracked tasks.
    pub(crate) fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (tracker, finished) = mpsc::channel(1);
        Self { signal, tracker, finished }
    }

    /// A new watch for a task that must finish before the drain completes.
    pub(crate) fn watch(&self) -> DrainWatch {
        DrainWatch { signal: self.signal.subscribe(), _tracker: self.tracker.clone() }
    }

    /// Signals shutdown: every watch sees it from now on. [`Drain::drain`] signals too.
    pub(crate) fn signal(&self) {
        self.signal.send_replace(true);
    }

    /// Signals shutdown and waits until every watch is dropped or `deadline` passes. Returns
    /// `true` when everything finished in time.
    pub(crate) async fn drain(self, deadline: Duration) -> bool {
        let Drain { signal, tracker, mut finished } = self;
        signal.send_replace(true);
        drop(tracker);
        tokio::time::timeout(deadline, finished.recv()).await.is_ok()
    }
}

impl DrainWatch {
    /// Resolves once shutdown has been signalled (at once if it already was).
    pub(crate) async fn signalled(&mut self) {
        let _ = self.signal.wait_for(|s| *s).await;
    }

    /// Whether shutdown has been signalled.
    pub(crate) fn is_signalled(&self) -> bool {
        *self.signal.borrow()
    }

    /// A plain receiver of the signal, for code that only needs to observe it.
    pub(crate) fn receiver(&self) -> watch::Receiver<bool> {
        self.signal.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watches_and_respects_the_deadline() {
        let drain = Drain::new();
        let mut w = drain.watch();
        let task = tokio::spawn(async move {
            w.signalled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(w);
        });
        assert!(drain.drain(Duration::from_secs(5)).await);
        task.await.unwrap();

        let drain = Drain::new();
        let stuck = drain.watch();
        assert!(!drain.drain(Duration::from_millis(50)).await);
        drop(stuck);
    }
}
