//! The argument tables of queue.declare, exchange.declare and queue.bind, through the broker's and the
//! router's validation.
//!
//! Input: `[exchange-type selector][table body...]` (the table's length prefix is added). The table is used
//! as queue arguments, as exchange arguments and as binding arguments.
//!
//! Checks. Queue arguments: `validate_queue_args` either accepts or answers 406 naming an argument; once
//! accepted, `QueueArgs::parse` (what the queue runs with) is within the validated ranges (TTL and expiry at
//! most ten years, expiry > 0, overflow mode and single-active-consumer as given) and redeclaring with the same
//! table is equivalent. Exchange arguments: declaring twice with the same definition is `Existed`, never an
//! inequivalence (NaN and other odd values included). Binding arguments: a headers binding is accepted or
//! refused with 406 (x-match), an accepted binding is idempotent, can be unbound with the same table in any
//! order, and routing a message whose headers are that same table does not panic.

use protocol::FieldValue;
use router::{Args, Binding, Declared, ErrorKind, ExchangeDef, ExchangeKind, Router};

use crate::Input;

const MAX_EXPIRY_MS: u64 = 315_360_000_000;

fn queue_args(t: &protocol::FieldTable) {
    let parsed = broker::queue_args::QueueArgs::parse(t);
    if let Some(r) = parsed.retry {
        for n in [0, 1, 2, 63, 64, u32::MAX] {
            let _ = r.delay_ms(n);
        }
    }
    for (_, v) in t.iter() {
        if let Some(s) = v.as_str() {
            let _ = broker::args::max_age_ms(s);
        }
    }
    match broker::args::validate_queue_args(t, "fq", "/") {
        Ok(()) => {
            if let Some(ttl) = parsed.message_ttl {
                assert!(ttl <= MAX_EXPIRY_MS, "x-message-ttl {ttl} accepted");
            }
            if let Some(e) = parsed.expires {
                assert!(e > 0 && e <= MAX_EXPIRY_MS, "x-expires {e} accepted");
            }
            let overflow = t.get("x-overflow").and_then(|v| v.as_str());
            use broker::queue_args::Overflow;
            match parsed.overflow {
                Overflow::DropHead => assert!(matches!(overflow, None | Some("drop-head"))),
                Overflow::RejectPublish => assert_eq!(overflow, Some("reject-publish")),
                Overflow::RejectPublishDlx => assert_eq!(overflow, Some("reject-publish-dlx")),
            }
            assert_eq!(
                parsed.single_active_consumer,
                matches!(t.get("x-single-active-consumer"), Some(FieldValue::Bool(true)))
            );
            if let Some(p) = t.get("x-max-priority").and_then(|v| v.as_i64()) {
                assert_eq!(parsed.max_priority.map(i64::from), Some(p));
            }
            broker::args::check_equivalent_args(t, t, "fq", "/").expect("a table is equivalent to itself");
        }
        Err(e) => {
            assert_eq!(e.code, protocol::reply::PRECONDITION_FAILED, "{e:?}");
            assert!(
                e.text.starts_with("PRECONDITION_FAILED - invalid arg '"),
                "{}",
                e.text
            );
        }
    }
}

fn exchange_and_binding(kind: ExchangeKind, args: &Args) {
    let mut r = Router::new("/");
    let def = ExchangeDef {
        name: "fx".into(),
        kind,
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: args.clone(),
    };
    let _ = def.alternate_exchange();
    assert_eq!(r.declare_exchange(def.clone()), Ok(Declared::Created));
    assert_eq!(
        r.declare_exchange(def),
        Ok(Declared::Existed),
        "redeclare with the same arguments"
    );
    r.declare_queue("q".into());
    let b = Binding::queue("fx", "q", "rk").with_args(args.clone());
    match r.bind(b.clone()) {
        Ok(new) => {
            assert!(new);
            assert_eq!(r.bind(b.clone()), Ok(false), "binding twice");
            // Identity is the key-sorted table (a stable sort, as RabbitMQ's sort_field_table), so with unique
            // keys the order given must not matter.
            let mut reversed = b.clone();
            let mut keys: Vec<&str> = args.0.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            if keys.len() == args.len() {
                reversed.arguments.0.reverse();
                assert_eq!(
                    r.bind(reversed.clone()),
                    Ok(false),
                    "argument order changes binding identity"
                );
            }
            let mut out = Vec::new();
            r.route("fx", "rk", Some(args), &mut out).expect("route");
            let (removed, _) = r.unbind(&reversed).expect("unbind");
            assert!(removed);
            assert_eq!(r.binding_count(), 0);
        }
        Err(e) => {
            assert_eq!(kind, ExchangeKind::Headers, "{e:?}");
            assert_eq!(e.kind, ErrorKind::PreconditionFailed);
            assert!(e.text.starts_with("Invalid x-match field"), "{}", e.text);
        }
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let kind = inp.choose(&[
        ExchangeKind::Headers,
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
    ]);
    let Ok(t) = crate::table_from_body(inp.rest()) else {
        return;
    };
    queue_args(&t);
    exchange_and_binding(kind, &broker::args::to_router_args(&t));
}
