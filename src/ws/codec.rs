//! Sans-io WebSocket frame codec (RFC 6455 §5): decoding with every receiver
//! check the RFC asks for, encoding, and masking. No I/O, no timers.
//!
//! The [`Decoder`] works on the caller's read buffer: it checks each frame
//! header before any payload is buffered, unmasks the payload in place as it
//! arrives, validates text as it arrives (so invalid UTF-8 fails at the first
//! bad byte, RFC 6455 §8.1 "fail fast"), and hands a single-frame message out
//! as a `split_to(..).freeze()` of that buffer, without copying it.

use bytes::{Buf, Bytes, BytesMut};

use super::close::{is_valid_wire_code, CloseFrame};

/// Which side of the connection this endpoint is (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Expects masked frames from the peer and sends unmasked ones.
    Server,
    /// Expects unmasked frames from the peer and sends masked ones.
    Client,
}

/// A frame opcode (RFC 6455 §5.2). Reserved opcodes have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: a continuation fragment of a Text or Binary message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble `v`, or `None` for reserved opcodes
    /// (0x3-0x7, 0xB-0xF) and values over 0xF.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The wire value of this opcode.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (high bit of the nibble set, RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Limits and role for a [`Decoder`].
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Our side of the connection. Default: [`Role::Server`].
    pub role: Role,
    /// Largest message (sum of its fragments' payloads) accepted; a frame
    /// header that would exceed it fails at once with
    /// [`ProtocolError::MessageTooLarge`]. Also the most a half-received
    /// message can hold in memory. An empty fragment that does not end its
    /// message counts as one byte, so a message cannot be kept open forever
    /// with empty fragments. Default: 1 MiB.
    pub max_message_size: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self { role: Role::Server, max_message_size: crate::config::DEFAULT_MAX_MESSAGE_SIZE }
    }
}

/// One event decoded from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message; the bytes are valid UTF-8, unless
    /// [`Decoder::last_compressed`] says the message was compressed
    /// (possible only after [`Decoder::set_rsv1_allowed`]`(true)`).
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping with its application data (at most 125 bytes).
    Ping(Bytes),
    /// A pong with its application data (at most 125 bytes).
    Pong(Bytes),
    /// A close frame; `None` when its body was empty (no status code).
    Close(Option<CloseFrame>),
}

/// A violation of RFC 6455 by the peer. Each maps to one close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A server received a frame without a mask (RFC 6455 §5.1).
    #[error("unmasked frame from client")]
    UnmaskedFrame,
    /// A client received a masked frame (RFC 6455 §5.1).
    #[error("masked frame from server")]
    MaskedFrame,
    /// RSV1, RSV2 or RSV3 was set without a negotiated extension (RFC 6455 §5.2).
    #[error("reserved bits set")]
    ReservedBits,
    /// A reserved opcode (RFC 6455 §5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame without FIN (RFC 6455 §5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame with a payload over 125 bytes (RFC 6455 §5.5).
    #[error("control frame payload over 125 bytes")]
    ControlFrameTooLarge,
    /// A continuation frame with no message in progress (RFC 6455 §5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new Text/Binary frame while a fragmented message is open (RFC 6455 §5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// Invalid UTF-8 in a text message or close reason (RFC 6455 §8.1).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The message would exceed the configured limit.
    #[error("message larger than {limit} bytes")]
    MessageTooLarge {
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// A close code that may not be sent on the wire (RFC 6455 §7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close body of one byte (RFC 6455 §5.5.1: a code is two bytes).
    #[error("invalid close frame payload")]
    InvalidClosePayload,
    /// A payload length not in its minimal encoding (RFC 6455 §5.2).
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    /// A 64-bit payload length with its most significant bit set (RFC 6455 §5.2).
    #[error("payload length has its most significant bit set")]
    InvalidLength,
}

impl ProtocolError {
    /// The close code to send before failing the connection (RFC 6455 §7.4.1):
    /// 1007 for invalid UTF-8, 1009 for an oversized message, 1002 otherwise.
    pub fn close_code(&self) -> u16 {
        use super::close::code;
        match self {
            Self::InvalidUtf8 => code::INVALID_DATA,
            Self::MessageTooLarge { .. } => code::TOO_BIG,
            _ => code::PROTOCOL,
        }
    }

    /// A short, fixed name for metric labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnmaskedFrame => "unmasked_frame",
            Self::MaskedFrame => "masked_frame",
            Self::ReservedBits => "reserved_bits",
            Self::ReservedOpcode(_) => "reserved_opcode",
            Self::FragmentedControlFrame => "fragmented_control",
            Self::ControlFrameTooLarge => "control_too_large",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::ExpectedContinuation => "expected_continuation",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::InvalidCloseCode(_) => "invalid_close_code",
            Self::InvalidClosePayload => "invalid_close_payload",
            Self::NonMinimalLength => "non_minimal_length",
            Self::InvalidLength => "invalid_length",
        }
    }
}

/// Incremental UTF-8 validation across fragments and partial frames.
///
/// Holds at most 3 bytes of an incomplete trailing sequence; every byte seen
/// so far is otherwise known valid, so an invalid byte fails where it arrives.
#[derive(Debug, Default)]
struct Utf8Validator {
    carry: [u8; 4],
    carry_len: usize,
}

impl Utf8Validator {
    /// Validates the next chunk of a text message.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), ProtocolError> {
        use simdutf8::compat::from_utf8;
        if self.carry_len > 0 {
            // Complete the carried character first; its lead byte tells its width.
            let width: usize = match self.carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = width.saturating_sub(self.carry_len).min(input.len());
            let mut tmp = self.carry;
            tmp[self.carry_len..self.carry_len + take].copy_from_slice(&input[..take]);
            let n = self.carry_len + take;
            match from_utf8(&tmp[..n]) {
                Ok(_) => {
                    self.carry_len = 0;
                    input = &input[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete but a valid prefix: the input is used up.
                    self.carry = tmp;
                    self.carry_len = n;
                    return Ok(());
                }
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        match from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &input[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Ends the message: an incomplete trailing character is invalid.
    fn finish(&self) -> Result<(), ProtocolError> {
        if self.carry_len == 0 {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }
}

/// A parsed frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

/// A frame whose header has been consumed and whose payload is (partly) in
/// the buffer: the first `processed` payload bytes are already unmasked
/// and, for text, validated.
#[derive(Debug)]
struct PendingFrame {
    header: FrameHeader,
    processed: usize,
}

/// A Text or Binary message that has started and not yet ended.
#[derive(Debug)]
struct OpenMessage {
    text: bool,
    compressed: bool,
    /// Payload of the completed fragments; `None` until the first one ends,
    /// so that a single-frame message is never copied.
    data: Option<BytesMut>,
    len: usize,
    utf8: Utf8Validator,
}

impl OpenMessage {
    fn validates_utf8(&self) -> bool {
        self.text && !self.compressed
    }
}

/// Frame decoder for one connection (RFC 6455 §5, §6.2).
///
/// It keeps state between calls: feed it the same buffer each time, with new
/// bytes appended at the end, and do not touch bytes it has not consumed (it
/// unmasks a partly received payload in place). After an error, every later
/// call returns the same error: the connection must be failed (RFC 6455 §7.1.7).
/// A Close does not stop the decoder; stopping reading is the session's job.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_message_size: usize,
    rsv1_allowed: bool,
    frame: Option<PendingFrame>,
    message: Option<OpenMessage>,
    failed: Option<ProtocolError>,
    last_compressed: bool,
}

impl Decoder {
    /// A decoder with the given role and limits; RSV1 is not allowed.
    pub fn new(cfg: DecoderConfig) -> Self {
        Self {
            role: cfg.role,
            max_message_size: cfg.max_message_size,
            rsv1_allowed: false,
            frame: None,
            message: None,
            failed: None,
            last_compressed: false,
        }
    }

    /// Allows RSV1 on the first frame of a data message, once
    /// permessage-deflate has been negotiated (RFC 7692 §6). Such messages
    /// come out as [`Incoming::Text`] / [`Incoming::Binary`] with the payload
    /// still compressed and [`Decoder::last_compressed`] true.
    pub fn set_rsv1_allowed(&mut self, allowed: bool) {
        self.rsv1_allowed = allowed;
    }

    /// Whether the last Text or Binary message returned had RSV1 set on its
    /// first frame (permessage-deflate, RFC 7692 §6). Its payload is then
    /// still compressed and a text message was NOT UTF-8 validated: the
    /// deflate layer inflates, then validates and applies its own size limit
    /// (`max_message_size` here bounds the compressed size).
    pub fn last_compressed(&self) -> bool {
        self.last_compressed
    }

    /// Whether a fragmented data message is in progress.
    pub fn in_message(&self) -> bool {
        self.message.is_some()
    }

    /// Decodes the next complete event from `buf`, consuming exactly the bytes used.
    /// `Ok(None)` = need more input.
    ///
    /// Control frames interleaved in a fragmented message are returned as they
    /// arrive; the data message when its FIN frame arrives. A frame header is
    /// consumed as soon as it is complete and passes every check; the payload
    /// when the whole frame is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.decode_inner(buf);
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            let mut pending = match self.frame.take() {
                Some(p) => p,
                None => match self.parse_header(buf)? {
                    Some(header) => {
                        buf.advance(header.header_len);
                        self.begin_frame(&header);
                        PendingFrame { header, processed: 0 }
                    }
                    None => return Ok(None),
                },
            };
            let header = pending.header;
            let available = buf.len().min(header.payload_len);
            if available > pending.processed {
                self.process(&mut buf[pending.processed..available], &header, pending.processed)?;
                pending.processed = available;
            }
            if available < header.payload_len {
                self.frame = Some(pending);
                return Ok(None);
            }
            let payload = buf.split_to(header.payload_len);
            if let Some(event) = self.complete_frame(&header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Parses and checks a frame header without consuming anything.
    /// Checks run as soon as the byte they need is there.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !self.rsv1_allowed) {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        // RFC 7692 §6.1: RSV1 only on the first frame of a data message.
        if rsv1 && (opcode.is_control() || opcode == OpCode::Continuation) {
            return Err(ProtocolError::ReservedBits);
        }
        // RFC 6455 §5.4: fragments of one message are not interleaved.
        match (opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() && len7 > 125 {
            return Err(ProtocolError::ControlFrameTooLarge);
        }
        let (len, mut pos): (u64, usize) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                let n = u16::from_be_bytes([b[0], b[1]]);
                if n < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (u64::from(n), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let n = u64::from_be_bytes(a);
                if n & (1 << 63) != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                if n <= 0xFFFF {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        // Size limit from the header alone, before any payload is buffered.
        let too_large = ProtocolError::MessageTooLarge { limit: self.max_message_size };
        if !opcode.is_control() {
            let so_far = self.message.as_ref().map_or(0, |m| m.len) as u64;
            if so_far.saturating_add(charged_len(fin, len)) > self.max_message_size as u64 {
                return Err(too_large);
            }
        }
        let payload_len = usize::try_from(len).map_err(|_| too_large)?;
        let mask = if masked {
            let Some(b) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([b[0], b[1], b[2], b[3]])
        } else {
            None
        };
        Ok(Some(FrameHeader { fin, rsv1, opcode, mask, header_len: pos, payload_len }))
    }

    /// Updates message state when a header has been accepted.
    fn begin_frame(&mut self, header: &FrameHeader) {
        if matches!(header.opcode, OpCode::Text | OpCode::Binary) {
            self.message = Some(OpenMessage {
                text: header.opcode == OpCode::Text,
                compressed: header.rsv1,
                data: None,
                len: 0,
                utf8: Utf8Validator::default(),
            });
        }
        if let (Some(m), false) = (self.message.as_mut(), header.opcode.is_control()) {
            // `charged_len` of a usize fits a usize (an empty frame counts 1).
            m.len += charged_len(header.fin, header.payload_len as u64) as usize;
        }
    }

    /// Unmasks newly arrived payload bytes in place and validates text.
    fn process(&mut self, chunk: &mut [u8], header: &FrameHeader, offset: usize) -> Result<(), ProtocolError> {
        if let Some(mask) = header.mask {
            apply_mask(chunk, mask, offset);
        }
        if header.opcode.is_control() {
            return Ok(());
        }
        match self.message.as_mut() {
            Some(m) if m.validates_utf8() => m.utf8.feed(chunk),
            _ => Ok(()),
        }
    }

    /// Handles a frame whose whole (unmasked, validated) payload is `payload`.
    fn complete_frame(&mut self, header: &FrameHeader, payload: BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        match header.opcode {
            OpCode::Ping => Ok(Some(Incoming::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(Incoming::Pong(payload.freeze()))),
            OpCode::Close => parse_close_payload(&payload).map(|c| Some(Incoming::Close(c))),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let Some(m) = self.message.as_mut() else {
                    // begin_frame always opens a message for data frames.
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                match m.data.as_mut() {
                    None => m.data = Some(payload),
                    Some(data) => {
                        if data.capacity() - data.len() < payload.len() {
                            // Grow geometrically so that many small fragments
                            // do not copy the whole message each time.
                            data.reserve(payload.len().max(data.len()));
                        }
                        data.extend_from_slice(&payload);
                    }
                }
                if !header.fin {
                    return Ok(None);
                }
                let Some(m) = self.message.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if m.validates_utf8() {
                    m.utf8.finish()?;
                }
                let data = m.data.unwrap_or_default().freeze();
                self.last_compressed = m.compressed;
                Ok(Some(if m.text { Incoming::Text(data) } else { Incoming::Binary(data) }))
            }
        }
    }
}

/// What a data frame counts toward `max_message_size`: its payload length, except that an
/// empty fragment which does not end its message counts as one byte. RFC 6455 §5.4 allows
/// empty fragments, but without this a peer could send them forever and keep a message open
/// at no cost; now a message holds at most `max_message_size` frames, the same bound
/// one-byte fragments already had, and the flood ends with 1009. A message of exactly
/// `max_message_size` payload bytes is still accepted however it is fragmented, unless
/// it also has empty non-final fragments.
fn charged_len(fin: bool, len: u64) -> u64 {
    if len == 0 && !fin {
        1
    } else {
        len
    }
}

/// Parses a Close frame body (RFC 6455 §5.5.1, §7.4).
///
/// Empty: `None`. One byte: [`ProtocolError::InvalidClosePayload`]. A code
/// that is not valid on the wire: [`ProtocolError::InvalidCloseCode`]. A
/// reason that is not UTF-8: [`ProtocolError::InvalidUtf8`].
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_wire_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = simdutf8::compat::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason: reason.to_owned() }))
        }
    }
}

/// Appends one frame to `dst` (RFC 6455 §5.2), masking the payload copy
/// with `mask` when given (clients must, RFC 6455 §5.3). Uses the minimal
/// length encoding.
pub fn encode_frame(dst: &mut BytesMut, opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) {
    let len = payload.len();
    let mut head = [0u8; 14];
    head[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        head[1] = mask_bit | len as u8;
        2
    } else if len <= 0xFFFF {
        head[1] = mask_bit | 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = mask_bit | 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        head[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    dst.reserve(n + len);
    dst.extend_from_slice(&head[..n]);
    let start = dst.len();
    dst.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut dst[start..], m, 0);
    }
}

/// One complete unmasked FIN frame, encoded once to be shared among many
/// sockets (cloning `Bytes` only bumps a reference count).
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(payload.len() + 10);
    encode_frame(&mut dst, opcode, true, false, payload, None);
    dst.freeze()
}

/// One complete masked FIN frame with a fresh masking key, as a client sends.
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut dst = BytesMut::with_capacity(payload.len() + 14);
    encode_frame(&mut dst, opcode, true, false, payload, Some(random_mask()));
    dst.freeze()
}

/// A fresh client masking key.
///
/// RFC 6455 §5.3 and §10.3 want keys the application cannot predict, so that
/// script cannot choose the bytes on the wire (cache poisoning of proxies).
/// fastrand (wyrand, seeded per thread from the OS-seeded std hasher) meets
/// that: the key is hidden from the page's script, it need not resist
/// cryptanalysis.
pub fn random_mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// The body of a Close frame: `code` in network order and `reason`,
/// truncated on a char boundary so the body fits a control frame (125
/// bytes, so at most 123 bytes of reason; RFC 6455 §5.5, §5.5.1).
pub fn close_frame_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// XORs `buf` with `mask` (RFC 6455 §5.3), where `buf[0]` is byte `offset`
/// of the payload, so a payload can be unmasked piece by piece. Masking and
/// unmasking are the same operation. Works eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let r = offset % 4;
    let m = [mask[r], mask[(r + 1) % 4], mask[(r + 2) % 4], mask[(r + 3) % 4]];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(a) ^ wide).to_ne_bytes());
    }
    // Whole chunks are a multiple of 4 bytes, so the tail starts at mask[r] again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close::code;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked frame as a client sends it, with a raw first byte.
    fn raw_client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_frame(&mut dst, OpCode::Binary, true, false, payload, Some(MASK));
        dst[0] = b0;
        dst.to_vec()
    }

    fn client(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        encode_frame(&mut dst, opcode, fin, false, payload, Some(MASK));
        dst.to_vec()
    }

    fn server() -> Decoder {
        Decoder::new(DecoderConfig::default())
    }

    fn decoder(role: Role, max: usize) -> Decoder {
        Decoder::new(DecoderConfig { role, max_message_size: max })
    }

    /// Decodes every event in `bytes`; the first error ends the list.
    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(ev) = d.decode(&mut buf)? {
            out.push(ev);
        }
        Ok(out)
    }

    fn err_of(d: &mut Decoder, bytes: &[u8]) -> ProtocolError {
        decode_all(d, bytes).unwrap_err()
    }

    fn text(s: &str) -> Incoming {
        Incoming::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    // === errors and their close codes ===

    #[test]
    fn unmasked_frame_to_server() {
        let mut dst = BytesMut::new();
        encode_frame(&mut dst, OpCode::Text, true, false, b"hi", None);
        let e = err_of(&mut server(), &dst);
        assert_eq!(e, ProtocolError::UnmaskedFrame);
        assert_eq!(e.close_code(), code::PROTOCOL);
        // Fails from the two header bytes alone.
        let e = err_of(&mut server(), &dst[..2]);
        assert_eq!(e, ProtocolError::UnmaskedFrame);
    }

    #[test]
    fn masked_frame_to_client() {
        let e = err_of(&mut decoder(Role::Client, 1 << 20), &client(OpCode::Text, true, b"hi"));
        assert_eq!(e, ProtocolError::MaskedFrame);
        assert_eq!(e.close_code(), code::PROTOCOL);
    }

    #[test]
    fn reserved_bits() {
        for bit in [0x40, 0x20, 0x10] {
            let e = err_of(&mut server(), &raw_client(0x80 | bit | 0x1, b"hi"));
            assert_eq!(e, ProtocolError::ReservedBits, "bit {bit:#x}");
            assert_eq!(e.close_code(), code::PROTOCOL);
            // One byte is enough to fail.
            assert_eq!(err_of(&mut server(), &[0x80 | bit | 0x1]), ProtocolError::ReservedBits);
        }
    }

    #[test]
    fn reserved_opcodes() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            let e = err_of(&mut server(), &raw_client(0x80 | op, b""));
            assert_eq!(e, ProtocolError::ReservedOpcode(op));
            assert_eq!(e.close_code(), code::PROTOCOL);
            assert!(OpCode::from_u8(op).is_none());
        }
    }

    #[test]
    fn opcode_round_trip() {
        for op in [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong] {
            assert_eq!(OpCode::from_u8(op.as_u8()), Some(op));
            assert_eq!(op.is_control(), op.as_u8() >= 8);
        }
        assert!(OpCode::from_u8(0x10).is_none());
    }

    #[test]
    fn fragmented_control_frame() {
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            let e = err_of(&mut server(), &client(op, false, b""));
            assert_eq!(e, ProtocolError::FragmentedControlFrame);
            assert_eq!(e.close_code(), code::PROTOCOL);
        }
    }

    #[test]
    fn control_frame_too_large() {
        let ok = decode_all(&mut server(), &client(OpCode::Ping, true, &[7; 125])).unwrap();
        assert_eq!(ok, vec![Incoming::Ping(Bytes::from(vec![7; 125]))]);
        let frame = client(OpCode::Ping, true, &[7; 126]);
        // Fails from the header, before the payload is there.
        let e = err_of(&mut server(), &frame[..2]);
        assert_eq!(e, ProtocolError::ControlFrameTooLarge);
        assert_eq!(e.close_code(), code::PROTOCOL);
    }

    #[test]
    fn unexpected_continuation() {
        let e = err_of(&mut server(), &client(OpCode::Continuation, true, b"x"));
        assert_eq!(e, ProtocolError::UnexpectedContinuation);
        assert_eq!(e.close_code(), code::PROTOCOL);
        // Also after a message has ended.
        let mut s = client(OpCode::Text, true, b"a");
        s.extend(client(OpCode::Continuation, true, b"b"));
        assert_eq!(err_of(&mut server(), &s), ProtocolError::UnexpectedContinuation);
    }

    #[test]
    fn expected_continuation() {
        for op in [OpCode::Text, OpCode::Binary] {
            let mut s = client(OpCode::Binary, false, b"a");
            s.extend(client(op, true, b"b"));
            let e = err_of(&mut server(), &s);
            assert_eq!(e, ProtocolError::ExpectedContinuation);
            assert_eq!(e.close_code(), code::PROTOCOL);
        }
    }

    #[test]
    fn invalid_utf8_text() {
        let e = err_of(&mut server(), &client(OpCode::Text, true, b"ab\xffcd"));
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), code::INVALID_DATA);
        // Surrogates and overlong forms are invalid.
        for bad in [&b"\xed\xa0\x80"[..], b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82"] {
            assert_eq!(err_of(&mut server(), &client(OpCode::Text, true, bad)), ProtocolError::InvalidUtf8);
        }
        // Binary is not checked.
        assert_eq!(
            decode_all(&mut server(), &client(OpCode::Binary, true, b"\xff")).unwrap(),
            vec![Incoming::Binary(Bytes::from_static(b"\xff"))]
        );
    }

    #[test]
    fn message_too_large_from_header() {
        let mut d = decoder(Role::Server, 100);
        let frame = client(OpCode::Binary, true, &[0; 101]);
        // Only the header (2 + 4 mask bytes; the error comes before the mask).
        let e = err_of(&mut d, &frame[..2]);
        assert_eq!(e, ProtocolError::MessageTooLarge { limit: 100 });
        assert_eq!(e.close_code(), code::TOO_BIG);
        // Exactly at the limit is fine.
        let ok = decode_all(&mut decoder(Role::Server, 100), &client(OpCode::Binary, true, &[0; 100])).unwrap();
        assert_eq!(ok.len(), 1);
        // A huge 64-bit length fails without buffering anything.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(err_of(&mut server(), &head), ProtocolError::MessageTooLarge { limit: 1 << 20 });
    }

    #[test]
    fn message_too_large_across_fragments() {
        let mut s = client(OpCode::Text, false, &[b'a'; 40]);
        s.extend(client(OpCode::Ping, true, b"p"));
        s.extend(client(OpCode::Continuation, false, &[b'b'; 40]));
        let third = client(OpCode::Continuation, true, &[b'c'; 21]);
        let mut d = decoder(Role::Server, 100);
        let mut buf = BytesMut::from(&s[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Incoming::Ping(Bytes::from_static(b"p"))));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&third[..2]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::MessageTooLarge { limit: 100 }));
        // 40 + 40 + 20 = 100 passes.
        let mut s2 = s.clone();
        s2.extend(client(OpCode::Continuation, true, &[b'c'; 20]));
        let ev = decode_all(&mut decoder(Role::Server, 100), &s2).unwrap();
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[1], Incoming::Text(b) if b.len() == 100));
    }

    #[test]
    fn endless_empty_fragments_end_at_the_message_size_limit() {
        // RFC 6455 §5.4 allows empty fragments: a few are fine (Autobahn 6.1.2/6.1.3).
        let mut s = client(OpCode::Text, false, b"");
        s.extend(client(OpCode::Continuation, false, b""));
        s.extend(client(OpCode::Continuation, true, b""));
        assert_eq!(decode_all(&mut decoder(Role::Server, 100), &s).unwrap(), vec![text("")]);
        // A message of exactly the limit still passes with an empty last fragment.
        let mut s = client(OpCode::Binary, false, &[0; 100]);
        s.extend(client(OpCode::Continuation, true, b""));
        assert_eq!(decode_all(&mut decoder(Role::Server, 100), &s).unwrap().len(), 1);
        // A message that never ends: each empty non-final fragment counts one byte, so the
        // 101st fails at its header.
        let mut d = decoder(Role::Server, 100);
        let mut buf = BytesMut::from(&client(OpCode::Binary, false, b"")[..]);
        for _ in 0..99 {
            buf.extend_from_slice(&client(OpCode::Continuation, false, b""));
        }
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.is_empty(), "every frame consumed, nothing buffered");
        buf.extend_from_slice(&client(OpCode::Continuation, false, b""));
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooLarge { limit: 100 });
        assert_eq!(e.close_code(), code::TOO_BIG);
    }

    #[test]
    fn invalid_close_code() {
        for c in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let e = err_of(&mut server(), &client(OpCode::Close, true, &c.to_be_bytes()));
            assert_eq!(e, ProtocolError::InvalidCloseCode(c));
            assert_eq!(e.close_code(), code::PROTOCOL);
        }
    }

    #[test]
    fn invalid_close_payload() {
        let e = err_of(&mut server(), &client(OpCode::Close, true, &[0x03]));
        assert_eq!(e, ProtocolError::InvalidClosePayload);
        assert_eq!(e.close_code(), code::PROTOCOL);
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bad\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80");
        let e = err_of(&mut server(), &client(OpCode::Close, true, &p));
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), code::INVALID_DATA);
    }

    #[test]
    fn close_frames_decode() {
        assert_eq!(decode_all(&mut server(), &client(OpCode::Close, true, b"")).unwrap(), vec![Incoming::Close(None)]);
        for c in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let ev = decode_all(&mut server(), &client(OpCode::Close, true, &close_frame_payload(c, "héllo"))).unwrap();
            assert_eq!(ev, vec![Incoming::Close(Some(CloseFrame::new(c, "héllo")))]);
        }
    }

    #[test]
    fn non_minimal_length() {
        let mut f = vec![0x82, 0x80 | 126, 0, 125];
        f.extend_from_slice(&MASK);
        let e = err_of(&mut server(), &f);
        assert_eq!(e, ProtocolError::NonMinimalLength);
        assert_eq!(e.close_code(), code::PROTOCOL);
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&0xFFFFu64.to_be_bytes());
        assert_eq!(err_of(&mut server(), &f), ProtocolError::NonMinimalLength);
    }

    #[test]
    fn length_msb_set() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let e = err_of(&mut server(), &f);
        assert_eq!(e, ProtocolError::InvalidLength);
        assert_eq!(e.close_code(), code::PROTOCOL);
    }

    #[test]
    fn error_is_sticky() {
        let mut d = server();
        let mut buf = BytesMut::from(&raw_client(0xC1, b"x")[..]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::ReservedBits));
        let mut good = BytesMut::from(&client(OpCode::Text, true, b"ok")[..]);
        assert_eq!(d.decode(&mut good), Err(ProtocolError::ReservedBits));
    }

    #[test]
    fn every_error_has_a_reason_label() {
        let all = [
            ProtocolError::UnmaskedFrame,
            ProtocolError::MaskedFrame,
            ProtocolError::ReservedBits,
            ProtocolError::ReservedOpcode(3),
            ProtocolError::FragmentedControlFrame,
            ProtocolError::ControlFrameTooLarge,
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::InvalidUtf8,
            ProtocolError::MessageTooLarge { limit: 1 },
            ProtocolError::InvalidCloseCode(1),
            ProtocolError::InvalidClosePayload,
            ProtocolError::NonMinimalLength,
            ProtocolError::InvalidLength,
        ];
        let mut labels: Vec<_> = all.iter().map(ProtocolError::reason).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
        assert!(labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
    }

    // === fragmentation and UTF-8 ===

    #[test]
    fn fragmented_with_interleaved_ping() {
        let mut s = client(OpCode::Text, false, b"Hel");
        s.extend(client(OpCode::Ping, true, b"p1"));
        s.extend(client(OpCode::Continuation, false, b"lo, "));
        s.extend(client(OpCode::Pong, true, b""));
        s.extend(client(OpCode::Continuation, true, b"world"));
        s.extend(client(OpCode::Binary, true, b"\x00\x01"));
        let ev = decode_all(&mut server(), &s).unwrap();
        assert_eq!(
            ev,
            vec![
                Incoming::Ping(Bytes::from_static(b"p1")),
                Incoming::Pong(Bytes::new()),
                text("Hello, world"),
                Incoming::Binary(Bytes::from_static(b"\x00\x01")),
            ]
        );
    }

    #[test]
    fn empty_messages_and_fragments() {
        let mut s = client(OpCode::Text, true, b"");
        s.extend(client(OpCode::Binary, false, b""));
        s.extend(client(OpCode::Continuation, false, b""));
        s.extend(client(OpCode::Continuation, true, b""));
        let ev = decode_all(&mut server(), &s).unwrap();
        assert_eq!(ev, vec![text(""), Incoming::Binary(Bytes::new())]);
    }

    #[test]
    fn utf8_split_across_fragments_valid() {
        // "κόσμε€𝄞" split inside multi-byte characters at every position.
        let msg = "κόσμε€𝄞".as_bytes();
        for i in 0..=msg.len() {
            for j in i..=msg.len() {
                let mut s = client(OpCode::Text, false, &msg[..i]);
                s.extend(client(OpCode::Continuation, false, &msg[i..j]));
                s.extend(client(OpCode::Continuation, true, &msg[j..]));
                let ev = decode_all(&mut server(), &s).unwrap();
                assert_eq!(ev, vec![text("κόσμε€𝄞")], "split {i} {j}");
            }
        }
    }

    #[test]
    fn invalid_utf8_fails_at_its_fragment() {
        // Autobahn 6.4.1: the second fragment is invalid; the third never comes.
        let mut s = client(OpCode::Text, false, "κόσμε".as_bytes());
        s.extend(client(OpCode::Continuation, false, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"));
        assert_eq!(err_of(&mut server(), &s), ProtocolError::InvalidUtf8);
        // An invalid continuation of a character carried from the previous fragment.
        let mut s = client(OpCode::Text, false, b"a\xe2\x82");
        s.extend(client(OpCode::Continuation, false, b"\x41"));
        assert_eq!(err_of(&mut server(), &s), ProtocolError::InvalidUtf8);
        // A carried 4-byte lead that can never be valid: F4 90.
        let mut s = client(OpCode::Text, false, b"\xf4");
        s.extend(client(OpCode::Continuation, false, b"\x90"));
        assert_eq!(err_of(&mut server(), &s), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn incomplete_utf8_at_fragment_end() {
        // Fine at the end of a non-final fragment...
        let first = client(OpCode::Text, false, b"\xf0\x9d");
        assert_eq!(decode_all(&mut server(), &first).unwrap(), vec![]);
        let mut s = first.clone();
        s.extend(client(OpCode::Continuation, false, b"\x84"));
        s.extend(client(OpCode::Continuation, true, b"\x9e"));
        assert_eq!(decode_all(&mut server(), &s).unwrap(), vec![text("𝄞")]);
        // ...not at the end of the final one.
        let mut s = first;
        s.extend(client(OpCode::Continuation, true, b"\x84"));
        assert_eq!(err_of(&mut server(), &s), ProtocolError::InvalidUtf8);
        assert_eq!(err_of(&mut server(), &client(OpCode::Text, true, b"ok\xe2\x82")), ProtocolError::InvalidUtf8);
    }

    #[test]
    fn invalid_utf8_fails_before_frame_completes() {
        // Autobahn 6.4.3/6.4.4: one text frame, its payload arriving in pieces.
        let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64";
        let frame = client(OpCode::Text, true, payload);
        let mut d = server();
        let mut buf = BytesMut::new();
        // Header + the valid first 11 payload bytes: need more.
        buf.extend_from_slice(&frame[..6 + 11]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        // One more byte (F4) is still a valid prefix.
        buf.extend_from_slice(&frame[17..18]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        // 0x90 after F4 is invalid: fails with 8 payload bytes still missing.
        buf.extend_from_slice(&frame[18..19]);
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn partial_frame_is_unmasked_once() {
        let msg = "partial frames are unmasked exactly once, €uro".as_bytes();
        let frame = client(OpCode::Text, true, msg);
        for step in 1..8 {
            let mut d = server();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in frame.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(ev) = d.decode(&mut buf).unwrap() {
                    out.push(ev);
                }
            }
            assert_eq!(out, vec![Incoming::Text(Bytes::copy_from_slice(msg))], "step {step}");
            assert!(buf.is_empty());
        }
    }

    // === encoding, masking, lengths ===

    #[test]
    fn client_to_server_round_trip() {
        for len in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut dst = BytesMut::new();
            encode_frame(&mut dst, OpCode::Binary, true, false, &payload, Some(random_mask()));
            let ev = decode_all(&mut server(), &dst).unwrap();
            assert_eq!(ev, vec![Incoming::Binary(Bytes::from(payload))], "len {len}");
        }
        let ev = decode_all(&mut server(), &client_frame(OpCode::Text, "hé".as_bytes())).unwrap();
        assert_eq!(ev, vec![text("hé")]);
    }

    #[test]
    fn server_to_client_round_trip() {
        let mut d = decoder(Role::Client, 1 << 20);
        let mut s = server_frame(OpCode::Text, "hello".as_bytes()).to_vec();
        s.extend_from_slice(&server_frame(OpCode::Ping, b"x"));
        s.extend_from_slice(&server_frame(OpCode::Close, &close_frame_payload(1001, "bye")));
        let ev = decode_all(&mut d, &s).unwrap();
        assert_eq!(
            ev,
            vec![
                text("hello"),
                Incoming::Ping(Bytes::from_static(b"x")),
                Incoming::Close(Some(CloseFrame::new(1001, "bye"))),
            ]
        );
        // A client decoder rejects nothing unmasked.
        assert_eq!(err_of(&mut server(), &server_frame(OpCode::Text, b"x")), ProtocolError::UnmaskedFrame);
    }

    #[test]
    fn length_encodings() {
        let cases: [(usize, &[u8]); 6] = [
            (0, &[0x82, 0]),
            (125, &[0x82, 125]),
            (126, &[0x82, 126, 0, 126]),
            (65535, &[0x82, 126, 0xFF, 0xFF]),
            (65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            (1 << 20, &[0x82, 127, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        ];
        for (len, head) in cases {
            let payload = vec![0xAB; len];
            let f = server_frame(OpCode::Binary, &payload);
            assert_eq!(&f[..head.len()], head, "len {len}");
            assert_eq!(f.len(), head.len() + len);
            let ev = decode_all(&mut decoder(Role::Client, 1 << 20), &f).unwrap();
            assert_eq!(ev, vec![Incoming::Binary(Bytes::from(payload))]);
        }
        // Masked: mask bit and key follow the length.
        let mut dst = BytesMut::new();
        encode_frame(&mut dst, OpCode::Text, false, true, &[0; 200], Some(MASK));
        assert_eq!(&dst[..8], &[0x41, 0x80 | 126, 0, 200, MASK[0], MASK[1], MASK[2], MASK[3]]);
    }

    #[test]
    fn single_frame_message_is_zero_copy() {
        let frame = client(OpCode::Binary, true, &[5; 300]);
        let mut buf = BytesMut::from(&frame[..]);
        let start = buf.as_ptr() as usize;
        let ev = server().decode(&mut buf).unwrap();
        match ev {
            Some(Incoming::Binary(b)) => assert_eq!(b.as_ptr() as usize, start + 8),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn apply_mask_matches_bytewise() {
        let data: Vec<u8> = (0..67u8).collect();
        for offset in 0..8 {
            for len in 0..data.len() {
                let mut fast = data[..len].to_vec();
                apply_mask(&mut fast, MASK, offset);
                let slow: Vec<u8> = data[..len].iter().enumerate().map(|(i, b)| b ^ MASK[(offset + i) % 4]).collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
        // Piecewise equals whole.
        let mut whole = data.clone();
        apply_mask(&mut whole, MASK, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, MASK, 0);
        apply_mask(b, MASK, 13);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn close_payload_truncates_on_char_boundary() {
        assert_eq!(close_frame_payload(1000, ""), vec![0x03, 0xE8]);
        assert_eq!(close_frame_payload(4000, "ok"), vec![0x0F, 0xA0, b'o', b'k']);
        let long = "€".repeat(50); // 150 bytes, 3 per char
        let p = close_frame_payload(1001, &long);
        assert_eq!(p.len(), 2 + 123);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        let long = format!("a{}", "€".repeat(50)); // boundary falls inside a char
        let p = close_frame_payload(1001, &long);
        assert_eq!(p.len(), 2 + 121);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        // Always fits a control frame and decodes.
        let ev = decode_all(&mut server(), &client(OpCode::Close, true, &p)).unwrap();
        assert!(matches!(&ev[0], Incoming::Close(Some(c)) if c.code == 1001));
    }

    #[test]
    fn rsv1_hook_for_deflate() {
        let mut dst = BytesMut::new();
        encode_frame(&mut dst, OpCode::Text, false, true, b"\xff\x00", Some(MASK));
        encode_frame(&mut dst, OpCode::Continuation, true, false, b"\xfe", Some(MASK));
        assert_eq!(err_of(&mut server(), &dst), ProtocolError::ReservedBits);
        let mut d = server();
        d.set_rsv1_allowed(true);
        let mut buf = BytesMut::from(&dst[..]);
        let ev = d.decode(&mut buf).unwrap();
        assert_eq!(ev, Some(Incoming::Text(Bytes::from_static(b"\xff\x00\xfe"))));
        assert!(d.last_compressed());
        buf.extend_from_slice(&client(OpCode::Binary, true, b"plain"));
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Incoming::Binary(Bytes::from_static(b"plain"))));
        assert!(!d.last_compressed());
        // RSV1 on a continuation or a control frame stays an error.
        let mut bad = BytesMut::new();
        encode_frame(&mut bad, OpCode::Binary, false, false, b"a", Some(MASK));
        encode_frame(&mut bad, OpCode::Continuation, true, true, b"b", Some(MASK));
        let mut d = server();
        d.set_rsv1_allowed(true);
        assert_eq!(err_of(&mut d, &bad), ProtocolError::ReservedBits);
        let mut bad = BytesMut::new();
        encode_frame(&mut bad, OpCode::Ping, true, true, b"", Some(MASK));
        let mut d = server();
        d.set_rsv1_allowed(true);
        assert_eq!(err_of(&mut d, &bad), ProtocolError::ReservedBits);
    }

    #[test]
    fn many_small_fragments_are_linear() {
        // 1 MiB in 16-byte fragments: 65536 frames. Quadratic copying would hang.
        let chunk = [b'z'; 16];
        let mut s = client(OpCode::Text, false, &chunk);
        for _ in 1..(1 << 16) - 1 {
            s.extend(client(OpCode::Continuation, false, &chunk));
        }
        s.extend(client(OpCode::Continuation, true, &chunk));
        let ev = decode_all(&mut server(), &s).unwrap();
        assert!(matches!(&ev[..], [Incoming::Text(b)] if b.len() == 1 << 20));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(6455);
        for role in [Role::Server, Role::Client] {
            for _ in 0..2000 {
                let len = rng.usize(0..64);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                // Bias toward plausible headers so deeper paths run.
                if let Some(b) = bytes.first_mut() {
                    *b &= 0x8F;
                }
                let mut d = decoder(role, 1 << 10);
                let mut buf = BytesMut::new();
                for chunk in bytes.chunks(rng.usize(1..8)) {
                    buf.extend_from_slice(chunk);
                    while let Ok(Some(_)) = d.decode(&mut buf) {}
                }
            }
        }
    }

    // === property: any split of a valid stream gives the same events ===

    fn sample_stream() -> Vec<u8> {
        let mut s = client(OpCode::Text, true, "plain".as_bytes());
        let msg = "€uro κόσμε 𝄞".as_bytes();
        s.extend(client(OpCode::Text, false, &msg[..2]));
        s.extend(client(OpCode::Ping, true, b"ping!"));
        s.extend(client(OpCode::Continuation, false, &msg[2..9]));
        s.extend(client(OpCode::Continuation, false, b""));
        s.extend(client(OpCode::Pong, true, b""));
        s.extend(client(OpCode::Continuation, true, &msg[9..]));
        s.extend(client(OpCode::Binary, true, &(0..=255u8).collect::<Vec<_>>()));
        s.extend(client(OpCode::Text, true, &"x".repeat(300).into_bytes()));
        s.extend(client(OpCode::Binary, false, b"ab"));
        s.extend(client(OpCode::Continuation, true, b"cd"));
        s.extend(client(OpCode::Close, true, &close_frame_payload(1000, "done ✓")));
        s
    }

    fn feed(chunks: &[&[u8]]) -> Vec<Incoming> {
        let mut d = server();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(ev) = d.decode(&mut buf).unwrap() {
                out.push(ev);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn any_split_gives_same_events() {
        let s = sample_stream();
        let expected = feed(&[&s]);
        assert_eq!(expected.len(), 8);
        for i in 0..=s.len() {
            assert_eq!(feed(&[&s[..i], &s[i..]]), expected, "split at {i}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(feed(&bytes), expected);
        for step in [2, 3, 5, 7, 13] {
            let chunks: Vec<&[u8]> = s.chunks(step).collect();
            assert_eq!(feed(&chunks), expected, "step {step}");
        }
    }
}
