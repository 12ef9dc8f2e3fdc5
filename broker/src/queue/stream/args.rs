//! A stream's queue arguments: retention (`x-max-length-bytes`, `x-max-age`) and segment size
//! (`x-stream-max-segment-size-bytes`), and RabbitMQ's checks of a stream declaration
//! (rabbit_stream_queue:declare/2, rabbit_amqqueue:check_declare_arguments/3).

use protocol::{FieldTable, FieldValue};

use crate::args::max_age_ms;
use crate::error::{AmqpError, AmqpResult};

/// RabbitMQ's default `x-stream-max-segment-size-bytes` (500 MB).
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 500_000_000;
/// RabbitMQ's `?MAX_STREAM_MAX_SEGMENT_SIZE` (rabbit.hrl).
pub const MAX_SEGMENT_BYTES: i64 = 3_000_000_000;

/// Queue arguments of the other queue types that a stream refuses: RabbitMQ's known queue arguments minus
/// rabbit_stream_queue:capabilities()'s `queue_arguments` (and Mailroom's own classic-queue arguments).
const NOT_FOR_STREAMS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
    "x-quorum-target-group-size",
    "x-queue-master-locator",
    "x-member-placement-tag",
    "x-consumer-timeout",
    "x-consumer-disconnected-timeout",
    "x-delayed-retry-type",
    "x-delayed-retry-min",
    "x-delayed-retry-max",
    "x-delayed-retry-multiplier",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamArgs {
    pub max_bytes: Option<u64>,
    pub max_age_ms: Option<u64>,
    pub max_segment_bytes: u64,
}

impl StreamArgs {
    /// The arguments as declared (already checked by `check_declare`).
    pub fn parse(args: &FieldTable) -> StreamArgs {
        let int = |k: &str| {
            args.get(k)
                .and_then(FieldValue::as_i64)
                .and_then(|v| u64::try_from(v).ok())
        };
        StreamArgs {
            max_bytes: int("x-max-length-bytes"),
            max_age_ms: args
                .get("x-max-age")
                .and_then(FieldValue::as_str)
                .and_then(max_age_ms),
            max_segment_bytes: int("x-stream-max-segment-size-bytes")
                .filter(|v| *v > 0)
                .unwrap_or(DEFAULT_MAX_SEGMENT_BYTES),
        }
    }
}

/// A stream must be durable, not exclusive, not auto-delete, and take only a stream's arguments; 406 with
/// RabbitMQ's texts otherwise. RabbitMQ checks the arguments first (at declare), then the properties and
/// the segment and filter sizes (rabbit_stream_queue:declare/2).
pub fn check_declare(
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &FieldTable,
    queue: &str,
    vhost: &str,
) -> AmqpResult<()> {
    let rs = format!("queue '{queue}' in vhost '{vhost}'");
    for (k, _) in args.iter() {
        if NOT_FOR_STREAMS.contains(&k.as_str()) {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg '{}' for {rs} of queue type rabbit_stream_queue",
                k.as_str()
            )));
        }
    }
    if auto_delete {
        return Err(AmqpError::precondition_failed(format!(
            "invalid property 'auto-delete' for {rs}"
        )));
    }
    if exclusive {
        return Err(AmqpError::precondition_failed(format!(
            "invalid property 'exclusive-owner' for {rs}"
        )));
    }
    if !durable {
        return Err(AmqpError::precondition_failed(format!(
            "invalid property 'non-durable' for {rs}"
        )));
    }
    if let Some(v) = args.get("x-stream-max-segment-size-bytes") {
        if v.as_i64().is_some_and(|n| n > MAX_SEGMENT_BYTES) {
            return Err(AmqpError::precondition_failed(
                "Exceeded max value for x-stream-max-segment-size-bytes",
            ));
        }
    }
    if let Some(v) = args.get("x-stream-filter-size-bytes") {
        match v {
            FieldValue::I8(_)
            | FieldValue::U8(_)
            | FieldValue::I16(_)
            | FieldValue::U16(_)
            | FieldValue::I32(_)
            | FieldValue::U32(_)
            | FieldValue::I64(_) => {
                if v.as_i64().is_some_and(|n| !(16..=255).contains(&n)) {
                    return Err(AmqpError::precondition_failed(
                        "Invalid value for x-stream-filter-size-bytes",
                    ));
                }
            }
            _ => {
                return Err(AmqpError::precondition_failed(
                    "Invalid type for x-stream-filter-size-bytes",
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LongStr;

    #[test]
    fn properties_and_arguments_are_checked_with_rabbitmqs_texts() {
        let text = |e: AmqpError| e.text.trim_start_matches("PRECONDITION_FAILED - ").to_string();
        let t = FieldTable::new();
        let e = check_declare(true, false, true, &t, "s", "/").unwrap_err();
        assert_eq!(
            text(e),
            "invalid property 'auto-delete' for queue 's' in vhost '/'"
        );
        let e = check_declare(true, true, false, &t, "s", "/").unwrap_err();
        assert_eq!(
            text(e),
            "invalid property 'exclusive-owner' for queue 's' in vhost '/'"
        );
        let e = check_declare(false, false, false, &t, "s", "/").unwrap_err();
        assert_eq!(e.code, 406);
        assert_eq!(
            text(e),
            "invalid property 'non-durable' for queue 's' in vhost '/'"
        );
        let mut t = FieldTable::new();
        t.insert("x-message-ttl", FieldValue::I32(5));
        let e = check_declare(false, false, false, &t, "s", "/").unwrap_err();
        assert_eq!(
            text(e),
            "invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
        );
        let mut t = FieldTable::new();
        t.insert("x-stream-max-segment-size-bytes", FieldValue::I64(3_000_000_001));
        assert!(check_declare(true, false, false, &t, "s", "/").is_err());
        check_declare(true, false, false, &FieldTable::new(), "s", "/").unwrap();
    }

    #[test]
    fn parses_retention() {
        let mut t = FieldTable::new();
        t.insert("x-max-length-bytes", FieldValue::I64(1000));
        t.insert("x-max-age", FieldValue::LongStr(LongStr::from("12h")));
        t.insert("x-stream-max-segment-size-bytes", FieldValue::I32(4096));
        let a = StreamArgs::parse(&t);
        assert_eq!(
            a,
            StreamArgs {
                max_bytes: Some(1000),
                max_age_ms: Some(12 * 3_600_000),
                max_segment_bytes: 4096
            }
        );
        assert_eq!(
            StreamArgs::parse(&FieldTable::new()).max_segment_bytes,
            DEFAULT_MAX_SEGMENT_BYTES
        );
    }
}
