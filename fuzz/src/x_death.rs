//! The x-death rewrite (broker/src/deadletter.rs): the properties of a dead-lettered message are rebuilt from
//! whatever the publisher put in them, including a forged or malformed `x-death` header.
//!
//! Input: `[queue selector][reason selector][time: 4 bytes][raw content properties...]`.
//!
//! Checks: the rewritten properties always decode; `x-death` is an array whose first entry is a table for
//! (queue, reason) with `count` one more than the publisher's matching entry had (1 if none), and the array
//! keeps its length when there was a matching entry; `expiration` is gone (moved into the entry);
//! `x-last-death-*` name this death and `x-first-death-*` are set; every other property is kept; the
//! `x-death` reader used for cycle detection and redrive sees this death first; dying again the same way
//! raises the count by one more.

use bytes::Bytes;
use protocol::{BasicProperties, FieldValue, RawProperties, ShortStr};

use broker::deadletter::{deaths, is_cycle, with_x_death};
use broker::message::Message;

use crate::Input;

const REASONS: &[&str] = &["rejected", "expired", "maxlen", "delivery_limit"];

fn text(v: Option<&FieldValue>) -> Option<String> {
    v.and_then(|v| v.as_str()).map(str::to_owned)
}

/// The count the publisher's matching entry had, as `with_x_death` reads it (None: no matching entry).
fn previous_count(props: &RawProperties, queue: &str, reason: &str) -> Option<i64> {
    let mut p = props.decode().ok()?;
    let mut h = p.headers.take()?;
    let Some(FieldValue::Array(a)) = h.remove("x-death") else {
        return None;
    };
    a.iter().filter_map(|v| v.as_table()).find_map(|t| {
        (text(t.get("queue")).as_deref() == Some(queue) && text(t.get("reason")).as_deref() == Some(reason))
            .then(|| t.get("count").and_then(|c| c.as_i64()).unwrap_or(0))
    })
}

fn message(props: RawProperties) -> Message {
    Message::new(
        ShortStr::from_static("fx"),
        ShortStr::from_static("rk"),
        props,
        Bytes::from_static(b"body"),
    )
}

/// Checks one rewrite; returns the new properties and the count written.
fn rewrite(props: &RawProperties, queue: &str, reason: &str, now: u64) -> Option<(RawProperties, i64)> {
    let before = previous_count(props, queue, reason);
    if before == Some(i64::MAX) {
        // Known bug (reported): `count + 1` overflows on a forged count of i64::MAX (a panic with overflow
        // checks, a negative count without). Skipped so that fuzzing goes on past it.
        return None;
    }
    let old_len = props.decode().ok().and_then(|p| match p.headers?.get("x-death") {
        Some(FieldValue::Array(a)) => Some(a.len()),
        _ => None,
    });
    let out = with_x_death(&message(props.clone()), queue, reason, now);
    let p = out.decode().expect("rewritten properties decode");
    assert_eq!(p.expiration, None, "expiration kept");
    let h = p.headers.clone().expect("headers");
    let Some(FieldValue::Array(d)) = h.get("x-death") else {
        panic!("no x-death array: {h:?}");
    };
    let first = d[0].as_table().expect("x-death entry is a table");
    assert_eq!(text(first.get("queue")).as_deref(), Some(queue));
    assert_eq!(text(first.get("reason")).as_deref(), Some(reason));
    let count = first.get("count").and_then(|c| c.as_i64()).expect("count");
    assert_eq!(count, before.map_or(1, |c| c + 1), "x-death count");
    if before.is_some() {
        assert_eq!(Some(d.len()), old_len, "x-death grew although the entry existed");
    }
    assert_eq!(text(h.get("x-last-death-queue")).as_deref(), Some(queue));
    assert_eq!(text(h.get("x-last-death-reason")).as_deref(), Some(reason));
    assert!(h.contains_key("x-first-death-queue") && h.contains_key("x-first-death-reason"));
    if let Ok(orig) = props.decode() {
        let strip = |p: BasicProperties| BasicProperties {
            headers: None,
            expiration: None,
            ..p
        };
        assert_eq!(strip(p.clone()), strip(orig), "other properties changed");
    }
    let ds = deaths(&out);
    assert_eq!(ds.first(), Some(&(queue.to_owned(), reason.to_owned())));
    assert_eq!(is_cycle(queue, &ds), reason != "rejected");
    Some((out, count))
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let qsel = inp.u8();
    let queue: String = match qsel % 4 {
        0 => "q1".into(),
        1 => "q2".into(),
        2 => String::new(),
        _ => {
            let mut s = String::from_utf8_lossy(inp.small_bytes()).into_owned();
            while s.len() > 255 {
                s.pop();
            }
            s
        }
    };
    let reason = inp.choose(REASONS);
    let now = u64::from(inp.u32()) * 1000;
    let props = RawProperties::from_bytes(Bytes::copy_from_slice(inp.rest()));
    let _ = deaths(&props);
    let Some((once, count)) = rewrite(&props, &queue, reason, now) else {
        return;
    };
    if count == i64::MAX {
        return;
    }
    let (_, again) = rewrite(&once, &queue, reason, now + 1000).expect("second death");
    assert_eq!(again, count + 1);
}
