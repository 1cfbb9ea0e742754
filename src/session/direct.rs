//! The direct-write fast path: a plain-TCP WebSocket whose socket the delivering task may
//! write to itself.
//!
//! Fan-out used to cost, per delivery, a wake-up of the subscriber's session task and a poll
//! of its writer (timers, wakers, readiness: cold cache lines per subscriber), on top of the
//! one `send` the delivery needs (perf at 10,000 subscribers: about 30 % of the server's CPU
//! in user space). Like nchan, wsgate now writes a delivered message straight to the
//! subscriber's socket from the task that delivers it, when nothing is queued before it and
//! the session's writer is not in the middle of a write (the outbox's lock decides, see
//! [`crate::pubsub::outbox`]). A write that would block, or writes only part of the frame,
//! queues the rest for the session's writer exactly as before.
//!
//! The socket is shared as an `Arc<DirectSocket>` by the session's reader, its writer and the
//! outbox: `tokio::net::TcpStream` reads and writes through `&self` (readiness plus
//! `try_read`/`try_write`), so no lock is needed between the halves (`tokio::io::split`
//! needed one). TLS, HTTP/2 (RFC 8441) and any connection that does not downcast to a plain
//! TCP stream keep the queued path.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::loops::{self, SessionConfig, SessionEnd};
use crate::apps::App;
use crate::prefixed::Prefixed;
use crate::pubsub::channel::{ChannelHandle, ChannelQueue};
use crate::pubsub::outbox::DirectSink;
use crate::ws::deflate::{DeflateParams, SharedMessage};

/// A session's TCP socket as the delivering tasks see it: the stream, how the session encodes
/// messages (deflate or not), and the counters a write must bump.
pub(crate) struct DirectSocket {
    stream: TcpStream,
    deflate: Option<DeflateParams>,
    messages_sent: Counter,
    bytes_sent: Counter,
}

impl DirectSocket {
    /// Wraps the session's stream; `messages_sent`/`bytes_sent` are the app's counters.
    pub(crate) fn new(
        stream: TcpStream,
        deflate: Option<DeflateParams>,
        messages_sent: Counter,
        bytes_sent: Counter,
    ) -> Self {
        Self { stream, deflate, messages_sent, bytes_sent }
    }
}

impl DirectSink for DirectSocket {
    /// The exact bytes the session's writer would send for `message` (RFC 7692: the shared
    /// compressed frame when deflate was negotiated, else the plain frame).
    fn frame_for(&self, message: &SharedMessage) -> Bytes {
        message.frame_for(self.deflate.as_ref())
    }

    /// Whether the session negotiated permessage-deflate (its frames may need compressing).
    fn deflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// One non-blocking write of `frame`; how many bytes went out.
    ///
    /// Straight to the socket, without tokio's readiness flag: in a fan-out that flag is one
    /// more cold cache line per delivery (perf: 3 % of the CPU of a paced fan-out to 1,000).
    /// The socket is non-blocking, so a full buffer still answers `WouldBlock`; the message
    /// is then queued, and the writer's next write learns the same from the kernel.
    fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&self.stream).send(frame)
    }

    /// Counts a direct write in the app's metrics: `started` when it wrote the first bytes of
    /// a message (the rest, if any, is counted as bytes by the writer).
    fn count(&self, started: bool, bytes: usize) {
        if started {
            self.messages_sent.inc();
        }
        self.bytes_sent.inc_by(bytes as u64);
    }
}

/// Any byte stream a session can run over without the direct path (TLS, HTTP/2 streams).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The connection a session runs over.
pub(crate) enum SessionIo {
    /// Plain TCP, with the bytes already read past the handshake (RFC 6455 §4.1: a client
    /// may send frames right behind its request): the direct-write path.
    Tcp(TcpStream, Bytes),
    /// Anything else: the queued path.
    Other(Box<dyn Stream>),
}

impl SessionIo {
    /// The connection hyper handed over after a 101: plain TCP when it unwraps to one (the
    /// fast path's [`Prefixed`] stream, inside hyper-util's rewind type).
    pub(crate) fn from_upgraded(upgraded: Upgraded) -> Self {
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<Prefixed<TcpStream>>>(upgraded) {
            Ok(parts) => {
                let (prefix, stream) = parts.io.into_inner().into_parts();
                // A copy (or nothing): `read_buf` is a view of hyper's whole read buffer (8 KiB
                // or more), which must not stay alive for the life of an idle connection.
                let pending = match (prefix.is_empty(), parts.read_buf.is_empty()) {
                    (true, true) => Bytes::new(),
                    (true, false) => Bytes::copy_from_slice(&parts.read_buf),
                    // hyper read everything it holds before anything still in the prefix.
                    _ => Bytes::from([&parts.read_buf[..], &prefix[..]].concat()),
                };
                SessionIo::Tcp(stream, pending)
            }
            Err(upgraded) => SessionIo::Other(Box::new(TokioIo::new(upgraded))),
        }
    }
}

/// Runs a session: with the direct-write path over plain TCP, else as before.
///
/// Not an `async fn`: the set-up is synchronous, and the session's future is the loops' own.
/// As an `async fn` it would keep its arguments in its state for the whole connection beside
/// the copies the loops hold (an idle connection's largest allocation is this future).
pub(crate) fn run(
    io: SessionIo,
    channel: ChannelHandle,
    queue: ChannelQueue,
    app: Arc<dyn App>,
    config: Arc<SessionConfig>,
    deflate: Option<DeflateParams>,
) -> impl Future<Output = SessionEnd> {
    let (reader, writer) = match io {
        SessionIo::Tcp(stream, pending) => {
            let socket = Arc::new(DirectSocket::new(
                stream,
                deflate,
                config.metrics.messages_sent.clone(),
                config.metrics.bytes_sent.clone(),
            ));
            queue.rx.attach_direct(socket.clone());
            (
                SessionReader::Direct(DirectReader {
                    socket: socket.clone(),
                    pending: (!pending.is_empty()).then(|| Box::new(pending)),
                }),
                SessionWriter::Direct(DirectWriter(socket)),
            )
        }
        SessionIo::Other(stream) => {
            let (reader, writer) = tokio::io::split(stream);
            (SessionReader::Queued(reader), SessionWriter::Queued(writer))
        }
    };
    // One session type for both: two separately awaited session futures would both be laid
    // out in this state machine (measured: 5 KiB instead of 2.2 KiB per connection).
    loops::run(reader, writer, channel, queue, app, config, deflate)
}

/// A session's reading side: the shared socket, or a half of hyper's upgraded connection
/// (TLS, HTTP/2).
pub(crate) enum SessionReader {
    /// Plain TCP, shared with direct writes.
    Direct(DirectReader),
    /// Anything else.
    Queued(ReadHalf<Box<dyn Stream>>),
}

/// A session's writing side, as [`SessionReader`].
pub(crate) enum SessionWriter {
    /// Plain TCP, shared with direct writes.
    Direct(DirectWriter),
    /// Anything else.
    Queued(WriteHalf<Box<dyn Stream>>),
}

impl AsyncRead for SessionReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionReader::Direct(r) => Pin::new(r).poll_read(cx, buf),
            SessionReader::Queued(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionWriter::Direct(w) => Pin::new(w).poll_write(cx, buf),
            SessionWriter::Queued(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionWriter::Direct(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            SessionWriter::Queued(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SessionWriter::Direct(w) => w.is_write_vectored(),
            SessionWriter::Queued(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionWriter::Direct(w) => Pin::new(w).poll_flush(cx),
            SessionWriter::Queued(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionWriter::Direct(w) => Pin::new(w).poll_shutdown(cx),
            SessionWriter::Queued(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The session's reading side of a shared socket.
pub(crate) struct DirectReader {
    socket: Arc<DirectSocket>,
    /// Bytes read past the handshake by the HTTP server (RFC 6455 §4.1: the client may send
    /// frames right after its request); returned before anything read from the socket.
    /// Boxed: most clients send nothing behind their request, and inline it would be 24 more
    /// bytes of every idle session.
    pending: Option<Box<Bytes>>,
}

impl AsyncRead for DirectReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(pending) = &mut this.pending {
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending.split_to(n));
            if pending.is_empty() {
                // Let go of the copy.
                this.pending = None;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.socket.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            let mut read = 0;
            let stream = &this.socket.stream;
            // A read shorter than the room offered drained the socket: it is reported to
            // `try_io` as `WouldBlock`, so tokio clears the readiness it saw (as its own
            // `poll_read` does after a short read) and the next read waits for the reactor
            // instead of making a `recvfrom` that can only answer EAGAIN. Readiness that came
            // in since has a newer tick and is not cleared.
            let outcome = stream.try_io(Interest::READABLE, || {
                read = stream.try_read(unfilled)?;
                if read > 0 && read < room {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match outcome {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => {}
                // Readiness was stale; it is cleared, so the next poll registers.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            buf.advance(read);
            return Poll::Ready(Ok(()));
        }
    }
}

/// The session's writing side of a shared socket. It writes only while the outbox marks the
/// writer busy, so it never interleaves with a direct write.
pub(crate) struct DirectWriter(Arc<DirectSocket>);

impl AsyncWrite for DirectWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.stream.poll_write_ready(cx))?;
            match self.0.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.stream.poll_write_ready(cx))?;
            match self.0.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The half-close after our Close (RFC 6455 §7.1.1). `TcpStream` offers it only through
        // `&mut`; the socket is shared, so go through socket2 (a plain `shutdown(2)`).
        Poll::Ready(socket2::SockRef::from(&self.0.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::budget::ByteBudget;
    use crate::pubsub::channel::Outbound;
    use crate::pubsub::outbox::{outbox, TryRecvError};
    use crate::ws::codec::OpCode;
    use bytes::Bytes;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the server side wrapped for direct writes, the peer, the counters.
    async fn pair() -> (Arc<DirectSocket>, TcpStream, Counter, Counter) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (messages, bytes) = (Counter::default(), Counter::default());
        (Arc::new(DirectSocket::new(server, None, messages.clone(), bytes.clone())), peer, messages, bytes)
    }

    fn frame(n: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![n]))
    }

    fn byte(item: Outbound) -> u8 {
        item.plain_frame().map(|f| f[0]).unwrap_or(255)
    }

    fn message(text: &str) -> SharedMessage {
        SharedMessage::new(OpCode::Text, text.as_bytes())
    }

    async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got)).await.unwrap().unwrap();
        got
    }

    #[tokio::test]
    async fn writes_only_when_nothing_is_queued_and_the_writer_is_idle() {
        let (socket, mut peer, messages, bytes) = pair().await;
        let (tx, mut rx) = outbox(1 << 20);
        let budget = ByteBudget::new(1 << 20);
        let m = message("hello");
        assert!(!tx.try_direct(&m, &budget), "no socket attached yet");
        rx.attach_direct(socket);
        assert!(tx.try_direct(&m, &budget));
        assert_eq!(read_exactly(&mut peer, m.plain().len()).await, &m.plain()[..]);
        assert_eq!((messages.get(), bytes.get(), budget.queued()), (1, m.plain().len() as u64, 0));
        // Something queued: the message must wait behind it.
        tx.send(frame(1)).unwrap();
        assert!(!tx.try_direct(&m, &budget));
        // The writer took it and may be writing it: still no direct write.
        assert_eq!(byte(rx.try_recv().unwrap()), 1);
        assert!(!tx.try_direct(&m, &budget));
        // Back for more with nothing queued: the writer is idle again.
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv()).await.is_err());
        assert!(tx.try_direct(&m, &budget));
        assert_eq!(messages.get(), 2);
    }

    #[tokio::test]
    async fn a_partial_write_queues_the_rest_and_reserves_it() {
        let (socket, mut peer, _messages, bytes) = pair().await;
        let (tx, mut rx) = outbox(1 << 20);
        rx.attach_direct(socket);
        let budget = ByteBudget::new(1 << 30);
        let big = message(&"x".repeat(256 << 10));
        // The peer does not read: the socket fills, and a write goes partial or would block.
        let mut written = 0usize;
        let mut rounds = 0;
        while tx.try_direct(&big, &budget) && budget.queued() == 0 {
            written += big.plain().len();
            rounds += 1;
            assert!(rounds < 1000, "the socket never filled");
        }
        match rx.try_recv() {
            Ok(Outbound::Rest(rest)) => {
                // The head went out; the rest is queued (reserved) and the path is closed
                // until the writer has written it.
                assert_eq!(budget.queued(), rest.len());
                assert_eq!(&big.plain()[big.plain().len() - rest.len()..], &rest[..]);
                written += big.plain().len() - rest.len();
                assert!(!tx.try_direct(&big, &budget));
            }
            Err(TryRecvError::Empty) => assert_eq!(budget.queued(), 0, "a write that would block wrote nothing"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(bytes.get(), written as u64);
        let mut got = vec![0; written];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got)).await.unwrap().unwrap();
        assert!(got.chunks(big.plain().len()).all(|c| c == &big.plain()[..c.len()]), "whole frames, in order");
    }

    #[tokio::test]
    async fn a_close_or_the_end_of_the_writer_turns_it_off_for_good() {
        let (socket, _peer, _, _) = pair().await;
        let (tx, mut rx) = outbox(1 << 20);
        rx.attach_direct(socket.clone());
        let budget = ByteBudget::new(1 << 20);
        let m = message("x");
        tx.send(Outbound::Close { code: Some(1000), reason: String::new() }).unwrap();
        assert!(matches!(rx.try_recv(), Ok(Outbound::Close { .. })));
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv()).await.is_err());
        assert!(!tx.try_direct(&m, &budget), "nothing after a Close");
        rx.attach_direct(socket.clone());
        assert!(!tx.try_direct(&m, &budget), "not even when attached again");
        assert_eq!(Arc::strong_count(&socket), 1, "the outbox let go of the socket");

        let (tx, rx) = outbox(1 << 20);
        rx.attach_direct(socket.clone());
        drop(rx);
        assert!(!tx.try_direct(&m, &budget));
        assert_eq!(Arc::strong_count(&socket), 1);
    }
}
