//! Basic-class content properties: decoded ([`BasicProperties`]) and raw ([`RawProperties`]).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::table::FieldTable;
use crate::types::ShortStr;
use crate::wire::{self, SliceCursor};

/// The properties of a basic-class content (message), decoded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<ShortStr>,
    /// MIME content encoding.
    pub content_encoding: Option<ShortStr>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority 0-9.
    pub priority: Option<u8>,
    /// Application correlation identifier.
    pub correlation_id: Option<ShortStr>,
    /// Address to reply to.
    pub reply_to: Option<ShortStr>,
    /// Message TTL in milliseconds, as a decimal string.
    pub expiration: Option<ShortStr>,
    /// Application message identifier.
    pub message_id: Option<ShortStr>,
    /// Message timestamp (seconds).
    pub timestamp: Option<u64>,
    /// Message type name (the `type` property).
    pub kind: Option<ShortStr>,
    /// Creating user id.
    pub user_id: Option<ShortStr>,
    /// Creating application id.
    pub app_id: Option<ShortStr>,
    /// Intra-cluster routing identifier (deprecated).
    pub cluster_id: Option<ShortStr>,
}

/// Property indexes in wire order; property `i` has flag bit `15 - i`.
mod idx {
    pub const CONTENT_TYPE: usize = 0;
    pub const CONTENT_ENCODING: usize = 1;
    pub const HEADERS: usize = 2;
    pub const DELIVERY_MODE: usize = 3;
    pub const PRIORITY: usize = 4;
    pub const CORRELATION_ID: usize = 5;
    pub const REPLY_TO: usize = 6;
    pub const EXPIRATION: usize = 7;
    pub const MESSAGE_ID: usize = 8;
    pub const TIMESTAMP: usize = 9;
    pub const TYPE: usize = 10;
    pub const USER_ID: usize = 11;
    pub const APP_ID: usize = 12;
    pub const CLUSTER_ID: usize = 13;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Short,
    Table,
    Octet,
    Timestamp,
}

const KINDS: [Kind; 14] = [
    Kind::Short,
    Kind::Short,
    Kind::Table,
    Kind::Octet,
    Kind::Octet,
    Kind::Short,
    Kind::Short,
    Kind::Short,
    Kind::Short,
    Kind::Timestamp,
    Kind::Short,
    Kind::Short,
    Kind::Short,
    Kind::Short,
];

#[inline]
const fn flag(i: usize) -> u16 {
    1 << (15 - i)
}

/// Steps over one encoded property of `kind`; `None` if the buffer ends inside it.
#[inline]
fn skip(cur: &mut SliceCursor<'_>, kind: Kind) -> Option<()> {
    match kind {
        Kind::Short => {
            let n = cur.u8()? as usize;
            cur.take(n)?;
        }
        Kind::Table => {
            let n = cur.u32()? as usize;
            cur.take(n)?;
        }
        Kind::Octet => {
            cur.take(1)?;
        }
        Kind::Timestamp => {
            cur.take(8)?;
        }
    }
    Some(())
}

impl BasicProperties {
    /// The property flags word for the present properties.
    pub fn flags(&self) -> u16 {
        let present = [
            self.content_type.is_some(),
            self.content_encoding.is_some(),
            self.headers.is_some(),
            self.delivery_mode.is_some(),
            self.priority.is_some(),
            self.correlation_id.is_some(),
            self.reply_to.is_some(),
            self.expiration.is_some(),
            self.message_id.is_some(),
            self.timestamp.is_some(),
            self.kind.is_some(),
            self.user_id.is_some(),
            self.app_id.is_some(),
            self.cluster_id.is_some(),
        ];
        present
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .fold(0, |acc, (i, _)| acc | flag(i))
    }

    /// Writes the property flags and the property list (as in a content header frame,
    /// after class id, weight and body size).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.flags());
        let short = |dst: &mut BytesMut, s: &Option<ShortStr>| {
            if let Some(s) = s {
                s.encode(dst);
            }
        };
        short(dst, &self.content_type);
        short(dst, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(dst);
        }
        if let Some(v) = self.delivery_mode {
            dst.put_u8(v);
        }
        if let Some(v) = self.priority {
            dst.put_u8(v);
        }
        short(dst, &self.correlation_id);
        short(dst, &self.reply_to);
        short(dst, &self.expiration);
        short(dst, &self.message_id);
        if let Some(v) = self.timestamp {
            dst.put_u64(v);
        }
        short(dst, &self.kind);
        short(dst, &self.user_id);
        short(dst, &self.app_id);
        short(dst, &self.cluster_id);
    }

    /// Decodes property flags and list. Strings and header values slice `src` (no copy).
    /// Extra flag words (continuation bit) are skipped; trailing bytes are ignored.
    pub fn decode(mut src: Bytes) -> Result<BasicProperties, ProtocolError> {
        let flags = wire::get_u16(&mut src)?;
        let mut more = flags & 1 != 0;
        while more {
            more = wire::get_u16(&mut src)? & 1 != 0;
        }
        let has = |i: usize| flags & flag(i) != 0;
        let src = &mut src;
        let short = |src: &mut Bytes, i: usize| -> Result<Option<ShortStr>, ProtocolError> {
            if has(i) {
                ShortStr::decode(src).map(Some)
            } else {
                Ok(None)
            }
        };
        let content_type = short(src, idx::CONTENT_TYPE)?;
        let content_encoding = short(src, idx::CONTENT_ENCODING)?;
        let headers = if has(idx::HEADERS) {
            Some(FieldTable::decode(src)?)
        } else {
            None
        };
        let delivery_mode = if has(idx::DELIVERY_MODE) {
            Some(wire::get_u8(src)?)
        } else {
            None
        };
        let priority = if has(idx::PRIORITY) {
            Some(wire::get_u8(src)?)
        } else {
            None
        };
        let correlation_id = short(src, idx::CORRELATION_ID)?;
        let reply_to = short(src, idx::REPLY_TO)?;
        let expiration = short(src, idx::EXPIRATION)?;
        let message_id = short(src, idx::MESSAGE_ID)?;
        let timestamp = if has(idx::TIMESTAMP) {
            Some(wire::get_u64(src)?)
        } else {
            None
        };
        let kind = short(src, idx::TYPE)?;
        let user_id = short(src, idx::USER_ID)?;
        let app_id = short(src, idx::APP_ID)?;
        let cluster_id = short(src, idx::CLUSTER_ID)?;
        Ok(BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        })
    }
}

/// Property flags and property list exactly as received in a content header, kept
/// undecoded until someone needs them. The accessors walk the flags and skip fields
/// without allocating; [`RawProperties::decode`] builds a [`BasicProperties`].
///
/// An empty buffer is read as "no properties".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawProperties(Bytes);

impl Default for RawProperties {
    fn default() -> Self {
        RawProperties::empty()
    }
}

/// Where a property sits in the raw buffer.
enum Slot {
    /// Present: byte range of the encoded field (length prefix included).
    Present(usize, usize),
    /// Absent: the offset where it would be inserted.
    Absent(usize),
}

impl RawProperties {
    /// No properties (flags word 0).
    pub fn empty() -> RawProperties {
        RawProperties(Bytes::from_static(&[0, 0]))
    }

    /// Wraps raw bytes (flags + list) without checking them.
    pub fn from_bytes(bytes: Bytes) -> RawProperties {
        RawProperties(bytes)
    }

    /// Encodes `props`.
    pub fn from_properties(props: &BasicProperties) -> RawProperties {
        let mut buf = BytesMut::with_capacity(64);
        props.encode(&mut buf);
        RawProperties(buf.freeze())
    }

    /// Decodes every property.
    pub fn decode(&self) -> Result<BasicProperties, ProtocolError> {
        if self.0.is_empty() {
            return Ok(BasicProperties::default());
        }
        BasicProperties::decode(self.0.clone())
    }

    /// The raw bytes (flags + list).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The raw bytes as `Bytes` (cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the buffer is empty (which reads as no properties).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first flags word (0 for an empty or truncated buffer).
    pub fn flags(&self) -> u16 {
        match self.0.get(..2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// Finds property `i`; `None` when the buffer is malformed before or at it.
    fn locate(&self, i: usize) -> Option<Slot> {
        if self.0.is_empty() {
            return Some(Slot::Absent(0));
        }
        let mut cur = SliceCursor::new(&self.0);
        let flags = cur.u16()?;
        let mut more = flags & 1 != 0;
        while more {
            more = cur.u16()? & 1 != 0;
        }
        // Walk only the properties present before `i` (set bits, highest first), then `i` itself.
        let mut before = flags & !(u16::MAX >> i);
        while before != 0 {
            let j = before.leading_zeros() as usize;
            before &= !flag(j);
            skip(&mut cur, KINDS[j])?;
        }
        if flags & flag(i) == 0 {
            return Some(Slot::Absent(cur.pos));
        }
        let start = cur.pos;
        skip(&mut cur, KINDS[i])?;
        Some(Slot::Present(start, cur.pos))
    }

    fn field(&self, i: usize) -> Option<&[u8]> {
        // An absent property reads as `None` whatever the buffer holds after the flags: no walk. Most
        // accessors on the publish path (expiration, user id, priority) ask for properties a message
        // does not carry.
        if self.flags() & flag(i) == 0 {
            return None;
        }
        match self.locate(i)? {
            Slot::Present(s, e) => self.0.get(s..e),
            Slot::Absent(_) => None,
        }
    }

    fn short(&self, i: usize) -> Option<&str> {
        let f = self.field(i)?;
        std::str::from_utf8(f.get(1..)?).ok()
    }

    /// delivery-mode (2 = persistent), if present and the buffer is well-formed up to it.
    pub fn delivery_mode(&self) -> Option<u8> {
        self.field(idx::DELIVERY_MODE).map(|f| f[0])
    }

    /// True when delivery-mode is 2.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode() == Some(2)
    }

    /// priority, if present.
    pub fn priority(&self) -> Option<u8> {
        self.field(idx::PRIORITY).map(|f| f[0])
    }

    /// expiration (per-message TTL in ms as a string), if present and valid UTF-8.
    pub fn expiration(&self) -> Option<&str> {
        self.short(idx::EXPIRATION)
    }

    /// user-id, if present and valid UTF-8.
    pub fn user_id(&self) -> Option<&str> {
        self.short(idx::USER_ID)
    }

    /// content-type, if present and valid UTF-8.
    pub fn content_type(&self) -> Option<&str> {
        self.short(idx::CONTENT_TYPE)
    }

    /// correlation-id, if present and valid UTF-8.
    pub fn correlation_id(&self) -> Option<&str> {
        self.short(idx::CORRELATION_ID)
    }

    /// reply-to, if present and valid UTF-8.
    pub fn reply_to(&self) -> Option<&str> {
        self.short(idx::REPLY_TO)
    }

    /// message-id, if present and valid UTF-8.
    pub fn message_id(&self) -> Option<&str> {
        self.short(idx::MESSAGE_ID)
    }

    /// timestamp, if present.
    pub fn timestamp(&self) -> Option<u64> {
        let f = self.field(idx::TIMESTAMP)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(f);
        Some(u64::from_be_bytes(a))
    }

    /// True when the reply-to flag is set (a flags check, no walk).
    pub fn has_reply_to(&self) -> bool {
        self.flags() & flag(idx::REPLY_TO) != 0
    }

    /// True when the headers flag is set.
    pub fn has_headers(&self) -> bool {
        self.flags() & flag(idx::HEADERS) != 0
    }

    /// True when the headers table has a top-level entry named one of `keys`. Walks the raw
    /// bytes without allocating; false when there are no headers or they are malformed.
    pub fn headers_contain_any(&self, keys: &[&str]) -> bool {
        if !self.has_headers() {
            return false;
        }
        let Some(Slot::Present(s, e)) = self.locate(idx::HEADERS) else {
            return false;
        };
        let Some(table) = self.0.get(s..e) else {
            return false;
        };
        let mut cur = SliceCursor::new(table);
        if cur.u32().is_none() {
            return false;
        }
        while cur.pos < table.len() {
            let Some(n) = cur.u8() else { return false };
            let Some(key) = cur.take(n as usize) else {
                return false;
            };
            if keys.iter().any(|k| k.as_bytes() == key) {
                return true;
            }
            let Some(code) = cur.u8() else { return false };
            let skip = match code {
                b't' | b'b' | b'B' => Some(1),
                b's' | b'u' => Some(2),
                b'I' | b'i' | b'f' => Some(4),
                b'l' | b'L' | b'd' | b'T' => Some(8),
                b'D' => Some(5),
                b'V' => Some(0),
                b'S' | b'x' | b'A' | b'F' => cur.u32().map(|n| n as usize),
                _ => None,
            };
            match skip {
                Some(n) if cur.take(n).is_some() => {}
                _ => return false,
            }
        }
        false
    }

    /// The raw value of top-level header `key`: its type code and its bytes (a long string's
    /// bytes without the length; an integer's big-endian bytes). Walks the raw bytes without
    /// allocating; None when absent, when there are no headers or they are malformed.
    pub fn raw_header(&self, key: &str) -> Option<(u8, &[u8])> {
        self.raw_headers()
            .find(|(k, _, _)| *k == key.as_bytes())
            .map(|(_, c, v)| (c, v))
    }

    /// The top-level header entries in table order, raw: `(key, type code, value bytes)` as
    /// [`RawProperties::raw_header`] gives them. Walks the raw bytes without allocating (one walk
    /// finds several keys); ends at the table's end or at the first malformed entry.
    pub fn raw_headers(&self) -> RawHeaders<'_> {
        let empty = RawHeaders {
            cur: SliceCursor::new(&[]),
        };
        if !self.has_headers() {
            return empty;
        }
        let Some(Slot::Present(s, e)) = self.locate(idx::HEADERS) else {
            return empty;
        };
        let Some(table) = self.0.get(s..e) else {
            return empty;
        };
        let mut cur = SliceCursor::new(table);
        if cur.u32().is_none() {
            return empty;
        }
        RawHeaders { cur }
    }

    /// A copy with the reply-to property set to `reply_to` (other properties kept byte for
    /// byte). Used by direct reply-to to give a request its reply address.
    pub fn with_reply_to(&self, reply_to: &ShortStr) -> Result<RawProperties, ProtocolError> {
        let base = if self.0.is_empty() {
            RawProperties::empty()
        } else {
            self.clone()
        };
        let (start, end) = match base.locate(idx::REPLY_TO).ok_or(wire::TRUNCATED)? {
            Slot::Present(s, e) => (s, e),
            Slot::Absent(at) => (at, at),
        };
        let mut buf = BytesMut::with_capacity(base.0.len() - (end - start) + 1 + reply_to.len());
        buf.put_slice(&base.0[..start]);
        let new_flags = base.flags() | flag(idx::REPLY_TO);
        buf[..2].copy_from_slice(&new_flags.to_be_bytes());
        reply_to.encode(&mut buf);
        buf.put_slice(&base.0[end..]);
        Ok(RawProperties(buf.freeze()))
    }

    /// Decodes the headers table (the only accessor that allocates, and only when the
    /// flag is set). Errors when the buffer is malformed up to and including the table.
    pub fn headers(&self) -> Result<Option<FieldTable>, ProtocolError> {
        match self.locate(idx::HEADERS) {
            None => Err(wire::TRUNCATED),
            Some(Slot::Absent(_)) => Ok(None),
            Some(Slot::Present(s, e)) => {
                let mut src = self.0.slice(s..e);
                FieldTable::decode(&mut src).map(Some)
            }
        }
    }

    /// A copy with the headers table replaced by `headers` (other properties kept
    /// byte for byte). Used to add `x-death` and similar.
    pub fn with_headers(&self, headers: FieldTable) -> Result<RawProperties, ProtocolError> {
        let base = if self.0.is_empty() {
            RawProperties::empty()
        } else {
            self.clone()
        };
        let (start, end) = match base.locate(idx::HEADERS).ok_or(wire::TRUNCATED)? {
            Slot::Present(s, e) => (s, e),
            Slot::Absent(at) => (at, at),
        };
        let mut buf = BytesMut::with_capacity(base.0.len() - (end - start) + headers.encoded_len());
        buf.put_slice(&base.0[..start]);
        let new_flags = base.flags() | flag(idx::HEADERS);
        buf[..2].copy_from_slice(&new_flags.to_be_bytes());
        headers.encode(&mut buf);
        buf.put_slice(&base.0[end..]);
        Ok(RawProperties(buf.freeze()))
    }

    /// Checks that the flags and every present property are well-formed (strings
    /// UTF-8, headers a valid table) without keeping the result.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        self.decode().map(|_| ())
    }
}

impl From<&BasicProperties> for RawProperties {
    fn from(p: &BasicProperties) -> Self {
        RawProperties::from_properties(p)
    }
}

impl From<BasicProperties> for RawProperties {
    fn from(p: BasicProperties) -> Self {
        RawProperties::from_properties(&p)
    }
}

impl AsRef<[u8]> for RawProperties {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The raw entries of a headers table ([`RawProperties::raw_headers`]).
pub struct RawHeaders<'a> {
    cur: SliceCursor<'a>,
}

impl<'a> Iterator for RawHeaders<'a> {
    type Item = (&'a [u8], u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let cur = &mut self.cur;
        if cur.pos >= cur.buf.len() {
            return None;
        }
        let entry = (|| {
            let n = cur.u8()?;
            let k = cur.take(n as usize)?;
            let code = cur.u8()?;
            let len = match code {
                b't' | b'b' | b'B' => 1,
                b's' | b'u' => 2,
                b'I' | b'i' | b'f' => 4,
                b'l' | b'L' | b'd' | b'T' => 8,
                b'D' => 5,
                b'V' => 0,
                b'S' | b'x' | b'A' | b'F' => cur.u32()? as usize,
                _ => return None,
            };
            Some((k, code, cur.take(len)?))
        })();
        if entry.is_none() {
            // Malformed: end here.
            cur.pos = cur.buf.len();
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::FieldValue;

    fn sample() -> BasicProperties {
        let mut h = FieldTable::new();
        h.insert("k", FieldValue::from("v"));
        BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(h),
            delivery_mode: Some(2),
            priority: Some(5),
            expiration: Some("60000".into()),
            timestamp: Some(1_700_000_000),
            user_id: Some("guest".into()),
            cluster_id: Some("c".into()),
            ..Default::default()
        }
    }

    #[test]
    fn golden_delivery_mode_only() {
        let p = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let raw = RawProperties::from_properties(&p);
        assert_eq!(raw.as_bytes(), &[0x10, 0x00, 0x02]);
        assert_eq!(raw.delivery_mode(), Some(2));
        assert_eq!(raw.decode().unwrap(), p);
    }

    #[test]
    fn accessors_match_decode() {
        let p = sample();
        let raw = RawProperties::from_properties(&p);
        assert_eq!(raw.delivery_mode(), Some(2));
        assert_eq!(raw.priority(), Some(5));
        assert_eq!(raw.expiration(), Some("60000"));
        assert_eq!(raw.user_id(), Some("guest"));
        assert_eq!(raw.content_type(), Some("text/plain"));
        assert_eq!(raw.timestamp(), Some(1_700_000_000));
        assert_eq!(raw.message_id(), None);
        assert_eq!(raw.headers().unwrap(), p.headers);
        assert_eq!(raw.decode().unwrap(), p);
    }

    /// Every subset of the 14 properties: each accessor finds its field wherever the present ones before
    /// it put it (the accessors walk only the present properties before the one asked for).
    #[test]
    fn accessors_match_decode_for_every_subset_of_properties() {
        let mut h = FieldTable::new();
        h.insert("k", FieldValue::from("v"));
        for mask in 0u32..(1 << 14) {
            let on = |i: u32| mask & (1 << i) != 0;
            let p = BasicProperties {
                content_type: on(0).then(|| "text/plain".into()),
                content_encoding: on(1).then(|| "gzip".into()),
                headers: on(2).then(|| h.clone()),
                delivery_mode: on(3).then_some(2),
                priority: on(4).then_some(7),
                correlation_id: on(5).then(|| "corr".into()),
                reply_to: on(6).then(|| "reply".into()),
                expiration: on(7).then(|| "60000".into()),
                message_id: on(8).then(|| "mid".into()),
                timestamp: on(9).then_some(1_700_000_000),
                kind: on(10).then(|| "type".into()),
                user_id: on(11).then(|| "guest".into()),
                app_id: on(12).then(|| "app".into()),
                cluster_id: on(13).then(|| "c".into()),
            };
            let raw = RawProperties::from_properties(&p);
            let d = raw.decode().unwrap();
            assert_eq!(d, p, "mask {mask:#x}");
            assert_eq!(raw.content_type(), d.content_type.as_deref(), "mask {mask:#x}");
            assert_eq!(raw.delivery_mode(), d.delivery_mode, "mask {mask:#x}");
            assert_eq!(raw.priority(), d.priority, "mask {mask:#x}");
            assert_eq!(
                raw.correlation_id(),
                d.correlation_id.as_deref(),
                "mask {mask:#x}"
            );
            assert_eq!(raw.reply_to(), d.reply_to.as_deref(), "mask {mask:#x}");
            assert_eq!(raw.expiration(), d.expiration.as_deref(), "mask {mask:#x}");
            assert_eq!(raw.message_id(), d.message_id.as_deref(), "mask {mask:#x}");
            assert_eq!(raw.timestamp(), d.timestamp, "mask {mask:#x}");
            assert_eq!(raw.user_id(), d.user_id.as_deref(), "mask {mask:#x}");
            assert_eq!(raw.headers().unwrap(), d.headers, "mask {mask:#x}");
        }
    }

    #[test]
    fn empty_and_truncated() {
        let e = RawProperties::empty();
        assert_eq!(e.delivery_mode(), None);
        assert_eq!(e.headers().unwrap(), None);
        assert_eq!(e.decode().unwrap(), BasicProperties::default());
        let none = RawProperties::from_bytes(Bytes::new());
        assert_eq!(none.decode().unwrap(), BasicProperties::default());
        // content-type flag set but no string follows
        let bad = RawProperties::from_bytes(Bytes::from_static(&[0x90, 0x00, 0x05, b'a']));
        assert_eq!(bad.content_type(), None);
        assert_eq!(bad.delivery_mode(), None);
        assert!(bad.decode().is_err());
        assert!(bad.headers().is_err());
    }

    #[test]
    fn headers_contain_any_walks_every_value_type() {
        let mut h = FieldTable::new();
        h.insert("a", FieldValue::Bool(true));
        h.insert("b", FieldValue::I16(-2));
        h.insert("c", FieldValue::U32(3));
        h.insert("d", FieldValue::F64(1.5));
        h.insert("e", FieldValue::Decimal { scale: 1, value: 5 });
        h.insert("f", FieldValue::Void);
        h.insert("g", FieldValue::Bytes(Bytes::from_static(b"xyz")));
        h.insert("h", FieldValue::Array(vec![FieldValue::from("CC")]));
        let mut inner = FieldTable::new();
        inner.insert("BCC", FieldValue::from("nested"));
        h.insert("i", FieldValue::Table(inner));
        h.insert("j", FieldValue::Timestamp(7));
        h.insert("CC", FieldValue::Array(vec![FieldValue::from("k")]));
        let raw = RawProperties::from_properties(&BasicProperties {
            content_type: Some("t".into()),
            headers: Some(h.clone()),
            ..Default::default()
        });
        assert!(raw.headers_contain_any(&["CC", "BCC"]));
        assert!(raw.headers_contain_any(&["j"]));
        assert!(!raw.headers_contain_any(&["BCC"]), "nested keys do not count");
        assert!(!raw.headers_contain_any(&["cc"]), "keys are case-sensitive");
        assert!(!RawProperties::empty().headers_contain_any(&["CC"]));
        // Truncated: the flag says headers but the table is cut short.
        let bytes = raw.to_bytes();
        let cut = RawProperties::from_bytes(bytes.slice(..bytes.len() - 3));
        assert!(!cut.headers_contain_any(&["CC"]));
        // raw_header finds each value after walking over every type before it.
        assert_eq!(raw.raw_header("b"), Some((b's', &(-2i16).to_be_bytes()[..])));
        assert_eq!(raw.raw_header("g"), Some((b'x', &b"xyz"[..])));
        assert_eq!(raw.raw_header("j"), Some((b'T', &7u64.to_be_bytes()[..])));
        assert_eq!(raw.raw_header("f"), Some((b'V', &b""[..])));
        assert_eq!(raw.raw_header("BCC"), None);
        assert_eq!(cut.raw_header("CC"), None);
        // raw_headers: every top-level entry, in table order.
        let keys: Vec<&[u8]> = raw.raw_headers().map(|(k, _, _)| k).collect();
        let want: Vec<&[u8]> = h.iter().map(|(k, _)| k.as_bytes()).collect();
        assert_eq!(keys, want);
        assert_eq!(cut.raw_headers().count(), 0);
        assert_eq!(RawProperties::empty().raw_headers().count(), 0);
        let mut h2 = FieldTable::new();
        h2.insert("x-deduplication-header", FieldValue::from("order-1"));
        let raw2 = RawProperties::from_properties(&BasicProperties {
            headers: Some(h2),
            ..Default::default()
        });
        assert_eq!(
            raw2.raw_header("x-deduplication-header"),
            Some((b'S', &b"order-1"[..]))
        );
    }

    #[test]
    fn with_reply_to_sets_or_replaces_only_reply_to() {
        let mut p = sample();
        let raw = RawProperties::from_properties(&p);
        assert!(!raw.has_reply_to());
        let name = ShortStr::from("amq.rabbitmq.reply-to.abc");
        let raw2 = raw.with_reply_to(&name).unwrap();
        assert!(raw2.has_reply_to());
        p.reply_to = Some(name.clone());
        assert_eq!(raw2.decode().unwrap(), p);
        let again = raw2.with_reply_to(&ShortStr::from("x")).unwrap();
        p.reply_to = Some("x".into());
        assert_eq!(again.decode().unwrap(), p);
        let from_empty = RawProperties::from_bytes(Bytes::new())
            .with_reply_to(&name)
            .unwrap();
        assert_eq!(from_empty.reply_to(), Some("amq.rabbitmq.reply-to.abc"));
    }

    #[test]
    fn with_headers_rewrites_only_headers() {
        let mut p = sample();
        let raw = RawProperties::from_properties(&p);
        let mut h = FieldTable::new();
        h.insert("x-death", FieldValue::Array(vec![]));
        let raw2 = raw.with_headers(h.clone()).unwrap();
        p.headers = Some(h.clone());
        assert_eq!(raw2.decode().unwrap(), p);
        // and adding headers where there were none
        p.headers = None;
        let raw3 = RawProperties::from_properties(&p)
            .with_headers(h.clone())
            .unwrap();
        p.headers = Some(h.clone());
        assert_eq!(raw3.decode().unwrap(), p);
        let raw4 = RawProperties::empty().with_headers(h.clone()).unwrap();
        assert_eq!(raw4.headers().unwrap(), Some(h));
    }
}
