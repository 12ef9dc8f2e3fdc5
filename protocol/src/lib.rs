//! AMQP 0-9-1 wire protocol for Mailroom: frame codec, method types, field tables,
//! content properties and per-channel content assembly.
//!
//! Pure code: no I/O, no storage. Decoding is zero-copy where it matters (short
//! strings and bodies are slices of the read buffer) and never panics on any input;
//! every error carries the reply code and text RabbitMQ would close with.

#![deny(missing_docs)]

pub use bytes;

mod assembler;
mod error;
mod frame;
mod method;
mod methods;
mod properties;
pub mod reply;
mod table;
mod types;
mod wire;

pub use assembler::{Assembled, ContentAssembler, DEFAULT_MAX_BODY_SIZE};
pub use error::ProtocolError;
pub use frame::{
    write_basic_deliver, write_content, write_content_with, write_heartbeat, write_method,
    write_method_with_content, ContentHeader, Frame, FrameCodec, FRAME_HEADER_SIZE, FRAME_OVERHEAD,
};
pub use methods::*;
pub use properties::{BasicProperties, RawHeaders, RawProperties};
pub use table::{FieldTable, FieldValue, MAX_NESTING_DEPTH};
pub use types::{LongStr, ShortStr};

/// Frame type: method.
pub const FRAME_METHOD: u8 = 1;
/// Frame type: content header.
pub const FRAME_HEADER: u8 = 2;
/// Frame type: content body.
pub const FRAME_BODY: u8 = 3;
/// Frame type: heartbeat.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame_max a peer may negotiate (whole frame, overhead included).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header a 0-9-1 client sends first (and the server answers a wrong one with).
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Class id of the basic class (the only class with content in 0-9-1).
pub const CLASS_BASIC: u16 = 60;
