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
/// Publishing calls it only when the route needs it (`router::Router::route_msg_lazy`).
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
    // a stream's (rabbit_stream_queue:capabilities() queue_arguments)
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
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

/// Integer types RabbitMQ accepts for integer arguments (`?INTEGER_ARG_TYPES` in rabbit_amqqueue.erl:
/// no timestamps, no floats).
fn arg_int(v: &FieldValue) -> Option<i64> {
    match v {
        FieldValue::Timestamp(_) => None,
        v => v.as_i64(),
    }
}

/// The longest a TTL or expiry may be: ten years in milliseconds (rabbit_misc:check_expiry/1).
const MAX_EXPIRY_MS: i64 = 315_360_000_000;

/// Queue types RabbitMQ knows (rabbit_queue_type:known_queue_type_names/0 with the core plugins).
pub const QUEUE_TYPES: &[&str] = &["classic", "quorum", "stream"];

/// One argument's check, as RabbitMQ's `declare_args()` validators in rabbit_amqqueue.erl: `Err` holds the
/// Erlang error term as RabbitMQ prints it after "invalid arg 'K' for queue 'Q' in vhost 'V': ".
fn check_arg(key: &str, v: &FieldValue, all: &FieldTable) -> Option<Result<(), String>> {
    // check_int_arg: "expected integer, got <type>" (a formatted string, so printed quoted).
    let int = || arg_int(v).ok_or_else(|| format!("\"expected integer, got {}\"", type_name(v)));
    let non_neg = || {
        int().and_then(|n| {
            if n >= 0 {
                Ok(n)
            } else {
                Err(format!("{{value_negative,{n}}}"))
            }
        })
    };
    let expiry = |n: i64| {
        if n < 0 {
            Err(format!("{{value_negative,{n}}}"))
        } else if n > MAX_EXPIRY_MS {
            Err(format!("{{value_too_large,{n}}}"))
        } else {
            Ok(())
        }
    };
    let longstr = || match v {
        FieldValue::LongStr(s) => Ok(s.to_string_lossy().to_string()),
        other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
    };
    let one_of = |allowed: &[&str], err: &dyn Fn(&str) -> String| {
        longstr().and_then(|s| {
            if allowed.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(err(&s))
            }
        })
    };
    let r = match key {
        "x-expires" => int().and_then(|n| if n == 0 { Err(format!("{{value_zero,{n}}}")) } else { expiry(n) }),
        "x-message-ttl" => int().and_then(expiry),
        "x-dead-letter-exchange" => longstr().map(drop),
        "x-dead-letter-routing-key" => longstr().and_then(|_| {
            if all.contains_key("x-dead-letter-exchange") {
                Ok(())
            } else {
                Err("routing_key_but_no_dlx_defined".to_string())
            }
        }),
        "x-dead-letter-strategy" => one_of(&["at-most-once", "at-least-once"], &|_| "invalid_dlx_strategy".into()),
        "x-max-length"
        | "x-max-length-bytes"
        | "x-max-in-memory-length"
        | "x-max-in-memory-bytes"
        | "x-consumer-timeout"
        | "x-consumer-disconnected-timeout"
        | "x-stream-max-segment-size-bytes"
        | "x-stream-filter-size-bytes"
        // Mailroom's own (LavinMQ's) arguments, checked the same way.
        | "x-delivery-limit"
        | "x-delayed-retry-min"
        | "x-delayed-retry-max"
        | "x-delayed-retry-multiplier" => non_neg().map(drop),
        "x-max-priority" => non_neg().and_then(|n| {
            if n <= 255 {
                Ok(())
            } else {
                Err(format!("{{max_value_exceeded,{n}}}"))
            }
        }),
        "x-overflow" => one_of(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            &|_| "invalid_overflow".into(),
        ),
        // RabbitMQ 4.0-4.2 (check_queue_mode; removed later together with lazy mode itself).
        "x-queue-mode" => one_of(&["default", "lazy"], &|s| format!("\"unsupported queue mode '{s}'\"")),
        "x-queue-version" => non_neg().and_then(|n| {
            if n == 1 || n == 2 {
                Ok(())
            } else {
                Err(format!("\"unsupported queue version '{n}'\""))
            }
        }),
        "x-single-active-consumer" => match v {
            FieldValue::Bool(_) => Ok(()),
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        "x-queue-type" => one_of(QUEUE_TYPES, &|s| format!("\"unsupported queue type '{s}'\"")),
        "x-quorum-initial-group-size" | "x-initial-cluster-size" => non_neg().and_then(|n| {
            if n == 0 {
                Err(format!("{{value_zero,{n}}}"))
            } else {
                Ok(())
            }
        }),
        "x-max-age" => longstr().and_then(|s| if max_age_ms(&s).is_some() { Ok(()) } else { Err("invalid_max_age".into()) }),
        "x-queue-leader-locator" => one_of(
            &["client-local", "balanced", "random", "least-leaders", "min-masters"],
            &|_| "invalid_queue_locator_arg".into(),
        ),
        "x-member-placement-tag" => longstr().and_then(|s| {
            if s.is_empty() {
                Err("invalid_member_placement_tag_arg".into())
            } else {
                Ok(())
            }
        }),
        _ => return None,
    };
    Some(r)
}

/// RabbitMQ's `x-max-age` (check_max_age/1): a positive integer and one unit of Y, M, D, h, m, s; in ms.
pub fn max_age_ms(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (value, unit) = s.split_at(digits);
    let value: u64 = value.parse().ok().filter(|v| *v > 0)?;
    let unit_ms: u64 = match unit {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return None,
    };
    value.checked_mul(unit_ms)
}

/// Type and range checks of the queue arguments RabbitMQ validates (its `declare_args()` list, with its error
/// terms), plus Mailroom's own: 406 naming the argument, the queue and the vhost, as RabbitMQ. Arguments no one
/// validates are kept as given, as RabbitMQ does.
pub fn validate_queue_args(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<()> {
    // RabbitMQ checks x-queue-type first, then the rest.
    let order = args
        .iter()
        .filter(|(k, _)| k.as_str() == "x-queue-type")
        .chain(args.iter().filter(|(k, _)| k.as_str() != "x-queue-type"));
    for (key, v) in order {
        let key = key.as_str();
        if let Some(Err(why)) = check_arg(key, v, args) {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}"
            )));
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
