//! The answer channel of `wsgate reload` (DESIGN §8): the daemon writes the outcome of every
//! SIGHUP reload to `reload-status` in its runtime directory (`$RUNTIME_DIRECTORY`, set by
//! systemd's `RuntimeDirectory=wsgate`, i.e. `/run/wsgate/reload-status`), atomically (a
//! temporary file renamed over it). `wsgate reload` reads the file, sends SIGHUP to the
//! daemon, and waits until the file shows a newer generation from that same process.
//!
//! The file has two lines: `<pid> <generation> <ok|rejected|started>` and a one-line message
//! (the rejection reason, or what the reload changed). Generation 0 (`started`) is written at
//! startup, so a file left behind by an earlier process never answers for this one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file name inside the runtime directory.
pub const FILE_NAME: &str = "reload-status";

/// The status file of this process's runtime directory: the first entry of
/// `$RUNTIME_DIRECTORY` (systemd separates several with `:`), or `None` outside systemd.
pub fn default_path() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_str().map(|s| s.split(':').next().unwrap_or(s).to_owned())?;
    if first.is_empty() {
        return None;
    }
    Some(Path::new(&first).join(FILE_NAME))
}

/// What a reload ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The daemon started (generation 0); no reload yet.
    Started,
    /// The new configuration is in force.
    Ok,
    /// The new configuration was rejected; the old one keeps serving.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One state of the status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// 0 at startup, then one more per reload.
    pub generation: u64,
    /// The outcome of that reload.
    pub result: Outcome,
    /// The rejection reason, or a summary of what changed.
    pub message: String,
}

impl Status {
    /// Parses the file's text; `None` when it is not a status (torn or foreign).
    pub fn parse(text: &str) -> Option<Status> {
        let mut lines = text.splitn(2, '\n');
        let mut head = lines.next()?.split(' ');
        let pid = head.next()?.parse().ok()?;
        let generation = head.next()?.parse().ok()?;
        let result = match head.next()? {
            "started" => Outcome::Started,
            "ok" => Outcome::Ok,
            "rejected" => Outcome::Rejected,
            _ => return None,
        };
        let message = lines.next().unwrap_or("").trim_end_matches('\n').to_owned();
        Some(Status { pid, generation, result, message })
    }

    fn render(&self) -> String {
        // One line: a multi-line error keeps its parts, joined.
        let message = self.message.replace('\n', "; ");
        format!("{} {} {}\n{message}\n", self.pid, self.generation, self.result.as_str())
    }
}

/// Reads the status file; `None` when it is missing or unreadable.
pub fn read(path: &Path) -> Option<Status> {
    std::fs::read_to_string(path).ok().as_deref().and_then(Status::parse)
}

/// Writes `status` atomically (temporary file in the same directory, then rename).
pub fn write(path: &Path, status: &Status) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(status.render().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why `wsgate reload` did not see the reload succeed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadCommandError {
    /// The daemon rejected the new configuration (the message is its reason).
    #[error("reload rejected, the running configuration is kept: {0}")]
    Rejected(String),
    /// No daemon process to signal.
    #[error("{0}")]
    NoDaemon(String),
    /// The signal could not be sent.
    #[error("cannot signal process {pid}: {source}")]
    Signal {
        /// The target.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon exited while reloading.
    #[error("process {0} exited before answering the reload")]
    Exited(u32),
    /// No answer in time.
    #[error("no answer from process {pid} within {timeout:?} (status file {path})")]
    Timeout {
        /// The target.
        pid: u32,
        /// How long we waited.
        timeout: Duration,
        /// Where we looked.
        path: String,
    },
}

/// Sends SIGHUP to `pid` (or to the pid the status file names) and waits up to `timeout` for
/// the daemon's answer in `path`. Returns the daemon's summary on success.
pub fn request_reload(path: &Path, pid: Option<u32>, timeout: Duration) -> Result<String, ReloadCommandError> {
    use rustix::process::{kill_process, test_kill_process, Pid, Signal};
    // The daemon writes the file at startup: without it no answer would ever come, so nothing
    // is signalled (a daemon started without $RUNTIME_DIRECTORY is reloaded with kill -HUP).
    let Some(before) = read(path) else {
        return Err(ReloadCommandError::NoDaemon(format!(
            "no running wsgate answers reloads: {} is missing or unreadable (the daemon writes it when \
             started with $RUNTIME_DIRECTORY, i.e. systemd's RuntimeDirectory=; otherwise send SIGHUP \
             yourself and read its log)",
            path.display()
        )));
    };
    let pid = pid.unwrap_or(before.pid);
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| ReloadCommandError::NoDaemon(format!("invalid pid {pid}")))?;
    // Generation to beat: the last one this process wrote (0 when the file is another's).
    let last = if before.pid == pid { before.generation } else { 0 };
    kill_process(target, Signal::HUP).map_err(|e| ReloadCommandError::Signal { pid, source: e.into() })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = read(path) {
            if status.pid == pid && status.generation > last && status.result != Outcome::Started {
                return match status.result {
                    Outcome::Rejected => Err(ReloadCommandError::Rejected(status.message)),
                    _ => Ok(status.message),
                };
            }
        }
        if test_kill_process(target).is_err() {
            return Err(ReloadCommandError::Exited(pid));
        }
        if Instant::now() >= deadline {
            return Err(ReloadCommandError::Timeout { pid, timeout, path: path.display().to_string() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let status = Status {
            pid: 42,
            generation: 3,
            result: Outcome::Rejected,
            message: "listen 1.2.3.4:80: cannot bind\nsecond".into(),
        };
        let parsed = Status::parse(&status.render()).expect("parses");
        assert_eq!(parsed.pid, 42);
        assert_eq!(parsed.generation, 3);
        assert_eq!(parsed.result, Outcome::Rejected);
        assert_eq!(parsed.message, "listen 1.2.3.4:80: cannot bind; second");
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status::parse("x y z"), None);
        assert_eq!(Status::parse("1 2 maybe\n"), None);
    }

    #[test]
    fn write_is_atomic_and_readable() {
        let dir = std::env::temp_dir().join(format!("wsgate-reload-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(FILE_NAME);
        let status = Status { pid: 7, generation: 1, result: Outcome::Ok, message: "fine".into() };
        write(&path, &status).expect("write");
        assert_eq!(read(&path), Some(status));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
