//! Numbering of relayed messages, so a receiving node can count what it missed.
//!
//! Redis pub/sub keeps nothing: a message published while a node's subscriber connection is
//! down (reconnecting, a slot moving to another shard, Redis dropping a subscriber whose
//! output buffer overflowed) is simply never seen by that node. To make that loss counted
//! instead of silent, the origin numbers what it publishes on each Redis channel
//! ([`Numbering`]) and each receiver checks the numbers per origin and channel
//! ([`GapDetector`]). A jump is a gap: that many messages were relayed and not received.
//!
//! A number belongs to a *stream*: a random id the origin draws when it starts numbering a
//! channel (at start, after forgetting a channel, after a failed publish). A new stream is a
//! new start, never a gap, so a restarted origin or one that reset its numbering on purpose is
//! not mistaken for a loss. A gap shows when the next message of the same stream arrives; the
//! messages missed at the very end of a stream are not seen.
//!
//! Pure logic, no I/O: the Redis broker's publisher and connection tasks own one each.

use std::collections::HashMap;

/// One message's place: the stream it belongs to and its number in it (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// Random id of the origin's numbering of one Redis channel (never 0).
    pub stream: u64,
    /// Position in the stream, from 1.
    pub number: u64,
}

/// Channels numbered at once by one origin; past this the numbering starts afresh (new
/// streams for every channel, which receivers take as a new start, not a gap).
const MAX_NUMBERED_CHANNELS: usize = 65_536;
/// Origins tracked per channel by a receiver; past this the channel's tracking starts afresh.
const MAX_ORIGINS_PER_CHANNEL: usize = 1_024;

/// The origin's side: the next number per Redis channel.
#[derive(Debug, Default)]
pub struct Numbering {
    streams: HashMap<String, Sequence>,
}

impl Numbering {
    /// Numbers the next message published on `channel`.
    pub fn next(&mut self, channel: &str) -> Sequence {
        if let Some(seq) = self.streams.get_mut(channel) {
            seq.number += 1;
            return *seq;
        }
        if self.streams.len() >= MAX_NUMBERED_CHANNELS {
            self.streams.clear();
        }
        let seq = Sequence { stream: fastrand::u64(1..), number: 1 };
        self.streams.insert(channel.to_owned(), seq);
        seq
    }

    /// Starts `channel` on a new stream with its next message: for messages that were
    /// numbered but may not have reached Redis (already counted by the origin), so receivers
    /// do not count them a second time.
    pub fn forget(&mut self, channel: &str) {
        self.streams.remove(channel);
    }
}

/// The receiver's side: the last number seen per Redis channel and origin.
#[derive(Debug, Default)]
pub struct GapDetector {
    last: HashMap<String, HashMap<String, Sequence>>,
}

impl GapDetector {
    /// Records a message from `origin` on `channel` and returns how many of that origin's
    /// messages on the channel were skipped just before it (0 when none, or on a new stream).
    pub fn observe(&mut self, channel: &str, origin: &str, seq: Sequence) -> u64 {
        let origins = match self.last.get_mut(channel) {
            Some(origins) => origins,
            None => self.last.entry(channel.to_owned()).or_default(),
        };
        if let Some(last) = origins.get_mut(origin) {
            let missed = if last.stream == seq.stream && seq.number > last.number {
                seq.number - last.number - 1
            } else {
                0 // a new stream; or an older number, which Redis never delivers late
            };
            *last = seq;
            return missed;
        }
        if origins.len() >= MAX_ORIGINS_PER_CHANNEL {
            origins.clear();
        }
        origins.insert(origin.to_owned(), seq);
        0 // the first message seen from this origin here: nothing to compare with
    }

    /// Forgets `channel` (unsubscribed: what is published until it is subscribed again is
    /// not for this node, so it is no gap).
    pub fn forget(&mut self, channel: &str) {
        self.last.remove(channel);
    }

    /// Keeps only the channels `keep` accepts (after a reconnect: the ones subscribed again).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|channel, _| keep(channel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_run_per_channel_from_one() {
        let mut n = Numbering::default();
        let a1 = n.next("a");
        let b1 = n.next("b");
        let a2 = n.next("a");
        assert_eq!((a1.number, a2.number, b1.number), (1, 2, 1));
        assert_eq!(a1.stream, a2.stream);
        assert_ne!(a1.stream, 0);
        n.forget("a");
        let a = n.next("a");
        assert_eq!(a.number, 1);
        assert_ne!(a.stream, a1.stream, "a forgotten channel starts a new stream");
    }

    #[test]
    fn a_jump_is_counted_once_a_new_stream_is_not() {
        let mut g = GapDetector::default();
        let s = |stream, number| Sequence { stream, number };
        assert_eq!(g.observe("c", "n1", s(7, 1)), 0);
        assert_eq!(g.observe("c", "n1", s(7, 2)), 0);
        assert_eq!(g.observe("c", "n1", s(7, 6)), 3, "3, 4 and 5 were missed");
        assert_eq!(g.observe("c", "n1", s(7, 7)), 0);
        // Another origin and another channel have their own numbers.
        assert_eq!(g.observe("c", "n2", s(9, 40)), 0, "the first message seen is a start");
        assert_eq!(g.observe("d", "n1", s(8, 5)), 0);
        assert_eq!(g.observe("c", "n2", s(9, 42)), 1);
        // A restarted origin (new stream) is a new start.
        assert_eq!(g.observe("c", "n1", s(11, 1)), 0);
        assert_eq!(g.observe("c", "n1", s(11, 3)), 1);
        // A forgotten (unsubscribed) channel starts afresh.
        g.forget("c");
        assert_eq!(g.observe("c", "n1", s(11, 10)), 0);
        g.retain(|c| c == "d");
        assert_eq!(g.observe("c", "n1", s(11, 20)), 0, "not kept: a new start");
        assert_eq!(g.observe("d", "n1", s(8, 7)), 1, "kept: 6 was missed");
    }

    #[test]
    fn numbering_and_detection_agree_over_random_losses() {
        // The property: whatever subset of a numbered sequence arrives, the gaps counted are
        // exactly the messages dropped between the first and the last one received.
        for round in 0..500u64 {
            let mut rng = fastrand::Rng::with_seed(round);
            let mut numbering = Numbering::default();
            let mut detector = GapDetector::default();
            let (mut expected, mut counted, mut pending, mut received_any) = (0u64, 0u64, 0u64, false);
            for _ in 0..rng.usize(1..300) {
                let channel = ["x", "y"][rng.usize(0..2)];
                let seq = numbering.next(channel);
                if channel == "y" {
                    continue; // another channel's numbers do not matter to "x"
                }
                if rng.u8(0..4) == 0 {
                    pending += 1; // lost on the way
                    continue;
                }
                counted += detector.observe(channel, "origin", seq);
                if received_any {
                    expected += pending;
                }
                received_any = true;
                pending = 0;
            }
            assert_eq!(counted, expected, "round {round}");
        }
    }
}
