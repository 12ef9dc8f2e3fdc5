//! The one error type of this crate, with RabbitMQ's reply code and text for each case.

use crate::reply;

/// Everything that can go wrong decoding frames, methods, tables and content.
///
/// Every variant maps to the reply code RabbitMQ closes the connection with
/// ([`ProtocolError::reply_code`]) and a reply text in its style
/// ([`ProtocolError::reply_text`], without the `CODE_NAME - ` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame header announced a payload larger than the negotiated frame_max allows.
    /// `size` is the announced payload size, `max` the largest payload allowed (frame_max − 8).
    #[error("frame too large: payload of {size} bytes, maximum {max}")]
    FrameTooLarge {
        /// Payload size from the frame header.
        size: u32,
        /// Largest payload allowed (frame_max − 8).
        max: u32,
    },
    /// The octet after the payload was not 0xCE.
    #[error("invalid frame end marker {0:#04x}")]
    BadFrameEnd(u8),
    /// A frame type other than 1, 2, 3 or 8.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// Truncated or otherwise undecodable payload (method arguments, content header, ...).
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A method frame named a class/method pair that does not exist.
    #[error("unknown method {class_id}/{method_id}")]
    UnknownMethod {
        /// Class id from the frame.
        class_id: u16,
        /// Method id from the frame.
        method_id: u16,
    },
    /// A field table or array held a value type code that is not one of RabbitMQ's.
    #[error("unknown field table value type {0:#04x}")]
    UnknownFieldType(u8),
    /// A short string was not valid UTF-8.
    #[error("invalid UTF-8 in short string")]
    InvalidUtf8,
    /// A short string longer than 255 bytes was offered for encoding.
    #[error("short string of {0} bytes is longer than 255")]
    ShortStrTooLong(usize),
    /// Field tables/arrays nested deeper than [`crate::MAX_NESTING_DEPTH`].
    #[error("field tables nested too deeply")]
    NestingTooDeep,
    /// A heartbeat frame with a non-empty payload.
    #[error("heartbeat frame with a payload of {0} bytes")]
    BadHeartbeat(u32),
    /// A frame arrived that the per-channel content assembly did not expect.
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(String),
    /// A body frame carried more bytes than remained of the announced body size.
    #[error("content body frame exceeds remaining content size")]
    BodyOverrun,
    /// A content header announced a body larger than the assembler accepts.
    #[error("content body size {size} exceeds maximum allowed size {max}")]
    BodyTooLarge {
        /// body_size from the content header.
        size: u64,
        /// The assembler's limit.
        max: u64,
    },
    /// An I/O error from the transport (only produced through the tokio-util codec
    /// traits, which require `From<std::io::Error>`).
    #[error("I/O error: {message}")]
    Io {
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// Its text.
        message: String,
    },
    /// An error that happened while handling a known method; carries its ids so the
    /// close can name it. Use [`ProtocolError::root`] to see the underlying error.
    #[error("{source} (in {})", crate::method_name(*class_id, *method_id).unwrap_or("unknown method"))]
    InMethod {
        /// Class id of the method being decoded or assembled.
        class_id: u16,
        /// Method id of the method being decoded or assembled.
        method_id: u16,
        /// The underlying error.
        source: Box<ProtocolError>,
    },
}

impl ProtocolError {
    /// Wraps `self` with the ids of the method it concerns (no-op if already wrapped).
    pub fn in_method(self, class_id: u16, method_id: u16) -> ProtocolError {
        match self {
            e @ ProtocolError::InMethod { .. } => e,
            e @ ProtocolError::UnknownMethod { .. } => e,
            e => ProtocolError::InMethod {
                class_id,
                method_id,
                source: Box::new(e),
            },
        }
    }

    /// The underlying error, looking through [`ProtocolError::InMethod`].
    pub fn root(&self) -> &ProtocolError {
        match self {
            ProtocolError::InMethod { source, .. } => source.root(),
            e => e,
        }
    }

    /// The AMQP reply code RabbitMQ closes the connection with for this error.
    pub fn reply_code(&self) -> u16 {
        match self {
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::BadFrameEnd(_)
            | ProtocolError::UnknownFrameType(_)
            | ProtocolError::Malformed(_)
            | ProtocolError::UnknownFieldType(_)
            | ProtocolError::InvalidUtf8
            | ProtocolError::ShortStrTooLong(_)
            | ProtocolError::NestingTooDeep
            | ProtocolError::BadHeartbeat(_)
            | ProtocolError::BodyOverrun
            | ProtocolError::BodyTooLarge { .. } => reply::FRAME_ERROR,
            ProtocolError::UnknownMethod { .. } => reply::NOT_IMPLEMENTED,
            ProtocolError::UnexpectedFrame(_) => reply::UNEXPECTED_FRAME,
            ProtocolError::Io { .. } => reply::INTERNAL_ERROR,
            ProtocolError::InMethod { source, .. } => source.reply_code(),
        }
    }

    /// The reply text in RabbitMQ's style, without the `CODE_NAME - ` prefix.
    pub fn reply_text(&self) -> String {
        match self {
            ProtocolError::FrameTooLarge { size, max } => {
                format!("frame_too_large: payload size {size} exceeds frame_max payload limit {max}")
            }
            ProtocolError::BadFrameEnd(b) => format!("invalid_frame_end_marker: {b}"),
            ProtocolError::UnknownFrameType(t) => format!("type {t}: unknown_frame"),
            ProtocolError::Malformed(what) => format!("cannot decode frame: {what}"),
            ProtocolError::UnknownMethod { class_id, method_id } => {
                format!("unknown method: class {class_id}, method {method_id}")
            }
            ProtocolError::UnknownFieldType(t) => {
                if t.is_ascii_graphic() {
                    format!("unsupported field table type '{}'", *t as char)
                } else {
                    format!("unsupported field table type {t}")
                }
            }
            ProtocolError::InvalidUtf8 => "Malformed UTF-8 in shortstr".to_string(),
            ProtocolError::ShortStrTooLong(n) => {
                format!("shortstr of {n} bytes exceeds 255 bytes")
            }
            ProtocolError::NestingTooDeep => format!(
                "field table nesting exceeds maximum depth {}",
                crate::MAX_NESTING_DEPTH
            ),
            ProtocolError::BadHeartbeat(n) => {
                format!("type 8: heartbeat frame with a {n} byte payload")
            }
            ProtocolError::UnexpectedFrame(text) => text.clone(),
            ProtocolError::Io { message, .. } => message.clone(),
            ProtocolError::BodyOverrun => "content body frame exceeds remaining content size".to_string(),
            ProtocolError::BodyTooLarge { size, max } => {
                format!("content body size {size} exceeds maximum allowed size {max}")
            }
            ProtocolError::InMethod {
                class_id,
                method_id,
                source,
            } => match source.root() {
                ProtocolError::Malformed(what) => format!(
                    "cannot decode {} arguments: {what}",
                    crate::method_name(*class_id, *method_id).unwrap_or("method")
                ),
                other => other.reply_text(),
            },
        }
    }

    /// Class id of the method this error concerns, 0 when none is known.
    pub fn class_id(&self) -> u16 {
        match self {
            ProtocolError::InMethod { class_id, .. } => *class_id,
            ProtocolError::UnknownMethod { class_id, .. } => *class_id,
            _ => 0,
        }
    }

    /// Method id of the method this error concerns, 0 when none is known.
    pub fn method_id(&self) -> u16 {
        match self {
            ProtocolError::InMethod { method_id, .. } => *method_id,
            ProtocolError::UnknownMethod { method_id, .. } => *method_id,
            _ => 0,
        }
    }

    /// True for every error of this crate that RabbitMQ answers with a connection close
    /// (all of them today; kept for callers that want to ask).
    pub fn is_connection_error(&self) -> bool {
        reply::is_hard_error(self.reply_code())
    }
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}
