//! Method frame payloads: every class/method id with arbitrary arguments.
//!
//! Input: `[selector][bytes...]`. A selector with the top bit clear takes the bytes as the whole payload
//! (class id and method id included: unknown ids get exercised); with the top bit set, its low 7 bits pick
//! a method of `ALL_METHODS` whose ids are put in front of the bytes (so every method's arguments get
//! fuzzed even though the ids are a 1-in-65536 guess).
//!
//! Checks: a decoded method has the ids it was decoded from and the name `method_name` gives them; it
//! encodes to a payload no longer than the original (deprecated string fields are written empty) that
//! decodes equal, and that encoding is stable; unknown ids
//! are 540 NOT_IMPLEMENTED; every error has a hard-error reply code, a reply text and the method's ids.

use bytes::Bytes;
use protocol::{method_name, Method, ProtocolError, ALL_METHODS};

pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let payload: Vec<u8> = if sel & 0x80 == 0 {
        rest.to_vec()
    } else {
        let (c, m, _, _) = ALL_METHODS[(sel & 0x7f) as usize % ALL_METHODS.len()];
        let mut p = Vec::with_capacity(rest.len() + 4);
        p.extend_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&m.to_be_bytes());
        p.extend_from_slice(rest);
        p
    };
    check(&payload);
}

/// Decodes one payload and checks everything above; shared with the frame-level targets' seeds.
pub fn check(payload: &[u8]) {
    let ids = (payload.len() >= 4).then(|| {
        (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        )
    });
    match Method::decode(Bytes::copy_from_slice(payload)) {
        Ok(m) => {
            let (c, id) = ids.expect("a method decoded from fewer than 4 bytes");
            assert_eq!((m.class_id(), m.method_id()), (c, id));
            assert_eq!(method_name(c, id), Some(m.name()));
            let known = ALL_METHODS
                .iter()
                .find(|(kc, km, _, _)| (*kc, *km) == (c, id))
                .expect("decoded a method ALL_METHODS does not list");
            assert_eq!(known.3, m.has_content(), "{}", m.name());
            let _ = m.is_synchronous();
            let enc = m.to_bytes();
            // Same length, except that deprecated string fields (connection.open's capabilities, basic.get-empty's
            // cluster-id, ...) are skipped on decode and written empty.
            assert!(enc.len() <= payload.len(), "{} re-encoded longer", m.name());
            let again = Method::decode(enc.clone()).expect("re-encoded method decodes");
            assert_eq!(again, m, "method round trip");
            assert_eq!(again.to_bytes(), enc, "encoding is not stable");
        }
        Err(e) => {
            assert!(protocol::reply::is_hard_error(e.reply_code()), "{e:?}");
            assert!(!e.reply_text().is_empty());
            let _ = e.to_string();
            if let Some((c, id)) = ids {
                if method_name(c, id).is_none() {
                    assert_eq!(
                        e,
                        ProtocolError::UnknownMethod {
                            class_id: c,
                            method_id: id
                        }
                    );
                    assert_eq!(e.reply_code(), protocol::reply::NOT_IMPLEMENTED);
                } else {
                    assert_eq!((e.class_id(), e.method_id()), (c, id), "{e:?}");
                }
            }
        }
    }
}
