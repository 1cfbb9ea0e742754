//! Following one log file: a rotation-safe line reader ([`Follower`], plain blocking file I/O,
//! tested without tokio) and the shared task that runs it for all viewers of that file
//! ([`spawn`]).
//!
//! What the follower handles, checked on every wake-up (an inotify event on the file's
//! directory, or the `refresh` poll, whichever comes first):
//! - **growth**: the bytes after the last position are split into complete lines; a partial
//!   last line waits for its newline;
//! - **rotation** (rename, then a new file at the path): the path's inode differs from the open
//!   file's; the old file is read to its end first (a writer may still have been appending),
//!   then the new one from its start;
//! - **truncation and copytruncate**: the open file got shorter than the position; reading
//!   restarts at 0, so nothing written after the truncation is lost (the seed lost it). A
//!   truncation followed by regrowth past the old position between two wake-ups cannot be seen
//!   by size; with inotify the wake-up comes at once, so this needs both within microseconds;
//! - **a missing file**: waited for; viewers get a notice, then its lines once it exists;
//! - **unreadable**: an error message to the viewers, retried at each wake-up.
//!
//! Lines longer than [`MAX_LINE_BYTES`] are cut there and marked; bytes that are not UTF-8
//! are replaced (U+FFFD) and the line is marked.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use crate::apps::Message;
use crate::pubsub::{ChannelHandle, ChannelId, Hub};

/// Longest line sent; longer lines are cut and marked with [`CUT_MARK`].
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// Appended to a line cut at [`MAX_LINE_BYTES`].
pub(crate) const CUT_MARK: &str = " [… line cut at 16 KiB]";
/// Appended to a line whose invalid UTF-8 bytes were replaced by U+FFFD.
pub(crate) const LOSSY_MARK: &str = " [invalid UTF-8 replaced]";
/// Bytes read per wake-up at most, so one huge append cannot stall the task.
const READ_CHUNK: usize = 1 << 20;
/// Largest `lines` message, in bytes of line text (more lines go in further messages).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Something viewers should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Complete lines, oldest first.
    Lines(Vec<String>),
    /// A change worth showing: rotation, truncation, a missing file appearing.
    Notice(String),
    /// The file cannot be read (retried at every wake-up; reported once per cause).
    Error(String),
}

/// Where the follower stands, to tell a viewer who joins late.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Following,
    Missing,
    Failed(String),
}

/// Reads the lines appended to one path, across rotation and truncation.
#[derive(Debug)]
pub(crate) struct Follower {
    path: PathBuf,
    name: String,
    file: Option<File>,
    identity: (u64, u64),
    pos: u64,
    pending: Vec<u8>,
    /// Inside an over-long line whose first part was already sent: skip to its newline.
    discarding: bool,
    status: Status,
}

impl Follower {
    /// A follower of `path`; `name` is how messages name the file.
    pub(crate) fn new(path: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            name: name.into(),
            file: None,
            identity: (0, 0),
            pos: 0,
            pending: Vec::new(),
            discarding: false,
            status: Status::Missing,
        }
    }

    /// Opens the file at its end and returns its last `backlog` complete lines (plus a notice
    /// or error when it is missing or unreadable).
    pub(crate) fn start(&mut self, backlog: usize) -> Vec<Event> {
        let mut events = Vec::new();
        match self.open() {
            Ok(()) => match self.read_backlog(backlog) {
                Ok(lines) => {
                    self.status = Status::Following;
                    events.push(Event::Lines(lines));
                }
                Err(error) => events.extend(self.fail(&error)),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.status = Status::Missing;
                events.push(Event::Notice(self.missing_notice()));
            }
            Err(error) => events.extend(self.fail(&error)),
        }
        events
    }

    /// The notice or error a viewer joining now should see, if any.
    pub(crate) fn status_event(&self) -> Option<Event> {
        match &self.status {
            Status::Following => None,
            Status::Missing => Some(Event::Notice(self.missing_notice())),
            Status::Failed(message) => Some(Event::Error(message.clone())),
        }
    }

    fn missing_notice(&self) -> String {
        format!("{} does not exist (yet); waiting for it", self.name)
    }

    fn fail(&mut self, error: &io::Error) -> Option<Event> {
        let message = format!("cannot read {}: {}", self.name, describe(error));
        if self.status == Status::Failed(message.clone()) {
            return None;
        }
        self.file = None;
        self.status = Status::Failed(message.clone());
        Some(Event::Error(message))
    }

    fn open(&mut self) -> io::Result<()> {
        // Regular files only, checked before opening: opening a FIFO blocks until a writer
        // appears, possibly forever, holding a blocking-pool thread that shutdown then waits
        // for; a device may never end. Checked again on the opened file (the path may have
        // been replaced in between).
        check_kind(&std::fs::metadata(&self.path)?)?;
        let file = File::open(&self.path)?;
        let meta = file.metadata()?;
        check_kind(&meta)?;
        self.identity = (meta.dev(), meta.ino());
        self.file = Some(file);
        self.pos = 0;
        self.pending.clear();
        self.discarding = false;
        Ok(())
    }

    /// Reads what changed since the last call. The flag is `true` when more data is waiting
    /// (the read stopped at [`READ_CHUNK`]): call again soon.
    pub(crate) fn poll(&mut self) -> (Vec<Event>, bool) {
        let mut events = Vec::new();
        let mut lines = Vec::new();
        let at_path = std::fs::metadata(&self.path);
        let more = match (&at_path, self.file.is_some()) {
            (Ok(meta), true) if (meta.dev(), meta.ino()) != self.identity => {
                // Rotated: finish the old file, then follow the new one from its start.
                let _ = self.read_available(&mut lines, usize::MAX);
                self.flush_pending(&mut lines);
                push_lines(&mut events, &mut lines);
                events.push(Event::Notice(format!("{} was rotated; following the new file", self.name)));
                self.status = Status::Following;
                self.reopen(&mut events, &mut lines)
            }
            (Ok(_), true) => {
                let len = self.file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
                if len < self.pos {
                    self.pos = 0;
                    self.pending.clear();
                    self.discarding = false;
                    events.push(Event::Notice(format!("{} was truncated; reading from its start", self.name)));
                }
                match self.read_available(&mut lines, READ_CHUNK) {
                    Ok(more) => more,
                    Err(error) => {
                        events.extend(self.fail(&error));
                        false
                    }
                }
            }
            (Ok(_), false) => self.reopen(&mut events, &mut lines),
            (Err(error), _) if error.kind() == io::ErrorKind::NotFound => {
                // Renamed away and not yet replaced: the writer may still append to the old
                // file until it reopens the path, so keep reading it until a new file appears.
                let more = self.file.is_some() && self.read_available(&mut lines, READ_CHUNK).unwrap_or(false);
                if self.status != Status::Missing {
                    self.status = Status::Missing;
                    push_lines(&mut events, &mut lines);
                    events.push(Event::Notice(self.missing_notice()));
                }
                more
            }
            (Err(error), _) => {
                let error = io::Error::new(error.kind(), error.to_string());
                events.extend(self.fail(&error));
                false
            }
        };
        push_lines(&mut events, &mut lines);
        (events, more)
    }

    /// Opens the file now at the path and reads it from the start.
    fn reopen(&mut self, events: &mut Vec<Event>, lines: &mut Vec<String>) -> bool {
        let was = self.status.clone();
        if let Err(error) = self.open() {
            if error.kind() == io::ErrorKind::NotFound {
                if was != Status::Missing {
                    self.status = Status::Missing;
                    events.push(Event::Notice(self.missing_notice()));
                }
            } else {
                events.extend(self.fail(&error));
            }
            return false;
        }
        self.status = Status::Following;
        if matches!(was, Status::Missing | Status::Failed(_)) {
            events.push(Event::Notice(format!("{} is readable; following it", self.name)));
        }
        match self.read_available(lines, READ_CHUNK) {
            Ok(more) => more,
            Err(error) => {
                events.extend(self.fail(&error));
                false
            }
        }
    }

    /// Reads from the position towards the end (at most `limit` bytes) into `lines`.
    fn read_available(&mut self, lines: &mut Vec<String>, limit: usize) -> io::Result<bool> {
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < limit {
            let Some(file) = self.file.as_mut() else {
                return Ok(false);
            };
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(false);
            }
            total += n;
            self.pos += n as u64;
            self.split(&buf[..n], lines);
        }
        Ok(true)
    }

    /// The last `backlog` complete lines before the end; the position is left at the end.
    fn read_backlog(&mut self, backlog: usize) -> io::Result<Vec<String>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let len = file.metadata()?.len();
        // Scan back in blocks until enough newlines are seen, bounded by what `backlog`
        // capped lines can take.
        let budget = (backlog as u64).saturating_add(1).saturating_mul(MAX_LINE_BYTES as u64 + 1);
        let mut start = len;
        let mut newlines = 0usize;
        let mut block = vec![0u8; 64 * 1024];
        while start > 0 && newlines <= backlog && len - start < budget {
            let take = (start.min(block.len() as u64)) as usize;
            start -= take as u64;
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block[..take])?;
            newlines += block[..take].iter().filter(|&&b| b == b'\n').count();
        }
        file.seek(SeekFrom::Start(start))?;
        let mut data = Vec::with_capacity((len - start) as usize);
        file.take(len - start).read_to_end(&mut data)?;
        let mut from = 0;
        if start > 0 {
            // The first bytes are the end of a line whose start we did not read.
            from = data.iter().position(|&b| b == b'\n').map(|i| i + 1).unwrap_or(data.len());
        }
        self.pos = start + data.len() as u64;
        let mut lines = Vec::new();
        self.split(&data[from..], &mut lines);
        if lines.len() > backlog {
            lines.drain(..lines.len() - backlog);
        }
        Ok(lines)
    }

    /// Splits `data` into complete lines, keeping a partial last line pending.
    fn split(&mut self, mut data: &[u8], lines: &mut Vec<String>) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (segment, rest) = match newline {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &data[data.len()..]),
            };
            if self.discarding {
                if newline.is_some() {
                    self.discarding = false;
                }
            } else {
                self.pending.extend_from_slice(segment);
                if self.pending.len() > MAX_LINE_BYTES {
                    lines.push(cut_line(&self.pending));
                    self.pending.clear();
                    self.discarding = newline.is_none();
                } else if newline.is_some() {
                    lines.push(decode_line(&self.pending));
                    self.pending.clear();
                }
            }
            data = rest;
        }
    }

    /// Emits a pending partial line (its file is gone: no newline will come).
    fn flush_pending(&mut self, lines: &mut Vec<String>) {
        if !self.pending.is_empty() {
            lines.push(decode_line(&self.pending));
            self.pending.clear();
        }
        self.discarding = false;
    }
}

fn push_lines(events: &mut Vec<Event>, lines: &mut Vec<String>) {
    if !lines.is_empty() {
        events.push(Event::Lines(std::mem::take(lines)));
    }
}

/// `Ok` for a regular file; otherwise the error a viewer sees.
fn check_kind(meta: &std::fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        Err(io::Error::other("is a directory"))
    } else if !meta.is_file() {
        Err(io::Error::other("not a regular file"))
    } else {
        Ok(())
    }
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "no such file".into(),
        _ => error.to_string(),
    }
}

/// Decodes one line (without its newline; a trailing `\r` is dropped), marking lossy ones.
pub(crate) fn decode_line(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let mut text = String::from_utf8_lossy(bytes).into_owned();
            text.push_str(LOSSY_MARK);
            text
        }
    }
}

/// The first [`MAX_LINE_BYTES`] of an over-long line, cut on a character boundary, marked.
fn cut_line(bytes: &[u8]) -> String {
    let mut end = MAX_LINE_BYTES.min(bytes.len());
    // Do not split a UTF-8 sequence: back off over continuation bytes (at most 3).
    let mut back = 0;
    while end > 0 && back < 3 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
        back += 1;
    }
    let mut text = decode_line(&bytes[..end]);
    text.push_str(CUT_MARK);
    text
}

// === the shared tail task ===

/// What a viewer asks of the task that follows its file.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send this channel the backlog, then subscribe it to the file's lines.
    Add(ChannelHandle),
    /// Stop sending to this channel.
    Remove(ChannelId),
}

/// How to follow one file.
#[derive(Debug, Clone)]
pub(crate) struct TailConfig {
    /// The configured path.
    pub path: PathBuf,
    /// Its base name, as messages name it.
    pub name: String,
    /// The hub subscription its viewers are in.
    pub subscription: String,
    /// Lines kept for viewers who join.
    pub backlog: usize,
    /// Poll interval (the worst-case delay).
    pub refresh: Duration,
    /// Watch the file's directory with inotify for immediate wake-ups.
    pub inotify: bool,
}

/// Starts the task following `config.path` for all its viewers. It ends when every sender
/// of the returned channel is dropped; `running` counts live tasks (for tests and metrics).
pub(crate) fn spawn(config: TailConfig, hub: Arc<Hub>, running: Arc<AtomicUsize>) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    running.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        struct Running(Arc<AtomicUsize>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _running = Running(running);
        run(config, hub, rx).await;
    });
    tx
}

async fn run(config: TailConfig, hub: Arc<Hub>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let wake = Arc::new(Notify::new());
    let _watcher = if config.inotify { watch(&config.path, wake.clone()) } else { None };
    tracing::debug!(file = %config.path.display(), inotify = _watcher.is_some(), "log-view: following");
    let mut follower = Follower::new(&config.path, &config.name);
    let mut backlog: VecDeque<String> = VecDeque::with_capacity(config.backlog.min(4096));
    let start = {
        let backlog_lines = config.backlog;
        tokio::task::spawn_blocking(move || {
            let events = follower.start(backlog_lines);
            (follower, events)
        })
        .await
    };
    let Ok((mut follower_back, events)) = start else {
        return;
    };
    for event in events {
        if let Event::Lines(lines) = event {
            backlog.extend(lines);
        }
    }
    let mut interval = tokio::time::interval(config.refresh);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Add(channel)) => {
                    add_viewer(&config, &hub, &backlog, follower_back.status_event(), &channel);
                    continue;
                }
                Some(Command::Remove(id)) => {
                    let _ = hub.unsubscribe(&id, &config.subscription);
                    continue;
                }
            },
            _ = wake.notified() => {}
            _ = interval.tick() => {}
        }
        let polled = tokio::task::spawn_blocking(move || {
            let (events, more) = follower_back.poll();
            (follower_back, events, more)
        })
        .await;
        let Ok((f, events, more)) = polled else {
            return;
        };
        follower_back = f;
        for event in events {
            publish(&config, &hub, &mut backlog, event);
        }
        if more {
            wake.notify_one();
        }
    }
    tracing::debug!(file = %config.path.display(), "log-view: no viewers left; stopped following");
}

fn add_viewer(
    config: &TailConfig,
    hub: &Hub,
    backlog: &VecDeque<String>,
    status: Option<Event>,
    channel: &ChannelHandle,
) {
    // The backlog (always sent, possibly empty: it tells the page the subscription worked),
    // then the current status, then the live lines through the hub: this task is the only
    // publisher, so nothing can slip in between.
    let lines: Vec<&String> = backlog.iter().collect();
    let _ =
        channel.send_text(&json!({"type": "lines", "file": config.name, "lines": lines, "backlog": true}).to_string());
    if let Some(event) = status {
        let _ = channel.send(&Message::Text(Bytes::from(event_json(&config.name, &event))));
    }
    if let Err(error) = hub.subscribe(channel.id(), &config.subscription) {
        tracing::debug!(channel = %channel.id(), %error, "log-view: viewer left before subscribing");
    }
}

/// Hands `event` to this node's viewers. Node-local on purpose (`multicast_local`): the file
/// is this machine's, and another node's viewers of a file with the same name would get its
/// lines mixed into their own with no sign of where they came from.
fn publish(config: &TailConfig, hub: &Hub, backlog: &mut VecDeque<String>, event: Event) {
    match event {
        Event::Lines(lines) => {
            if let Some(metrics) = hub.metrics() {
                metrics.logview_lines.inc_by(lines.len() as u64);
            }
            let mut batch: Vec<&str> = Vec::new();
            let mut size = 0;
            for line in &lines {
                if size + line.len() > MAX_BATCH_BYTES && !batch.is_empty() {
                    send_lines(config, hub, &batch);
                    batch.clear();
                    size = 0;
                }
                batch.push(line);
                size += line.len();
            }
            if !batch.is_empty() {
                send_lines(config, hub, &batch);
            }
            if config.backlog > 0 {
                for line in lines {
                    if backlog.len() == config.backlog {
                        backlog.pop_front();
                    }
                    backlog.push_back(line);
                }
            }
        }
        other => {
            let text = event_json(&config.name, &other);
            hub.multicast_local(&config.subscription, &Message::Text(Bytes::from(text)), &[]);
        }
    }
}

fn send_lines(config: &TailConfig, hub: &Hub, lines: &[&str]) {
    let text = json!({"type": "lines", "file": config.name, "lines": lines}).to_string();
    hub.multicast_local(&config.subscription, &Message::Text(Bytes::from(text)), &[]);
}

fn event_json(name: &str, event: &Event) -> String {
    match event {
        Event::Lines(lines) => json!({"type": "lines", "file": name, "lines": lines}),
        Event::Notice(message) => json!({"type": "notice", "file": name, "message": message}),
        Event::Error(message) => json!({"type": "error", "file": name, "message": message}),
    }
    .to_string()
}

/// Watches the directory of `path` (rotation creates and renames files there) and wakes the
/// task on any event naming the file. `None` when inotify is unavailable: polling remains.
fn watch(path: &Path, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path.parent()?.to_path_buf();
    let name = path.file_name()?.to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.is_empty() || event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
                wake.notify_one();
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::info!(%error, "log-view: inotify unavailable; polling");
            return None;
        }
    };
    match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(error) => {
            tracing::info!(dir = %dir.display(), %error, "log-view: cannot watch the directory; polling");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, data: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(data).unwrap();
    }

    fn lines(events: &[Event]) -> Vec<String> {
        events.iter().flat_map(|e| if let Event::Lines(l) = e { l.clone() } else { vec![] }).collect()
    }

    fn notices(events: &[Event]) -> Vec<String> {
        events.iter().filter_map(|e| if let Event::Notice(n) = e { Some(n.clone()) } else { None }).collect()
    }

    #[test]
    fn backlog_then_appended_lines_with_partial_lines_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        append(&path, text.as_bytes());
        append(&path, b"partial");
        let mut f = Follower::new(&path, "a.log");
        assert_eq!(lines(&f.start(3)), ["line 8", "line 9", "line 10"]);
        assert_eq!(f.poll().0, vec![]);
        append(&path, b" done\r\nnext\n");
        assert_eq!(lines(&f.poll().0), ["partial done", "next"]);
    }

    #[test]
    fn backlog_of_a_file_with_fewer_lines_and_zero_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, b"one\ntwo\n");
        assert_eq!(lines(&Follower::new(&path, "a").start(100)), ["one", "two"]);
        let mut f = Follower::new(&path, "a");
        assert_eq!(lines(&f.start(0)), Vec::<String>::new());
        append(&path, b"three\n");
        assert_eq!(lines(&f.poll().0), ["three"]);
    }

    #[test]
    fn rotation_by_rename_drains_the_old_file_then_reads_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, b"old 1\n");
        let mut f = Follower::new(&path, "a.log");
        f.start(10);
        append(&path, b"old 2\nold ");
        let old = dir.path().join("a.log.1");
        std::fs::rename(&path, &old).unwrap();
        // between the rename and the new file: the old file is still read (its writer has
        // not reopened the path yet)
        let (events, _) = f.poll();
        assert_eq!(lines(&events), ["old 2"]);
        assert_eq!(notices(&events), ["a.log does not exist (yet); waiting for it"]);
        append(&old, b"tail\nold 3\n");
        assert_eq!(lines(&f.poll().0), ["old tail", "old 3"]);
        append(&old, b"old partial");
        append(&path, b"new 1\n");
        let (events, _) = f.poll();
        assert_eq!(lines(&events), ["old partial", "new 1"]);
        // rename and recreate between two polls
        append(&path, b"new 2\n");
        std::fs::rename(&path, dir.path().join("a.log.2")).unwrap();
        append(&path, b"newer 1\n");
        let (events, _) = f.poll();
        assert_eq!(lines(&events), ["new 2", "newer 1"]);
        assert!(notices(&events)[0].contains("rotated"));
    }

    #[test]
    fn truncation_and_copytruncate_restart_at_zero_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, b"aaaaaaaaaa 1\naaaaaaaaaa 2\n");
        let mut f = Follower::new(&path, "a.log");
        f.start(10);
        // copytruncate: copy away, truncate in place (same inode), writer goes on appending
        std::fs::copy(&path, dir.path().join("a.log.1")).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        append(&path, b"after\n");
        let (events, _) = f.poll();
        assert_eq!(lines(&events), ["after"]);
        assert!(notices(&events)[0].contains("truncated"));
        append(&path, b"more\n");
        assert_eq!(lines(&f.poll().0), ["more"]);
    }

    #[test]
    fn missing_file_is_waited_for_and_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let mut f = Follower::new(&path, "later.log");
        assert_eq!(notices(&f.start(5)), ["later.log does not exist (yet); waiting for it"]);
        assert!(f.status_event().is_some());
        assert_eq!(f.poll().0, vec![], "reported once");
        append(&path, b"first\n");
        let (events, _) = f.poll();
        assert_eq!(lines(&events), ["first"]);
        assert!(f.status_event().is_none());

        let sub = dir.path().join("dir.log");
        std::fs::create_dir(&sub).unwrap();
        let mut d = Follower::new(&sub, "dir.log");
        let events = d.start(5);
        assert!(matches!(&events[..], [Event::Error(m)] if m.starts_with("cannot read dir.log")), "{events:?}");
        assert_eq!(d.poll().0, vec![], "reported once");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success());
        // On a thread, so a blocking open fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut f = Follower::new(&path, "p.log");
            let started = f.start(5);
            let polled = f.poll().0;
            let _ = tx.send((started, polled));
        });
        let (started, polled) = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("start did not block");
        assert!(
            matches!(&started[..], [Event::Error(m)] if m == "cannot read p.log: not a regular file"),
            "{started:?}"
        );
        assert_eq!(polled, vec![], "reported once");
    }

    #[test]
    fn long_lines_are_cut_and_invalid_utf8_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        append(&path, b"");
        let mut f = Follower::new(&path, "a.log");
        f.start(0);
        // a multi-byte character straddling the cut
        let mut long = vec![b'x'; MAX_LINE_BYTES - 1];
        long.extend_from_slice("é".as_bytes());
        long.extend_from_slice(&[b'y'; 40000]);
        long.push(b'\n');
        append(&path, &long);
        append(&path, b"bad \xff\xfe bytes\nok\n");
        let got = lines(&f.poll().0);
        assert_eq!(got.len(), 3, "{:?}", got.iter().map(|l| l.len()).collect::<Vec<_>>());
        assert_eq!(got[0], format!("{}{CUT_MARK}", "x".repeat(MAX_LINE_BYTES - 1)));
        assert_eq!(got[1], format!("bad \u{fffd}\u{fffd} bytes{LOSSY_MARK}"));
        assert_eq!(got[2], "ok");
        // an over-long line arriving in pieces is cut once and its rest skipped
        append(&path, &[b'z'; MAX_LINE_BYTES]);
        assert_eq!(lines(&f.poll().0), Vec::<String>::new());
        append(&path, &[b'z'; 10]);
        assert_eq!(lines(&f.poll().0).len(), 1);
        append(&path, b"zzz\nafter\n");
        assert_eq!(lines(&f.poll().0), ["after"]);
    }
}
