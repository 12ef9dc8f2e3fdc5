//! The store adapter of stream queues: a stream's log in the store (append, readers, retention, stored
//! consumer offsets) and the conversion of what a reader returns into a delivery's message, with its offset
//! in the `x-stream-offset` header as RabbitMQ delivers it.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use protocol::{FieldValue, RawProperties, ShortStr};
use storage::{
    MessageParts, ReadOutcome, Store, StoreError, StreamReader, StreamRecord, StreamStart, StreamStats,
};

use crate::message::Message;

/// A stream queue's log in the store.
#[derive(Clone)]
pub struct StreamStore {
    store: Store,
    id: u32,
    vhost: Arc<str>,
    name: Arc<str>,
}

impl StreamStore {
    pub fn new(store: Store, id: u32, vhost: Arc<str>, name: Arc<str>) -> StreamStore {
        StreamStore {
            store,
            id,
            vhost,
            name,
        }
    }

    /// Appends a message published at `now`; returns (its offset, the ticket its confirm waits for).
    pub fn append(
        &self,
        msg: &Message,
        now: u64,
        filter: Option<&[u8]>,
        max_segment_bytes: u64,
    ) -> Result<(u64, u64), StoreError> {
        let record = MessageParts {
            exchange: msg.exchange.as_str(),
            routing_key: msg.routing_key.as_str(),
            // as delivered (without BCC, RabbitMQ's sender-selected distribution): a stream is never re-routed
            properties: msg.properties.as_bytes(),
            body: &msg.body,
            delivery_count: 0,
            published_at_ms: now,
            expires_at_ms: None,
            not_before_ms: None,
        };
        self.store
            .stream_append_parts(self.id, now, filter, &record, max_segment_bytes)
    }

    pub fn reader(&self, start: StreamStart) -> Result<StreamReader, StoreError> {
        self.store.stream_reader(self.id, start)
    }

    pub fn read(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        emit: &mut dyn FnMut(StreamRecord<'_>),
    ) -> Result<ReadOutcome, StoreError> {
        self.store.stream_read_with(r, max, scan_max, accept, emit)
    }

    pub fn stats(&self) -> StreamStats {
        self.store.stream_stats(self.id)
    }

    pub fn retain(&self, max_bytes: Option<u64>, min_ts: Option<u64>) {
        match self.store.stream_retain(self.id, max_bytes, min_ts) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(stream = %self.name, segments = n, "retention dropped segments"),
            Err(e) => tracing::error!(stream = %self.name, error = %e, "stream retention failed"),
        }
    }

    /// Server-side offset tracking: consumer `tag` acked up to `offset` (durable after the next round).
    pub fn store_offset(&self, tag: &str, offset: u64) {
        if let Err(e) = self.store.stream_store_offset(self.id, tag, offset) {
            tracing::error!(stream = %self.name, error = %e, "storing a consumer offset failed");
        }
    }

    pub fn stored_offset(&self, tag: &str) -> Option<u64> {
        match self.store.stream_offset(self.id, tag) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(stream = %self.name, error = %e, "reading a consumer offset failed");
                None
            }
        }
    }

    /// Removes the stream's record, log and offsets.
    pub fn delete(&self) {
        if let Err(e) = self.store.delete_stream(&self.vhost, &self.name, self.id) {
            tracing::error!(stream = %self.name, error = %e, "store stream delete failed");
        }
    }
}

/// The message a stream delivers: as published, with `x-stream-offset` (a long, as RabbitMQ) in its
/// headers. Built with one allocation: exchange, routing key, properties (the header spliced into the raw
/// table, nothing decoded) and body are slices of one buffer.
pub fn stream_message(rec: StreamRecord<'_>) -> Message {
    let m = rec.message;
    let props = m.properties;
    let Some(splice) = offset_splice(props) else {
        return stream_message_slow(m, rec.offset);
    };
    let (ex, rk) = (m.exchange.as_bytes(), m.routing_key.as_bytes());
    let mut buf = BytesMut::with_capacity(ex.len() + rk.len() + props.len() + ENTRY_LEN + 4 + m.body.len());
    buf.put_slice(ex);
    buf.put_slice(rk);
    let props_at = buf.len();
    put_spliced(&mut buf, props, &splice, rec.offset);
    let body_at = buf.len();
    buf.put_slice(m.body);
    let buf = buf.freeze();
    let exchange = ShortStr::from_utf8(buf.slice(..ex.len())).unwrap_or_default();
    let routing_key = ShortStr::from_utf8(buf.slice(ex.len()..props_at)).unwrap_or_default();
    let props = RawProperties::from_bytes(buf.slice(props_at..body_at));
    Message::new(exchange, routing_key, props, buf.slice(body_at..))
}

/// Writes `props` with the `x-stream-offset` entry spliced in where `splice` says: the flags word (with the
/// headers bit), the fields before the table, the table's new length, its entries, the offset's entry, the
/// fields after it.
fn put_spliced(buf: &mut BytesMut, props: &[u8], splice: &Splice, offset: u64) {
    buf.put_u16(splice.flags);
    buf.put_slice(&props[2..splice.table_at]);
    let entry = |b: &mut BytesMut| {
        b.put_u8(OFFSET_HEADER.len() as u8);
        b.put_slice(OFFSET_HEADER);
        b.put_u8(b'l');
        b.put_i64(offset as i64);
    };
    match splice.table_len {
        Some(n) => {
            buf.put_u32(n + ENTRY_LEN as u32);
            let start = splice.table_at + 4;
            buf.put_slice(&props[start..start + n as usize]);
            entry(buf);
            buf.put_slice(&props[start + n as usize..]);
        }
        None => {
            buf.put_u32(ENTRY_LEN as u32);
            entry(buf);
            buf.put_slice(&props[splice.table_at..]);
        }
    }
}

/// Writes the delivery of `rec` (basic.deliver, then its content with `x-stream-offset` spliced into the
/// stored properties, then the body) straight into a connection's output buffer: nothing is allocated or
/// decoded, and the body is copied once, from the reader's block into `out`. False, with nothing written,
/// when the splice does not apply (`stream_message` then builds the message the general way).
pub fn write_delivery(
    out: &mut BytesMut,
    frame_max: u32,
    channel: u16,
    consumer_tag: &ShortStr,
    delivery_tag: u64,
    rec: &StreamRecord<'_>,
) -> bool {
    let m = &rec.message;
    let Some(splice) = offset_splice(m.properties) else {
        return false;
    };
    protocol::write_basic_deliver(
        out,
        channel,
        consumer_tag.as_bytes(),
        delivery_tag,
        false,
        m.exchange.as_bytes(),
        m.routing_key.as_bytes(),
    );
    protocol::write_content_with(out, channel, protocol::CLASS_BASIC, m.body, frame_max, |b| {
        put_spliced(b, m.properties, &splice, rec.offset)
    });
    true
}

const OFFSET_HEADER: &[u8] = b"x-stream-offset";
/// The header's table entry: key (short string), type code `l`, the i64.
const ENTRY_LEN: usize = 1 + OFFSET_HEADER.len() + 1 + 8;
const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;

/// Where the `x-stream-offset` entry goes in raw properties.
struct Splice {
    /// The flags word with the headers bit set.
    flags: u16,
    /// Position of the headers table (or where it goes).
    table_at: usize,
    /// Its length, if present.
    table_len: Option<u32>,
}

/// Where to add the header to `props`, or None when the fast splice does not apply: more than one flags
/// word, malformed bytes, or a table that already has an `x-stream-offset` (the slow path replaces it).
fn offset_splice(props: &[u8]) -> Option<Splice> {
    let flags = u16::from_be_bytes([*props.first()?, *props.get(1)?]);
    if flags & 1 != 0 {
        return None;
    }
    let mut pos = 2;
    for bit in [FLAG_CONTENT_TYPE, FLAG_CONTENT_ENCODING] {
        if flags & bit != 0 {
            pos += 1 + *props.get(pos)? as usize;
        }
    }
    if pos > props.len() {
        return None;
    }
    if flags & FLAG_HEADERS == 0 {
        return Some(Splice {
            flags: flags | FLAG_HEADERS,
            table_at: pos,
            table_len: None,
        });
    }
    let n = u32::from_be_bytes(props.get(pos..pos + 4)?.try_into().ok()?);
    let table = props.get(pos + 4..(pos + 4).checked_add(n as usize)?)?;
    if table_has_key(table, OFFSET_HEADER)? {
        return None;
    }
    Some(Splice {
        flags,
        table_at: pos,
        table_len: Some(n),
    })
}

/// Whether a raw field table (without its length) has a top-level entry `key`; None if malformed.
fn table_has_key(table: &[u8], key: &[u8]) -> Option<bool> {
    let mut pos = 0;
    while pos < table.len() {
        let n = *table.get(pos)? as usize;
        let k = table.get(pos + 1..pos + 1 + n)?;
        if k == key {
            return Some(true);
        }
        pos += 1 + n;
        let code = *table.get(pos)?;
        pos += 1;
        let len = match code {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' | b'A' | b'F' => {
                let n = u32::from_be_bytes(table.get(pos..pos + 4)?.try_into().ok()?) as usize;
                pos += 4;
                n
            }
            _ => return None,
        };
        pos = pos.checked_add(len)?;
    }
    (pos == table.len()).then_some(false)
}

/// The general case: the headers decoded, the offset set, the properties encoded again.
fn stream_message_slow(m: MessageParts<'_>, offset: u64) -> Message {
    let exchange = ShortStr::try_from_str(m.exchange).unwrap_or_default();
    let routing_key = ShortStr::try_from_str(m.routing_key).unwrap_or_default();
    let raw = RawProperties::from_bytes(Bytes::copy_from_slice(m.properties));
    let mut headers = raw.headers().ok().flatten().unwrap_or_default();
    headers.insert("x-stream-offset", FieldValue::I64(offset as i64));
    let props = raw.with_headers(headers).unwrap_or(raw);
    Message::new(exchange, routing_key, props, Bytes::copy_from_slice(m.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BasicProperties, FieldTable};

    fn parts(props: &[u8]) -> MessageParts<'_> {
        MessageParts {
            exchange: "ex",
            routing_key: "rk",
            properties: props,
            body: b"body",
            delivery_count: 0,
            published_at_ms: 1,
            expires_at_ms: None,
            not_before_ms: None,
        }
    }

    fn deliver(props: &RawProperties, offset: u64) -> Message {
        stream_message(StreamRecord {
            offset,
            timestamp_ms: 1,
            message: parts(props.as_bytes()),
        })
    }

    /// The spliced properties decode to the published ones plus `x-stream-offset`, whatever the publisher
    /// set around the headers (the fast path), and the slow path gives the same for what it handles.
    #[test]
    fn the_offset_header_is_spliced_into_the_raw_properties() {
        let mut h = FieldTable::new();
        h.insert("a", FieldValue::LongStr("x".into()));
        h.insert("n", FieldValue::I32(7));
        let cases = [
            BasicProperties::default(),
            BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            BasicProperties {
                content_type: Some("text/plain".into()),
                content_encoding: Some("gzip".into()),
                priority: Some(3),
                message_id: Some("m-1".into()),
                ..Default::default()
            },
            BasicProperties {
                content_type: Some("application/json".into()),
                headers: Some(h.clone()),
                correlation_id: Some("c".into()),
                ..Default::default()
            },
            BasicProperties {
                headers: Some(FieldTable::new()),
                ..Default::default()
            },
        ];
        for (i, p) in cases.iter().enumerate() {
            let raw = RawProperties::from_properties(p);
            assert!(
                offset_splice(raw.as_bytes()).is_some(),
                "case {i} takes the fast path"
            );
            let m = deliver(&raw, 1234 + i as u64);
            assert_eq!((m.exchange.as_str(), m.routing_key.as_str()), ("ex", "rk"));
            assert_eq!(&m.body[..], b"body");
            let got = m.properties.decode().unwrap();
            let mut want = p.clone();
            let mut headers = want.headers.take().unwrap_or_default();
            headers.insert("x-stream-offset", FieldValue::I64(1234 + i as i64));
            want.headers = Some(headers);
            assert_eq!(got, want, "case {i}");
            let slow = stream_message_slow(parts(raw.as_bytes()), 1234 + i as u64);
            assert_eq!(slow.properties.decode().unwrap(), want, "case {i}, slow path");
        }
    }

    /// A publisher's own `x-stream-offset` is replaced (the slow path), not kept beside the broker's.
    #[test]
    fn a_published_offset_header_is_replaced() {
        let mut h = FieldTable::new();
        h.insert("x-stream-offset", FieldValue::LongStr("mine".into()));
        h.insert("b", FieldValue::Bool(true));
        let raw = RawProperties::from_properties(&BasicProperties {
            headers: Some(h),
            ..Default::default()
        });
        assert!(offset_splice(raw.as_bytes()).is_none());
        let headers = deliver(&raw, 9).properties.headers().unwrap().unwrap();
        assert_eq!(headers.get("x-stream-offset"), Some(&FieldValue::I64(9)));
        assert_eq!(headers.get("b"), Some(&FieldValue::Bool(true)));
    }

    /// `write_delivery` writes the frames that delivering `stream_message`'s message writes, body frames
    /// cut at frame_max included; where the splice does not apply it writes nothing.
    #[test]
    fn written_deliveries_are_the_frames_of_the_built_message() {
        let mut h = FieldTable::new();
        h.insert("a", FieldValue::LongStr("x".into()));
        let cases = [
            BasicProperties::default(),
            BasicProperties {
                content_type: Some("application/json".into()),
                headers: Some(h),
                delivery_mode: Some(2),
                ..Default::default()
            },
        ];
        let body = vec![5u8; 10_000];
        let tag = ShortStr::from("ctag");
        for p in &cases {
            let raw = RawProperties::from_properties(p);
            let rec = StreamRecord {
                offset: 77,
                timestamp_ms: 1,
                message: MessageParts {
                    body: &body,
                    ..parts(raw.as_bytes())
                },
            };
            let mut got = BytesMut::new();
            assert!(write_delivery(&mut got, 4096, 3, &tag, 9, &rec));
            let m = stream_message(rec);
            let mut want = BytesMut::new();
            let deliver = protocol::BasicDeliver {
                consumer_tag: tag.clone(),
                delivery_tag: 9,
                redelivered: false,
                exchange: m.exchange.clone(),
                routing_key: m.routing_key.clone(),
            };
            protocol::write_method(&mut want, 3, &protocol::Method::BasicDeliver(deliver));
            protocol::write_content(&mut want, 3, 60, &m.properties, &m.body, 4096);
            assert_eq!(got, want);
        }
        let mut h = FieldTable::new();
        h.insert("x-stream-offset", FieldValue::I32(1));
        let raw = RawProperties::from_properties(&BasicProperties {
            headers: Some(h),
            ..Default::default()
        });
        let rec = StreamRecord {
            offset: 1,
            timestamp_ms: 1,
            message: parts(raw.as_bytes()),
        };
        let mut out = BytesMut::new();
        assert!(!write_delivery(&mut out, 4096, 3, &tag, 9, &rec));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_properties_do_not_take_the_fast_path() {
        assert!(offset_splice(&[]).is_none());
        assert!(
            offset_splice(&[0x80, 0]).is_none(),
            "content-type flag without its string"
        );
        assert!(
            offset_splice(&[0x20, 0, 0, 0, 0, 9]).is_none(),
            "headers longer than the buffer"
        );
        assert!(
            offset_splice(&[0x00, 0x01, 0, 0]).is_none(),
            "a second flags word"
        );
    }
}
