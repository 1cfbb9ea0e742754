//! The `pubsub` app over Server-Sent Events (DESIGN §13): the same `push` objects as
//! WebSocket clients get, as `data:` lines, with an `id:` that carries the stream's position
//! in every channel so that `Last-Event-ID` on reconnect recovers each of them exactly as
//! `recover` does.
//!
//! The id is base64url (no padding) of `{"<channel>":[offset,"epoch"],…}`. An id we cannot
//! read recovers nothing and says so (`recovered:false`), rather than refusing the reconnect
//! (a browser's `EventSource` would give up on an error status).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::engine::Position;
use crate::apps::EventEncoder;

/// Positions by channel, as an event id carries them.
pub(crate) type Positions = BTreeMap<String, Position>;

/// Encodes `positions` as an event id.
pub(crate) fn encode_id(positions: &Positions) -> String {
    let map: serde_json::Map<String, Value> =
        positions.iter().map(|(channel, p)| (channel.clone(), json!([p.offset, p.epoch]))).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Value::Object(map).to_string())
}

/// Decodes an event id; `None` when it is not one of ours.
pub(crate) fn decode_id(id: &str) -> Option<Positions> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id.trim()).ok()?;
    let map: BTreeMap<String, (u64, String)> = serde_json::from_slice(&bytes).ok()?;
    Some(map.into_iter().map(|(channel, (offset, epoch))| (channel, Position { offset, epoch })).collect())
}

/// Writes one stream's events and keeps its positions.
#[derive(Debug, Default)]
pub(crate) struct Events {
    positions: Positions,
}

impl Events {
    fn event(&self, data: &Value, with_id: bool) -> String {
        if with_id {
            format!("id: {}\ndata: {data}\n\n", encode_id(&self.positions))
        } else {
            format!("data: {data}\n\n")
        }
    }
}

impl EventEncoder for Events {
    fn encode(&mut self, message: &[u8]) -> Bytes {
        let Ok(mut value) = serde_json::from_slice::<Value>(message) else { return Bytes::new() };
        let mut out = String::new();
        if let Some(reply) = value.get_mut("subscribe") {
            // A subscribe reply: its recovered publications first, each as a push with the
            // position after it, then the reply itself (without them) at the current position.
            let channel = reply["channel"].as_str().unwrap_or_default().to_owned();
            let epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
            if let Some(Value::Array(publications)) = reply.as_object_mut().and_then(|r| r.remove("publications")) {
                for publication in publications {
                    let offset = publication["offset"].as_u64().unwrap_or_default();
                    self.positions.insert(channel.clone(), Position { offset, epoch: epoch.clone() });
                    out.push_str(&self.event(&json!({ "push": { "channel": channel, "pub": publication } }), true));
                }
            }
            let offset = reply["offset"].as_u64().unwrap_or_default();
            self.positions.insert(channel, Position { offset, epoch });
            out.push_str(&self.event(&value, true));
        } else if let Some(publication) = value.get("push").and_then(|p| p.get("pub")) {
            let channel = value["push"]["channel"].as_str().unwrap_or_default();
            let offset = publication["offset"].as_u64().unwrap_or_default();
            let with_id = match self.positions.get_mut(channel) {
                Some(position) => {
                    position.offset = offset;
                    true
                }
                None => false,
            };
            out.push_str(&self.event(&value, with_id));
        } else {
            out.push_str(&self.event(&value, false));
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn ids_round_trip_and_follow_each_channel() {
        let mut events = Events::default();
        let reply = json!({"subscribe":{"channel":"a","offset":5,"epoch":"e1","recovered":true,
            "publications":[{"offset":4,"data":"x"},{"offset":5,"data":"y"}]}});
        let out = text(events.encode(reply.to_string().as_bytes()));
        let ids: Vec<Positions> =
            out.lines().filter_map(|l| l.strip_prefix("id: ")).map(|id| decode_id(id).unwrap()).collect();
        assert_eq!(ids.len(), 3, "{out}");
        assert_eq!(ids[0]["a"], Position { offset: 4, epoch: "e1".into() });
        assert_eq!(ids[2]["a"], Position { offset: 5, epoch: "e1".into() });
        assert!(out.contains(r#"data: {"push":{"channel":"a","pub":{"data":"x","offset":4}}}"#), "{out}");
        assert!(!out.lines().last().unwrap_or_default().contains("publications"));
        events.encode(json!({"subscribe":{"channel":"b","offset":0,"epoch":"e2"}}).to_string().as_bytes());
        let out =
            text(events.encode(json!({"push":{"channel":"b","pub":{"offset":1,"data":1}}}).to_string().as_bytes()));
        let id = decode_id(out.lines().find_map(|l| l.strip_prefix("id: ")).unwrap()).unwrap();
        assert_eq!((id["a"].offset, id["b"].offset, id["b"].epoch.as_str()), (5, 1, "e2"));
        // join/leave carry no position
        let out = text(events.encode(br#"{"push":{"channel":"b","join":{"client":"c","user":""}}}"#));
        assert!(!out.contains("id:"), "{out}");
        assert!(decode_id("not ours").is_none());
        assert!(decode_id(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]")).is_none());
    }
}
