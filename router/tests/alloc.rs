//! `route` must not allocate once its scratch space and the caller's output
//! vector have grown to size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use router::*;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

#[test]
fn route_does_not_allocate_in_steady_state() {
    let mut r = Router::new("/");
    for q in 0..50 {
        r.declare_queue(format!("q{q}").as_str().into());
    }
    for i in 0..50 {
        let q = format!("q{i}");
        r.bind(Binding::queue("amq.topic", &q, &format!("a.{i}.#")))
            .unwrap();
        r.bind(Binding::queue("amq.topic", &q, "*.x.#")).unwrap();
        r.bind(Binding::queue("amq.direct", &q, &format!("k{}", i % 5)))
            .unwrap();
        r.bind(Binding::queue("amq.fanout", &q, "")).unwrap();
        r.bind(
            Binding::queue("amq.headers", &q, "").with_args(
                Args::new()
                    .with("x-match", ArgValue::Str("any".into()))
                    .with("n", ArgValue::long(i % 3)),
            ),
        )
        .unwrap();
    }
    // e2e with a cycle and an alternate exchange.
    let mut d = ExchangeDef::new("e", ExchangeKind::Topic);
    d.arguments = Args::new().with("alternate-exchange", ArgValue::Str("amq.fanout".into()));
    r.declare_exchange(d).unwrap();
    r.bind(Binding::exchange("e", "amq.direct", "k.#")).unwrap();
    r.bind(Binding::exchange("amq.direct", "e", "k1")).unwrap();
    let hdrs = Args::new()
        .with("n", ArgValue::long(1))
        .with("z", ArgValue::Bool(true));
    let calls: Vec<(&str, &str, Option<&Args>)> = vec![
        ("amq.topic", "a.7.b.c", None),
        ("amq.topic", "z.x.y", None),
        ("amq.topic", "", None),
        ("amq.direct", "k1", None),
        ("amq.fanout", "", None),
        ("amq.headers", "", Some(&hdrs)),
        ("e", "k.1", None),
        ("e", "nothing", None),
        ("", "q3", None),
    ];
    let mut out = Vec::with_capacity(64);
    for (x, k, h) in &calls {
        r.route(x, k, *h, &mut out).unwrap();
    }
    let before = allocs();
    for _ in 0..200 {
        for (x, k, h) in &calls {
            r.route(x, k, *h, &mut out).unwrap();
        }
    }
    assert_eq!(allocs() - before, 0, "route allocated");
}
