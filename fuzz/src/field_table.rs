//! Field tables, arrays, short strings and long strings: the encodings inside every method argument that
//! carries a table (client-properties, queue/exchange/binding/consumer arguments, message headers).
//!
//! Input: `[mode][bytes...]`. Mode 0: the bytes are a table's body (the length prefix is added). Mode 1: the
//! bytes are a complete table, length prefix included, possibly followed by more. Mode 2: a sequence of
//! short strings. Mode 3: a sequence of long strings.
//!
//! Checks: a decoded table encodes to `encoded_len()` bytes and decodes back equal (round trip), the
//! encoding is stable, decoding consumes exactly the announced length, nesting never exceeds
//! `MAX_NESTING_DEPTH` (so decoding cannot overflow the stack), lookups agree with iteration (first key
//! wins), the router's argument conversion handles every value, and short strings are always valid UTF-8
//! of at most 255 bytes.

use bytes::{Bytes, BytesMut};
use protocol::{FieldTable, FieldValue, LongStr, ProtocolError, ShortStr, MAX_NESTING_DEPTH};

use crate::Input;

fn depth(v: &FieldValue) -> usize {
    match v {
        FieldValue::Table(t) => 1 + table_depth(t),
        FieldValue::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn table_depth(t: &FieldTable) -> usize {
    t.iter().map(|(_, v)| depth(v)).max().unwrap_or(0)
}

/// Round trip and invariants of one decoded table.
pub fn check_table(t: &FieldTable) {
    assert!(
        table_depth(t) < MAX_NESTING_DEPTH,
        "nesting {} accepted",
        table_depth(t)
    );
    let mut enc = BytesMut::new();
    t.encode(&mut enc);
    assert_eq!(enc.len(), t.encoded_len());
    let mut src = enc.clone().freeze();
    let again = FieldTable::decode(&mut src).expect("re-encoded table decodes");
    assert!(src.is_empty());
    assert_eq!(&again, t, "table round trip");
    let mut enc2 = BytesMut::new();
    again.encode(&mut enc2);
    assert_eq!(enc, enc2, "table encoding is not stable");
    for (k, v) in t.iter() {
        assert!(k.len() <= ShortStr::MAX_LEN);
        let first = t.iter().find(|(k2, _)| *k2 == k).map(|(_, v)| v);
        assert_eq!(t.get(k.as_str()), first);
        let _ = (v.as_i64(), v.as_str(), v.as_bool(), broker::args::type_name(v));
    }
    // The broker hands tables to the router as `Args`; converting back must not panic either.
    let args = broker::args::to_router_args(t);
    assert_eq!(args.len(), t.len());
    let _ = broker::args::from_router_args(&args);
}

fn check_decoded(r: Result<FieldTable, ProtocolError>) {
    match r {
        Ok(t) => check_table(&t),
        Err(e) => {
            assert_eq!(e.reply_code(), protocol::reply::FRAME_ERROR, "{e:?}");
            let _ = e.reply_text();
        }
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => check_decoded(crate::table_from_body(inp.rest())),
        1 => {
            let mut src = Bytes::copy_from_slice(inp.rest());
            let len = src.len();
            let r = FieldTable::decode(&mut src);
            let declared =
                (len >= 4).then(|| 4 + u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize);
            if r.is_ok() {
                assert_eq!(
                    Some(len - src.len()),
                    declared,
                    "decode consumed other than the announced length"
                );
            }
            check_decoded(r);
        }
        2 => {
            let mut src = Bytes::copy_from_slice(inp.rest());
            while !src.is_empty() {
                match ShortStr::decode(&mut src) {
                    Ok(s) => {
                        assert!(s.len() <= ShortStr::MAX_LEN);
                        assert!(std::str::from_utf8(s.as_bytes()).is_ok());
                        assert_eq!(ShortStr::from_utf8(s.to_bytes()).as_ref(), Ok(&s));
                        let mut enc = BytesMut::new();
                        s.encode(&mut enc);
                        assert_eq!(enc.len(), s.encoded_len());
                        let again = ShortStr::decode(&mut enc.freeze()).expect("short string round trip");
                        assert_eq!(again, s);
                    }
                    Err(e) => {
                        assert!(matches!(
                            e,
                            ProtocolError::Malformed(_) | ProtocolError::InvalidUtf8
                        ));
                        break;
                    }
                }
            }
        }
        _ => {
            let mut src = Bytes::copy_from_slice(inp.rest());
            while !src.is_empty() {
                match LongStr::decode(&mut src) {
                    Ok(s) => {
                        let mut enc = BytesMut::new();
                        s.encode(&mut enc);
                        assert_eq!(enc.len(), s.encoded_len());
                        assert_eq!(
                            LongStr::decode(&mut enc.freeze()).expect("long string round trip"),
                            s
                        );
                        let _ = s.to_string_lossy();
                    }
                    Err(e) => {
                        assert!(matches!(e, ProtocolError::Malformed(_)));
                        break;
                    }
                }
            }
        }
    }
}
