//! Message value layout:
//!
//! ```text
//! [meta_len u32 BE][postcard MessageMeta (meta_len bytes)][properties (properties_len bytes)][body ..]
//! ```
//!
//! Properties and body are raw bytes after the postcard header. The message log (`seglog`) stores
//! this value as a record's payload; reading copies the payload once into a `Bytes` and hands out
//! properties and body as slices of it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{StoreError, StoredMessage};

#[derive(Serialize, Deserialize)]
struct MessageMeta<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    published_at_ms: u64,
    expires_at_ms: Option<u64>,
    not_before_ms: Option<u64>,
    delivery_count: u32,
    properties_len: u32,
}

/// A message's parts, borrowed: what a stream record holds, written and read without building a
/// `StoredMessage` (no allocation per message on either side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageParts<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Raw AMQP content-header property bytes.
    pub properties: &'a [u8],
    pub body: &'a [u8],
    pub delivery_count: u32,
    pub published_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub not_before_ms: Option<u64>,
}

impl<'a> MessageParts<'a> {
    pub fn of(msg: &'a StoredMessage) -> MessageParts<'a> {
        MessageParts {
            exchange: &msg.exchange,
            routing_key: &msg.routing_key,
            properties: &msg.properties,
            body: &msg.body,
            delivery_count: msg.delivery_count,
            published_at_ms: msg.published_at_ms,
            expires_at_ms: msg.expires_at_ms,
            not_before_ms: msg.not_before_ms,
        }
    }
}

/// Appends the encoded message to `v`.
pub(crate) fn encode_message_into(v: &mut Vec<u8>, msg: &StoredMessage) -> Result<(), StoreError> {
    encode_parts_into(v, &MessageParts::of(msg))
}

/// Appends the encoded message to `v`. The header is encoded on the stack (a short exchange and
/// routing key always fit; longer ones take one allocation).
pub(crate) fn encode_parts_into(v: &mut Vec<u8>, msg: &MessageParts<'_>) -> Result<(), StoreError> {
    let properties_len = u32::try_from(msg.properties.len())
        .map_err(|_| StoreError::Corrupt("message properties longer than 4 GiB".into()))?;
    let meta = MessageMeta {
        exchange: msg.exchange,
        routing_key: msg.routing_key,
        published_at_ms: msg.published_at_ms,
        expires_at_ms: msg.expires_at_ms,
        not_before_ms: msg.not_before_ms,
        delivery_count: msg.delivery_count,
        properties_len,
    };
    let mut stack = [0u8; 640];
    let heap;
    let meta: &[u8] = match postcard::to_slice(&meta, &mut stack) {
        Ok(m) => m,
        Err(_) => {
            heap = postcard::to_allocvec(&meta).map_err(encode_err)?;
            &heap
        }
    };
    v.reserve(4 + meta.len() + msg.properties.len() + msg.body.len());
    v.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    v.extend_from_slice(meta);
    v.extend_from_slice(msg.properties);
    v.extend_from_slice(msg.body);
    Ok(())
}

/// The parts of an encoded message, borrowed from `bytes` (no allocation).
pub(crate) fn decode_parts(bytes: &[u8]) -> Result<MessageParts<'_>, StoreError> {
    if bytes.len() < 4 {
        return Err(StoreError::Corrupt(
            "message value shorter than its header".into(),
        ));
    }
    let meta_len = crate::be::u32_at(bytes, 0) as usize;
    let meta_end = 4usize
        .checked_add(meta_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("message header length out of range".into()))?;
    let meta: MessageMeta<'_> = postcard::from_bytes(&bytes[4..meta_end])
        .map_err(|e| StoreError::Corrupt(format!("message header: {e}")))?;
    let props_end = meta_end
        .checked_add(meta.properties_len as usize)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("message properties length out of range".into()))?;
    Ok(MessageParts {
        exchange: meta.exchange,
        routing_key: meta.routing_key,
        properties: &bytes[meta_end..props_end],
        body: &bytes[props_end..],
        delivery_count: meta.delivery_count,
        published_at_ms: meta.published_at_ms,
        expires_at_ms: meta.expires_at_ms,
        not_before_ms: meta.not_before_ms,
    })
}

pub(crate) fn decode_message(bytes: Bytes) -> Result<StoredMessage, StoreError> {
    if bytes.len() < 4 {
        return Err(StoreError::Corrupt(
            "message value shorter than its header".into(),
        ));
    }
    let meta_len = crate::be::u32_at(&bytes, 0) as usize;
    let meta_end = 4usize
        .checked_add(meta_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("message header length out of range".into()))?;
    let meta: MessageMeta<'_> = postcard::from_bytes(&bytes[4..meta_end])
        .map_err(|e| StoreError::Corrupt(format!("message header: {e}")))?;
    let props_end = meta_end
        .checked_add(meta.properties_len as usize)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| StoreError::Corrupt("message properties length out of range".into()))?;
    Ok(StoredMessage {
        exchange: meta.exchange.to_owned(),
        routing_key: meta.routing_key.to_owned(),
        properties: bytes.slice(meta_end..props_end),
        body: bytes.slice(props_end..),
        delivery_count: meta.delivery_count,
        published_at_ms: meta.published_at_ms,
        expires_at_ms: meta.expires_at_ms,
        not_before_ms: meta.not_before_ms,
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(encode_err)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(what: &str, v: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|e| StoreError::Corrupt(format!("{what} record: {e}")))
}

fn encode_err(e: postcard::Error) -> StoreError {
    StoreError::Corrupt(format!("encoding failed: {e}"))
}
