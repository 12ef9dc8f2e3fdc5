use super::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn smoke() {
    let d = tmp();
    let s = Store::open(d.path(), StoreOptions::default()).unwrap();
    let m = StoredMessage {
        body: bytes::Bytes::from_static(b"hi"),
        ..Default::default()
    };
    let t = s.append_message(1, 1, &m).unwrap();
    s.flush_blocking().unwrap();
    assert!(*s.durable_watch().borrow() >= t);
}
