//! The WebSocket session: the only code that reads from and writes to an accepted WebSocket.
//!
//! A session runs two halves joined together:
//! - the **reader** feeds bytes to the sans-io [`Decoder`], answers pings, hands complete
//!   messages to the app, runs the keepalive ping and idle timeout, and starts or answers the
//!   closing handshake;
//! - the **writer** drains the channel's queue of pre-encoded frames (shared with other
//!   channels when multicast), coalescing ready frames into one vectored write.
//!
//! Closing (RFC 6455 §7): after a Close has been written the writer half-closes TCP; after a
//! protocol error no more input is read (§7.1.7 "fail the connection").

use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep_until, Instant};

use crate::apps::{App, Message};
use crate::metrics::AppCounters;
use crate::pubsub::channel::{ChannelHandle, ChannelQueue, Outbound};
use crate::raised_flag::RaisedFlag;
use crate::ws::close::code;
use crate::ws::codec::{
    close_frame_payload, encode_frame, server_frame, Decoder, DecoderConfig, Incoming, OpCode, Role,
};
use crate::ws::deflate::{DeflateParams, InflateError, Inflater};

/// Per-session limits and timers: one per app route, shared by its sessions (an `Arc` in each
/// idle connection rather than a copy of these 100-odd bytes).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest message accepted from the client; larger ones close with 1009.
    pub max_message_size: usize,
    /// A ping is sent when nothing was received for this long.
    pub ping_interval: Duration,
    /// The connection is closed (1001) when nothing was received for this long.
    pub idle_timeout: Duration,
    /// How long to wait for the peer's Close (and for our last writes) once closing.
    pub close_timeout: Duration,
    /// The app's message and byte counters (detached counters by default).
    pub metrics: AppCounters,
}

/// How long we wait for the peer's Close after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[websocket]` defaults (one source: `config::WebSocketConfig::default`).
impl Default for SessionConfig {
    fn default() -> Self {
        let ws = crate::config::WebSocketConfig::default();
        Self {
            max_message_size: ws.max_message_size,
            ping_interval: ws.ping_interval,
            idle_timeout: ws.idle_timeout,
            close_timeout: CLOSE_TIMEOUT,
            metrics: AppCounters::default(),
        }
    }
}

/// How a session ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The closing handshake completed or was started by the peer; its code, if any.
    PeerClosed(Option<u16>),
    /// We closed with this code (protocol error, shutdown, idle, policy).
    Closed(u16),
    /// The TCP connection ended without a Close.
    Dropped,
}

/// Runs one WebSocket session over its connection's reading and writing sides until it ends
/// (the connection is chosen by [`super::direct::run`]: a shared plain TCP socket, or the
/// halves of any other stream). The server's shutdown closes the channel (1001, going away),
/// as any other close decided outside the session.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments in every idle session")]
pub(crate) fn run<R, W>(
    reader: R,
    writer: W,
    channel: ChannelHandle,
    queue: ChannelQueue,
    app: Arc<dyn App>,
    config: Arc<SessionConfig>,
    deflate: Option<DeflateParams>,
) -> impl Future<Output = SessionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // An `async` block, not an `async fn`: the block uses the arguments where they were
    // captured, while an `async fn` also keeps a moved copy of each for the session's life.
    async move {
        // Raised by the reader half when it has finished; the writer half waits on it.
        let reader_done = RaisedFlag::default();
        let pong = LatestPong::default();
        app.on_open(&channel);
        let write_half = write_loop(writer, queue, &reader_done, &config, deflate, &pong);
        let read_half = async {
            let end = read_loop(reader, &channel, &*app, &config, deflate, &pong).await;
            reader_done.raise();
            reader_done.wake();
            end
        };
        // Each half is polled only when its own waker fired (a delivery does not poll the reader).
        let (read_half, write_half) = (std::pin::pin!(read_half), std::pin::pin!(write_half));
        let (end, ()) = super::halves::join_halves(read_half, write_half).await;
        let close_code = match &end {
            SessionEnd::PeerClosed(c) => *c,
            SessionEnd::Closed(c) => Some(*c),
            SessionEnd::Dropped => Some(code::ABNORMAL),
        };
        // Make later sends fail fast; the writer is gone.
        channel.close(code::GOING_AWAY, "");
        app.on_close(&channel, close_code);
        end
    }
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments in every idle session")]
fn read_loop<'a, R>(
    mut reader: R,
    channel: &'a ChannelHandle,
    app: &'a dyn App,
    config: &'a SessionConfig,
    deflate: Option<DeflateParams>,
    pong: &'a LatestPong,
) -> impl Future<Output = SessionEnd> + 'a
where
    R: AsyncRead + Unpin + 'a,
{
    // Built here, not in the block: the block would keep both the arguments and these copies.
    let ctx = ReadContext { channel, app, config, deflate, pong };
    // An `async` block for the reason given at `run`.
    async move {
        let mut decoder =
            Decoder::new(DecoderConfig { role: Role::Server, max_message_size: ctx.config.max_message_size });
        // RFC 7692 §6: RSV1 marks a compressed message once the extension is negotiated.
        decoder.set_rsv1_allowed(ctx.deflate.is_some());
        // Created on the first compressed message, not at the handshake: zlib's inflate state is
        // ≈ 18 KiB and most subscribers (browsers always negotiate deflate) never send one.
        let mut inflater: Option<Box<Inflater>> = None;
        // No memory until bytes come, none again once the connection is quiet (see `read_some`);
        // grown in READ_CHUNK steps while a frame is arriving.
        let mut buf = BytesMut::new();
        let mut last_received = Instant::now();
        // One timer serves both the keepalive ping (every `ping_interval` while open) and the
        // close deadline (once closing): one timer entry per connection instead of two.
        let timer = sleep_until(crate::time::deadline(ctx.config.ping_interval));
        tokio::pin!(timer);
        // Set once we have sent a Close: from then on we only wait for the peer's.
        let mut closing: Option<(u16, Instant)> = None;

        loop {
            // Handle every complete event already buffered before reading more.
            if let Some(end) =
                handle_buffered(&ctx, &mut decoder, &mut buf, &mut inflater, closing.map(|(code, _)| code))
            {
                return end;
            }

            if let Some((_, deadline)) = closing {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            if !buf.is_empty() && buf.capacity() - buf.len() < MIN_READ_ROOM {
                // Part of a frame is in: room for the rest.
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = read_some(&mut reader, &mut buf) => match read {
                    Ok(0) | Err(_) => {
                        return match closing {
                            Some((code, _)) => SessionEnd::Closed(code),
                            None => SessionEnd::Dropped,
                        };
                    }
                    Ok(_) => last_received = Instant::now(),
                },
                _ = &mut timer => {
                    if let Some((code, _)) = closing {
                        // The close deadline passed without the peer's Close.
                        return SessionEnd::Closed(code);
                    }
                    if buf.is_empty() {
                        // Quiet or not, nothing is half-received: an idle connection holds no
                        // read buffer (the next bytes get one sized for them).
                        buf = BytesMut::new();
                    }
                    let quiet = last_received.elapsed();
                    if quiet >= ctx.config.idle_timeout {
                        ctx.channel.close(code::GOING_AWAY, "idle timeout");
                        closing = Some((code::GOING_AWAY, crate::time::deadline(ctx.config.close_timeout)));
                    } else if quiet >= ctx.config.ping_interval {
                        let _ = ctx.channel.send_control(server_frame(OpCode::Ping, b""));
                    }
                    timer.as_mut().reset(crate::time::deadline(ctx.config.ping_interval));
                }
                // The app, the control API, the slow-consumer policy or the server's shutdown
                // started a close: start the close deadline now rather than at the next tick.
                _ = ctx.channel.closing(), if closing.is_none() => {}
            }
            if ctx.channel.is_closing() && closing.is_none() {
                // Someone else started the close: wait for the answer.
                let started = ctx.channel.close_code().unwrap_or(code::POLICY);
                closing = Some((started, crate::time::deadline(ctx.config.close_timeout)));
            }
        }
    }
}

/// What the reader's event handling needs besides its own state.
struct ReadContext<'a> {
    channel: &'a ChannelHandle,
    app: &'a dyn App,
    config: &'a SessionConfig,
    /// permessage-deflate parameters negotiated for this connection (RFC 7692), if any.
    deflate: Option<DeflateParams>,
    pong: &'a LatestPong,
}

/// Handles every complete event in `buf`: messages to the app (unless `closing`), Pongs for
/// Pings, the peer's Close. `Some` when an event ends the session (the peer's Close, a protocol
/// error, a message that fails to inflate).
fn handle_buffered(
    ctx: &ReadContext<'_>,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    inflater: &mut Option<Box<Inflater>>,
    closing: Option<u16>,
) -> Option<SessionEnd> {
    loop {
        let event = match decoder.decode(buf) {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(error) => {
                tracing::debug!(channel = %ctx.channel.id(), %error, "protocol error; failing the connection");
                let code = error.close_code();
                ctx.channel.close(code, close_reason(code));
                // §7.1.7: fail the connection; read nothing more.
                return Some(SessionEnd::Closed(code));
            }
        };
        match event {
            Incoming::Text(text) => {
                if let Err(end) = on_data(ctx, decoder, inflater, closing, text, true) {
                    return Some(end);
                }
            }
            Incoming::Binary(data) => {
                if let Err(end) = on_data(ctx, decoder, inflater, closing, data, false) {
                    return Some(end);
                }
            }
            Incoming::Ping(payload) => {
                if closing.is_none() {
                    // §5.5.3: the Pong carries the Ping's payload. While a Pong is still
                    // queued, a newer Ping only replaces its payload, so a peer that pings
                    // without reading cannot make us queue without bound.
                    if let Some(frame) = ctx.pong.offer(server_frame(OpCode::Pong, &payload)) {
                        let _ = ctx.channel.send_control(frame);
                    }
                }
            }
            Incoming::Pong(_) => {}
            Incoming::Close(frame) => {
                let peer_code = frame.map(|f| f.code);
                ctx.channel.answer_close(peer_code);
                return Some(match closing {
                    Some(code) => SessionEnd::Closed(code),
                    None => SessionEnd::PeerClosed(peer_code),
                });
            }
        }
    }
}

/// One data message from the peer: counted, inflated if it came compressed, handed to the app
/// unless we are closing. `Err` ends the session (a message that fails to inflate or is not
/// valid UTF-8 after inflating closes with 1009 or 1007).
fn on_data(
    ctx: &ReadContext<'_>,
    decoder: &Decoder,
    inflater: &mut Option<Box<Inflater>>,
    closing: Option<u16>,
    data: Bytes,
    text: bool,
) -> Result<(), SessionEnd> {
    ctx.config.metrics.messages_received.inc();
    ctx.config.metrics.bytes_received.inc_by(data.len() as u64);
    let data = inflate_if_compressed(decoder, ctx.config, ctx.deflate, inflater, data, text).map_err(|code| {
        ctx.channel.close(code, close_reason(code));
        SessionEnd::Closed(code)
    })?;
    if closing.is_none() {
        ctx.app.on_message(ctx.channel, if text { Message::Text(data) } else { Message::Binary(data) });
    }
    Ok(())
}

/// Inflates a message that arrived compressed (RFC 7692 §7.2.2) and validates text after
/// inflating; the codec could not (it saw compressed bytes). `Err` is the close code: 1009
/// when the inflated size would pass `max_message_size` (a decompression bomb stops there),
/// 1007 for corrupt deflate data or invalid UTF-8.
fn inflate_if_compressed(
    decoder: &Decoder,
    config: &SessionConfig,
    deflate: Option<DeflateParams>,
    slot: &mut Option<Box<Inflater>>,
    payload: Bytes,
    text: bool,
) -> Result<Bytes, u16> {
    if !decoder.last_compressed() {
        return Ok(payload);
    }
    // RSV1 is only allowed once deflate was negotiated; treat the impossible case as a
    // protocol error.
    let params = deflate.ok_or(code::PROTOCOL)?;
    let inflater = slot.get_or_insert_with(|| Box::new(Inflater::new(&params, config.max_message_size)));
    let plain = inflater.inflate(&payload).map_err(|error| match error {
        InflateError::TooBig { .. } => code::TOO_BIG,
        InflateError::Corrupt => code::INVALID_DATA,
    })?;
    if params.peer_no_context_takeover {
        // The peer starts every message from an empty window (RFC 7692 §7.1.1.1): nothing
        // worth keeping between messages.
        *slot = None;
    }
    if text && simdutf8::basic::from_utf8(&plain).is_err() {
        return Err(code::INVALID_DATA);
    }
    Ok(plain)
}

fn close_reason(code: u16) -> &'static str {
    match code {
        code::INVALID_DATA => "invalid UTF-8",
        code::TOO_BIG => "message too big",
        _ => "protocol error",
    }
}

/// Reads into `buf` when it has at least this much room; into the stack buffer otherwise.
const MIN_READ_ROOM: usize = 512;
/// The stack buffer a connection without a read buffer reads into.
const STACK_READ: usize = 2 * 1024;
/// How much the read buffer grows by while a frame is arriving.
const READ_CHUNK: usize = 8 * 1024;

/// Reads what the connection has into `buf` (`Ok(0)`: the peer closed).
///
/// A connection that has nothing buffered and no room reads into a buffer on the stack and
/// copies what came into `buf`, sized for it (at least [`MIN_READ_ROOM`]): so a connection that
/// never sends anything holds no read buffer at all, and one that went quiet lets its buffer
/// go at the next keepalive tick (see `read_loop`). While bytes keep coming, reads go straight
/// into `buf`.
fn read_some<'a, R: AsyncRead + Unpin>(
    reader: &'a mut R,
    buf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if buf.capacity() - buf.len() >= MIN_READ_ROOM {
            return std::pin::pin!(reader.read_buf(&mut *buf)).poll(cx);
        }
        let mut stack = [0u8; STACK_READ];
        let mut read = ReadBuf::new(&mut stack);
        std::pin::Pin::new(&mut *reader).poll_read(cx, &mut read).map_ok(|()| {
            let filled = read.filled();
            if buf.capacity() - buf.len() < filled.len() {
                buf.reserve(filled.len().max(MIN_READ_ROOM));
            }
            buf.extend_from_slice(filled);
            filled.len()
        })
    })
}

/// Frames written per vectored write at most.
const MAX_BATCH: usize = 64;
/// Batch capacity (frames) a session keeps between writes; a burst's larger batch is freed.
const KEEP_BATCH_CAPACITY: usize = 8;

/// Whether a queued frame starts a data message (text or binary opcode, RFC 6455 §5.2), which
/// is what `messages_sent_total` counts; control frames and continuations are not messages.
fn starts_message(frame: &Bytes) -> bool {
    matches!(frame.first().map(|b| b & 0x0F), Some(0x1) | Some(0x2))
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps a second copy of its arguments in every idle session")]
fn write_loop<'a, W>(
    mut writer: W,
    mut queue: ChannelQueue,
    done: &'a RaisedFlag,
    config: &'a SessionConfig,
    deflate: Option<DeflateParams>,
    pong: &'a LatestPong,
) -> impl Future<Output = ()> + 'a
where
    W: AsyncWrite + Unpin + 'a,
{
    // An `async` block for the reason given at `run`.
    async move {
        // Allocated on first use and given back after a burst: an idle connection holds no batch.
        let mut items: Vec<Outbound> = Vec::new();
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                item = queue.rx.recv() => item,
                _ = done.raised() => {
                    // Boxed, like the other close-path waits: rare, and inline it would grow
                    // every idle session's state.
                    return Box::pin(write_close_after_reader(&mut writer, &mut queue, config.close_timeout, &config.metrics)).await;
                }
            };
            let Some(first) = first else { return };
            items.push(first);
            // Everything else already queued goes into the same vectored write (one lock).
            queue.rx.drain_into(&mut items, MAX_BATCH - 1);
            let Batch { reserved, messages, head_len, close } =
                assemble(&mut items, &mut batch, pong, deflate.as_ref());
            let wire: usize = batch.iter().map(Bytes::len).sum();
            let result = {
                let write = write_all_vectored(&mut writer, &mut batch);
                tokio::pin!(write);
                tokio::select! {
                    result = &mut write => result,
                    // The reader has finished (peer gone, or closing): finish this write only if
                    // the peer still reads, so a dead peer cannot hold the session open.
                    _ = done.raised() => match Box::pin(tokio::time::timeout(config.close_timeout, &mut write)).await {
                        Ok(result) => result,
                        Err(_) => return,
                    },
                }
            };
            queue.budget().release(reserved);
            if result.is_err() {
                return;
            }
            // After a burst, and after the handshake's write (the 101 and the app's first
            // messages): most connections then sit idle, holding no buffer.
            if batch.capacity() > KEEP_BATCH_CAPACITY || head_len > 0 {
                batch = Vec::new();
                items = Vec::new();
                if head_len > 0 {
                    queue.rx.release_if_empty();
                }
            }
            config.metrics.messages_sent.inc_by(messages);
            config.metrics.bytes_sent.inc_by((wire - head_len) as u64);
            if let Some(frame) = close {
                let reader_finished = done.is_raised();
                let _ = Box::pin(tokio::time::timeout(config.close_timeout, async {
                    writer.write_all(&frame).await?;
                    writer.flush().await?;
                    if reader_finished {
                        // The peer's Close is in (or the peer is gone): the session ends now and
                        // dropping the socket closes it; a half-close first would be one more
                        // system call per connection for nothing.
                        return Ok(());
                    }
                    // §7.1.1: the server closes the TCP connection first; half-close now, the
                    // reader keeps waiting for the peer's Close.
                    writer.shutdown().await
                }))
                .await;
                // Nothing else may follow a Close; wait for the reader to finish.
                done.raised().await;
                return;
            }
        }
    }
}

/// What one batch of queued items amounts to, besides the frames themselves.
struct Batch {
    /// Bytes the items reserved in the budget (a compressed frame is smaller than the plain
    /// size that was reserved).
    reserved: usize,
    /// Data messages started (`messages_sent_total`).
    messages: u64,
    /// Bytes of our 101 response among them (not WebSocket bytes).
    head_len: usize,
    /// The Close frame that ends the batch, if one was queued.
    close: Option<BytesMut>,
}

/// Turns the queued `items` into the frames to write (appended to `frames`), each as this
/// connection sends it: the newest Pong in place of a queued one, a shared message in its
/// compressed form when deflate was negotiated. Stops at a Close: nothing may follow it
/// (RFC 6455 §5.5.1), so later items are dropped.
fn assemble(
    items: &mut Vec<Outbound>,
    frames: &mut Vec<Bytes>,
    pong: &LatestPong,
    deflate: Option<&DeflateParams>,
) -> Batch {
    let mut batch = Batch { reserved: 0, messages: 0, head_len: 0, close: None };
    for item in items.drain(..) {
        match item {
            Outbound::Frame(frame) => {
                batch.reserved += frame.len();
                batch.messages += u64::from(starts_message(&frame));
                frames.push(pong.latest(frame));
            }
            Outbound::Message(message) => {
                batch.reserved += message.plain().len();
                batch.messages += 1;
                frames.push(message.frame_for(deflate));
            }
            Outbound::Rest(rest) => {
                // Counted as a message by the direct write that started it.
                batch.reserved += rest.len();
                frames.push(rest);
            }
            Outbound::Head(head) => {
                batch.reserved += head.len();
                batch.head_len += head.len();
                frames.push(head);
            }
            Outbound::Close { code, reason } => {
                batch.close = Some(encode_close(code, &reason));
                break;
            }
        }
    }
    batch
}

/// After the reader has finished: writes what must still go out — the tail of a frame already
/// partly on the wire (a Close may only follow a complete frame, RFC 6455 §5.4), our 101 —
/// and a queued Close, each within `close_timeout`; everything else queued is dropped.
async fn write_close_after_reader<W>(
    writer: &mut W,
    queue: &mut ChannelQueue,
    close_timeout: Duration,
    metrics: &AppCounters,
) where
    W: AsyncWrite + Unpin,
{
    while let Ok(item) = queue.rx.try_recv() {
        if let Outbound::Rest(bytes) | Outbound::Head(bytes) = &item {
            if tokio::time::timeout(close_timeout, writer.write_all(bytes)).await.map_or(true, |r| r.is_err()) {
                return;
            }
            queue.budget().release(bytes.len());
            if matches!(item, Outbound::Rest(_)) {
                metrics.bytes_sent.inc_by(bytes.len() as u64);
            }
        }
        if let Outbound::Close { code, reason } = item {
            let frame = encode_close(code, &reason);
            let _ = tokio::time::timeout(close_timeout, async {
                writer.write_all(&frame).await?;
                writer.shutdown().await
            })
            .await;
            return;
        }
    }
}

/// Pongs queued and not yet written. Each Ping is answered with its own Pong while fewer than
/// [`MAX_QUEUED_PONGS`] are waiting (Autobahn 2.10 expects ten Pongs for ten quick Pings). A
/// peer that pings faster than it reads soon hits that limit; from then on RFC 6455 §5.5.3
/// lets us answer only the most recent Ping: its frame is kept aside and written in place of
/// the last queued Pong. So a ping flood holds at most that many small frames per connection.
#[derive(Default)]
struct LatestPong(std::sync::Mutex<PongState>);

#[derive(Default)]
struct PongState {
    /// Pong frames in the channel's queue (at most [`MAX_QUEUED_PONGS`]).
    queued: u8,
    /// The answer to a Ping that arrived while the queue was full. Boxed: only a ping flood
    /// sets it, and inline it would be 24 more bytes of every idle session.
    latest: Option<Box<Bytes>>,
}

/// Pongs a session queues before it answers only the latest Ping.
const MAX_QUEUED_PONGS: u8 = 16;

impl LatestPong {
    /// Records the answer to the latest Ping; returns it when it must be queued now, `None`
    /// when the last queued Pong will carry it.
    fn offer(&self, frame: Bytes) -> Option<Bytes> {
        let mut state = crate::locks::lock(&self.0);
        if state.queued < MAX_QUEUED_PONGS {
            state.queued += 1;
            // This Pong answers a newer Ping than any kept aside.
            state.latest = None;
            Some(frame)
        } else {
            state.latest = Some(Box::new(frame));
            None
        }
    }

    /// For a frame the writer took from the queue: the last queued Pong is swapped for the
    /// answer kept aside, if any; any other frame passes unchanged.
    fn latest(&self, frame: Bytes) -> Bytes {
        // Our own Pong frames: FIN set, opcode 0xA, unmasked (§5.2).
        if frame.first() != Some(&0x8A) {
            return frame;
        }
        let mut state = crate::locks::lock(&self.0);
        state.queued = state.queued.saturating_sub(1);
        match state.queued {
            0 => state.latest.take().map_or(frame, |latest| *latest),
            _ => frame,
        }
    }
}

fn encode_close(code: Option<u16>, reason: &str) -> BytesMut {
    let payload = match code {
        Some(code) => close_frame_payload(code, reason),
        None => Vec::new(),
    };
    let mut frame = BytesMut::with_capacity(payload.len() + 2);
    encode_frame(&mut frame, OpCode::Close, true, false, &payload, None);
    frame
}

/// Writes every buffer of `batch` completely, using vectored writes, and empties it.
async fn write_all_vectored<W: AsyncWrite + Unpin>(writer: &mut W, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    if let [only] = batch.as_slice() {
        // The common paced case: one frame, no slice list to build.
        writer.write_all(only).await?;
        batch.clear();
        return writer.flush().await;
    }
    let mut start = 0;
    while start < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[start..].iter().map(|b| IoSlice::new(b)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while start < batch.len() && written >= batch[start].len() {
            written -= batch[start].len();
            start += 1;
        }
        if written > 0 {
            // A partial write inside one buffer: drop the written prefix (cheap, shared bytes).
            let rest = batch[start].slice(written..);
            batch[start] = rest;
        }
    }
    batch.clear();
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_that_sends_nothing_holds_no_read_buffer() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut buf = BytesMut::new();
        let waiting = tokio::time::timeout(Duration::from_millis(20), read_some(&mut server, &mut buf)).await;
        assert!(waiting.is_err(), "nothing to read yet");
        assert_eq!(buf.capacity(), 0, "waiting allocated a read buffer");

        client.write_all(b"0123456789").await.unwrap();
        assert_eq!(read_some(&mut server, &mut buf).await.unwrap(), 10);
        assert_eq!(&buf[..], b"0123456789");
        assert!(buf.capacity() >= MIN_READ_ROOM, "the next bytes are read in place");
    }

    #[tokio::test]
    async fn bytes_read_through_the_stack_buffer_arrive_whole_and_in_order() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let mut received = Vec::new();
        loop {
            // Taking everything out each time keeps `buf` empty: every read starts without room.
            match read_some(&mut server, &mut buf).await.unwrap() {
                0 => break,
                _ => received.extend_from_slice(&buf.split()),
            }
        }
        assert_eq!(received, sent);
    }

    #[tokio::test]
    async fn a_partial_frame_is_read_into_the_buffer_in_place() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[7u8; 3000]).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        // Half a frame kept in `buf` (as the decoder does), the read loop's growth step, then
        // the rest is read straight into the buffer.
        let mut total = 0;
        loop {
            if !buf.is_empty() && buf.capacity() - buf.len() < MIN_READ_ROOM {
                buf.reserve(READ_CHUNK);
            }
            match read_some(&mut server, &mut buf).await.unwrap() {
                0 => break,
                n => total += n,
            }
        }
        assert_eq!(total, 3000);
        assert_eq!(buf.len(), 3000);
        assert!(buf.iter().all(|b| *b == 7));
    }
}
