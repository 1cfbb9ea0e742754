//! `chat`: a chat room per configured URL (DESIGN §5), with its page embedded in the binary.
//!
//! Protocol (JSON text messages; anything else earns an `error` answer, never a close):
//! - client → server: `{"type":"join","user":"alice"}` names the connection (optional: the
//!   first `message` names it too); `{"type":"message","user":"alice","text":"hi"}` posts.
//!   A `message` or `join` with another name renames the connection (a `leave` for the old
//!   name, then a `join` for the new one).
//! - server → room (the sender included, so every page renders what the server stamped):
//!   `{"type":"message","user","text","ts"}`, `{"type":"join"|"leave","user","ts"}`; `ts` is
//!   RFC 3339 UTC with milliseconds.
//! - server → one client: on open, `{"type":"room","name":..,"members":[..]}` (the room's
//!   display name: `room_names` for its URL, else the URL's last segment; the names of the
//!   connections in the room — on every node, in a cluster), then the room's last `history` messages (as they
//!   were sent, oldest first), then `{"type":"history_end","count":N}`;
//!   `{"type":"error","message":...}` when a message is refused.
//!
//! Each URL (and its `/connect` alias) is one room: one hub subscription named
//! `chat:<app>:<url>`, so two rooms never see each other. A room's history is a bounded ring
//! buffer of encoded frames; appending to it and multicasting happen under the room's lock, so
//! a newcomer gets the history and then every later message exactly once, in order.
//!
//! Across nodes (`[broker]`): every message, join and leave is relayed to the other nodes,
//! and each node observes its rooms' relayed messages ([`Hub::observe_relayed`]) whether or
//! not it has members in the room, keeping them in its own history, so a newcomer on any node
//! sees the room's messages from every node. Messages from different nodes that cross in
//! flight may be ordered differently on different nodes; one node's messages keep their order.
//! The member list a newcomer gets is the room's on every node: each node writes its named
//! connections to a Redis hash (`wsgate:chat:{<subscription>}:members`, in order, by one task),
//! and an open reads it (leaving out nodes whose heartbeat stopped: no ghost after 30 s) before
//! it sends the room message, the history and joins — so open waits one Redis round trip.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use serde_json::{json, Value};

use super::pubsub::cluster::Cluster;
use super::{App, Message};
use crate::locks::lock;
use crate::pubsub::hub::encode;
use crate::pubsub::{ChannelHandle, ChannelId, Delivery, Hub, RelayObserver};

/// Longest user name, in characters.
pub const MAX_USER_CHARS: usize = 32;
/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest JSON message accepted from a client, in bytes (a message at the text limit with
/// every character escaped fits).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;

/// The chat page (no external assets).
pub const PAGE: &str = include_str!("../../assets/chat.html");

struct Room {
    subscription: String,
    /// The display name sent to pages.
    name: String,
    history: VecDeque<Bytes>,
    users: HashMap<ChannelId, String>,
}

/// Appends a frame to a room's history, dropping the oldest past `limit`.
fn remember(history: &mut VecDeque<Bytes>, limit: usize, frame: Bytes) {
    if limit == 0 {
        return;
    }
    if history.len() == limit {
        history.pop_front();
    }
    history.push_back(frame);
}

/// One room's hand in what other nodes relay to it: posts go into the history, then
/// everything to the local members, under the room's lock as for local posts.
struct RoomRelay {
    room: Arc<Mutex<Room>>,
    history: usize,
}

impl RelayObserver for RoomRelay {
    fn relayed(&self, hub: &Hub, frame: Bytes, message: &Message, exclude: &[ChannelId]) -> Delivery {
        let mut room = lock(&self.room);
        if is_post(message) {
            remember(&mut room.history, self.history, frame.clone());
        }
        hub.multicast_frame(&room.subscription, frame, exclude)
    }
}

/// A room's name when `room_names` gives none: the URL's last path segment.
pub fn default_room_name(url: &str) -> String {
    url.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("chat").to_owned()
}

/// The sorted, distinct names of a room's connections, with `remote` (client id → user) of
/// the other nodes in a cluster.
fn member_names<'a>(room: &'a Room, remote: &'a BTreeMap<String, String>) -> Vec<&'a str> {
    let mut names: Vec<&str> = room.users.values().chain(remote.values()).map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The Redis hash of a room's named connections on every node.
fn roster_key(subscription: &str) -> String {
    format!("wsgate:chat:{{{subscription}}}:members")
}

/// A change to a room's member list in Redis.
enum RosterChange {
    Set { key: String, client: ChannelId, user: String },
    Remove { key: String, client: ChannelId },
}

/// Applies member-list changes in the order they were made (a rename then a close must not
/// land the other way round).
async fn write_roster(cluster: Arc<Cluster>, mut changes: tokio::sync::mpsc::UnboundedReceiver<RosterChange>) {
    while let Some(change) = changes.recv().await {
        let written = match &change {
            RosterChange::Set { key, client, user } => cluster.roster_set(key, client.as_str(), user).await,
            RosterChange::Remove { key, client } => cluster.roster_remove(key, client.as_str()).await,
        };
        if let Err(error) = written {
            tracing::debug!(%error, "chat: member list not updated in Redis");
        }
    }
}

/// Whether a relayed room message is a post (kept in the history), not a join or leave.
fn is_post(message: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let Message::Text(text) = message else { return false };
    serde_json::from_slice::<Kind>(text).is_ok_and(|k| k.kind.as_deref() == Some("message"))
}

/// The chat app: one room per URL.
pub struct Chat {
    /// This app, for opens that wait on the cluster's member list.
    me: Weak<Chat>,
    hub: Arc<Hub>,
    /// In a cluster: where the rooms' member lists live, and the queue of changes to them.
    roster: Option<(Arc<Cluster>, tokio::sync::mpsc::UnboundedSender<RosterChange>)>,
    history: usize,
    /// Room by URL path; each URL's `/connect` alias maps to the same room.
    rooms: HashMap<String, Arc<Mutex<Room>>>,
    /// Kept alive here: the hub holds them weakly (they stop observing with the app).
    _relays: Vec<Arc<RoomRelay>>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("rooms", &self.rooms.len()).field("history", &self.history).finish()
    }
}

impl Chat {
    /// A chat app named `app` serving one room per entry of `urls`, replaying the last
    /// `history` messages to newcomers; with `cluster`, member lists span the nodes.
    pub fn new(
        app: &str,
        urls: &[String],
        names: &BTreeMap<String, String>,
        history: usize,
        hub: Arc<Hub>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        let mut rooms = HashMap::new();
        let mut relays = Vec::new();
        for url in urls {
            let subscription = format!("chat:{app}:{url}");
            let room = Arc::new(Mutex::new(Room {
                subscription: subscription.clone(),
                name: names.get(url).cloned().unwrap_or_else(|| default_room_name(url)),
                history: VecDeque::with_capacity(history.min(1024)),
                users: HashMap::new(),
            }));
            let relay = Arc::new(RoomRelay { room: room.clone(), history });
            let observer: Arc<dyn RelayObserver> = relay.clone();
            hub.observe_relayed(&subscription, Arc::downgrade(&observer));
            relays.push(relay);
            rooms.insert(format!("{}/connect", url.trim_end_matches('/')), room.clone());
            rooms.insert(url.clone(), room);
        }
        let roster = cluster.filter(|_| tokio::runtime::Handle::try_current().is_ok()).map(|cluster| {
            let (changes, queue) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(write_roster(cluster.clone(), queue));
            (cluster, changes)
        });
        Arc::new_cyclic(|me| Self { me: me.clone(), hub, roster, history, rooms, _relays: relays })
    }

    fn change_roster(&self, change: RosterChange) {
        if let Some((_, changes)) = &self.roster {
            let _ = changes.send(change);
        }
    }

    /// Sends the room message (members: this node's and `remote`'s), the history, and joins
    /// the room, all under the room's lock.
    fn enter(&self, channel: &ChannelHandle, remote: &BTreeMap<String, String>) {
        let Some(room) = self.room(channel) else { return };
        let room = lock(room);
        let members = member_names(&room, remote);
        let _ = channel.send_text(&json!({"type": "room", "name": room.name, "members": members}).to_string());
        // History first, then the subscription, both under the room lock: nothing published
        // in between can be missed or seen twice.
        for frame in &room.history {
            let _ = channel.send_frame(frame.clone());
        }
        let _ = channel.send_text(&json!({"type": "history_end", "count": room.history.len()}).to_string());
        if let Err(error) = self.hub.subscribe(channel.id(), &room.subscription) {
            tracing::debug!(channel = %channel.id(), %error, "chat: cannot join the room");
        }
    }

    fn room(&self, channel: &ChannelHandle) -> Option<&Arc<Mutex<Room>>> {
        self.rooms.get(channel.url())
    }

    /// Multicasts `value` to the room (under its lock) and relays it to the other nodes,
    /// keeping it in the history when asked.
    fn publish(&self, room: &mut Room, value: &Value, keep: bool) {
        let message = Message::Text(Bytes::from(value.to_string()));
        let frame = encode(&message);
        if keep {
            remember(&mut room.history, self.history, frame.clone());
        }
        self.hub.multicast_frame(&room.subscription, frame, &[]);
        self.hub.relay(&room.subscription, &message, &[]);
    }

    fn handle(&self, channel: &ChannelHandle, room: &mut Room, request: Request) -> Result<(), String> {
        let (user, text) = match request {
            Request::Join { user } => (user, None),
            Request::Message { user, text } => (user, Some(text)),
        };
        let user = check_user(&user)?;
        let text = text.map(|t| check_text(&t)).transpose()?;
        let ts = now_rfc3339();
        let previous = room.users.get(channel.id()).cloned();
        if previous.as_deref() != Some(user.as_str()) {
            if let Some(old) = previous {
                self.publish(room, &json!({"type": "leave", "user": old, "ts": ts}), false);
            }
            room.users.insert(channel.id().clone(), user.clone());
            let key = roster_key(&room.subscription);
            self.change_roster(RosterChange::Set { key, client: channel.id().clone(), user: user.clone() });
            self.publish(room, &json!({"type": "join", "user": user, "ts": ts}), false);
        }
        if let Some(text) = text {
            self.publish(room, &json!({"type": "message", "user": user, "text": text, "ts": ts}), true);
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Request {
    Join { user: String },
    Message { user: String, text: String },
}

/// Parses one client message; the error is the text sent back to the client.
fn parse(message: &Message) -> Result<Request, String> {
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) => return Err("binary messages are not accepted; send JSON text".into()),
    };
    if text.len() > MAX_INPUT_BYTES {
        return Err(format!("message too long: at most {MAX_INPUT_BYTES} bytes of JSON"));
    }
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let field = |name: &str| -> Result<String, String> {
        match value.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("\"{name}\" must be a string")),
            None => Err(format!("\"{name}\" is missing")),
        }
    };
    match value.get("type").and_then(Value::as_str) {
        Some("join") => Ok(Request::Join { user: field("user")? }),
        Some("message") => Ok(Request::Message { user: field("user")?, text: field("text")? }),
        Some(other) => Err(format!("unknown message type {other:?}: expected \"join\" or \"message\"")),
        None => Err("expected an object with \"type\": \"join\" or \"message\"".into()),
    }
}

fn check_user(user: &str) -> Result<String, String> {
    let user = user.trim();
    if user.is_empty() {
        return Err("user name is empty".into());
    }
    if user.chars().count() > MAX_USER_CHARS {
        return Err(format!("user name too long: at most {MAX_USER_CHARS} characters"));
    }
    if user.chars().any(char::is_control) {
        return Err("user name must not contain control characters".into());
    }
    Ok(user.to_owned())
}

fn check_text(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("message text is empty".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!("message text too long: {chars} characters, at most {MAX_TEXT_CHARS}"));
    }
    Ok(text.to_owned())
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-25T17:40:00.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn send_error(channel: &ChannelHandle, message: &str) {
    let _ = channel.send_text(&json!({"type": "error", "message": message}).to_string());
}

impl App for Chat {
    fn on_open(&self, channel: &ChannelHandle) {
        let Some(room) = self.room(channel) else {
            tracing::warn!(url = channel.url(), "chat: no room for this URL");
            return;
        };
        let Some((cluster, _)) = &self.roster else {
            return self.enter(channel, &BTreeMap::new());
        };
        // In a cluster the member list comes from Redis first: the other nodes' part of it
        // (this node's own is in the room, always current).
        let key = roster_key(&lock(room).subscription);
        let (app, channel, cluster) = (self.me.clone(), channel.clone(), cluster.clone());
        tokio::spawn(async move {
            let everyone = cluster.roster(&key).await.unwrap_or_default();
            let remote: BTreeMap<String, String> = everyone
                .into_iter()
                .filter(|(client, _)| crate::pubsub::broker::node_of(client) != Some(cluster.node()))
                .collect();
            if let (Some(app), false) = (app.upgrade(), channel.is_closing()) {
                app.enter(&channel, &remote);
            }
        });
    }

    fn on_message(&self, channel: &ChannelHandle, message: Message) {
        let Some(room) = self.room(channel) else {
            return;
        };
        let request = match parse(&message) {
            Ok(request) => request,
            Err(error) => return send_error(channel, &error),
        };
        let mut room = lock(room);
        if let Err(error) = self.handle(channel, &mut room, request) {
            drop(room);
            send_error(channel, &error);
        }
    }

    fn on_close(&self, channel: &ChannelHandle, _code: Option<u16>) {
        let Some(room) = self.room(channel) else {
            return;
        };
        let mut room = lock(room);
        let _ = self.hub.unsubscribe(channel.id(), &room.subscription);
        if let Some(user) = room.users.remove(channel.id()) {
            let key = roster_key(&room.subscription);
            self.change_roster(RosterChange::Remove { key, client: channel.id().clone() });
            self.publish(&mut room, &json!({"type": "leave", "user": user, "ts": now_rfc3339()}), false);
        }
    }

    fn page(&self) -> Option<&'static str> {
        Some(PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parse_accepts_the_design_formats_and_explains_refusals() {
        assert!(matches!(parse(&text(r#"{"type":"message","user":"a","text":"hi"}"#)), Ok(Request::Message { .. })));
        assert!(matches!(parse(&text(r#"{"type":"join","user":"a"}"#)), Ok(Request::Join { .. })));
        assert!(parse(&text("not json")).unwrap_err().starts_with("invalid JSON"));
        assert_eq!(parse(&text(r#"{"type":"message","user":"a"}"#)).err().unwrap(), "\"text\" is missing");
        assert_eq!(
            parse(&text(r#"{"type":"message","user":1,"text":"x"}"#)).err().unwrap(),
            "\"user\" must be a string"
        );
        assert!(parse(&text(r#"{"type":"shout"}"#)).unwrap_err().contains("unknown message type"));
        assert!(parse(&Message::Binary(Bytes::from_static(b"{}"))).unwrap_err().contains("binary"));
    }

    #[test]
    fn room_names_default_to_the_last_segment() {
        assert_eq!(default_room_name("/websocket/chat/ops"), "ops");
        assert_eq!(default_room_name("/websocket/chat/"), "chat");
        assert_eq!(default_room_name("/"), "chat");
    }

    #[test]
    fn limits() {
        assert_eq!(check_user("  bob ").unwrap(), "bob");
        assert!(check_user("").is_err());
        assert!(check_user(&"é".repeat(MAX_USER_CHARS)).is_ok());
        assert!(check_user(&"é".repeat(MAX_USER_CHARS + 1)).unwrap_err().contains("too long"));
        assert!(check_user("a\nb").is_err());
        assert!(check_text(&"x".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(check_text(&"x".repeat(MAX_TEXT_CHARS + 1)).unwrap_err().contains("too long"));
        assert!(check_text("   ").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), "2026-11-25T17:40:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
