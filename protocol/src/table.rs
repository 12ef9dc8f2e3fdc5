//! Field tables and field values, with RabbitMQ's type codes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::types::{LongStr, ShortStr};
use crate::wire;

/// Deepest nesting of tables/arrays accepted on decode (the outermost table is depth 1).
pub const MAX_NESTING_DEPTH: usize = 64;

/// A value in a field table or array, one variant per RabbitMQ type code.
#[derive(Debug, Clone)]
pub enum FieldValue {
    /// `t`: boolean (one octet, non-zero = true).
    Bool(bool),
    /// `b`: signed 8-bit.
    I8(i8),
    /// `B`: unsigned 8-bit.
    U8(u8),
    /// `s`: signed 16-bit.
    I16(i16),
    /// `u`: unsigned 16-bit.
    U16(u16),
    /// `I`: signed 32-bit.
    I32(i32),
    /// `i`: unsigned 32-bit.
    U32(u32),
    /// `l` (and `L` on input): signed 64-bit.
    I64(i64),
    /// `f`: 32-bit float.
    F32(f32),
    /// `d`: 64-bit float.
    F64(f64),
    /// `D`: decimal, `value / 10^scale`.
    Decimal {
        /// Number of decimal digits.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// `S`: long string (any bytes).
    LongStr(LongStr),
    /// `x`: byte array.
    Bytes(Bytes),
    /// `A`: array.
    Array(Vec<FieldValue>),
    /// `T`: timestamp (seconds since the epoch).
    Timestamp(u64),
    /// `F`: nested table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Decimal { scale, value }, Decimal { scale: s2, value: v2 }) => scale == s2 && value == v2,
            (LongStr(a), LongStr(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Table(a), Table(b)) => a == b,
            (Void, Void) => true,
            _ => false,
        }
    }
}

impl FieldValue {
    /// The type code written for this value (RabbitMQ's codes).
    pub fn type_code(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongStr(_) => b'S',
            FieldValue::Bytes(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }

    /// The string of a `LongStr` value when it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(s) => s.as_str(),
            _ => None,
        }
    }

    /// Any integer value (including timestamps) as i64, if it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value of a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The nested table of a `Table` value.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The items of an `Array` value.
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Writes the type code and the value.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.type_code());
        match self {
            FieldValue::Bool(b) => dst.put_u8(u8::from(*b)),
            FieldValue::I8(v) => dst.put_i8(*v),
            FieldValue::U8(v) => dst.put_u8(*v),
            FieldValue::I16(v) => dst.put_i16(*v),
            FieldValue::U16(v) => dst.put_u16(*v),
            FieldValue::I32(v) => dst.put_i32(*v),
            FieldValue::U32(v) => dst.put_u32(*v),
            FieldValue::I64(v) => dst.put_i64(*v),
            FieldValue::F32(v) => dst.put_f32(*v),
            FieldValue::F64(v) => dst.put_f64(*v),
            FieldValue::Decimal { scale, value } => {
                dst.put_u8(*scale);
                dst.put_u32(*value);
            }
            FieldValue::LongStr(s) => s.encode(dst),
            FieldValue::Bytes(b) => {
                dst.put_u32(b.len() as u32);
                dst.put_slice(b);
            }
            FieldValue::Array(items) => {
                let len_at = dst.len();
                dst.put_u32(0);
                for item in items {
                    item.encode(dst);
                }
                patch_len(dst, len_at);
            }
            FieldValue::Timestamp(v) => dst.put_u64(*v),
            FieldValue::Table(t) => t.encode(dst),
            FieldValue::Void => {}
        }
    }

    /// Encoded size, type code included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
            FieldValue::I16(_) | FieldValue::U16(_) => 2,
            FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
            FieldValue::I64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => 8,
            FieldValue::Decimal { .. } => 5,
            FieldValue::LongStr(s) => s.encoded_len(),
            FieldValue::Bytes(b) => 4 + b.len(),
            FieldValue::Array(items) => 4 + items.iter().map(|i| i.encoded_len()).sum::<usize>(),
            FieldValue::Table(t) => t.encoded_len(),
            FieldValue::Void => 0,
        }
    }

    /// Reads a type code and a value. `depth` is the depth of the enclosing container.
    fn decode(src: &mut Bytes, depth: usize) -> Result<FieldValue, ProtocolError> {
        let code = wire::get_u8(src)?;
        Ok(match code {
            b't' => FieldValue::Bool(wire::get_u8(src)? != 0),
            b'b' => FieldValue::I8(wire::get_u8(src)? as i8),
            b'B' => FieldValue::U8(wire::get_u8(src)?),
            b's' => FieldValue::I16(wire::get_u16(src)? as i16),
            b'u' => FieldValue::U16(wire::get_u16(src)?),
            b'I' => FieldValue::I32(wire::get_u32(src)? as i32),
            b'i' => FieldValue::U32(wire::get_u32(src)?),
            b'l' | b'L' => FieldValue::I64(wire::get_u64(src)? as i64),
            b'f' => FieldValue::F32(f32::from_bits(wire::get_u32(src)?)),
            b'd' => FieldValue::F64(f64::from_bits(wire::get_u64(src)?)),
            b'D' => {
                let scale = wire::get_u8(src)?;
                let value = wire::get_u32(src)?;
                FieldValue::Decimal { scale, value }
            }
            b'S' => FieldValue::LongStr(LongStr::decode(src)?),
            b'x' => {
                let n = wire::get_u32(src)? as usize;
                FieldValue::Bytes(wire::take(src, n)?)
            }
            b'A' => {
                if depth >= MAX_NESTING_DEPTH {
                    return Err(ProtocolError::NestingTooDeep);
                }
                let n = wire::get_u32(src)? as usize;
                let mut body = wire::take(src, n)?;
                let mut items = Vec::new();
                while body.has_remaining() {
                    items.push(FieldValue::decode(&mut body, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(wire::get_u64(src)?),
            b'F' => {
                if depth >= MAX_NESTING_DEPTH {
                    return Err(ProtocolError::NestingTooDeep);
                }
                FieldValue::Table(FieldTable::decode_at(src, depth + 1)?)
            }
            b'V' => FieldValue::Void,
            other => return Err(ProtocolError::UnknownFieldType(other)),
        })
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}
impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::I32(v)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}
impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::LongStr(LongStr::from(v))
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::LongStr(LongStr::from(v))
    }
}
impl From<LongStr> for FieldValue {
    fn from(v: LongStr) -> Self {
        FieldValue::LongStr(v)
    }
}
impl From<FieldTable> for FieldValue {
    fn from(v: FieldTable) -> Self {
        FieldValue::Table(v)
    }
}
impl From<Vec<FieldValue>> for FieldValue {
    fn from(v: Vec<FieldValue>) -> Self {
        FieldValue::Array(v)
    }
}

fn patch_len(dst: &mut BytesMut, len_at: usize) {
    let n = (dst.len() - len_at - 4) as u32;
    dst[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
}

/// An AMQP field table that keeps insertion (wire) order.
///
/// Lookups are linear, which is the fast choice for the handful of entries tables
/// carry. Decoding keeps duplicate keys as received; [`FieldTable::get`] returns the
/// first, [`FieldTable::insert`] replaces the first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> FieldTable {
        FieldTable(Vec::new())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing an existing entry in place; returns the old value.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) -> Option<FieldValue> {
        let key = key.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.0.push((key, value));
        None
    }

    /// Removes `key` (every occurrence); returns the first value removed.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        let (_, v) = self.0.remove(pos);
        self.0.retain(|(k, _)| k != key);
        Some(v)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes the u32 byte length and the entries.
    pub fn encode(&self, dst: &mut BytesMut) {
        let len_at = dst.len();
        dst.reserve(self.encoded_len());
        dst.put_u32(0);
        for (k, v) in &self.0 {
            k.encode(dst);
            v.encode(dst);
        }
        patch_len(dst, len_at);
    }

    /// Encoded size, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self
            .0
            .iter()
            .map(|(k, v)| k.encoded_len() + v.encoded_len())
            .sum::<usize>()
    }

    /// Reads the u32 length prefix and the table it covers. String values are slices
    /// of `src` (no copy).
    pub fn decode(src: &mut Bytes) -> Result<FieldTable, ProtocolError> {
        FieldTable::decode_at(src, 1)
    }

    fn decode_at(src: &mut Bytes, depth: usize) -> Result<FieldTable, ProtocolError> {
        let n = wire::get_u32(src)? as usize;
        let mut body = wire::take(src, n)?;
        let mut entries = Vec::new();
        while body.has_remaining() {
            let key = ShortStr::decode(&mut body)?;
            let value = FieldValue::decode(&mut body, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }
}

impl<K: Into<ShortStr>> FromIterator<(K, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        let mut t = FieldTable::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a ShortStr, &'a FieldValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (ShortStr, FieldValue)>,
        fn(&'a (ShortStr, FieldValue)) -> (&'a ShortStr, &'a FieldValue),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl IntoIterator for FieldTable {
    type Item = (ShortStr, FieldValue);
    type IntoIter = std::vec::IntoIter<(ShortStr, FieldValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_keeps_order() {
        let mut t = FieldTable::new();
        t.insert("a", FieldValue::I32(1));
        t.insert("b", FieldValue::Bool(true));
        assert_eq!(t.insert("a", FieldValue::I32(2)), Some(FieldValue::I32(1)));
        let keys: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(t.get("a").and_then(|v| v.as_i64()), Some(2));
        assert_eq!(t.remove("a"), Some(FieldValue::I32(2)));
        assert_eq!(t.len(), 1);
        assert!(t.get("a").is_none());
    }

    #[test]
    fn golden_table_bytes() {
        let mut t = FieldTable::new();
        t.insert("x-max-length", FieldValue::I64(10));
        t.insert("s", FieldValue::from("v"));
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        let expected: &[u8] =
            b"\x00\x00\x00\x1e\x0cx-max-lengthl\x00\x00\x00\x00\x00\x00\x00\x0a\x01sS\x00\x00\x00\x01v";
        assert_eq!(&buf[..], expected);
        assert_eq!(t.encoded_len(), buf.len());
        let mut src = buf.freeze();
        assert_eq!(FieldTable::decode(&mut src).unwrap(), t);
        assert!(src.is_empty());
    }

    #[test]
    fn capital_l_reads_as_i64() {
        let mut src = Bytes::from_static(b"\x00\x00\x00\x0b\x01kL\xff\xff\xff\xff\xff\xff\xff\xfe");
        let t = FieldTable::decode(&mut src).unwrap();
        assert_eq!(t.get("k"), Some(&FieldValue::I64(-2)));
    }

    #[test]
    fn unknown_type_and_deep_nesting_are_typed_errors() {
        let mut src = Bytes::from_static(b"\x00\x00\x00\x03\x01kZ");
        assert_eq!(
            FieldTable::decode(&mut src),
            Err(ProtocolError::UnknownFieldType(b'Z'))
        );
        // 100_000 nested arrays: must be rejected, not overflow the stack.
        let depth = 100_000usize;
        let mut body = Vec::with_capacity(depth * 5 + 1);
        for k in (1..=depth).rev() {
            body.push(b'A');
            body.extend_from_slice(&((5 * (k - 1) + 1) as u32).to_be_bytes());
        }
        body.push(b'V');
        let mut buf = BytesMut::new();
        buf.put_u32((body.len() + 5) as u32);
        buf.put_u8(4);
        buf.put_slice(b"deep");
        buf.put_slice(&body);
        let mut src = buf.freeze();
        assert_eq!(FieldTable::decode(&mut src), Err(ProtocolError::NestingTooDeep));
    }
}
