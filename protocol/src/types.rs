//! AMQP short and long strings.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::wire;

/// An AMQP `shortstr`: at most 255 bytes of valid UTF-8.
///
/// Up to [`ShortStr::INLINE`] bytes (most exchange names, queue names and routing keys) are held inline,
/// copied out of the frame: a clone or drop is a copy of 32 bytes, not an atomic operation on the shared
/// count of the connection's read buffer (which every frame's split, every slice and every drop of a
/// message on another thread touches). Longer strings are a `Bytes` slice of the frame payload
/// (zero-copy). The type is 32 bytes either way. Equality, ordering and hashing are those of the `str`, so
/// a `HashMap<ShortStr, _>` can be looked up with a `&str`.
#[derive(Clone)]
pub struct ShortStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; ShortStr::INLINE] },
    Shared(Bytes),
}

impl Default for ShortStr {
    fn default() -> Self {
        ShortStr(Repr::Inline {
            len: 0,
            buf: [0; ShortStr::INLINE],
        })
    }
}

/// UTF-8 check of a short string. Names and keys are nearly always ASCII: a word-at-a-time ASCII scan
/// answers those in a few instructions (`from_utf8`'s own ASCII path costs ~50 per short string with its
/// alignment set-up); anything else gets the full check.
#[inline]
fn valid_utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

/// `b` (at most `ShortStr::INLINE` bytes) at the start of a zeroed buffer, by two fixed-size copies that
/// may overlap instead of a `memcpy` call of variable length (this runs for every name of every publish).
#[inline(always)]
fn copy_short(b: &[u8]) -> [u8; ShortStr::INLINE] {
    let n = b.len();
    debug_assert!(n <= ShortStr::INLINE);
    let mut buf = [0u8; ShortStr::INLINE];
    if n >= 16 {
        buf[..16].copy_from_slice(&b[..16]);
        buf[n - 16..n].copy_from_slice(&b[n - 16..]);
    } else if n >= 8 {
        buf[..8].copy_from_slice(&b[..8]);
        buf[n - 8..n].copy_from_slice(&b[n - 8..]);
    } else if n >= 4 {
        buf[..4].copy_from_slice(&b[..4]);
        buf[n - 4..n].copy_from_slice(&b[n - 4..]);
    } else {
        for (d, s) in buf.iter_mut().zip(b) {
            *d = *s;
        }
    }
    buf
}

impl ShortStr {
    /// Largest length in bytes.
    pub const MAX_LEN: usize = 255;

    /// Longest string held inline (the most that keeps the type at the size of a `Bytes`).
    pub const INLINE: usize = 23;

    /// A short string from a static literal (no allocation).
    ///
    /// # Panics
    /// If `s` is longer than 255 bytes (a programming error in server code).
    pub const fn from_static(s: &'static str) -> ShortStr {
        assert!(s.len() <= Self::MAX_LEN, "ShortStr longer than 255 bytes");
        ShortStr(Repr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// `b` copied inline, if it is short enough (no UTF-8 check: the caller's).
    #[inline]
    fn inline(b: &[u8]) -> Option<ShortStr> {
        let n = b.len();
        if n > Self::INLINE {
            return None;
        }
        Some(ShortStr(Repr::Inline {
            len: n as u8,
            buf: copy_short(b),
        }))
    }

    /// A short string from `s`, or [`ProtocolError::ShortStrTooLong`].
    pub fn try_from_str(s: &str) -> Result<ShortStr, ProtocolError> {
        if s.len() > Self::MAX_LEN {
            return Err(ProtocolError::ShortStrTooLong(s.len()));
        }
        Ok(Self::inline(s.as_bytes())
            .unwrap_or_else(|| ShortStr(Repr::Shared(Bytes::copy_from_slice(s.as_bytes())))))
    }

    /// A short string from bytes that must be valid UTF-8 and at most 255 long (zero-copy past
    /// [`ShortStr::INLINE`] bytes).
    pub fn from_utf8(bytes: Bytes) -> Result<ShortStr, ProtocolError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(ProtocolError::ShortStrTooLong(bytes.len()));
        }
        if !valid_utf8(&bytes) {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(Self::inline(&bytes).unwrap_or(ShortStr(Repr::Shared(bytes))))
    }

    /// A short string of at most [`ShortStr::INLINE`] bytes read from a borrowed payload (a frame read in
    /// place): `None` if it is longer (the caller then decodes from a `Bytes`), an error if not UTF-8.
    #[inline]
    pub fn inline_from_utf8(b: &[u8]) -> Option<Result<ShortStr, ProtocolError>> {
        let s = Self::inline(b)?;
        Some(if valid_utf8(b) {
            Ok(s)
        } else {
            Err(ProtocolError::InvalidUtf8)
        })
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks that the bytes are valid UTF-8 and the
        // field is private and never mutated.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }

    /// The raw bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Shared(b) => b,
        }
    }

    /// The bytes as a `Bytes` (a cheap clone of a long string; a short one is copied).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Repr::Shared(b) => b.clone(),
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Inline { len, .. } => *len as usize,
            Repr::Shared(b) => b.len(),
        }
    }

    /// True for the empty string.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a length-prefixed short string, checking UTF-8 (copied inline up to [`ShortStr::INLINE`]
    /// bytes, a slice of `src` past that).
    pub fn decode(src: &mut Bytes) -> Result<ShortStr, ProtocolError> {
        let n = wire::get_u8(src)? as usize;
        if n <= Self::INLINE {
            wire::need(src, n)?;
            if !valid_utf8(&src[..n]) {
                return Err(ProtocolError::InvalidUtf8);
            }
            let s = Self::inline(&src[..n]);
            bytes::Buf::advance(src, n);
            return Ok(s.unwrap_or_default());
        }
        let bytes = wire::take(src, n)?;
        if !valid_utf8(&bytes) {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(ShortStr(Repr::Shared(bytes)))
    }

    /// Writes the length octet and the bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.len() as u8);
        dst.put_slice(self.as_bytes());
    }

    /// Encoded size (length octet included).
    pub fn encoded_len(&self) -> usize {
        1 + self.len()
    }
}

impl From<&str> for ShortStr {
    /// For server-built strings.
    ///
    /// # Panics
    /// If `s` is longer than 255 bytes; use [`ShortStr::try_from_str`] for untrusted input.
    fn from(s: &str) -> Self {
        match ShortStr::try_from_str(s) {
            Ok(v) => v,
            Err(_) => panic!("ShortStr longer than 255 bytes ({} bytes)", s.len()),
        }
    }
}

impl From<String> for ShortStr {
    /// For server-built strings (no copy).
    ///
    /// # Panics
    /// If `s` is longer than 255 bytes; use [`ShortStr::try_from_str`] for untrusted input.
    fn from(s: String) -> Self {
        assert!(
            s.len() <= ShortStr::MAX_LEN,
            "ShortStr longer than 255 bytes ({} bytes)",
            s.len()
        );
        if let Some(v) = ShortStr::inline(s.as_bytes()) {
            return v;
        }
        ShortStr(Repr::Shared(Bytes::from(s)))
    }
}

impl From<&String> for ShortStr {
    /// See `From<&str>`.
    fn from(s: &String) -> Self {
        ShortStr::from(s.as_str())
    }
}

impl From<ShortStr> for Bytes {
    fn from(s: ShortStr) -> Bytes {
        match s.0 {
            Repr::Shared(b) => b,
            Repr::Inline { .. } => s.to_bytes(),
        }
    }
}

impl From<ShortStr> for String {
    fn from(s: ShortStr) -> String {
        s.as_str().to_owned()
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for ShortStr {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for ShortStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortStr {}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ShortStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<ShortStr> for str {
    fn eq(&self, other: &ShortStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ShortStr> for &str {
    fn eq(&self, other: &ShortStr) -> bool {
        *self == other.as_str()
    }
}

impl Hash for ShortStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must agree with `str`'s hash because of `Borrow<str>`.
        self.as_str().hash(state)
    }
}

impl PartialOrd for ShortStr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortStr {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// An AMQP `longstr`: any bytes (not required to be UTF-8), held as a `Bytes` slice.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LongStr(Bytes);

impl LongStr {
    /// A long string from a static literal.
    pub const fn from_static(s: &'static str) -> LongStr {
        LongStr(Bytes::from_static(s.as_bytes()))
    }

    /// The raw bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying `Bytes` (cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The string if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string, replacing invalid UTF-8 sequences.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a u32-length-prefixed long string (zero-copy).
    pub fn decode(src: &mut Bytes) -> Result<LongStr, ProtocolError> {
        let n = wire::get_u32(src)? as usize;
        Ok(LongStr(wire::take(src, n)?))
    }

    /// Writes the u32 length and the bytes.
    ///
    /// Strings longer than `u32::MAX` cannot be represented; they are truncated.
    pub fn encode(&self, dst: &mut BytesMut) {
        let n = self.0.len().min(u32::MAX as usize);
        dst.put_u32(n as u32);
        dst.put_slice(&self.0[..n]);
    }

    /// Encoded size (length prefix included).
    pub fn encoded_len(&self) -> usize {
        4 + self.0.len()
    }
}

impl fmt::Debug for LongStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "b{:?}", self.to_string_lossy()),
        }
    }
}

impl From<&str> for LongStr {
    fn from(s: &str) -> Self {
        LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for LongStr {
    fn from(s: String) -> Self {
        LongStr(Bytes::from(s))
    }
}

impl From<Vec<u8>> for LongStr {
    fn from(v: Vec<u8>) -> Self {
        LongStr(Bytes::from(v))
    }
}

impl From<&[u8]> for LongStr {
    fn from(v: &[u8]) -> Self {
        LongStr(Bytes::copy_from_slice(v))
    }
}

impl From<Bytes> for LongStr {
    fn from(b: Bytes) -> Self {
        LongStr(b)
    }
}

impl From<ShortStr> for LongStr {
    fn from(s: ShortStr) -> Self {
        LongStr(s.to_bytes())
    }
}

impl From<LongStr> for Bytes {
    fn from(s: LongStr) -> Bytes {
        s.0
    }
}

impl AsRef<[u8]> for LongStr {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The ASCII fast path in front of `from_utf8` accepts and refuses exactly what `from_utf8` does.
    #[test]
    fn shortstr_decode_checks_utf8_past_the_ascii_fast_path() {
        let cases: [(&[u8], bool); 7] = [
            (b"", true),
            (b"amq.direct.routing.key-0123456789", true),
            ("caf\u{e9} \u{1f600}".as_bytes(), true),
            (b"abcdefgh\xc3\xa9", true),
            (b"abcdefghijklmnop\xff", false),
            (b"\xc3", false),
            (b"\xed\xa0\x80", false),
        ];
        for (raw, ok) in cases {
            let mut src = BytesMut::new();
            src.put_u8(raw.len() as u8);
            src.put_slice(raw);
            let mut src = src.freeze();
            assert_eq!(ShortStr::decode(&mut src).is_ok(), ok, "{raw:?}");
            assert_eq!(
                ShortStr::from_utf8(Bytes::copy_from_slice(raw)).is_ok(),
                ok,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn shortstr_basics() {
        let s = ShortStr::from("hello");
        assert_eq!(s, "hello");
        assert_eq!(s.len(), 5);
        assert_eq!(&*s, "hello");
        assert_eq!(s.to_string(), "hello");
        assert!(ShortStr::default().is_empty());
        assert!(ShortStr::try_from_str(&"x".repeat(256)).is_err());
        assert!(ShortStr::try_from_str(&"x".repeat(255)).is_ok());
        let mut m = HashMap::new();
        m.insert(ShortStr::from_static("q"), 1);
        assert_eq!(m.get("q"), Some(&1));
    }

    /// Inline (up to 23 bytes) and shared strings are one type to every observer: equal, hashed and ordered
    /// by their text, encoded alike, at the size of a `Bytes`.
    #[test]
    fn shortstr_inline_and_shared_are_alike() {
        assert_eq!(std::mem::size_of::<ShortStr>(), std::mem::size_of::<Bytes>());
        for n in [
            0,
            1,
            ShortStr::INLINE - 1,
            ShortStr::INLINE,
            ShortStr::INLINE + 1,
            255,
        ] {
            let text = "r".repeat(n);
            let inline_or_not = ShortStr::from(text.as_str());
            let shared = ShortStr(Repr::Shared(Bytes::copy_from_slice(text.as_bytes())));
            let from_static = ShortStr::from_static(Box::leak(text.clone().into_boxed_str()));
            for s in [&inline_or_not, &shared, &from_static] {
                assert_eq!(s, &inline_or_not);
                assert_eq!(s.len(), n);
                assert_eq!(s.as_str(), text);
                assert_eq!(s.to_bytes(), text.as_bytes());
                assert_eq!(Bytes::from(s.clone()), text.as_bytes());
                let mut enc = BytesMut::new();
                s.encode(&mut enc);
                assert_eq!(enc.len(), s.encoded_len());
                let mut dec = enc.freeze();
                assert_eq!(&ShortStr::decode(&mut dec).unwrap(), s);
                let mut m = HashMap::new();
                m.insert(s.clone(), n);
                assert_eq!(m.get(text.as_str()), Some(&n));
                assert_eq!(s.cmp(&shared), Ordering::Equal);
            }
            let inline = matches!(inline_or_not.0, Repr::Inline { .. });
            assert_eq!(inline, n <= ShortStr::INLINE, "{n}");
            assert_eq!(
                ShortStr::inline_from_utf8(text.as_bytes()).map(|r| r.unwrap()),
                inline.then(|| inline_or_not.clone())
            );
        }
        assert_eq!(
            ShortStr::inline_from_utf8(b"\xff"),
            Some(Err(ProtocolError::InvalidUtf8))
        );
    }

    #[test]
    #[should_panic]
    fn shortstr_from_long_string_panics() {
        let _ = ShortStr::from("y".repeat(300));
    }

    #[test]
    fn shortstr_decode_is_zero_copy_past_inline_and_checks_utf8() {
        let mut src = Bytes::from_static(b"\x03abcrest");
        let base = src.as_ptr() as usize;
        let s = ShortStr::decode(&mut src).unwrap();
        assert_eq!(s, "abc");
        assert_ne!(s.as_bytes().as_ptr() as usize, base + 1, "short: copied inline");
        assert_eq!(&src[..], b"rest");
        let long = "k".repeat(ShortStr::INLINE + 1);
        let mut raw = BytesMut::new();
        raw.put_u8(long.len() as u8);
        raw.put_slice(long.as_bytes());
        raw.put_slice(b"rest");
        let mut src = raw.freeze();
        let base = src.as_ptr() as usize;
        let s = ShortStr::decode(&mut src).unwrap();
        assert_eq!(s, long.as_str());
        assert_eq!(
            s.as_bytes().as_ptr() as usize,
            base + 1,
            "long: a slice of the payload"
        );
        assert_eq!(&src[..], b"rest");
        let mut bad = Bytes::from_static(b"\x02\xff\xfe");
        assert_eq!(ShortStr::decode(&mut bad), Err(ProtocolError::InvalidUtf8));
        let mut short = Bytes::from_static(b"\x05ab");
        assert!(matches!(
            ShortStr::decode(&mut short),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn longstr_any_bytes() {
        let l = LongStr::from(vec![0xff, 0x00]);
        assert_eq!(l.as_str(), None);
        assert_eq!(l.to_string_lossy(), "\u{fffd}\u{0}");
        let mut buf = BytesMut::new();
        l.encode(&mut buf);
        assert_eq!(&buf[..], b"\x00\x00\x00\x02\xff\x00");
        let mut src = buf.freeze();
        assert_eq!(LongStr::decode(&mut src).unwrap(), l);
    }
}
