//! SASL PLAIN and AMQPLAIN responses.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::{FieldTable, FieldValue};

/// PLAIN: `authzid \0 user \0 password`.
pub fn parse_plain(resp: &[u8]) -> Option<(String, String)> {
    let mut parts = resp.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
pub fn parse_amqplain(resp: &[u8]) -> Option<(String, String)> {
    let mut buf = BytesMut::with_capacity(resp.len() + 4);
    buf.put_u32(resp.len() as u32);
    buf.put_slice(resp);
    let mut bytes: Bytes = buf.freeze();
    let table = FieldTable::decode(&mut bytes).ok()?;
    let get = |k: &str| match table.get(k) {
        Some(FieldValue::LongStr(s)) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LongStr;

    #[test]
    fn plain() {
        assert_eq!(
            parse_plain(b"\0guest\0guest"),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
    }

    #[test]
    fn amqplain() {
        let mut t = FieldTable::new();
        t.insert("LOGIN", FieldValue::LongStr(LongStr::from("u")));
        t.insert("PASSWORD", FieldValue::LongStr(LongStr::from("p")));
        let mut b = BytesMut::new();
        t.encode(&mut b);
        assert_eq!(parse_amqplain(&b[4..]), Some(("u".into(), "p".into())));
        assert_eq!(parse_amqplain(b"\xff"), None);
    }
}
