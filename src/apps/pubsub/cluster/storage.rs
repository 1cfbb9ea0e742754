//! How one channel is kept in Redis (see the parent module): key names, the two Lua scripts,
//! and the parsing of what they return. No connection handling here.

use crate::pubsub::broker::redis::Commands;
use serde_json::{json, Value};

/// The start of both scripts: the channel's epoch, created with `ARGV[1]` (and an emptied
/// history) when the position hash is absent — a new hash is a new epoch — or when it was
/// written under another replication history than this server's. Redis replicates
/// asynchronously: a replica promoted by a failover (Sentinel or Cluster), or a server
/// restarted from an older snapshot, may lack the last publications, and would hand their
/// offsets out again with other data. Its `master_replid` differs from the one stored with
/// the position (a promotion starts a new replication id; a replica reports its primary's),
/// so such a position starts a new epoch and clients learn `recovered:false` instead of a
/// silent gap.
macro_rules! epoch_prologue {
    () => {
        r"
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and redis.call('HGET', KEYS[1], 'replid') ~= replid then
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'replid', replid)
end
"
    };
}

/// Takes the next offset, keeps the publication and PUBLISHes it, atomically.
/// KEYS: meta, hist. ARGV: epoch if new, body, history limit, history ttl ms, meta ttl ms,
/// Redis channel, publish command (`PUBLISH`, or `SPUBLISH` in a Redis Cluster: the channel
/// shares the keys' hash tag, so it lives on their shard). Returns {epoch, offset, receivers}.
pub(super) const PUBLISH_SCRIPT: &str = concat!(
    epoch_prologue!(),
    r"
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local limit = tonumber(ARGV[3])
if limit > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('RPUSH', KEYS[2], string.format('%d %d ', offset, now) .. ARGV[2])
  redis.call('LTRIM', KEYS[2], -limit, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local n = redis.call(ARGV[7], ARGV[6], 'P ' .. epoch .. string.format(' %d ', offset) .. ARGV[2])
return {epoch, offset, n}
"
);

/// Reads a channel's position and its history after an offset (creating the position when
/// absent, so it stays valid for a later recovery). KEYS: meta, hist. ARGV: epoch if new,
/// history ttl ms, meta ttl ms, after (-1: the whole history). Returns {epoch, offset, entries}.
pub(super) const READ_SCRIPT: &str = concat!(
    epoch_prologue!(),
    r"
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = now - tonumber(ARGV[2])
while true do
  local first = redis.call('LINDEX', KEYS[2], 0)
  if not first then break end
  local at = tonumber(string.match(first, '^%d+ (%d+) '))
  if at and at >= oldest then break end
  redis.call('LPOP', KEYS[2])
end
local after = tonumber(ARGV[4])
local entries = {}
local len = redis.call('LLEN', KEYS[2])
local i = len - 1
while i >= 0 do
  local e = redis.call('LINDEX', KEYS[2], i)
  local o = tonumber(string.match(e, '^(%d+) '))
  if after >= 0 and o and o <= after then break end
  table.insert(entries, 1, e)
  i = i - 1
end
return {epoch, offset, entries}
"
);

/// A node's heartbeat: its instance id under [`alive_key`] for the TTL, and its expiry time in
/// the sorted set [`NODES_KEY`], from which expired nodes are dropped; returns the live node
/// names. KEYS: alive key, node set. ARGV: instance, ttl ms, node.
pub(super) const HEARTBEAT_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('ZRANGE', KEYS[2], 0, -1)
";

/// A Lua script run by its SHA-1 (`EVALSHA`), sent whole once when Redis does not know it
/// (after a restart). The `redis` crate's `Script` needs a feature with one more dependency.
pub(super) struct Script {
    code: &'static str,
    sha: String,
}

impl Script {
    pub(super) fn new(code: &'static str) -> Self {
        use sha1::{Digest, Sha1};
        let sha = Sha1::digest(code.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Script { code, sha }
    }

    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        conn: &mut Commands,
        keys: &[&str],
        args: &[String],
    ) -> redis::RedisResult<T> {
        let call = |command: &str, body: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match call("EVALSHA", &self.sha).query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call("EVAL", self.code).query_async(conn).await
            }
            other => other,
        }
    }
}

/// The sorted set of live nodes. Its hash tag `{nodes}` is shared with every [`alive_key`],
/// so the heartbeat script's keys sit on one Redis Cluster shard.
pub(super) const NODES_KEY: &str = "wsgate:{nodes}";

/// A node's heartbeat key, holding its instance id.
pub(super) fn alive_key(node: &str) -> String {
    format!("wsgate:{{nodes}}:alive:{node}")
}

/// The Redis keys and channel of one pubsub channel.
pub(super) struct Keys {
    pub(super) meta: String,
    pub(super) hist: String,
    pub(super) pres: String,
    pub(super) channel: String,
}

pub(super) fn keys(channel: &str) -> Keys {
    let base = format!("wsgate:ps:{{{channel}}}");
    Keys { meta: format!("{base}:meta"), hist: format!("{base}:hist"), pres: format!("{base}:pres"), channel: base }
}

/// The pubsub channel a Redis channel `wsgate:ps:{c}` carries.
pub(super) fn channel_of(redis_channel: &str) -> Option<&str> {
    redis_channel.strip_prefix("wsgate:ps:{")?.strip_suffix('}')
}

/// The hub subscription of a channel's local members (the same as on one node).
pub(crate) fn subscription(channel: &str) -> String {
    format!("pubsub:{channel}")
}

/// One publication read from Redis: its offset and the `pub` object clients get.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) publication: Value,
}

/// `{"offset":N,"data":…,"info":…}` from an offset and a stored body `{"data":…,"info":…}`;
/// `None` when the body is not a JSON object (anything with access to Redis can write).
pub(super) fn publication(offset: u64, body: &str) -> Option<Value> {
    let Value::Object(mut map) = serde_json::from_str::<Value>(body).ok()? else { return None };
    map.insert("offset".into(), json!(offset));
    Some(Value::Object(map))
}

/// Parses a history entry `"<offset> <ms> <body>"`.
pub(super) fn parse_entry(entry: &str) -> Option<Entry> {
    let mut parts = entry.splitn(3, ' ');
    let offset = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(Entry { offset, publication: publication(offset, parts.next()?)? })
}

/// The entries after `since` up to `top`, when `entries` hold every one of them.
pub(super) fn covering(entries: &[Entry], since: u64, top: u64) -> Option<Vec<&Entry>> {
    let after: Vec<&Entry> = entries.iter().filter(|e| e.offset > since && e.offset <= top).collect();
    let complete = after.len() as u64 == top.saturating_sub(since)
        && after.iter().zip(since + 1..).all(|(e, want)| e.offset == want);
    complete.then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_coverage() {
        let e = parse_entry(r#"7 1733450000000 {"data":{"x":1},"info":{"user":"u","client":"c"}}"#).unwrap();
        assert_eq!(e.offset, 7);
        assert_eq!(e.publication, json!({"offset":7,"data":{"x":1},"info":{"user":"u","client":"c"}}));
        assert!(parse_entry("7 1 not-json").is_none());
        assert!(parse_entry("x 1 {}").is_none());
        let list: Vec<Entry> = (3..=6).map(|o| Entry { offset: o, publication: json!(o) }).collect();
        assert_eq!(covering(&list, 2, 6).unwrap().len(), 4);
        assert_eq!(covering(&list, 4, 6).unwrap().len(), 2);
        assert_eq!(covering(&list, 6, 6).unwrap().len(), 0);
        assert!(covering(&list, 1, 6).is_none(), "offset 2 was trimmed");
        assert!(covering(&list, 2, 7).is_none(), "offset 7 is missing");
        let holey: Vec<Entry> = [3, 5].iter().map(|&o| Entry { offset: o, publication: json!(o) }).collect();
        assert!(covering(&holey, 2, 5).is_none());
        assert_eq!(channel_of(&keys("a b{c}").channel), Some("a b{c}"));
    }
}
