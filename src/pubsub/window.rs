//! Back-pressure for publishers that can wait (the control API's publish).
//!
//! A multicast only queues its frame for the members' writers, so a publisher that sends
//! back to back can run ahead of them: the queues grow (up to each member's `send_queue`
//! budget) and every message waits behind the ones before it — burst latency grew to tens of
//! milliseconds (issue 21) while the publisher was told "delivered" at once. The window bounds
//! that lead: per subscription, at most a few multicasts (4 by default) may still be queued;
//! a publish beyond that waits until the oldest is *settled* (taken by its members' writers)
//! before it answers. The publisher feels the pace of delivery, and the writers still find
//! several frames to send in one write.
//!
//! A multicast is tracked by the [`SharedMessage`] all its members' queues share: each queue
//! holds a reference until its writer takes the frame, so the reference count (read through a
//! weak reference) says how many members still have it queued, at no cost on the delivery
//! path. Slow consumers must not hold everyone back: a multicast counts as settled when at
//! most 1/16 of its members still have it, and no publish waits longer than its `max_wait`
//! (20 ms by default; the slow-consumer policy deals with members that stay behind). Paced
//! publishing, where writers keep up, never waits: a multicast that no queue holds is not
//! tracked at all.
//!
//! Measured (BENCHMARKS.md, issue 21): burst fan-out p99 at 1,000 subscribers 134 ms → 27 ms
//! (Bun 33 ms), server CPU per delivery 2.35 → 3.63 µs (Bun 7.70): the writers coalesce
//! fewer frames per write, for a bounded queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::channel::ChannelId;
use super::hub::{shared_message, Delivery, Hub};
use super::Message;
use crate::locks::lock;
use crate::ws::deflate::SharedMessage;

/// Subscriptions tracked at once; past this, settled entries are pruned everywhere, and if
/// that is not enough the window forgets everything (only back-pressure is lost, no message).
const MAX_TRACKED: usize = 10_000;

/// One multicast still queued somewhere: the shared message and how many holders may remain
/// for it to count as settled. Weak: the window never keeps a message's bytes alive (a
/// subscription published to once and then never again would otherwise hold its last
/// multicasts until the next publish).
struct InFlight {
    message: Weak<SharedMessage>,
    tolerated: usize,
}

impl InFlight {
    fn settled(&self) -> bool {
        self.message.strong_count() <= self.tolerated
    }
}

/// The multicasts each subscription still has queued, for publishers that wait.
pub struct PublishWindow {
    depth: usize,
    max_wait: Duration,
    in_flight: Mutex<HashMap<String, VecDeque<InFlight>>>,
}

impl std::fmt::Debug for PublishWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishWindow").field("depth", &self.depth).field("max_wait", &self.max_wait).finish()
    }
}

impl Default for PublishWindow {
    /// 4 multicasts per subscription; no publish waits more than 20 ms.
    fn default() -> Self {
        Self::new(4, Duration::from_millis(20))
    }
}

impl PublishWindow {
    /// A window of `depth` queued multicasts per subscription (at least 1), where one publish
    /// waits at most `max_wait`.
    pub fn new(depth: usize, max_wait: Duration) -> Self {
        Self { depth: depth.max(1), max_wait, in_flight: Mutex::new(HashMap::new()) }
    }

    /// Multicasts like [`Hub::multicast`] (relayed to the other nodes too), then waits, if
    /// the subscription has more than `depth` multicasts still queued, until the oldest is
    /// settled or `max_wait` has passed.
    pub async fn publish(&self, hub: &Hub, name: &str, message: &Message, exclude: &[ChannelId]) -> Delivery {
        let shared = Arc::new(shared_message(message));
        let mut delivery = hub.multicast_shared(name, &shared, exclude);
        delivery.relayed = hub.relay(name, message, exclude);
        let tolerated = delivery.delivered / 16;
        let message = Arc::downgrade(&shared);
        drop(shared); // from here on, only the members' queues hold it
        if let Some(oldest) = self.admit(name, InFlight { message, tolerated }) {
            let started = tokio::time::Instant::now();
            if self.settle(&oldest).await {
                if let Some(metrics) = hub.metrics() {
                    metrics.publish_backpressure.observe(started.elapsed().as_secs_f64());
                }
            }
        }
        delivery
    }

    /// Records a multicast; returns the one to wait for when the subscription's window is full.
    fn admit(&self, name: &str, new: InFlight) -> Option<InFlight> {
        let mut in_flight = lock(&self.in_flight);
        if in_flight.len() >= MAX_TRACKED {
            in_flight.retain(|_, queue| {
                queue.retain(|m| !m.settled());
                !queue.is_empty()
            });
            if in_flight.len() >= MAX_TRACKED {
                in_flight.clear();
            }
        }
        let queue = match in_flight.get_mut(name) {
            Some(queue) => queue,
            None if new.settled() => return None, // nothing queued anywhere: nothing to track
            None => in_flight.entry(name.to_owned()).or_default(),
        };
        queue.retain(|m| !m.settled());
        if !new.settled() {
            queue.push_back(new);
        }
        let oldest = if queue.len() > self.depth { queue.pop_front() } else { None };
        if queue.is_empty() {
            in_flight.remove(name);
        }
        oldest
    }

    /// Waits until `oldest` is settled or `max_wait` has passed: yielding first (the writers
    /// usually take a frame within a few polls), then in 1 ms sleeps. Whether it waited.
    async fn settle(&self, oldest: &InFlight) -> bool {
        let deadline = tokio::time::Instant::now() + self.max_wait;
        let mut polls = 0u32;
        while !oldest.settled() && tokio::time::Instant::now() < deadline {
            if polls < 64 {
                polls += 1;
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        polls > 0
    }

    /// Subscriptions with multicasts tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.in_flight).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::channel::{ChannelHandle, ChannelIdGenerator, ChannelQueue};
    use crate::pubsub::hub::test_support::open;
    use bytes::Bytes;

    fn text(n: usize) -> Message {
        Message::Text(Bytes::from(n.to_string()))
    }

    /// `n` channels of `hub`, all in subscription "room", with their queues.
    fn room_of(hub: &Hub, n: usize) -> Vec<(ChannelHandle, ChannelQueue)> {
        let ids = ChannelIdGenerator::new("n");
        let members: Vec<_> = (0..n).map(|_| open(hub, &ids)).collect();
        for (handle, _) in &members {
            hub.subscribe(handle.id(), "room").unwrap();
        }
        members
    }

    fn queued(queue: &mut ChannelQueue) -> usize {
        let mut n = 0;
        while queue.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_ahead_of_every_member_waits_and_nothing_is_lost() {
        let hub = Hub::new();
        let mut members = room_of(&hub, 4);
        let window = PublishWindow::new(2, Duration::from_millis(20));
        let started = tokio::time::Instant::now();
        for n in 0..2 {
            assert_eq!(window.publish(&hub, "room", &text(n), &[]).await.delivered, 4);
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "within the window: no wait");
        // Nobody takes frames: every publish past the window waits the whole max_wait.
        for n in 2..5 {
            assert_eq!(window.publish(&hub, "room", &text(n), &[]).await.delivered, 4);
        }
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        for (_, queue) in &mut members {
            assert_eq!(queued(queue), 5, "back-pressure delays, never drops");
        }
        // Now the queues are empty: everything in the window is settled.
        assert_eq!(window.publish(&hub, "room", &text(5), &[]).await.delivered, 4);
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        for (_, queue) in &mut members {
            queued(queue);
        }
        window.publish(&hub, "room", &text(6), &[]).await;
        assert_eq!(window.tracked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_stalled_members_do_not_hold_the_publisher() {
        let hub = Hub::new();
        let members = room_of(&hub, 32);
        // 30 members drain their queues as writers do; 2 (1/16) never do.
        let (stalled, draining): (Vec<_>, Vec<_>) = members.into_iter().enumerate().partition(|(i, _)| *i < 2);
        for (_, (_, mut queue)) in draining {
            tokio::spawn(async move { while queue.rx.recv().await.is_some() {} });
        }
        let window = PublishWindow::new(2, Duration::from_millis(20));
        let started = tokio::time::Instant::now();
        for n in 0..50 {
            window.publish(&hub, "room", &text(n), &[]).await;
        }
        assert!(started.elapsed() < Duration::from_millis(20), "waited {:?}", started.elapsed());
        drop(stalled);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_keeps_no_message_alive() {
        let hub = Hub::new();
        let mut members = room_of(&hub, 2);
        let window = PublishWindow::new(4, Duration::from_millis(20));
        for n in 0..3 {
            window.publish(&hub, "room", &text(n), &[]).await;
        }
        assert_eq!(window.tracked(), 1);
        // The writers take everything; nobody publishes to "room" again.
        for (_, queue) in &mut members {
            assert_eq!(queued(queue), 3);
        }
        let in_flight = lock(&window.in_flight);
        assert!(in_flight["room"].iter().all(|m| m.message.strong_count() == 0), "messages freed, not held");
    }

    #[tokio::test]
    async fn paced_publishing_tracks_nothing() {
        let hub = Hub::new();
        let window = PublishWindow::default();
        for n in 0..100 {
            assert_eq!(window.publish(&hub, &format!("empty-{n}"), &text(n), &[]).await.delivered, 0);
        }
        assert_eq!(window.tracked(), 0);
    }
}
