//! The hot-path decoders do not allocate: basic.publish / basic.deliver / basic.ack
//! method frames and the RawProperties accessors.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use protocol::bytes::BytesMut;
use protocol::*;
use tokio_util::codec::Decoder;

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

fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCS.with(|c| c.get());
    let r = f();
    (ALLOCS.with(|c| c.get()) - before, r)
}

#[test]
fn hot_path_decoding_does_not_allocate() {
    let (n, _) = allocations(|| std::hint::black_box(Box::new(1u64)));
    assert_eq!(n, 1, "the counting allocator works");
    let mut h = FieldTable::new();
    h.insert("x", FieldValue::from("y"));
    let props = RawProperties::from_properties(&BasicProperties {
        delivery_mode: Some(2),
        priority: Some(3),
        headers: Some(h),
        expiration: Some("1000".into()),
        user_id: Some("guest".into()),
        ..Default::default()
    });
    let methods: Vec<Method> = vec![
        BasicPublish {
            exchange: "amq.topic".into(),
            routing_key: "a.b.c".into(),
            mandatory: true,
            immediate: false,
        }
        .into(),
        BasicDeliver {
            consumer_tag: "amq.ctag-1".into(),
            delivery_tag: 7,
            redelivered: false,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        }
        .into(),
        BasicAck {
            delivery_tag: 9,
            multiple: true,
        }
        .into(),
    ];
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for m in &methods {
        // warm-up frame: split off the buffer (basic.ack no longer is: the codec reads it in place)
        write_method(&mut buf, 1, &protocol::BasicReject::default().into());
        write_method(&mut buf, 1, m);
        write_content(&mut buf, 1, 60, &props, b"body", 4096);
    }
    let mut codec = FrameCodec::new();
    for m in &methods {
        // The first split of a fresh buffer may promote it to shared storage (once).
        codec.decode(&mut buf).unwrap().unwrap();
        let (n, f) = allocations(|| codec.decode(&mut buf).unwrap().unwrap());
        assert_eq!(f, Frame::Method(1, m.clone()));
        assert_eq!(n, 0, "decoding {} allocated", m.name());
        let (n, f) = allocations(|| codec.decode(&mut buf).unwrap().unwrap());
        assert_eq!(n, 0, "decoding a content header allocated");
        let Frame::Header(_, header) = f else { panic!() };
        let (n, v) = allocations(|| {
            let p = &header.properties;
            (
                p.delivery_mode(),
                p.priority(),
                p.expiration().map(str::len),
                p.user_id().map(str::len),
                p.has_headers(),
            )
        });
        assert_eq!(n, 0, "RawProperties accessors allocated");
        assert_eq!(v, (Some(2), Some(3), Some(4), Some(5), true));
        let (n, f) = allocations(|| codec.decode(&mut buf).unwrap().unwrap());
        assert_eq!(n, 0, "decoding a body frame allocated");
        assert!(matches!(f, Frame::Body(1, b) if &b[..] == b"body"));
    }
}
