//! permessage-deflate (RFC 7692): parameter negotiation for both roles, the inflater with a
//! hard output limit, and compression of outgoing messages.
//!
//! The server always imposes `server_no_context_takeover` (RFC 7692 §7.1.1.1): every message
//! it sends is then compressed on its own, so one compressed copy of a multicast frame serves
//! every subscriber that negotiated the same `server_max_window_bits` (see
//! [`SharedMessage`]). `server_max_window_bits=8` is declined because zlib cannot produce a
//! raw deflate stream with a 256-byte window (it silently uses 9 bits, which the peer's
//! inflater may not accept, RFC 7692 §7.1.2.1).

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::codec::{encode_frame, random_mask, OpCode};

/// The extension token (RFC 7692 §7).
pub const EXTENSION: &str = "permessage-deflate";

/// Messages shorter than this are sent uncompressed: deflate would make them longer.
pub const MIN_COMPRESS_LEN: usize = 32;

/// The deflate trailer a sync flush ends with; stripped when sending, appended before
/// inflating (RFC 7692 §7.2.1, §7.2.2).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The parameters in force on one connection, from this endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// Window bits we compress with (9..=15).
    pub own_window_bits: u8,
    /// Whether we reset our compressor after every message.
    pub own_no_context_takeover: bool,
    /// Whether the peer resets its compressor after every message (we may then reset our
    /// inflater too, saving nothing but memory of old data).
    pub peer_no_context_takeover: bool,
}

/// Why a peer's permessage-deflate parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The server answered with an extension or parameter we did not offer or cannot honour
    /// (RFC 6455 §9.1, RFC 7692 §7.1: the client must then fail the connection).
    #[error("server answered with unacceptable extension parameters: {0}")]
    Unacceptable(String),
}

/// One parsed offer or answer: `permessage-deflate; a; b=1`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `None` absent; `Some(None)` present without a value; `Some(Some(n))` with a value.
    server_max_window_bits: Option<Option<u8>>,
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses one extension element; `None` when it is not permessage-deflate or is invalid
/// (unknown or repeated parameter, bad value: RFC 7692 §7.1 says to decline such an offer).
fn parse(element: &str) -> Option<Offer> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut offer = Offer::default();
    for part in parts {
        if part.is_empty() {
            return None;
        }
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => {
                let v = v.trim();
                // RFC 6455 §9.1 allows a quoted-string value.
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                (n.trim(), Some(v))
            }
            None => (part, None),
        };
        let bits = |v: Option<&str>| -> Option<Option<u8>> {
            match v {
                None => Some(None),
                // §7.1.2: 1*DIGIT, 8..=15, no leading zero.
                Some(v) if !v.is_empty() && !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) => {
                    let n: u8 = v.parse().ok()?;
                    (8..=15).contains(&n).then_some(Some(n))
                }
                Some(_) => None,
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() && !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true
            }
            "client_no_context_takeover" if value.is_none() && !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true
            }
            "server_max_window_bits" if offer.server_max_window_bits.is_none() => {
                // A value is required for this one (§7.1.2.1).
                offer.server_max_window_bits = Some(Some(bits(Some(value?))??));
            }
            "client_max_window_bits" if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(bits(value)?);
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// Server side (RFC 7692 §5.1, §7.1): picks the first acceptable permessage-deflate offer of
/// `offers` (raw `Sec-WebSocket-Extensions` elements, in order) and returns the parameters in
/// force plus the response element. `None`: answer without the extension.
pub fn negotiate_server(offers: &[String]) -> Option<(DeflateParams, String)> {
    offers.iter().filter_map(|o| parse(o)).find_map(|offer| {
        let server_bits = match offer.server_max_window_bits {
            None => 15,
            Some(Some(8)) => return None, // zlib cannot honour it; try the next offer
            Some(Some(n)) => n,
            Some(None) => return None,
        };
        let mut response = format!("{EXTENSION}; server_no_context_takeover");
        if offer.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        if let Some(Some(n)) = offer.server_max_window_bits {
            response.push_str(&format!("; server_max_window_bits={n}"));
        }
        if let Some(Some(n)) = offer.client_max_window_bits {
            // §7.1.2.2: echoing the client's own limit is always acceptable to it.
            response.push_str(&format!("; client_max_window_bits={n}"));
        }
        let params = DeflateParams {
            own_window_bits: server_bits,
            own_no_context_takeover: true,
            peer_no_context_takeover: offer.client_no_context_takeover,
        };
        Some((params, response))
    })
}

/// The client's offer: every parameter the server may want to set, nothing required.
pub fn client_offer() -> String {
    format!("{EXTENSION}; client_max_window_bits")
}

/// Client side: checks the server's answer to [`client_offer`] (RFC 7692 §7.1). `Ok(None)`:
/// the server declined. Any other extension, two answers, or a parameter we did not allow
/// fails the handshake.
pub fn accept_client(answers: &[String]) -> Result<Option<DeflateParams>, NegotiationError> {
    match answers {
        [] => Ok(None),
        [answer] => {
            let offer = parse(answer).ok_or_else(|| NegotiationError::Unacceptable(answer.clone()))?;
            let own_bits = match offer.client_max_window_bits {
                None => 15,
                // zlib cannot compress with a 256-byte window (it would use 512 bytes, more
                // than the server allows): refuse rather than send what it cannot inflate.
                Some(Some(8)) => return Err(NegotiationError::Unacceptable(answer.clone())),
                Some(Some(n)) => n,
                // §7.1.2.2: a server's answer must carry a value.
                Some(None) => return Err(NegotiationError::Unacceptable(answer.clone())),
            };
            Ok(Some(DeflateParams {
                own_window_bits: own_bits,
                // Resetting always is allowed and keeps the client's memory small.
                own_no_context_takeover: true,
                peer_no_context_takeover: offer.server_no_context_takeover,
            }))
        }
        _ => Err(NegotiationError::Unacceptable(answers.join(", "))),
    }
}

/// Why an incoming compressed message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message exceeds `max_message_size` (close 1009): a decompression bomb is
    /// stopped as soon as its output reaches the limit, so memory stays bounded by it.
    #[error("inflated message larger than {limit} bytes")]
    TooBig {
        /// The limit.
        limit: usize,
    },
    /// The payload is not valid deflate data (close 1007, RFC 7692 §8.1 "fail").
    #[error("invalid compressed data")]
    Corrupt,
}

/// The receiving half of a permessage-deflate connection.
pub struct Inflater {
    inner: Decompress,
    reset_each: bool,
    limit: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater for messages of at most `limit` bytes. The window is always 15 bits: it
    /// inflates data compressed with any smaller window.
    pub fn new(params: &DeflateParams, limit: usize) -> Self {
        Self { inner: Decompress::new_with_window_bits(false, 15), reset_each: params.peer_no_context_takeover, limit }
    }

    /// Inflates one message payload (RFC 7692 §7.2.2: append the trailer, inflate).
    pub fn inflate(&mut self, payload: &[u8]) -> Result<Bytes, InflateError> {
        let result = self.inflate_inner(payload);
        if self.reset_each || result.is_err() {
            self.inner.reset(false);
        }
        result
    }

    fn inflate_inner(&mut self, payload: &[u8]) -> Result<Bytes, InflateError> {
        let limit = self.limit;
        let mut out: Vec<u8> =
            Vec::with_capacity(payload.len().saturating_mul(3).clamp(256, limit.saturating_add(1).max(256)));
        for input in [payload, &TRAILER[..]] {
            let mut consumed = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig { limit });
                    }
                    // Grow, but never past limit + 1: one byte over is enough to know.
                    let want = (out.capacity() * 2).min(limit.saturating_add(1)).max(out.len() + 1);
                    out.reserve_exact(want - out.len());
                }
                let before_in = self.inner.total_in();
                let before_out = self.inner.total_out();
                let status = self
                    .inner
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let used = (self.inner.total_in() - before_in) as usize;
                let produced = (self.inner.total_out() - before_out) as usize;
                consumed += used;
                if out.len() > limit {
                    return Err(InflateError::TooBig { limit });
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the raw stream; the next message needs a
                    // fresh state (RFC 7692 §7.2.3.3 allows BFINAL).
                    self.inner.reset(false);
                    if consumed < input.len() {
                        continue;
                    }
                    break;
                }
                if consumed >= input.len() && out.len() < out.capacity() {
                    break;
                }
                if used == 0 && produced == 0 && out.len() < out.capacity() {
                    // No progress with room to spare: the input is exhausted or broken.
                    break;
                }
            }
        }
        if out.len() > limit {
            return Err(InflateError::TooBig { limit });
        }
        Ok(Bytes::from(out))
    }
}

/// Compresses one message payload on its own (no context carried over) with `window_bits`
/// (9..=15) and strips the trailer (RFC 7692 §7.2.1). Compressors are reused per thread.
pub fn compress(payload: &[u8], window_bits: u8) -> Bytes {
    thread_local! {
        static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    }
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with(|cell| {
        let mut slots = cell.borrow_mut();
        let slot = &mut slots[usize::from(bits - 9)];
        let compressor =
            slot.get_or_insert_with(|| Compress::new_with_window_bits(Compression::default(), false, bits));
        let out = compress_with(compressor, payload);
        compressor.reset();
        out
    })
}

/// Compresses `payload` with `compressor` ending in a sync flush, trailer stripped. The
/// compressor keeps its context; the caller resets it when no context takeover applies.
pub fn compress_with(compressor: &mut Compress, payload: &[u8]) -> Bytes {
    let mut out: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
    let start_in = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        // Errors cannot happen with a valid state and buffer space; treat one as "done".
        if compressor.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        let done = (compressor.total_in() - start_in) as usize == payload.len();
        if done && out.len() < out.capacity() {
            // A sync flush that did not fill the buffer has written everything.
            break;
        }
    }
    if out.ends_with(&TRAILER) {
        out.truncate(out.len() - TRAILER.len());
    } else {
        // Should not happen after a sync flush; an empty stored block keeps the stream valid.
        out.push(0x00);
    }
    Bytes::from(out)
}

/// A data message encoded once for many receivers: its plain frame, plus its compressed frame
/// computed lazily the first time a receiver with permessage-deflate needs it, once per window
/// size. Because the server always imposes `server_no_context_takeover`, a compressed frame
/// depends only on the payload and the window size.
pub struct SharedMessage {
    plain: Bytes,
    header_len: usize,
    opcode: OpCode,
    deflated: [OnceLock<Bytes>; 7],
}

impl std::fmt::Debug for SharedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMessage")
            .field("opcode", &self.opcode)
            .field("len", &self.plain.len())
            .finish_non_exhaustive()
    }
}

impl SharedMessage {
    /// A server message (unmasked frame) with `opcode` Text or Binary.
    pub fn new(opcode: OpCode, payload: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        encode_frame(&mut frame, opcode, true, false, payload, None);
        let header_len = frame.len() - payload.len();
        Self { plain: frame.freeze(), header_len, opcode, deflated: Default::default() }
    }

    /// Wraps an already encoded, complete, unmasked, uncompressed Text or Binary frame;
    /// `None` for anything else (control frames, fragments, masked or compressed frames).
    pub fn from_frame(frame: Bytes) -> Option<Self> {
        let (&b0, rest) = frame.split_first()?;
        let (&b1, _) = rest.split_first()?;
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        if b0 & 0xF0 != 0x80 || b1 & 0x80 != 0 || !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return None;
        }
        let (header_len, len): (usize, usize) = match b1 & 0x7F {
            126 => (4, usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]))),
            127 => {
                let b: [u8; 8] = frame.get(2..10)?.try_into().ok()?;
                (10, usize::try_from(u64::from_be_bytes(b)).ok()?)
            }
            n => (2, usize::from(n)),
        };
        if frame.len() != header_len.checked_add(len)? {
            return None;
        }
        Some(Self { plain: frame, header_len, opcode, deflated: Default::default() })
    }

    /// The plain (uncompressed) frame.
    pub fn plain(&self) -> &Bytes {
        &self.plain
    }

    /// The message payload.
    pub fn payload(&self) -> &[u8] {
        &self.plain[self.header_len..]
    }

    /// The opcode (Text or Binary).
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The frame to send to a receiver with `deflate` parameters (or none): the compressed
    /// frame (computed at most once per window size) or the plain one.
    pub fn frame_for(&self, deflate: Option<&DeflateParams>) -> Bytes {
        match deflate {
            Some(params) if self.payload().len() >= MIN_COMPRESS_LEN => {
                let bits = params.own_window_bits.clamp(9, 15);
                self.deflated[usize::from(bits - 9)]
                    .get_or_init(|| {
                        let compressed = compress(self.payload(), bits);
                        let mut frame = BytesMut::with_capacity(compressed.len() + 10);
                        encode_frame(&mut frame, self.opcode, true, true, &compressed, None);
                        frame.freeze()
                    })
                    .clone()
            }
            _ => self.plain.clone(),
        }
    }

    /// How many compressed copies exist (for tests of encode-once).
    pub fn compressed_copies(&self) -> usize {
        self.deflated.iter().filter(|c| c.get().is_some()).count()
    }
}

/// Encodes one client message (masked), compressed with `compressor` when given.
pub fn client_message_frame(opcode: OpCode, payload: &[u8], compressor: Option<(&mut Compress, bool)>) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 14);
    match compressor {
        Some((c, reset)) => {
            let data = compress_with(c, payload);
            if reset {
                c.reset();
            }
            encode_frame(&mut frame, opcode, true, true, &data, Some(random_mask()));
        }
        None => encode_frame(&mut frame, opcode, true, false, payload, Some(random_mask())),
    }
    frame.freeze()
}

/// A compressor for a client that negotiated `params`.
pub fn client_compressor(params: &DeflateParams) -> Compress {
    Compress::new_with_window_bits(Compression::default(), false, params.own_window_bits.clamp(9, 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_offer_is_accepted_with_server_no_context_takeover() {
        let (p, r) = negotiate_server(&s(&["permessage-deflate"])).unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
        assert_eq!(p.own_window_bits, 15);
        assert!(p.own_no_context_takeover && !p.peer_no_context_takeover);
    }

    #[test]
    fn first_acceptable_offer_wins_and_window_8_is_declined() {
        let offers = s(&[
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; bogus",
            "permessage-deflate; server_max_window_bits=10; client_no_context_takeover; client_max_window_bits",
            "permessage-deflate",
        ]);
        let (p, r) = negotiate_server(&offers).unwrap();
        assert_eq!(p.own_window_bits, 10);
        assert!(p.peer_no_context_takeover);
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
        assert!(negotiate_server(&s(&["permessage-deflate; server_max_window_bits=8"])).is_none());
    }

    #[test]
    fn invalid_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert!(negotiate_server(&s(&[bad])).is_none(), "{bad}");
        }
        let (_, r) = negotiate_server(&s(&["permessage-deflate; client_max_window_bits=\"12\""])).unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover; client_max_window_bits=12");
    }

    #[test]
    fn client_accepts_answers_and_refuses_unknown() {
        assert_eq!(accept_client(&[]).unwrap(), None);
        let p = accept_client(&s(&["permessage-deflate; server_no_context_takeover; client_max_window_bits=11"]))
            .unwrap()
            .unwrap();
        assert_eq!(p.own_window_bits, 11);
        assert!(p.peer_no_context_takeover);
        assert!(accept_client(&s(&["permessage-deflate; client_max_window_bits"])).is_err());
        assert!(accept_client(&s(&["x-foo"])).is_err());
        assert!(accept_client(&s(&["permessage-deflate", "permessage-deflate"])).is_err());
    }

    #[test]
    fn round_trip_every_window() {
        let text = "hello hello hello hello hello, this is a message that compresses well ".repeat(50);
        for bits in 9..=15 {
            let c = compress(text.as_bytes(), bits);
            assert!(c.len() < text.len() / 4);
            let params =
                DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: false };
            let mut inf = Inflater::new(&params, 1 << 20);
            assert_eq!(&inf.inflate(&c).unwrap()[..], text.as_bytes());
            // Context carries over between messages on the inflater side.
            assert_eq!(&inf.inflate(&c).unwrap()[..], text.as_bytes());
        }
    }

    #[test]
    fn context_takeover_stream_is_inflated() {
        let params =
            DeflateParams { own_window_bits: 15, own_no_context_takeover: false, peer_no_context_takeover: false };
        let mut c = client_compressor(&params);
        let mut inf = Inflater::new(&params, 1 << 20);
        for i in 0..5 {
            let msg = format!("message number {i} with some shared words shared words shared words");
            let data = compress_with(&mut c, msg.as_bytes());
            assert_eq!(&inf.inflate(&data).unwrap()[..], msg.as_bytes());
        }
        assert_eq!(&inf.inflate(&compress_with(&mut c, b"")).unwrap()[..], b"");
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let c = compress(&zeros, 15);
        assert!(c.len() < 20_000);
        let params =
            DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: true };
        let mut inf = Inflater::new(&params, 1 << 20);
        assert_eq!(inf.inflate(&c), Err(InflateError::TooBig { limit: 1 << 20 }));
        // Exactly at the limit is fine.
        let exact = compress(&zeros[..1 << 20], 15);
        assert_eq!(inf.inflate(&exact).unwrap().len(), 1 << 20);
    }

    #[test]
    fn garbage_is_corrupt() {
        let params =
            DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: true };
        let mut inf = Inflater::new(&params, 1 << 20);
        assert_eq!(inf.inflate(&[0xff, 0xff, 0xff, 0xff, 0x00]), Err(InflateError::Corrupt));
        // The inflater is usable again afterwards.
        assert_eq!(
            &inf.inflate(&compress(b"ok ok ok ok ok ok ok ok ok ok ok ok", 15)).unwrap()[..],
            b"ok ok ok ok ok ok ok ok ok ok ok ok"
        );
    }

    #[test]
    fn shared_message_compresses_once_per_window() {
        let payload = "abcdefgh".repeat(100);
        let m = SharedMessage::new(OpCode::Text, payload.as_bytes());
        let p15 = DeflateParams { own_window_bits: 15, own_no_context_takeover: true, peer_no_context_takeover: false };
        let p10 = DeflateParams { own_window_bits: 10, ..p15 };
        let a = m.frame_for(Some(&p15));
        let b = m.frame_for(Some(&p15));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a[0], 0x80 | 0x40 | 0x1);
        assert_eq!(m.compressed_copies(), 1);
        let _ = m.frame_for(Some(&p10));
        assert_eq!(m.compressed_copies(), 2);
        assert_eq!(m.frame_for(None).as_ptr(), m.plain().as_ptr());
        let wrapped = SharedMessage::from_frame(m.plain().clone()).unwrap();
        assert_eq!(wrapped.payload(), payload.as_bytes());
        assert!(SharedMessage::from_frame(Bytes::from_static(&[0x89, 0x00])).is_none());
        assert!(SharedMessage::from_frame(Bytes::from_static(&[0x81, 0x05, b'a'])).is_none());
    }
}
