//! `log-view`: follows configured log files for browser viewers (DESIGN §5).
//!
//! Protocol (JSON text messages):
//! - server → client on open: `{"type":"files","files":[{"index":0,"name":"access.log"},…]}`
//!   (base names only: configured paths are never shown);
//! - client → server: `{"type":"subscribe","file":"error.log"}` (a listed base name) or
//!   `{"type":"subscribe","file":1}` (an index into that list). Nothing else names a file, so
//!   no client can make wsgate open a path of its choosing. Subscribing again switches files;
//!   `{"type":"unsubscribe"}` stops;
//! - server → client: `{"type":"lines","file":"error.log","lines":[…],"backlog":true}` first
//!   (the last `backlog_lines`, possibly none), then `{"type":"lines","file","lines":[…]}` for
//!   every append, `{"type":"notice","file","message"}` on rotation, truncation or a missing
//!   file, `{"type":"error","message"[,"file"]}` for a refused request or an unreadable file.
//!
//! One tail task per file serves all its viewers: it starts with the first viewer and stops
//! after the last one leaves (`tail.rs`).

pub(crate) mod tail;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{App, Message};
use crate::locks::lock;
use crate::pubsub::{ChannelHandle, ChannelId, Hub};
use tail::{Command, TailConfig};

/// The log-view page (no external assets).
pub(crate) const PAGE: &str = include_str!("../../../assets/logview.html");

/// Longest request accepted from a client, in bytes.
const MAX_REQUEST_BYTES: usize = 4096;

struct Watched {
    commands: mpsc::UnboundedSender<Command>,
    viewers: usize,
}

#[derive(Default)]
struct State {
    /// The tail task of each file index that has viewers.
    tails: HashMap<usize, Watched>,
    /// Which file each viewer follows.
    viewers: HashMap<ChannelId, usize>,
}

/// The log-view app.
pub(crate) struct LogView {
    app: String,
    /// `(base name, path)` in configuration order.
    files: Vec<(String, PathBuf)>,
    backlog: usize,
    refresh: Duration,
    inotify: bool,
    hub: Arc<Hub>,
    state: Mutex<State>,
    running: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LogView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogView").field("app", &self.app).field("files", &self.files.len()).finish_non_exhaustive()
    }
}

impl LogView {
    /// A log-view app named `app` over `files` (validated: absolute, unique base names).
    pub(crate) fn new(
        app: &str,
        files: &[PathBuf],
        backlog: usize,
        refresh: Duration,
        inotify: bool,
        hub: Arc<Hub>,
    ) -> Self {
        let files = files
            .iter()
            .map(|p| (p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), p.clone()))
            .collect();
        Self {
            app: app.to_owned(),
            files,
            backlog,
            refresh,
            inotify,
            hub,
            state: Mutex::new(State::default()),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Files with at least one viewer (each has exactly one tail task).
    #[cfg(test)]
    pub(crate) fn watched_files(&self) -> usize {
        lock(&self.state).tails.len()
    }

    /// Tail tasks still running (a task ends shortly after its last viewer leaves).
    #[cfg(test)]
    pub(crate) fn running_tails(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves what a client asked for to a configured file index; never a path.
    pub(crate) fn resolve(&self, file: &Value) -> Result<usize, String> {
        match file {
            Value::String(name) => self
                .files
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| "no such file in this log-view; pick one from the list".to_owned()),
            Value::Number(n) => n
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < self.files.len())
                .ok_or_else(|| format!("file index out of range: 0 to {}", self.files.len().saturating_sub(1))),
            _ => Err("\"file\" must be a file name from the list or its index".to_owned()),
        }
    }

    fn subscribe(&self, channel: &ChannelHandle, index: usize) {
        let mut state = lock(&self.state);
        if state.viewers.get(channel.id()) == Some(&index) {
            return; // already following it
        }
        self.leave(&mut state, channel.id());
        state.viewers.insert(channel.id().clone(), index);
        let watched = state.tails.entry(index).or_insert_with(|| Watched { commands: self.spawn(index), viewers: 0 });
        watched.viewers += 1;
        if watched.commands.send(Command::Add(channel.clone())).is_err() {
            // The task died (a panic in file I/O): start a fresh one for this file.
            watched.commands = self.spawn(index);
            let _ = watched.commands.send(Command::Add(channel.clone()));
        }
    }

    fn spawn(&self, index: usize) -> mpsc::UnboundedSender<Command> {
        let (name, path) = &self.files[index];
        let config = TailConfig {
            path: path.clone(),
            name: name.clone(),
            subscription: format!("logview:{}:{index}", self.app),
            backlog: self.backlog,
            refresh: self.refresh,
            inotify: self.inotify,
        };
        tail::spawn(config, self.hub.clone(), self.running.clone())
    }

    /// Removes a viewer; the last viewer of a file stops its tail task (its command channel
    /// closes once the `Remove` is processed).
    fn leave(&self, state: &mut State, id: &ChannelId) {
        let Some(index) = state.viewers.remove(id) else {
            return;
        };
        if let Some(watched) = state.tails.get_mut(&index) {
            let _ = watched.commands.send(Command::Remove(id.clone()));
            watched.viewers -= 1;
            if watched.viewers == 0 {
                state.tails.remove(&index);
            }
        }
    }

    fn request(&self, channel: &ChannelHandle, message: &Message) -> Result<(), String> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => return Err("binary messages are not accepted; send JSON text".into()),
        };
        if text.len() > MAX_REQUEST_BYTES {
            return Err(format!("request too long: at most {MAX_REQUEST_BYTES} bytes"));
        }
        let value: Value = serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
        match value.get("type").and_then(Value::as_str) {
            Some("subscribe") => {
                let file = value.get("file").ok_or("\"file\" is missing")?;
                let index = self.resolve(file)?;
                self.subscribe(channel, index);
                Ok(())
            }
            Some("unsubscribe") => {
                self.leave(&mut lock(&self.state), channel.id());
                Ok(())
            }
            Some(other) => Err(format!("unknown message type {other:?}: expected \"subscribe\" or \"unsubscribe\"")),
            None => Err("expected an object with \"type\": \"subscribe\"".into()),
        }
    }
}

impl App for LogView {
    fn on_open(&self, channel: &ChannelHandle) {
        let files: Vec<Value> =
            self.files.iter().enumerate().map(|(i, (name, _))| json!({"index": i, "name": name})).collect();
        let _ = channel.send_text(&json!({"type": "files", "files": files}).to_string());
    }

    fn on_message(&self, channel: &ChannelHandle, message: Message) {
        if let Err(error) = self.request(channel, &message) {
            tracing::debug!(app = %self.app, channel = %channel.id(), %error, "log-view: request refused");
            let _ = channel.send_text(&json!({"type": "error", "message": error}).to_string());
        }
    }

    fn on_close(&self, channel: &ChannelHandle, _code: Option<u16>) {
        self.leave(&mut lock(&self.state), channel.id());
    }

    fn page(&self) -> Option<&'static str> {
        Some(PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::budget::SlowConsumerPolicy;
    use crate::pubsub::channel::{ChannelIdGenerator, ChannelInfo, ChannelQueue, Outbound};
    use bytes::Bytes;
    use std::io::Write;

    fn open(hub: &Hub, ids: &ChannelIdGenerator) -> (ChannelHandle, ChannelQueue) {
        let info = ChannelInfo {
            id: ids.next_id(),
            app: "lv".into(),
            url: "/lv".into(),
            peer: "127.0.0.1:9".parse().unwrap(),
        };
        let (handle, queue) = ChannelHandle::new(info, 1 << 20, SlowConsumerPolicy::Close);
        hub.register(handle.clone());
        (handle, queue)
    }

    /// The JSON of the next text frame queued to a channel (server frames: 2- or 4-byte
    /// header, unmasked).
    async fn next_json(queue: &mut ChannelQueue) -> Value {
        let item = tokio::time::timeout(Duration::from_secs(5), queue.rx.recv()).await.expect("a message in time");
        let Some(frame) = item.as_ref().and_then(Outbound::plain_frame) else {
            panic!("expected a frame, got {item:?}")
        };
        let header = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&frame[header..]).unwrap()
    }

    fn subscribe(app: &LogView, ch: &ChannelHandle, file: Value) {
        app.on_message(ch, Message::Text(Bytes::from(json!({"type":"subscribe","file":file}).to_string())));
    }

    #[tokio::test]
    async fn one_tail_per_file_started_by_the_first_viewer_and_stopped_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(&a, "a0\n").unwrap();
        std::fs::write(&b, "b0\n").unwrap();
        let hub = Arc::new(Hub::new());
        let ids = ChannelIdGenerator::new("t");
        let app = LogView::new("lv", &[a.clone(), b.clone()], 10, Duration::from_millis(50), true, hub.clone());
        assert_eq!((app.watched_files(), app.running_tails()), (0, 0), "nothing runs without viewers");

        let mut viewers: Vec<_> = (0..3).map(|_| open(&hub, &ids)).collect();
        for (ch, q) in &mut viewers {
            app.on_open(ch);
            assert_eq!(next_json(q).await["type"], "files");
            subscribe(&app, ch, json!("a.log"));
            assert_eq!(next_json(q).await, json!({"type":"lines","file":"a.log","lines":["a0"],"backlog":true}));
        }
        assert_eq!((app.watched_files(), app.running_tails()), (1, 1), "three viewers, one tail");
        std::fs::OpenOptions::new().append(true).open(&a).unwrap().write_all(b"a1\n").unwrap();
        for (_, q) in &mut viewers {
            assert_eq!(next_json(q).await, json!({"type":"lines","file":"a.log","lines":["a1"]}));
        }
        // one viewer switches to b (by index): a second tail
        subscribe(&app, &viewers[2].0, json!(1));
        assert_eq!(next_json(&mut viewers[2].1).await["lines"], json!(["b0"]));
        assert_eq!((app.watched_files(), app.running_tails()), (2, 2));
        // the viewers leave: each tail stops after its last viewer
        for (ch, _) in &viewers[..2] {
            app.on_close(ch, None);
            hub.unregister(ch.id());
        }
        assert_eq!(app.watched_files(), 1);
        app.on_close(&viewers[2].0, None);
        assert_eq!(app.watched_files(), 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            while app.running_tails() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("tail tasks end after their last viewer");
    }

    #[test]
    fn only_listed_names_and_indexes_resolve() {
        let app = LogView::new(
            "lv",
            &["/var/log/a.log".into(), "/var/log/b.log".into()],
            10,
            Duration::from_secs(1),
            true,
            Arc::new(Hub::new()),
        );
        assert_eq!(app.resolve(&json!("b.log")), Ok(1));
        assert_eq!(app.resolve(&json!(0)), Ok(0));
        for bad in [
            json!("../../etc/passwd"),
            json!("/etc/passwd"),
            json!("/var/log/a.log"),
            json!("A.LOG"),
            json!(2),
            json!(-1),
            json!(1.5),
            json!(null),
            json!(["a.log"]),
        ] {
            assert!(app.resolve(&bad).is_err(), "{bad}");
        }
    }
}
