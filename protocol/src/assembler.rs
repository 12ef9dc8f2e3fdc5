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

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Header(Method),
    Body {
        method: Method,
        header: ContentHeader,
        remaining: u64,
        /// The first fragment, kept as-is so a one-frame body is zero-copy.
        first: Option<Bytes>,
        /// Joined fragments once a second one arrives.
        joined: Option<BytesMut>,
    },
}

/// Assembles the frames of one channel into commands. Pure state machine; one per channel.
#[derive(Debug)]
pub struct ContentAssembler {
    state: State,
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
            state: State::Idle,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }

    /// Sets the largest body_size accepted in a content header.
    pub fn set_max_body_size(&mut self, max: u64) {
        self.max_body_size = max;
    }

    /// True when a content-bearing method has arrived and its content header is due next.
    pub fn awaits_header(&self) -> bool {
        matches!(self.state, State::Header(_))
    }

    /// True when no command is in progress.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Drops any command in progress.
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// The content-bearing method in progress, if any.
    pub fn pending_method(&self) -> Option<&Method> {
        match &self.state {
            State::Idle => None,
            State::Header(m) => Some(m),
            State::Body { method, .. } => Some(method),
        }
    }

    /// Feeds a method frame. A method without content comes straight back; one with
    /// content starts assembly (returns `None`).
    pub fn push_method(&mut self, method: Method) -> Result<Option<Assembled>, ProtocolError> {
        match &self.state {
            State::Idle => {}
            State::Header(m) => return Err(unexpected(expected_header(m.class_id()), Some(m))),
            State::Body { method: m, .. } => return Err(unexpected(EXPECTED_BODY.to_string(), Some(m))),
        }
        if method.has_content() {
            self.state = State::Header(method);
            Ok(None)
        } else {
            Ok(Some(Assembled::Method(method)))
        }
    }

    /// Feeds a content header frame. A body_size of 0 completes the command.
    pub fn push_header(&mut self, header: ContentHeader) -> Result<Option<Assembled>, ProtocolError> {
        let method = match std::mem::take(&mut self.state) {
            State::Header(m) => m,
            State::Idle => return Err(unexpected(EXPECTED_METHOD.to_string(), None)),
            s @ State::Body { .. } => {
                self.state = s;
                let m = self.pending_method();
                return Err(unexpected(EXPECTED_BODY.to_string(), m));
            }
        };
        let class_id = method.class_id();
        let fail = |e: ProtocolError, m: &Method| e.in_method(m.class_id(), m.method_id());
        if header.weight != 0 {
            let e = unexpected(expected_header(class_id), Some(&method));
            self.state = State::Header(method);
            return Err(e);
        }
        if header.class_id != class_id {
            let e = unexpected(
                format!(
                    "expected content header for class {class_id}, got one for class {} instead",
                    header.class_id
                ),
                Some(&method),
            );
            self.state = State::Header(method);
            return Err(e);
        }
        if header.body_size > self.max_body_size {
            let e = fail(
                ProtocolError::BodyTooLarge {
                    size: header.body_size,
                    max: self.max_body_size,
                },
                &method,
            );
            self.state = State::Header(method);
            return Err(e);
        }
        if header.body_size == 0 {
            return Ok(Some(Assembled::Content {
                method,
                header,
                body: Bytes::new(),
            }));
        }
        self.state = State::Body {
            method,
            remaining: header.body_size,
            header,
            first: None,
            joined: None,
        };
        Ok(None)
    }

    /// Feeds a body frame; completes the command when body_size bytes have arrived.
    pub fn push_body(&mut self, fragment: Bytes) -> Result<Option<Assembled>, ProtocolError> {
        let State::Body {
            method,
            remaining,
            first,
            joined,
            header,
        } = &mut self.state
        else {
            return match &self.state {
                State::Header(m) => Err(unexpected(expected_header(m.class_id()), Some(m))),
                _ => Err(unexpected(EXPECTED_METHOD.to_string(), None)),
            };
        };
        let len = fragment.len() as u64;
        if len > *remaining {
            return Err(ProtocolError::BodyOverrun.in_method(method.class_id(), method.method_id()));
        }
        *remaining -= len;
        if let Some(buf) = joined {
            buf.put_slice(&fragment);
        } else if let Some(prev) = first.take() {
            let cap = (header.body_size as usize)
                .min(PREALLOC_CAP)
                .max(prev.len() + fragment.len());
            let mut buf = BytesMut::with_capacity(cap);
            buf.put_slice(&prev);
            buf.put_slice(&fragment);
            *joined = Some(buf);
        } else {
            *first = Some(fragment);
        }
        if *remaining > 0 {
            return Ok(None);
        }
        let State::Body {
            method,
            header,
            first,
            joined,
            ..
        } = std::mem::take(&mut self.state)
        else {
            unreachable!("state checked above")
        };
        let body = match (joined, first) {
            (Some(buf), _) => buf.freeze(),
            (None, Some(b)) => b,
            (None, None) => Bytes::new(),
        };
        Ok(Some(Assembled::Content { method, header, body }))
    }
}
