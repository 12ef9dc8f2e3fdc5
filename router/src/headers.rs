//! Headers-exchange matching, a transcription of RabbitMQ's
//! `rabbit_exchange_type_headers:headers_match/5` (a merge over the binding
//! arguments and the message headers, both sorted by key).

use crate::args::{ArgValue, Args};
use crate::{ErrorKind, RouterError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    fn is_all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }
    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }

    /// `parse_x_match/1`: anything unrecognised means `all` (legacy).
    pub fn of(args: &Args) -> XMatch {
        match args.get("x-match") {
            Some(ArgValue::Str(s)) => match s.as_str() {
                "any" => XMatch::Any,
                "all-with-x" => XMatch::AllWithX,
                "any-with-x" => XMatch::AnyWithX,
                _ => XMatch::All,
            },
            _ => XMatch::All,
        }
    }
}

/// `validate_binding/2` of the headers exchange type.
pub fn validate_binding(args: &Args) -> Result<(), RouterError> {
    match args.get("x-match") {
        None => Ok(()),
        Some(ArgValue::Str(s)) if matches!(s.as_str(), "all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
        Some(v @ ArgValue::Str(_)) => Err(RouterError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                v.erl_format()
            ),
        )),
        Some(v) => Err(RouterError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                v.type_name(),
                v.erl_format()
            ),
        )),
    }
}

/// Sort `order` (indices into `data`) by key, stable.
pub fn sort_data_order(data: &[(String, ArgValue)], order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..data.len() as u32);
    order.sort_unstable_by(|&a, &b| data[a as usize].0.cmp(&data[b as usize].0).then(a.cmp(&b)));
}

/// `pattern` must be key-sorted (stable); `order` is `data` sorted by key.
pub fn headers_match(
    pattern: &[(String, ArgValue)],
    mode: XMatch,
    data: &[(String, ArgValue)],
    order: &[u32],
) -> bool {
    let mut all = true;
    let mut any = false;
    let (mut p, mut d) = (0usize, 0usize);
    let is_all = mode.is_all();
    loop {
        if is_all && !all {
            return false;
        }
        if !is_all && any {
            return true;
        }
        if p == pattern.len() {
            return if is_all { all } else { any };
        }
        let (pk, pv) = &pattern[p];
        if pk == "x-match" || (!mode.with_x() && pk.starts_with("x-")) {
            p += 1;
            continue;
        }
        if d == order.len() {
            // "No more data, but still bindings, false with all".
            all = false;
            p = pattern.len();
            continue;
        }
        let (dk, dv) = &data[order[d] as usize];
        match pk.as_str().cmp(dk.as_str()) {
            std::cmp::Ordering::Greater => d += 1,
            std::cmp::Ordering::Less => {
                all = false;
                p += 1;
            }
            std::cmp::Ordering::Equal => {
                if matches!(pv, ArgValue::Void) || pv.matches_header(dv) {
                    any = true;
                } else {
                    all = false;
                }
                p += 1;
                d += 1;
            }
        }
    }
}
