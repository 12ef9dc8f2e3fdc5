//! A stream consumer's arguments, as RabbitMQ reads them (rabbit_stream_queue:parse_offset_arg/1 and
//! filter_spec/1) plus LavinMQ's server-side offset tracking.

use protocol::{FieldTable, FieldValue, ShortStr};
use storage::StreamStart;

use crate::args::{max_age_ms, type_name};

/// `x-stream-filter` / `x-stream-match-unfiltered`: which filter values a consumer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    values: Vec<Vec<u8>>,
    match_unfiltered: bool,
}

impl Filter {
    /// Whether a message with filter value `v` (None: published without one) is delivered.
    pub fn accepts(&self, v: Option<&[u8]>) -> bool {
        match v {
            None => self.match_unfiltered,
            Some(v) => self.values.iter().any(|x| x == v),
        }
    }
}

/// How a consumer reads a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeSpec {
    /// Where it starts when it has no stored offset.
    pub start: StreamStart,
    pub filter: Option<Filter>,
    /// Server-side offset tracking under this consumer tag.
    pub tracking: Option<ShortStr>,
}

/// Reads the consumer arguments of a stream consumer with tag `tag`. `Err` holds RabbitMQ's error term for
/// "invalid arg 'x-stream-offset' for queue '…' in vhost '…': <term>".
pub fn parse(args: &FieldTable, tag: &ShortStr, now_ms: u64) -> Result<ConsumeSpec, String> {
    let offset = args.get("x-stream-offset");
    let start = match offset {
        None => StreamStart::Next,
        Some(v) => parse_offset(v, now_ms).ok_or_else(|| {
            format!(
                "{{invalid_stream_offset_arg,{{{},{}}}}}",
                type_name(v),
                erlang_value(v)
            )
        })?,
    };
    let filter = filter(args);
    // LavinMQ: a consumer tag of the client's own and no x-stream-offset, or the flag, turns tracking on.
    let tracking = match args.get("x-stream-automatic-offset-tracking").and_then(flag) {
        Some(true) => true,
        Some(false) => false,
        None => offset.is_none() && !tag.as_str().starts_with("amq.ctag-"),
    };
    Ok(ConsumeSpec {
        start,
        filter,
        tracking: tracking.then(|| tag.clone()),
    })
}

/// A boolean argument (LavinMQ accepts "true"/"false" strings too).
fn flag(v: &FieldValue) -> Option<bool> {
    match v {
        FieldValue::Bool(b) => Some(*b),
        FieldValue::LongStr(s) => match s.as_str()? {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn parse_offset(v: &FieldValue, now_ms: u64) -> Option<StreamStart> {
    match v {
        FieldValue::LongStr(s) => match s.as_str()? {
            "first" => Some(StreamStart::First),
            "last" => Some(StreamStart::Last),
            "next" => Some(StreamStart::Next),
            // an interval (RabbitMQ's x-max-age format): from that long ago
            other => max_age_ms(other).map(|ms| StreamStart::Timestamp(now_ms.saturating_sub(ms))),
        },
        // AMQP timestamps are seconds
        FieldValue::Timestamp(secs) => Some(StreamStart::Timestamp(secs.saturating_mul(1000))),
        FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_)
        | FieldValue::I32(_)
        | FieldValue::U32(_)
        | FieldValue::I64(_) => v
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .map(StreamStart::Offset),
        _ => None,
    }
}

fn erlang_value(v: &FieldValue) -> String {
    match v {
        FieldValue::LongStr(s) => format!("<<\"{}\">>", s.to_string_lossy()),
        other => match other.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

fn filter(args: &FieldTable) -> Option<Filter> {
    let values: Vec<Vec<u8>> = match args.get("x-stream-filter")? {
        FieldValue::LongStr(s) => vec![s.as_bytes().to_vec()],
        FieldValue::Array(a) => a
            .iter()
            .filter_map(|v| match v {
                FieldValue::LongStr(s) => Some(s.as_bytes().to_vec()),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    let match_unfiltered = args
        .get("x-stream-match-unfiltered")
        .and_then(FieldValue::as_bool)
        .unwrap_or(false);
    Some(Filter {
        values,
        match_unfiltered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LongStr;

    fn args(k: &str, v: FieldValue) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert(k, v);
        t
    }
    fn s(v: &str) -> FieldValue {
        FieldValue::LongStr(LongStr::from(v))
    }

    #[test]
    fn offset_specs() {
        let tag = ShortStr::from_static("amq.ctag-1");
        let p = |v| {
            parse(&args("x-stream-offset", v), &tag, 10_000_000)
                .unwrap()
                .start
        };
        assert_eq!(p(s("first")), StreamStart::First);
        assert_eq!(p(s("last")), StreamStart::Last);
        assert_eq!(p(s("next")), StreamStart::Next);
        assert_eq!(p(FieldValue::I64(42)), StreamStart::Offset(42));
        assert_eq!(p(FieldValue::U8(3)), StreamStart::Offset(3));
        assert_eq!(p(FieldValue::Timestamp(1_700)), StreamStart::Timestamp(1_700_000));
        assert_eq!(p(s("30m")), StreamStart::Timestamp(10_000_000 - 30 * 60_000));
        assert_eq!(p(s("2h")), StreamStart::Timestamp(10_000_000 - 2 * 3_600_000));
        assert_eq!(
            parse(&FieldTable::new(), &tag, 0).unwrap().start,
            StreamStart::Next
        );
        let e = parse(&args("x-stream-offset", s("bogus")), &tag, 0).unwrap_err();
        assert_eq!(e, "{invalid_stream_offset_arg,{longstr,<<\"bogus\">>}}");
        assert!(parse(&args("x-stream-offset", FieldValue::I64(-1)), &tag, 0).is_err());
        assert!(parse(&args("x-stream-offset", FieldValue::Bool(true)), &tag, 0).is_err());
    }

    #[test]
    fn tracking_follows_lavinmq() {
        let own = ShortStr::from_static("billing");
        let gen = ShortStr::from_static("amq.ctag-x");
        assert_eq!(
            parse(&FieldTable::new(), &own, 0).unwrap().tracking,
            Some(own.clone())
        );
        assert_eq!(parse(&FieldTable::new(), &gen, 0).unwrap().tracking, None);
        assert_eq!(
            parse(&args("x-stream-offset", s("first")), &own, 0)
                .unwrap()
                .tracking,
            None
        );
        let mut t = args("x-stream-offset", s("first"));
        t.insert("x-stream-automatic-offset-tracking", FieldValue::Bool(true));
        assert_eq!(parse(&t, &own, 0).unwrap().tracking, Some(own.clone()));
        let t = args("x-stream-automatic-offset-tracking", FieldValue::Bool(false));
        assert_eq!(parse(&t, &own, 0).unwrap().tracking, None);
    }

    #[test]
    fn filters() {
        let tag = ShortStr::from_static("amq.ctag-1");
        let f = parse(&args("x-stream-filter", s("eu")), &tag, 0)
            .unwrap()
            .filter
            .unwrap();
        assert!(f.accepts(Some(b"eu")) && !f.accepts(Some(b"us")) && !f.accepts(None));
        let mut t = args("x-stream-filter", FieldValue::Array(vec![s("eu"), s("us")]));
        t.insert("x-stream-match-unfiltered", FieldValue::Bool(true));
        let f = parse(&t, &tag, 0).unwrap().filter.unwrap();
        assert!(f.accepts(Some(b"us")) && f.accepts(None) && !f.accepts(Some(b"ap")));
        assert!(parse(&FieldTable::new(), &tag, 0).unwrap().filter.is_none());
    }
}
