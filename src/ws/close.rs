//! Close status codes and the Close frame body (RFC 6455 §5.5.1, §7.4).
//!
//! This module only knows codes; turning a protocol error into a code is
//! `ProtocolError::close_code` in the codec, and the close handshake itself
//! belongs to the session.

/// Close status codes defined by RFC 6455 §7.4.1.
pub mod code {
    /// 1000: normal closure, the purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// 1001: an endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// 1003: the peer sent a type of data this endpoint cannot accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// 1006: the connection closed without a Close frame. Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// 1007: a message's data did not match its type (e.g. invalid UTF-8 in text).
    pub const INVALID_DATA: u16 = 1007;
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY: u16 = 1008;
    /// 1009: a message was too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// 1010: the client expected an extension the server did not negotiate.
    pub const EXTENSION: u16 = 1010;
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
}

/// Whether `code` may appear in a Close frame on the wire (RFC 6455 §7.4).
///
/// Valid: 1000-1003 and 1007-1014 (defined here or registered with IANA:
/// 1012 service restart, 1013 try again later, 1014 bad gateway), and
/// 3000-4999 (libraries, frameworks and applications). Invalid: 0-999,
/// 1004 (reserved), 1005 and 1006 (local-only), 1015 (TLS failure,
/// local-only), 1016-2999 (reserved for future RFCs), 5000 and above.
pub fn is_valid_wire_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The body of a Close frame: a status code and a UTF-8 reason (RFC 6455 §5.5.1).
///
/// A Close frame with an empty body has no `CloseFrame`; the codec reports it
/// as `None`, which the session treats as [`code::NO_STATUS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code, one for which [`is_valid_wire_code`] holds when decoded.
    pub code: u16,
    /// The reason text; at most 123 bytes on the wire.
    pub reason: String,
}

impl CloseFrame {
    /// A close frame body with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_code_table() {
        let valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999];
        let invalid = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
        for c in valid {
            assert!(is_valid_wire_code(c), "{c} should be valid");
        }
        for c in invalid {
            assert!(!is_valid_wire_code(c), "{c} should be invalid");
        }
    }

    #[test]
    fn named_codes_match_rfc() {
        assert_eq!(code::NORMAL, 1000);
        assert_eq!(code::GOING_AWAY, 1001);
        assert_eq!(code::PROTOCOL, 1002);
        assert_eq!(code::UNSUPPORTED, 1003);
        assert_eq!(code::NO_STATUS, 1005);
        assert_eq!(code::ABNORMAL, 1006);
        assert_eq!(code::INVALID_DATA, 1007);
        assert_eq!(code::POLICY, 1008);
        assert_eq!(code::TOO_BIG, 1009);
        assert_eq!(code::EXTENSION, 1010);
        assert_eq!(code::INTERNAL, 1011);
        assert!(!is_valid_wire_code(code::NO_STATUS));
        assert!(!is_valid_wire_code(code::ABNORMAL));
    }

    #[test]
    fn close_frame_new() {
        let f = CloseFrame::new(code::NORMAL, "bye");
        assert_eq!(f, CloseFrame { code: 1000, reason: "bye".into() });
    }
}
