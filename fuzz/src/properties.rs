//! Content-header properties as a publisher sends them, and the message expiration the broker reads from
//! them.
//!
//! Input: the property flags and list exactly as they follow class id, weight and body size in a content
//! header frame (what `RawProperties` holds). The same bytes are also read as a whole content-header
//! payload.
//!
//! Checks: the allocation-free accessors the hot path uses (`delivery_mode`, `priority`, `expiration`,
//! `user_id`, `timestamp`, `headers`, ...) agree with the full decode whenever it succeeds; the decoded
//! properties encode and decode back equal; `with_headers` (used for x-death) keeps every other property and
//! sets exactly the new headers; `validate_expiration` accepts exactly the strings of digits that fit in a
//! u64 (RabbitMQ's rule), and then the broker's parsed expiration is that number.

use bytes::Bytes;
use protocol::{BasicProperties, ContentHeader, FieldTable, FieldValue, RawProperties, ShortStr};

fn expiration_checks(raw: &RawProperties) {
    let valid = broker::message::validate_expiration(raw);
    let msg = broker::message::Message::new(
        ShortStr::from_static("x"),
        ShortStr::from_static("rk"),
        raw.clone(),
        Bytes::new(),
    );
    match raw.expiration() {
        None => {
            assert!(valid.is_ok());
            assert_eq!(msg.expiration_ms, None);
        }
        Some(e) => {
            let digits = !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit());
            let parsed = e.parse::<u64>().ok();
            assert_eq!(
                valid.is_ok(),
                digits && parsed.is_some(),
                "expiration {e:?}: {valid:?}"
            );
            if valid.is_ok() {
                assert_eq!(msg.expiration_ms, parsed);
            }
        }
    }
    assert_eq!(msg.persistent, raw.delivery_mode() == Some(2));
    assert_eq!(msg.priority, raw.priority().unwrap_or(0));
}

pub fn run(data: &[u8]) {
    let raw = RawProperties::from_bytes(Bytes::copy_from_slice(data));
    // Accessors never panic, whatever the bytes.
    let acc = (
        raw.content_type().map(str::to_owned),
        raw.delivery_mode(),
        raw.priority(),
        raw.correlation_id().map(str::to_owned),
        raw.reply_to().map(str::to_owned),
        raw.expiration().map(str::to_owned),
        raw.message_id().map(str::to_owned),
        raw.timestamp(),
        raw.user_id().map(str::to_owned),
    );
    let headers = raw.headers();
    let _ = (raw.has_headers(), raw.flags(), raw.is_persistent());
    expiration_checks(&raw);

    match raw.decode() {
        Ok(p) => {
            let s = |o: &Option<ShortStr>| o.as_ref().map(|s| s.as_str().to_owned());
            assert_eq!(acc.0, s(&p.content_type));
            assert_eq!(acc.1, p.delivery_mode);
            assert_eq!(acc.2, p.priority);
            assert_eq!(acc.3, s(&p.correlation_id));
            assert_eq!(acc.4, s(&p.reply_to));
            assert_eq!(acc.5, s(&p.expiration));
            assert_eq!(acc.6, s(&p.message_id));
            assert_eq!(acc.7, p.timestamp);
            assert_eq!(acc.8, s(&p.user_id));
            assert_eq!(headers.as_ref().ok(), Some(&p.headers));
            if let Some(h) = &p.headers {
                crate::field_table::check_table(h);
            }
            assert!(raw.validate().is_ok());
            let enc = RawProperties::from_properties(&p);
            assert_eq!(
                enc.decode().expect("re-encoded properties decode"),
                p,
                "properties round trip"
            );
            assert_eq!(
                RawProperties::from_properties(&enc.decode().unwrap()),
                enc,
                "encoding not stable"
            );

            let mut h = FieldTable::new();
            h.insert("x-fuzz", FieldValue::I64(data.len() as i64));
            let with = raw
                .with_headers(h.clone())
                .expect("with_headers on decodable properties");
            let q = with.decode().expect("with_headers result decodes");
            assert_eq!(
                q,
                BasicProperties {
                    headers: Some(h),
                    ..p
                },
                "with_headers changed more than the headers"
            );
        }
        Err(e) => {
            assert_eq!(e.reply_code(), protocol::reply::FRAME_ERROR, "{e:?}");
            assert!(raw.validate().is_err());
        }
    }

    // The same bytes as a content header frame's payload (class, weight, body size, properties).
    if let Ok(h) = ContentHeader::decode(Bytes::copy_from_slice(data)) {
        let mut enc = bytes::BytesMut::new();
        h.encode(&mut enc);
        assert_eq!(&enc[..], data, "content header re-encoded differently");
    }
}
