//! AMQP argument tables: conversion for the router, and the checks RabbitMQ applies to queue arguments.

use protocol::{FieldTable, FieldValue, RawProperties};
use router::{ArgValue, Args, FloatType, IntType};

use crate::error::{AmqpError, AmqpResult};

pub fn to_router_value(v: &FieldValue) -> ArgValue {
    match v {
        FieldValue::Bool(b) => ArgValue::Bool(*b),
        FieldValue::I8(x) => ArgValue::Int(*x as i64, IntType::Byte),
        FieldValue::U8(x) => ArgValue::Int(*x as i64, IntType::UnsignedByte),
        FieldValue::I16(x) => ArgValue::Int(*x as i64, IntType::Short),
        FieldValue::U16(x) => ArgValue::Int(*x as i64, IntType::UnsignedShort),
        FieldValue::I32(x) => ArgValue::Int(*x as i64, IntType::SignedInt),
        FieldValue::U32(x) => ArgValue::Int(*x as i64, IntType::UnsignedInt),
        FieldValue::I64(x) => ArgValue::Int(*x, IntType::Long),
        FieldValue::F32(x) => ArgValue::Float(*x as f64, FloatType::Float),
        FieldValue::F64(x) => ArgValue::Float(*x, FloatType::Double),
        FieldValue::Decimal { scale, value } => ArgValue::Decimal(*scale, *value),
        FieldValue::LongStr(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(s) => ArgValue::Str(s.to_string()),
            Err(_) => ArgValue::Bytes(s.as_bytes().to_vec()),
        },
        FieldValue::Bytes(b) => ArgValue::Bytes(b.to_vec()),
        FieldValue::Array(a) => ArgValue::Array(a.iter().map(to_router_value).collect()),
        FieldValue::Timestamp(t) => ArgValue::Timestamp(*t),
        FieldValue::Table(t) => ArgValue::Table(to_router_args(t)),
        FieldValue::Void => ArgValue::Void,
    }
}

pub fn to_router_args(t: &FieldTable) -> Args {
    Args(
        t.iter()
            .map(|(k, v)| (k.as_str().to_string(), to_router_value(v)))
            .collect(),
    )
}

pub fn from_router_value(v: &ArgValue) -> FieldValue {
    match v {
        ArgValue::Str(s) => FieldValue::LongStr(protocol::LongStr::from(s.as_str())),
        ArgValue::Bytes(b) => FieldValue::Bytes(bytes::Bytes::copy_from_slice(b)),
        // The value came from a field of that type, so it fits.
        ArgValue::Int(i, t) => match t {
            IntType::Byte => FieldValue::I8(*i as i8),
            IntType::UnsignedByte => FieldValue::U8(*i as u8),
            IntType::Short => FieldValue::I16(*i as i16),
            IntType::UnsignedShort => FieldValue::U16(*i as u16),
            IntType::SignedInt => FieldValue::I32(*i as i32),
            IntType::UnsignedInt => FieldValue::U32(*i as u32),
            IntType::Long => FieldValue::I64(*i),
        },
        ArgValue::Float(f, FloatType::Float) => FieldValue::F32(*f as f32),
        ArgValue::Float(f, FloatType::Double) => FieldValue::F64(*f),
        ArgValue::Bool(b) => FieldValue::Bool(*b),
        ArgValue::Decimal(scale, value) => FieldValue::Decimal {
            scale: *scale,
            value: *value,
        },
        ArgValue::Timestamp(t) => FieldValue::Timestamp(*t),
        ArgValue::Array(a) => FieldValue::Array(a.iter().map(from_router_value).collect()),
        ArgValue::Table(t) => FieldValue::Table(from_router_args(t)),
        ArgValue::Void => FieldValue::Void,
    }
}

pub fn from_router_args(a: &Args) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in &a.0 {
        if let Ok(key) = protocol::ShortStr::try_from_str(k) {
            t.insert(key, from_router_value(v));
        }
    }
    t
}

/// The message's headers for headers-exchange matching; None when it has none (or they do not parse).
pub fn message_headers(props: &RawProperties) -> Option<Args> {
    if !props.has_headers() {
        return None;
    }
    match props.headers() {
        Ok(Some(t)) => Some(to_router_args(&t)),
        _ => None,
    }
}

/// RabbitMQ's name for a field value's type, as its error texts use.
pub fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
    }
}

fn show(v: &FieldValue) -> String {
    match v {
        FieldValue::LongStr(s) => s.to_string_lossy().to_string(),
        other => match other.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// Queue arguments RabbitMQ compares on redeclare.
const EQUIVALENCE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-delayed-retry-min",
    "x-delayed-retry-max",
    "x-delayed-retry-multiplier",
];

pub fn check_equivalent_args(
    current: &FieldTable,
    received: &FieldTable,
    queue: &str,
    vhost: &str,
) -> AmqpResult<()> {
    for key in EQUIVALENCE_ARGS {
        let (c, r) = (current.get(key), received.get(key));
        let same = match (c, r) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b || (a.as_i64().is_some() && a.as_i64() == b.as_i64()),
            _ => false,
        };
        if !same {
            let describe = |v: Option<&FieldValue>| match v {
                None => "none".to_string(),
                Some(v) => format!("the value '{}' of type '{}'", show(v), type_name(v)),
            };
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{key}' for queue '{queue}' in vhost '{vhost}': received {} but current is {}",
                describe(r),
                describe(c)
            )));
        }
    }
    Ok(())
}

/// Type and range checks of the queue arguments Mailroom understands (406 naming the argument, as RabbitMQ).
pub fn validate_queue_args(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<()> {
    if args.contains_key("x-dead-letter-routing-key") && !args.contains_key("x-dead-letter-exchange") {
        return Err(AmqpError::precondition_failed(format!(
            "invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': routing_key_but_no_dlx_defined"
        )));
    }
    let invalid = |key: &str, why: String| {
        AmqpError::precondition_failed(format!(
            "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
        ))
    };
    for (key, v) in args.iter() {
        let key = key.as_str();
        match key {
            "x-message-ttl"
            | "x-max-length"
            | "x-max-length-bytes"
            | "x-delivery-limit"
            | "x-delayed-retry-min"
            | "x-delayed-retry-max"
            | "x-delayed-retry-multiplier" => match v.as_i64() {
                Some(n) if n >= 0 => {}
                Some(n) => return Err(invalid(key, format!("{{value_negative,{n}}}"))),
                None => return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v)))),
            },
            "x-expires" => match v.as_i64() {
                Some(n) if n > 0 => {}
                Some(n) => return Err(invalid(key, format!("{{value_zero_or_less,{n}}}"))),
                None => return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v)))),
            },
            "x-max-priority" => match v.as_i64() {
                Some(n) if (0..=255).contains(&n) => {}
                Some(n) => return Err(invalid(key, format!("{{value_out_of_range,{n}}}"))),
                None => return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v)))),
            },
            "x-dead-letter-exchange" | "x-dead-letter-routing-key"
                if !matches!(v, FieldValue::LongStr(_)) =>
            {
                return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v))));
            }
            "x-overflow" => match v.as_str() {
                Some("drop-head" | "reject-publish" | "reject-publish-dlx") => {}
                _ => return Err(invalid(key, format!("{{unknown_overflow_mode,{}}}", show(v)))),
            },
            "x-single-active-consumer" if !matches!(v, FieldValue::Bool(_)) => {
                return Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v))));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LongStr;

    #[test]
    fn negative_ttl_names_the_argument() {
        let mut t = FieldTable::new();
        t.insert("x-message-ttl", FieldValue::I32(-1));
        let e = validate_queue_args(&t, "q", "/").unwrap_err();
        assert_eq!(e.code, 406);
        assert!(e.text.contains("x-message-ttl"), "{}", e.text);
        let mut t = FieldTable::new();
        t.insert("x-overflow", FieldValue::LongStr(LongStr::from("bogus")));
        assert!(validate_queue_args(&t, "q", "/").is_err());
    }

    #[test]
    fn equivalence_ignores_integer_width() {
        let mut a = FieldTable::new();
        a.insert("x-message-ttl", FieldValue::I32(5));
        let mut b = FieldTable::new();
        b.insert("x-message-ttl", FieldValue::I64(5));
        check_equivalent_args(&a, &b, "q", "/").unwrap();
        let e = check_equivalent_args(&a, &FieldTable::new(), "q", "/").unwrap_err();
        assert!(
            e.text.contains("received none but current is the value '5'"),
            "{}",
            e.text
        );
    }
}
