//! Per-channel content assembly: method → content header → body frames.
//!
//! Follows RabbitMQ's `rabbit_command_assembler`: the same states, checks and texts.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::frame::ContentHeader;
use crate::methods::Method;

/// RabbitMQ's hard limit on a message body (`?MAX_MSG_SIZE`, 512 MiB).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 512 * 1024 * 1024;

/// At most this much is preallocated for a multi-frame body; beyond it the buffer
/// grows as bytes arrive, so a huge claimed body_size costs nothing up front.
const PREALLOC_CAP: usize = 4 * 1024 * 1024;

/// A complete command handed to the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Assembled {
    /// A method without content.
    Method(Method),
    /// A method with its content header and whole body.
    Content {
        /// The content-bearing method (basic.publish, ...).
        method: Method,
        /// The content header (properties still raw).
        header: ContentHeader,
        /// The body, one buffer.
        body: Bytes,
    },
}

/// Assembles the frames of one channel into commands. Pure state machine; one per channel.
///
/// Idle (no method), awaiting the header (a method, no header) or awaiting body frames (both). The
/// state lives in separate fields rather than one enum so that a frame never moves the whole state
/// (an enum of method, header and body parts is over 128 bytes: each `mem::take` of it was a `memcpy`
/// call, three per published message).
#[derive(Debug)]
pub struct ContentAssembler {
    /// The content-bearing method in progress; `None` when idle.
    method: Option<Method>,
    /// Its content header, once it has arrived (body frames are due then).
    header: Option<ContentHeader>,
    /// Body bytes still due.
    remaining: u64,
    /// The first fragment, kept as-is so a one-frame body is zero-copy.
    first: Option<Bytes>,
    /// Joined fragments once a second one arrives.
    joined: Option<BytesMut>,
    max_body_size: u64,
}

impl Default for ContentAssembler {
    fn default() -> Self {
        ContentAssembler::new()
    }
}

fn unexpected(text: String, method: Option<&Method>) -> ProtocolError {
    let e = ProtocolError::UnexpectedFrame(text);
    match method {
        Some(m) => e.in_method(m.class_id(), m.method_id()),
        None => e,
    }
}

const EXPECTED_METHOD: &str = "expected method frame, got non method frame instead";
const EXPECTED_BODY: &str = "expected content body, got non content body frame instead";

fn expected_header(class_id: u16) -> String {
    format!("expected content header for class {class_id}, got non content header frame instead")
}

impl ContentAssembler {
    /// An idle assembler with the [`DEFAULT_MAX_BODY_SIZE`] limit.
    pub fn new() -> ContentAssembler {
        ContentAssembler {
            method: None,
            header: None,
            remaining: 0,
            first: None,
            joined: None,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }

    /// Sets the largest body_size accepted in a content header.
    pub fn set_max_body_size(&mut self, max: u64) {
        self.max_body_size = max;
    }

    /// True when a content-bearing method has arrived and its content header is due next.
    pub fn awaits_header(&self) -> bool {
        self.method.is_some() && self.header.is_none()
    }

    /// True when no command is in progress.
    pub fn is_idle(&self) -> bool {
        self.method.is_none()
    }

    /// Drops any command in progress.
    pub fn reset(&mut self) {
        self.method = None;
        self.header = None;
        self.remaining = 0;
        self.first = None;
        self.joined = None;
    }

    /// The content-bearing method in progress, if any.
    pub fn pending_method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// Feeds a method frame. A method without content comes straight back; one with
    /// content starts assembly (returns `None`).
    pub fn push_method(&mut self, method: Method) -> Result<Option<Assembled>, ProtocolError> {
        if let Some(m) = &self.method {
            return Err(if self.header.is_none() {
                unexpected(expected_header(m.class_id()), Some(m))
            } else {
                unexpected(EXPECTED_BODY.to_string(), Some(m))
            });
        }
        if method.has_content() {
            self.method = Some(method);
            Ok(None)
        } else {
            Ok(Some(Assembled::Method(method)))
        }
    }

    /// Feeds a content header frame. A body_size of 0 completes the command.
    pub fn push_header(&mut self, header: ContentHeader) -> Result<Option<Assembled>, ProtocolError> {
        let Some(method) = &self.method else {
            return Err(unexpected(EXPECTED_METHOD.to_string(), None));
        };
        if self.header.is_some() {
            return Err(unexpected(EXPECTED_BODY.to_string(), Some(method)));
        }
        // On an error the method stays, awaiting its header.
        let class_id = method.class_id();
        if header.weight != 0 {
            return Err(unexpected(expected_header(class_id), Some(method)));
        }
        if header.class_id != class_id {
            return Err(unexpected(
                format!(
                    "expected content header for class {class_id}, got one for class {} instead",
                    header.class_id
                ),
                Some(method),
            ));
        }
        if header.body_size > self.max_body_size {
            return Err(ProtocolError::BodyTooLarge {
                size: header.body_size,
                max: self.max_body_size,
            }
            .in_method(class_id, method.method_id()));
        }
        if header.body_size == 0 {
            let Some(method) = self.method.take() else {
                unreachable!("method checked above")
            };
            return Ok(Some(Assembled::Content {
                method,
                header,
                body: Bytes::new(),
            }));
        }
        self.remaining = header.body_size;
        self.header = Some(header);
        Ok(None)
    }

    /// Feeds a body frame; completes the command when body_size bytes have arrived.
    pub fn push_body(&mut self, fragment: Bytes) -> Result<Option<Assembled>, ProtocolError> {
        let (Some(method), Some(header)) = (&self.method, &self.header) else {
            return match &self.method {
                Some(m) => Err(unexpected(expected_header(m.class_id()), Some(m))),
                None => Err(unexpected(EXPECTED_METHOD.to_string(), None)),
            };
        };
        let len = fragment.len() as u64;
        if len > self.remaining {
            return Err(ProtocolError::BodyOverrun.in_method(method.class_id(), method.method_id()));
        }
        self.remaining -= len;
        let body = if self.remaining == 0 && self.first.is_none() && self.joined.is_none() {
            // The usual one-frame body: complete at once, zero-copy.
            fragment
        } else {
            if let Some(buf) = &mut self.joined {
                buf.put_slice(&fragment);
            } else if let Some(prev) = self.first.take() {
                let cap = (header.body_size as usize)
                    .min(PREALLOC_CAP)
                    .max(prev.len() + fragment.len());
                let mut buf = BytesMut::with_capacity(cap);
                buf.put_slice(&prev);
                buf.put_slice(&fragment);
                self.joined = Some(buf);
            } else {
                self.first = Some(fragment);
            }
            if self.remaining > 0 {
                return Ok(None);
            }
            match (self.joined.take(), self.first.take()) {
                (Some(buf), _) => buf.freeze(),
                (None, Some(b)) => b,
                (None, None) => Bytes::new(),
            }
        };
        let (Some(method), Some(header)) = (self.method.take(), self.header.take()) else {
            unreachable!("state checked above")
        };
        Ok(Some(Assembled::Content { method, header, body }))
    }
}
