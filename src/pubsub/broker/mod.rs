//! Brokers carry multicasts and sends between wsgate nodes (DESIGN §4).
//!
//! The [`Hub`](super::Hub) does every node-local fan-out itself; a broker only relays what
//! other nodes must see. The hub calls the broker through the [`Broker`] trait (defined below
//! the hub, in `pubsub::relay`, so the hub knows no broker), synchronously
//! and without waiting on the network: a broker queues, and its own tasks do the I/O. A
//! message arriving from another node is handed back to the hub's node-local fan-out
//! ([`Hub::multicast_frame`](super::Hub::multicast_frame)), which encodes it once for all
//! local members.
//!
//! - [`memory`]: one process. The default (`[broker] kind = "memory"`) has one node on its
//!   bus, so nothing is relayed; several hubs on one bus form an in-process cluster (tests).
//! - [`redis`]: many nodes through Redis pub/sub (`kind = "redis"`; one server, Sentinel, or a
//!   Redis Cluster with sharded pub/sub). Redis channel names are
//!   `wsgate:sub:<name>` per subscription, `wsgate:all` for the reserved `all`, and
//!   `wsgate:node:<node>` for sends and control operations (subscribe, unsubscribe, close;
//!   see [`control`]) addressed to the channels of one node.

pub(crate) mod memory;
pub mod redis;
pub mod sequence;

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use super::channel::ChannelId;
use super::hub::{Hub, HubError};
pub use super::relay::{node_of, Broker, BrokerError, Control};
use crate::config::{BrokerConfig, BrokerKind};
use crate::pubsub::Message;
pub use sequence::Sequence;

/// The Redis channel prefix of subscriptions.
pub const SUB_PREFIX: &str = "wsgate:sub:";
/// The Redis channel of the reserved subscription `all`.
pub const ALL_CHANNEL: &str = "wsgate:all";
/// The Redis channel prefix of per-node direct sends.
pub const NODE_PREFIX: &str = "wsgate:node:";

/// Reads the Redis settings of `[broker]`, with `password_file` and `ca_file` loaded;
/// `None` for the memory broker.
pub fn redis_settings(config: &BrokerConfig) -> Result<Option<redis::RedisSettings>, String> {
    if config.kind != BrokerKind::Redis {
        return Ok(None);
    }
    let url = config.url.clone().unwrap_or_default();
    let password = match &config.password_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("broker.password_file {}: {e}", path.display()))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        None => None,
    };
    let ca_pem = match &config.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| format!("broker.ca_file {}: {e}", path.display()))?),
        None => None,
    };
    let sentinel_password = match &config.sentinel_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("broker.sentinel_password_file {}: {e}", path.display()))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        None => None,
    };
    let settings = redis::RedisSettings {
        url,
        password,
        ca_pem,
        sentinel: (!config.sentinels.is_empty()).then(|| redis::SentinelSettings {
            addrs: config.sentinels.clone(),
            master_name: config.master_name.clone().unwrap_or_default(),
            password: sentinel_password,
            tls: config.tls,
        }),
        cluster: (!config.cluster.is_empty())
            .then(|| redis::ClusterSettings { seeds: config.cluster.clone(), tls: config.tls }),
    };
    settings.check()?; // parse the URL and certificates now, not on first connect
    Ok(Some(settings))
}

/// The counters a broker keeps (exported as `broker_errors_total`, the sum of
/// `broker_undelivered_total` and `broker_connect_failures_total`; and
/// `broker_missed_total`); cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct BrokerCounters {
    /// Every error: the sum of the two below.
    pub errors: Counter,
    /// Messages that could not be relayed to the other nodes.
    pub undelivered: Counter,
    /// Failed attempts to connect or reconnect.
    pub connect_failures: Counter,
    /// Messages other nodes relayed that this node never received (gaps in their numbering;
    /// not errors of this node's sends, so not in `errors`).
    pub missed: Counter,
}

impl BrokerCounters {
    /// Counts `n` messages that could not be relayed.
    pub fn undelivered(&self, n: u64) {
        self.undelivered.inc_by(n);
        self.errors.inc_by(n);
    }

    /// Counts `n` relayed messages this node did not receive.
    pub fn missed(&self, n: u64) {
        self.missed.inc_by(n);
    }

    /// Counts one failed connection attempt.
    pub fn connect_failed(&self) {
        self.connect_failures.inc();
        self.errors.inc();
    }
}

/// Builds the broker `[broker]` asks for, as node `node`, and attaches it to `hub`. A Redis
/// broker connects in the background (an unreachable Redis is retried, not fatal); only
/// unusable settings are errors. `counters` are the metrics registry's broker counters.
pub fn attach(
    config: &BrokerConfig,
    node: &str,
    hub: &Arc<Hub>,
    counters: BrokerCounters,
) -> Result<Arc<dyn Broker>, String> {
    match redis_settings(config)? {
        Some(settings) => Ok(redis::RedisBroker::start(&settings, node, hub, counters)?),
        None => memory::MemoryBus::new()
            .attach(node, hub)
            .map(|b| b as Arc<dyn Broker>)
            .ok_or_else(|| "the hub already has a broker".to_owned()),
    }
}

/// Applies `op` to channel `id` wherever it is: on this node directly, otherwise through the
/// broker to the node its id names. For a remote channel `Ok` means handed to the broker;
/// the other node applies it (unknown ids are ignored there). This is how the control API's
/// `PUT`/`DELETE /v1/channels/{id}/…` act cluster-wide.
pub fn control(hub: &Hub, id: &str, op: &Control) -> Result<(), HubError> {
    let channel = ChannelId::from(id);
    if hub.channel(id).is_some() {
        return apply(hub, &channel, op);
    }
    let unknown = || HubError::UnknownChannel(id.to_owned());
    let broker = hub.broker().ok_or_else(unknown)?;
    let node = node_of(id).filter(|n| *n != broker.node()).ok_or_else(unknown)?;
    broker.control(node, &channel, op).map_err(|error| match error {
        BrokerError::UnknownNode(_) => unknown(),
        error => HubError::Remote { id: id.to_owned(), error },
    })
}

/// Applies `op` to a channel of this node.
fn apply(hub: &Hub, id: &ChannelId, op: &Control) -> Result<(), HubError> {
    match op {
        Control::Subscribe(name) => hub.subscribe(id, name).map(|_| ()),
        Control::Unsubscribe(name) => hub.unsubscribe(id, name).map(|_| ()),
        Control::Close { code, reason } => {
            let channel = hub.channel(id.as_str()).ok_or_else(|| HubError::UnknownChannel(id.to_string()))?;
            channel.close(*code, reason);
            Ok(())
        }
    }
}

/// Handles an envelope addressed to one channel of this node (a relayed send or control).
pub(crate) fn deliver_direct(hub: &Hub, envelope: &Envelope) {
    let id = ChannelId::from(envelope.target.as_str());
    match &envelope.payload {
        Payload::Message(message) => {
            if let Some(channel) = hub.channel(id.as_str()) {
                let _ = channel.send_frame(super::hub::encode(message));
            }
        }
        Payload::Control(op) => {
            if let Err(error) = apply(hub, &id, op) {
                tracing::debug!(%error, "broker: relayed control operation not applied");
            }
        }
    }
}

/// The wire form of one relayed message (the payload of a Redis PUBLISH):
///
/// ```text
/// 'W' 2                  magic and version
/// kind                   'T' text, 'B' binary; control: 'S' subscribe, 'U' unsubscribe,
///                        'C' close (payload: u16 BE code, then the reason)
/// u64 BE stream          the origin's numbering of this Redis channel (0: not numbered);
/// u64 BE number          see `sequence` (stamped by the publisher, in publishing order)
/// u8 len, origin node
/// u8 len, target id      (empty for multicasts)
/// u16 BE count, then per excluded channel: u8 len, id
/// payload                the message bytes, to the end
/// ```
///
/// Ids and node names are at most 255 bytes (node names are limited to 64 and sequences to
/// 20 digits); longer ones are left out of `exclude` rather than corrupt the envelope.
/// Version 1 (no stream and number) is still read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that published it (receivers ignore their own).
    pub origin: String,
    /// For a direct send: the channel id; empty for a multicast.
    pub target: String,
    /// Channels that must not receive it.
    pub exclude: Vec<ChannelId>,
    /// Its place in the origin's numbering of the Redis channel, if numbered.
    pub sequence: Option<Sequence>,
    /// What it carries.
    pub payload: Payload,
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A message for subscribers (or, with a target, for one channel).
    Message(Message),
    /// A control operation on the target channel.
    Control(Control),
}

/// Why an envelope could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a wsgate envelope, or a version this node does not speak.
    #[error("not a wsgate envelope (version 1 or 2)")]
    BadHeader,
    /// Cut short.
    #[error("envelope truncated")]
    Truncated,
    /// A text message whose bytes are not UTF-8 (it would make clients close with 1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A name or id that is not UTF-8.
    #[error("node or channel id is not UTF-8")]
    BadId,
}

impl Envelope {
    /// Encodes a multicast or send without building an `Envelope` first.
    pub fn encode(origin: &str, target: &str, exclude: &[ChannelId], message: &Message) -> Vec<u8> {
        let (kind, payload) = match message {
            Message::Text(b) => (b'T', b),
            Message::Binary(b) => (b'B', b),
        };
        Self::encode_raw(origin, target, exclude, kind, payload)
    }

    /// Encodes a control operation on channel `target`.
    pub fn encode_control(origin: &str, target: &str, op: &Control) -> Vec<u8> {
        match op {
            Control::Subscribe(name) => Self::encode_raw(origin, target, &[], b'S', name.as_bytes()),
            Control::Unsubscribe(name) => Self::encode_raw(origin, target, &[], b'U', name.as_bytes()),
            Control::Close { code, reason } => {
                let mut body = code.to_be_bytes().to_vec();
                body.extend_from_slice(reason.as_bytes());
                Self::encode_raw(origin, target, &[], b'C', &body)
            }
        }
    }

    fn encode_raw(origin: &str, target: &str, exclude: &[ChannelId], kind: u8, payload: &[u8]) -> Vec<u8> {
        let exclude: Vec<&str> = exclude.iter().map(|c| c.as_str()).filter(|s| s.len() <= 255).collect();
        let mut out = Vec::with_capacity(8 + origin.len() + target.len() + payload.len() + exclude.len() * 20);
        out.extend_from_slice(&[b'W', 2, kind]);
        out.extend_from_slice(&[0; 16]); // stream and number: see `stamp`
        for s in [origin, target] {
            let s = &s.as_bytes()[..s.len().min(255)];
            out.push(s.len() as u8);
            out.extend_from_slice(s);
        }
        let count = exclude.len().min(u16::MAX as usize);
        out.extend_from_slice(&(count as u16).to_be_bytes());
        for id in exclude.iter().take(count) {
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    /// Writes `seq` into an encoded envelope (the publisher numbers messages as it sends them,
    /// so numbers follow the order Redis receives them in).
    pub fn stamp(bytes: &mut [u8], seq: Sequence) {
        if let Some(field) = bytes.get_mut(3..19) {
            field[..8].copy_from_slice(&seq.stream.to_be_bytes());
            field[8..].copy_from_slice(&seq.number.to_be_bytes());
        }
    }

    /// Decodes an envelope received from the broker. Text is checked for UTF-8 here, because
    /// anything with access to Redis can publish.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut rest = bytes;
        let header = take(&mut rest, 3)?;
        if header[0] != b'W' || !matches!(header[1], 1 | 2) {
            return Err(EnvelopeError::BadHeader);
        }
        let kind = header[2];
        let sequence = if header[1] == 2 {
            let field = take(&mut rest, 16)?;
            let word = |at: usize| u64::from_be_bytes(field[at..at + 8].try_into().unwrap_or_default());
            Some(Sequence { stream: word(0), number: word(8) }).filter(|s| s.stream != 0)
        } else {
            None
        };
        let origin = short_str(&mut rest)?.to_owned();
        let target = short_str(&mut rest)?.to_owned();
        let count = take(&mut rest, 2)?;
        let count = u16::from_be_bytes([count[0], count[1]]) as usize;
        let mut exclude = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            exclude.push(ChannelId::from(short_str(&mut rest)?));
        }
        let text = |b: &[u8]| simdutf8::basic::from_utf8(b).map(str::to_owned).map_err(|_| EnvelopeError::InvalidUtf8);
        let payload = match kind {
            b'T' => {
                simdutf8::basic::from_utf8(rest).map_err(|_| EnvelopeError::InvalidUtf8)?;
                Payload::Message(Message::Text(Bytes::copy_from_slice(rest)))
            }
            b'B' => Payload::Message(Message::Binary(Bytes::copy_from_slice(rest))),
            b'S' => Payload::Control(Control::Subscribe(text(rest)?)),
            b'U' => Payload::Control(Control::Unsubscribe(text(rest)?)),
            b'C' => {
                let code = take(&mut rest, 2)?;
                let code = u16::from_be_bytes([code[0], code[1]]);
                Payload::Control(Control::Close { code, reason: text(rest)? })
            }
            _ => return Err(EnvelopeError::BadHeader),
        };
        Ok(Envelope { origin, target, exclude, sequence, payload })
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], EnvelopeError> {
    if rest.len() < n {
        return Err(EnvelopeError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn short_str<'a>(rest: &mut &'a [u8]) -> Result<&'a str, EnvelopeError> {
    let len = take(rest, 1)?[0] as usize;
    std::str::from_utf8(take(rest, len)?).map_err(|_| EnvelopeError::BadId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(node_of("n1-000000000042"), Some("n1"));
        assert_eq!(node_of("eu-west-3-000000000042"), Some("eu-west-3"));
        assert_eq!(node_of("nodash"), None);
        assert_eq!(node_of("-1"), None);
    }

    #[test]
    fn envelope_round_trip_and_rejects() {
        let exclude = vec![ChannelId::from("n1-000000000001"), ChannelId::from("n2-000000000007")];
        let bytes = Envelope::encode("n1", "", &exclude, &Message::Text(Bytes::from_static("héllo".as_bytes())));
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.origin, "n1");
        assert_eq!(env.target, "");
        assert_eq!(env.exclude, exclude);
        assert_eq!(env.payload, Payload::Message(Message::Text(Bytes::from_static("héllo".as_bytes()))));

        let bin = Envelope::encode("a.b_c-1", "n2-000000000003", &[], &Message::Binary(Bytes::from_static(&[0, 255])));
        let env = Envelope::decode(&bin).unwrap();
        assert_eq!((env.origin.as_str(), env.target.as_str()), ("a.b_c-1", "n2-000000000003"));
        assert_eq!(env.payload, Payload::Message(Message::Binary(Bytes::from_static(&[0, 255]))));
        for op in [
            Control::Subscribe("room".into()),
            Control::Unsubscribe("room".into()),
            Control::Close { code: 4001, reason: "bye".into() },
        ] {
            let env = Envelope::decode(&Envelope::encode_control("n1", "n2-000000000001", &op)).unwrap();
            assert_eq!(env.payload, Payload::Control(op));
        }

        for cut in 0..bin.len() - 2 {
            assert!(Envelope::decode(&bin[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = Envelope::encode("n", "", &[], &Message::Text(Bytes::from_static(b"ok")));
        bad.push(0xff);
        assert_eq!(Envelope::decode(&bad), Err(EnvelopeError::InvalidUtf8));
        assert_eq!(Envelope::decode(b"X1T"), Err(EnvelopeError::BadHeader));
        assert_eq!(Envelope::decode(b"W\x03T"), Err(EnvelopeError::BadHeader));
    }

    #[test]
    fn envelopes_carry_the_stamped_sequence_and_version_1_is_still_read() {
        let msg = Message::Text(Bytes::from_static(b"hi"));
        let mut bytes = Envelope::encode("n1", "", &[], &msg);
        assert_eq!(Envelope::decode(&bytes).unwrap().sequence, None, "not numbered until stamped");
        let seq = Sequence { stream: 0x0102_0304_0506_0708, number: 42 };
        Envelope::stamp(&mut bytes, seq);
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!((env.sequence, env.payload), (Some(seq), Payload::Message(msg.clone())));
        // Version 1, as nodes before numbering wrote it.
        let v1 = [b"W\x01T\x02n1\x00\x00\x00".as_slice(), b"hi"].concat();
        let env = Envelope::decode(&v1).unwrap();
        assert_eq!((env.origin.as_str(), env.sequence, env.payload), ("n1", None, Payload::Message(msg)));
    }
}
