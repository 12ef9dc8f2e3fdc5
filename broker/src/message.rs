//! A published message as the broker carries it: envelope, raw properties and body, shared by every queue it
//! was routed to.

use bytes::Bytes;
use protocol::{FieldValue, RawProperties, ShortStr};

/// The headers that name more routing keys (RabbitMQ's sender-selected distribution,
/// `rabbit_basic:header_routes/1` over `?ROUTING_HEADERS`): arrays of long strings.
pub const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];
/// The routing header removed from every delivered copy (RabbitMQ's `?DELETED_HEADER`).
const BCC: &str = "BCC";

/// The extra routing keys of a message that carries `CC` or `BCC`.
#[derive(Debug, Clone)]
pub struct HeaderRoutes {
    /// The `CC` keys, then the `BCC` keys.
    keys: Vec<Box<str>>,
    /// How many of `keys` came from `CC`.
    cc: usize,
    /// The properties as published, `BCC` included: what the store keeps, so a message read back after a
    /// restart still routes with its `BCC` keys when it is dead-lettered. None when there was no `BCC`.
    stored: Option<RawProperties>,
}

/// One published message. Shared (`Arc`) between the queues a publish reached; never copied.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content properties exactly as the publisher sent them; decoded only when someone needs a field.
    pub properties: RawProperties,
    pub body: Bytes,
    /// delivery-mode 2.
    pub persistent: bool,
    /// The priority property (0 when absent).
    pub priority: u8,
    /// The expiration property, in ms, when it is a valid non-negative integer.
    pub expiration_ms: Option<u64>,
    /// `CC`/`BCC` routing keys (None for the common message without them).
    pub routes: Option<Box<HeaderRoutes>>,
}

impl Message {
    /// A message as read back or built by the broker: `CC`/`BCC` headers that are not arrays are ignored.
    pub fn new(exchange: ShortStr, routing_key: ShortStr, properties: RawProperties, body: Bytes) -> Self {
        match Self::build(exchange, routing_key, properties, body, false) {
            Ok(m) => m,
            Err(e) => unreachable!("lenient message build failed: {e}"),
        }
    }

    /// A message from basic.publish: as RabbitMQ (`mc_amqpl:message/3`, `rabbit_basic:header_routes/1`), a
    /// `CC` or `BCC` header that is not an array refuses the publish (406 "invalid message: ..."); array
    /// elements that are not long strings are ignored.
    pub fn published(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: RawProperties,
        body: Bytes,
    ) -> Result<Self, String> {
        Self::build(exchange, routing_key, properties, body, true)
    }

    fn build(
        exchange: ShortStr,
        routing_key: ShortStr,
        mut properties: RawProperties,
        body: Bytes,
        strict: bool,
    ) -> Result<Self, String> {
        // The common message has no headers, or none named CC or BCC: a flags check and a walk over the raw
        // table, no allocation.
        let routes = if properties.headers_contain_any(&ROUTING_HEADERS) {
            header_routes(&mut properties, strict)?
        } else {
            None
        };
        let persistent = properties.delivery_mode() == Some(2);
        let priority = properties.priority().unwrap_or(0);
        let expiration_ms = properties.expiration().and_then(|e| e.parse::<u64>().ok());
        Ok(Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            priority,
            expiration_ms,
            routes,
        })
    }

    /// The routing keys besides `routing_key`: the `CC` keys, then the `BCC` keys.
    pub fn extra_routing_keys(&self) -> &[Box<str>] {
        self.routes.as_deref().map_or(&[], |r| &r.keys)
    }

    /// The `CC` keys (recorded in `x-death`'s `routing-keys`, as RabbitMQ does; `BCC` keys are not).
    pub fn cc_keys(&self) -> &[Box<str>] {
        self.routes.as_deref().map_or(&[], |r| &r.keys[..r.cc])
    }

    /// The properties the store keeps: as published (with `BCC`, which deliveries never carry).
    pub fn stored_properties(&self) -> &RawProperties {
        match self.routes.as_deref() {
            Some(HeaderRoutes { stored: Some(p), .. }) => p,
            _ => &self.properties,
        }
    }

    /// Bytes this message accounts for in a queue (body only, as RabbitMQ's `message_bytes`).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// RabbitMQ's check of the expiration property: a string of digits (else 406 "invalid expiration").
pub fn validate_expiration(props: &RawProperties) -> Result<(), String> {
    match props.expiration() {
        None => Ok(()),
        Some(e) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) && e.parse::<u64>().is_ok() => {
            Ok(())
        }
        Some(e) => Err(format!("invalid expiration '{e}': no_integer")),
    }
}

/// Reads the `CC` and `BCC` keys and removes `BCC` from `properties` (RabbitMQ strips it before any delivery,
/// `mc_amqpl:init/1`). `strict`: a non-array `CC`/`BCC` is RabbitMQ's `{unacceptable_type_in_header, ...}`.
fn header_routes(properties: &mut RawProperties, strict: bool) -> Result<Option<Box<HeaderRoutes>>, String> {
    let Ok(Some(mut headers)) = properties.headers() else {
        return Ok(None);
    };
    let mut keys: Vec<Box<str>> = Vec::new();
    let mut cc = 0;
    for name in ROUTING_HEADERS {
        match headers.get(name) {
            None => {}
            Some(FieldValue::Array(items)) => keys.extend(items.iter().filter_map(|v| match v {
                FieldValue::LongStr(s) => s.as_str().map(Box::from),
                _ => None,
            })),
            Some(other) if strict => {
                return Err(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    crate::args::type_name(other)
                ))
            }
            Some(_) => {}
        }
        if name == "CC" {
            cc = keys.len();
        }
    }
    let mut stored = None;
    if headers.remove(BCC).is_some() {
        if let Ok(stripped) = properties.with_headers(headers) {
            stored = Some(std::mem::replace(properties, stripped));
        }
    }
    if keys.is_empty() && stored.is_none() {
        return Ok(None);
    }
    Ok(Some(Box::new(HeaderRoutes { keys, cc, stored })))
}

/// The properties an `x-consistent-hash` exchange with `hash-property` hashes on (read lazily from the
/// raw bytes, no allocation).
pub fn route_props(props: &RawProperties) -> router::MsgProps<'_> {
    router::MsgProps {
        message_id: props.message_id(),
        correlation_id: props.correlation_id(),
        timestamp: props.timestamp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BasicProperties, FieldTable, LongStr};

    fn props(headers: &[(&str, FieldValue)]) -> RawProperties {
        let mut h = FieldTable::new();
        for (k, v) in headers {
            h.insert(*k, v.clone());
        }
        RawProperties::from_properties(&BasicProperties {
            headers: Some(h),
            message_id: Some("id".into()),
            ..Default::default()
        })
    }

    fn strs(v: &[&str]) -> FieldValue {
        FieldValue::Array(v.iter().map(|s| FieldValue::LongStr(LongStr::from(*s))).collect())
    }

    fn publish(p: RawProperties) -> Result<Message, String> {
        Message::published("x".into(), "rk".into(), p, Bytes::new())
    }

    #[test]
    fn no_routing_headers_no_routes() {
        let m = publish(props(&[("a", FieldValue::I32(1))])).unwrap();
        assert!(m.routes.is_none());
        assert!(m.extra_routing_keys().is_empty());
        let m = publish(RawProperties::empty()).unwrap();
        assert!(m.routes.is_none());
    }

    #[test]
    fn cc_and_bcc_keys_and_bcc_stripped() {
        let p = props(&[
            ("CC", strs(&["c1", "c2"])),
            ("x", FieldValue::Bool(true)),
            ("BCC", strs(&["b1"])),
        ]);
        let m = publish(p.clone()).unwrap();
        let keys: Vec<&str> = m.extra_routing_keys().iter().map(|k| &**k).collect();
        assert_eq!(keys, ["c1", "c2", "b1"]);
        let cc: Vec<&str> = m.cc_keys().iter().map(|k| &**k).collect();
        assert_eq!(cc, ["c1", "c2"]);
        let h = m.properties.headers().unwrap().unwrap();
        assert!(h.get("BCC").is_none(), "BCC is never delivered");
        assert_eq!(
            h.get("CC"),
            Some(&strs(&["c1", "c2"])),
            "CC is delivered as published"
        );
        assert_eq!(m.properties.message_id(), Some("id"));
        assert_eq!(m.stored_properties(), &p, "the store keeps BCC");
        // Read back from the store: the same keys, BCC stripped again.
        let back = Message::new("x".into(), "rk".into(), p, Bytes::new());
        assert_eq!(back.extra_routing_keys(), m.extra_routing_keys());
        assert_eq!(back.properties, m.properties);
    }

    #[test]
    fn only_long_strings_in_the_arrays_count() {
        let arr = FieldValue::Array(vec![
            FieldValue::I32(5),
            FieldValue::LongStr(LongStr::from("ok")),
            FieldValue::Bool(true),
        ]);
        let m = publish(props(&[("CC", arr)])).unwrap();
        let keys: Vec<&str> = m.extra_routing_keys().iter().map(|k| &**k).collect();
        assert_eq!(keys, ["ok"]);
        assert!(
            m.stored_properties() == &m.properties,
            "no BCC: one set of properties"
        );
    }

    #[test]
    fn a_cc_or_bcc_that_is_not_an_array_refuses_the_publish() {
        let e = publish(props(&[("CC", FieldValue::LongStr(LongStr::from("q")))])).unwrap_err();
        assert_eq!(
            e,
            r#"invalid message: {unacceptable_type_in_header,"CC",longstr}"#
        );
        let e = publish(props(&[("BCC", FieldValue::I64(99))])).unwrap_err();
        assert_eq!(e, r#"invalid message: {unacceptable_type_in_header,"BCC",long}"#);
        // Read back leniently (cannot happen for a published message, but never panics).
        let m = Message::new(
            "x".into(),
            "rk".into(),
            props(&[("BCC", FieldValue::I64(9))]),
            Bytes::new(),
        );
        assert!(m.extra_routing_keys().is_empty());
        assert!(m.properties.headers().unwrap().unwrap().get("BCC").is_none());
    }
}
