//! The broker over a store whose writes or syncs fail (the store's test-only fault layer, armed in-process):
//! publishes whose flush round failed are nacked under confirms and confirms resume by themselves when the
//! fault is gone; a durable declare that cannot be made durable closes the connection with 541 and is undone;
//! one the store refuses at once changes nothing. docs/durability.md, section 5. (The end-to-end version,
//! with an LD_PRELOAD shim on the real binary, is part of `make test-power-loss`'s suite.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use broker::config::Config;
use broker::Server;
use bytes::BytesMut;
use protocol::{BasicProperties, Frame, FrameCodec, Method, RawProperties};
use storage::{FaultOp, FileKind};
use tokio_util::sync::CancellationToken;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

struct Broker {
    addr: SocketAddr,
    store: storage::Store,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            listen_is_default: false,
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(config).await.unwrap();
                tx.send((server.local_addr(), server.broker.store.clone()))
                    .unwrap();
                server.run(stop).await;
            });
        });
        let (addr, store) = rx.recv().unwrap();
        Broker {
            addr,
            store,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.store.faults().clear();
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small blocking client: handshake, methods, publishes, frames.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(0);
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            codec,
        };
        c.stream.write_all(&protocol::PROTOCOL_HEADER).unwrap();
        assert!(matches!(c.method(), Method::ConnectionStart(_)));
        c.send(
            0,
            Method::from(protocol::ConnectionStartOk {
                client_properties: protocol::FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: protocol::LongStr::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            }),
        );
        let Method::ConnectionTune(t) = c.method() else {
            panic!("expected tune")
        };
        c.send(
            0,
            Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
                channel_max: t.channel_max,
                frame_max: 131_072,
                heartbeat: 0,
            }),
        );
        c.send(
            0,
            Method::ConnectionOpen(protocol::ConnectionOpen {
                virtual_host: "/".into(),
            }),
        );
        assert!(matches!(c.method(), Method::ConnectionOpenOk(_)));
        c.send(1, Method::ChannelOpen(protocol::ChannelOpen));
        assert!(matches!(c.method(), Method::ChannelOpenOk(_)));
        c
    }

    fn send(&mut self, ch: u16, m: Method) {
        let mut b = BytesMut::new();
        protocol::write_method(&mut b, ch, &m);
        self.stream.write_all(&b).unwrap();
    }

    fn frame(&mut self) -> Option<Frame> {
        use tokio_util::codec::Decoder;
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn method(&mut self) -> Method {
        loop {
            match self.frame() {
                Some(Frame::Method(_, m)) => return m,
                Some(_) => continue,
                None => panic!("connection closed while waiting for a method"),
            }
        }
    }

    fn declare(&mut self, name: &str, durable: bool) -> Method {
        self.send(
            1,
            Method::QueueDeclare(protocol::QueueDeclare {
                queue: name.into(),
                durable,
                ..Default::default()
            }),
        );
        self.method()
    }

    fn publish_persistent(&mut self, queue: &str, body: &[u8]) {
        let props: RawProperties = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        }
        .into();
        let mut b = BytesMut::new();
        protocol::write_method(
            &mut b,
            1,
            &Method::BasicPublish(protocol::BasicPublish {
                exchange: "".into(),
                routing_key: queue.into(),
                mandatory: false,
                immediate: false,
            }),
        );
        protocol::write_content(&mut b, 1, protocol::CLASS_BASIC, &props, body, 131_072);
        self.stream.write_all(&b).unwrap();
    }

    /// Reads confirms until every tag in `1..=upto` (counted from `from`) is acked or nacked; returns the
    /// (acked, nacked) tags.
    fn confirms(&mut self, from: u64, upto: u64) -> (Vec<u64>, Vec<u64>) {
        let (mut acked, mut nacked) = (Vec::new(), Vec::new());
        let mut seen = from - 1;
        while seen < upto {
            match self.method() {
                Method::BasicAck(a) => {
                    let first = if a.multiple { seen + 1 } else { a.delivery_tag };
                    acked.extend(first..=a.delivery_tag);
                    seen = seen.max(a.delivery_tag);
                }
                Method::BasicNack(n) => {
                    let first = if n.multiple { seen + 1 } else { n.delivery_tag };
                    nacked.extend(first..=n.delivery_tag);
                    seen = seen.max(n.delivery_tag);
                }
                other => panic!("expected a confirm, got {other:?}"),
            }
        }
        (acked, nacked)
    }

    fn expect_connection_close(&mut self) -> (u16, String) {
        loop {
            match self.frame() {
                Some(Frame::Method(0, Method::ConnectionClose(c))) => {
                    self.send(0, Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                    return (c.reply_code, c.reply_text.to_string());
                }
                Some(_) => continue,
                None => panic!("closed without connection.close"),
            }
        }
    }
}

#[test]
fn publishes_whose_flush_fails_are_nacked_and_confirms_resume_without_a_restart() {
    for (kind, errno) in [
        (FileKind::Segment, ENOSPC),
        (FileKind::Segment, EIO),
        (FileKind::Sled, EIO),
    ] {
        let b = Broker::start();
        let mut c = Client::open(b.addr);
        assert!(matches!(c.declare("q", true), Method::QueueDeclareOk(_)));
        c.send(
            1,
            Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
        );
        assert!(matches!(c.method(), Method::ConfirmSelectOk(_)));
        c.publish_persistent("q", b"before");
        assert_eq!(c.confirms(1, 1), (vec![1], vec![]));
        // every sync of that kind of file fails from now on
        b.store.faults().fail(kind, FaultOp::Sync, errno, None);
        if kind == FileKind::Sled {
            // something must write to sled (a consumer's delivered marks would; a durable declare does
            // here): its round fails, sled is broken, and every round fails until it is rebuilt
            let mut other = Client::open(b.addr);
            other.send(
                1,
                Method::QueueDeclare(protocol::QueueDeclare {
                    queue: "touch-sled".into(),
                    durable: true,
                    ..Default::default()
                }),
            );
            assert_eq!(other.expect_connection_close().0, 541);
        }
        for i in 0..10 {
            c.publish_persistent("q", format!("during {i}").as_bytes());
        }
        let (acked, nacked) = c.confirms(2, 11);
        assert_eq!(
            nacked,
            (2..=11).collect::<Vec<_>>(),
            "{kind:?} {errno}: acked {acked:?}"
        );
        // the cause goes: confirms resume, no restart
        b.store.faults().clear();
        for i in 0..10 {
            c.publish_persistent("q", format!("after {i}").as_bytes());
        }
        let (acked, nacked) = c.confirms(12, 21);
        assert_eq!(
            (acked, nacked),
            ((12..=21).collect::<Vec<_>>(), vec![]),
            "{kind:?} {errno}"
        );
    }
}

#[test]
fn a_durable_declare_that_cannot_be_made_durable_fails_with_541_and_is_undone() {
    let b = Broker::start();
    let mut c = Client::open(b.addr);
    b.store.faults().fail(FileKind::Sled, FaultOp::Sync, EIO, None);
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "d".into(),
            durable: true,
            ..Default::default()
        }),
    );
    let (code, text) = c.expect_connection_close();
    assert_eq!(code, 541, "{text}");
    assert!(
        text.contains("queue.declare of 'd' could not be made durable") && text.contains("it was undone"),
        "{text}"
    );
    b.store.faults().clear();
    let mut c = Client::open(b.addr);
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "d".into(),
            passive: true,
            ..Default::default()
        }),
    );
    match c.method() {
        Method::ChannelClose(cl) => assert_eq!(cl.reply_code, 404, "{}", cl.reply_text),
        other => panic!("the undone queue exists: {other:?}"),
    }
    // and a durable declare works again
    let mut c = Client::open(b.addr);
    assert!(matches!(c.declare("d", true), Method::QueueDeclareOk(_)));
}

#[test]
fn a_declare_the_store_refuses_at_once_changes_nothing() {
    let b = Broker::start();
    let mut c = Client::open(b.addr);
    b.store
        .faults()
        .fail(FileKind::Sled, FaultOp::Write, ENOSPC, Some(1));
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "e".into(),
            durable: true,
            ..Default::default()
        }),
    );
    let (code, text) = c.expect_connection_close();
    assert_eq!(code, 541, "{text}");
    assert!(text.contains("could not store the change"), "{text}");
    let mut c = Client::open(b.addr);
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "e".into(),
            passive: true,
            ..Default::default()
        }),
    );
    match c.method() {
        Method::ChannelClose(cl) => assert_eq!(cl.reply_code, 404, "{}", cl.reply_text),
        other => panic!("the refused queue exists: {other:?}"),
    }
    // the store rebuilds sled and declares work again
    let mut c = Client::open(b.addr);
    assert!(matches!(c.declare("e", true), Method::QueueDeclareOk(_)));
}

/// A durable declare-ok is sent only once its record is durable; frames sent behind it on the same channel
/// wait and are handled in order, other channels are not held up.
#[test]
fn pipelined_methods_behind_a_held_reply_keep_their_order() {
    let b = Broker::start();
    let mut c = Client::open(b.addr);
    // declare (held for the store), then a passive declare of the same queue, without waiting
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "p".into(),
            durable: true,
            ..Default::default()
        }),
    );
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "p".into(),
            passive: true,
            ..Default::default()
        }),
    );
    for _ in 0..2 {
        match c.method() {
            Method::QueueDeclareOk(ok) => assert_eq!(ok.queue.as_str(), "p"),
            other => panic!("{other:?}"),
        }
    }
}
