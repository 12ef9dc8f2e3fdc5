//! mailroom-perf against a scripted fake broker that applies flow control the way RabbitMQ
//! does: `connection.blocked` / `connection.unblocked` (sent only to clients announcing the
//! `connection.blocked` capability; https://www.rabbitmq.com/docs/connection-blocked) and
//! TCP back-pressure (the broker stops reading a publisher's socket, as RabbitMQ's credit
//! flow and memory alarm do). Checks that producers announce the capability, publish
//! nothing but heartbeats while blocked, and that the report counts blocked time, socket
//! waits, and producers the broker still blocks when the run ends (a note, not an error).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use mailroom_perf::{run_blocking, Args, Report};
use protocol::bytes::BytesMut;
use protocol::{
    write_method, ChannelOpenOk, ConnectionBlocked, ConnectionCloseOk, ConnectionOpenOk, ConnectionStart,
    ConnectionTune, ConnectionUnblocked, FieldTable, FieldValue, Frame, FrameCodec, Method, QueueDeclareOk,
    QueueDeleteOk, QueuePurgeOk,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

/// What the fake broker does to producer connections.
#[derive(Clone, Copy)]
enum Script {
    /// Block after this many publishes; unblock after this many heartbeats from the
    /// producer while blocked (None: never unblock, and ignore connection.close).
    Block {
        after: u64,
        unblock_after_heartbeats: Option<u64>,
    },
    /// Stop reading after this many publishes, for this long (None: for good).
    StopReading { after: u64, pause: Option<Duration> },
}

#[derive(Default, Debug)]
struct Record {
    producers: u64,
    announced_blocked_capability: u64,
    tune_ok_heartbeats: Vec<u16>,
    publishes: u64,
    heartbeats_while_blocked: u64,
    /// basic.publish received after a heartbeat arrived during a block (the producer had
    /// gone quiet, so anything after that was published while blocked).
    publishes_after_quiet: u64,
    blocks_sent: u64,
    unblocks_sent: u64,
}

struct Fake {
    port: u16,
    record: Arc<Mutex<Record>>,
}

async fn send(w: &tokio::sync::Mutex<OwnedWriteHalf>, m: Method) {
    let mut b = BytesMut::new();
    write_method(&mut b, if m.class_id() == 10 { 0 } else { 1 }, &m);
    let _ = w.lock().await.write_all(&b).await;
}

fn start_fake(script: Script) -> Fake {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let record = Arc::new(Mutex::new(Record::default()));
    let rec = record.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(sock, script, rec.clone()));
            }
        });
    });
    Fake { port, record }
}

async fn serve(sock: TcpStream, script: Script, rec: Arc<Mutex<Record>>) {
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut header = [0u8; 8];
    if rd.read_exact(&mut header).await.is_err() {
        return;
    }
    let mut caps = FieldTable::new();
    caps.insert("connection.blocked", FieldValue::Bool(true));
    caps.insert("publisher_confirms", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    send(
        &wr,
        Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        }),
    )
    .await;
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut producer = false;
    let mut publishes = 0u64;
    let mut blocked = false;
    let mut quiet = false;
    let mut heartbeats = 0u64;
    let mut heartbeat_task: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    if let Some(t) = heartbeat_task {
                        t.abort();
                    }
                    return;
                }
                Ok(_) => {}
            }
        };
        match frame {
            Frame::Method(_, Method::ConnectionStartOk(ok)) => {
                let name = match ok.client_properties.get("connection_name") {
                    Some(FieldValue::LongStr(s)) => String::from_utf8_lossy(s.as_bytes()).to_string(),
                    _ => String::new(),
                };
                producer = name.starts_with("mailroom-perf producer");
                if producer {
                    let announced = matches!(
                        ok.client_properties.get("capabilities"),
                        Some(FieldValue::Table(t))
                            if matches!(t.get("connection.blocked"), Some(FieldValue::Bool(true)))
                    );
                    let mut r = rec.lock().unwrap();
                    r.producers += 1;
                    r.announced_blocked_capability += u64::from(announced);
                }
                send(
                    &wr,
                    Method::ConnectionTune(ConnectionTune {
                        channel_max: 2047,
                        frame_max: 131_072,
                        heartbeat: 1,
                    }),
                )
                .await;
            }
            Frame::Method(_, Method::ConnectionTuneOk(t)) => {
                if producer {
                    rec.lock().unwrap().tune_ok_heartbeats.push(t.heartbeat);
                }
                if t.heartbeat > 0 {
                    // Our side of the heartbeat: every half interval.
                    let wr = wr.clone();
                    let every = Duration::from_millis(u64::from(t.heartbeat) * 500);
                    heartbeat_task = Some(tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(every).await;
                            let mut b = BytesMut::new();
                            protocol::write_heartbeat(&mut b);
                            if wr.lock().await.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                    }));
                }
            }
            Frame::Method(_, Method::ConnectionOpen(_)) => {
                send(&wr, Method::ConnectionOpenOk(ConnectionOpenOk)).await
            }
            Frame::Method(_, Method::ChannelOpen(_)) => send(&wr, Method::ChannelOpenOk(ChannelOpenOk)).await,
            Frame::Method(_, Method::QueueDeclare(d)) => {
                let n = rec.lock().unwrap().publishes as u32;
                send(
                    &wr,
                    Method::QueueDeclareOk(QueueDeclareOk {
                        queue: d.queue,
                        message_count: n,
                        consumer_count: 0,
                    }),
                )
                .await
            }
            Frame::Method(_, Method::QueuePurge(_)) => {
                send(&wr, Method::QueuePurgeOk(QueuePurgeOk { message_count: 0 })).await
            }
            Frame::Method(_, Method::QueueDelete(_)) => {
                send(&wr, Method::QueueDeleteOk(QueueDeleteOk { message_count: 0 })).await
            }
            Frame::Method(_, Method::ConnectionClose(_)) => {
                let never_unblocks = matches!(
                    script,
                    Script::Block {
                        unblock_after_heartbeats: None,
                        ..
                    }
                );
                if producer && blocked && never_unblocks {
                    continue; // a blocked connection is not read: no close-ok
                }
                send(&wr, Method::ConnectionCloseOk(ConnectionCloseOk)).await;
            }
            Frame::Heartbeat(_) if producer && blocked => {
                heartbeats += 1;
                quiet = true;
                rec.lock().unwrap().heartbeats_while_blocked += 1;
                if let Script::Block {
                    unblock_after_heartbeats: Some(n),
                    ..
                } = script
                {
                    if heartbeats >= n {
                        blocked = false;
                        rec.lock().unwrap().unblocks_sent += 1;
                        send(&wr, Method::ConnectionUnblocked(ConnectionUnblocked)).await;
                    }
                }
            }
            Frame::Method(_, Method::BasicPublish(_)) if producer => {
                publishes += 1;
                {
                    let mut r = rec.lock().unwrap();
                    r.publishes += 1;
                    if blocked && quiet {
                        r.publishes_after_quiet += 1;
                    }
                }
                match script {
                    Script::Block { after, .. } if publishes == after => {
                        blocked = true;
                        rec.lock().unwrap().blocks_sent += 1;
                        send(
                            &wr,
                            Method::ConnectionBlocked(ConnectionBlocked {
                                reason: "low on memory".into(),
                            }),
                        )
                        .await;
                    }
                    Script::StopReading { after, pause } if publishes == after => match pause {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    },
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn run(fake: &Fake, extra: &[&str]) -> Report {
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", fake.port);
    let mut argv = vec![
        "mailroom-perf",
        "--uri",
        &uri,
        "--quiet",
        "--threads",
        "2",
        "-e",
        "",
        "-y",
        "0",
    ];
    argv.extend_from_slice(extra);
    let settings = Args::try_parse_from(argv).unwrap().resolve().unwrap();
    run_blocking(settings).expect("run completes")
}

#[test]
fn blocked_producer_sends_only_heartbeats_and_reports_the_block() {
    let fake = start_fake(Script::Block {
        after: 1000,
        unblock_after_heartbeats: Some(2),
    });
    // Far more than the socket buffers hold, so the producer is still publishing when
    // connection.blocked arrives.
    let r = run(&fake, &["--count", "100000", "-s", "100"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.published, 100_000);
    let rec = fake.record.lock().unwrap();
    assert_eq!(rec.producers, 1);
    assert_eq!(
        rec.announced_blocked_capability, 1,
        "capability connection.blocked announced"
    );
    // The tool takes the broker's heartbeat proposal by default.
    assert_eq!(rec.tune_ok_heartbeats, vec![1]);
    assert_eq!((rec.blocks_sent, rec.unblocks_sent), (1, 1));
    assert!(rec.heartbeats_while_blocked >= 2);
    assert_eq!(rec.publishes_after_quiet, 0, "published while blocked");
    assert_eq!(rec.publishes, 100_000);
    assert_eq!(r.blocks(), 1);
    assert!(r.blocked_s() > 0.0);
    let p = &r.producer_flow[0];
    assert_eq!(p.block_reason.as_deref(), Some("low on memory"));
    assert!(!p.blocked_at_end && !p.stuck_at_end);
    assert!(p.heartbeats_sent >= 2);
    assert_eq!(r.heartbeat_s, 1);
    // The broker's ready count (here: everything it received) is reported.
    assert_eq!(r.queue_depth_end, Some(100_000));
    let j = r.to_json();
    assert!(
        j.contains("\"blocks\":1") && j.contains("\"block_reason\":\"low on memory\""),
        "{j}"
    );
}

#[test]
fn producer_still_blocked_at_the_end_is_a_note_not_an_error() {
    let fake = start_fake(Script::Block {
        after: 500,
        unblock_after_heartbeats: None,
    });
    let r = run(&fake, &["--duration", "1.5", "-s", "100"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.blocks(), 1);
    let p = &r.producer_flow[0];
    assert!(p.blocked_at_end && p.stuck_at_end, "{p:?}");
    assert!(p.heartbeats_sent >= 1);
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(
        r.notes[0].contains("still blocked by the broker"),
        "{:?}",
        r.notes
    );
    assert!(r.to_text().contains("1 still blocked at the end"));
    assert_eq!(fake.record.lock().unwrap().publishes_after_quiet, 0);
}

#[test]
fn a_broker_that_stops_reading_shows_as_socket_wait() {
    let fake = start_fake(Script::StopReading {
        after: 2000,
        pause: Some(Duration::from_millis(800)),
    });
    // 100 k × 1 KiB is far more than the socket buffers hold.
    let r = run(&fake, &["--count", "100000", "-s", "1024"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.published, 100_000);
    assert_eq!(fake.record.lock().unwrap().publishes, 100_000);
    assert_eq!(r.blocks(), 0);
    let p = &r.producer_flow[0];
    assert!(
        p.write_waits >= 1 && p.write_wait_s > 0.0 && p.write_wait_longest_s > 0.0,
        "{p:?}"
    );
    assert!(p.write_wait_longest_s <= p.write_wait_s);
}

#[test]
fn a_broker_that_never_reads_again_gets_what_was_written_counted() {
    let fake = start_fake(Script::StopReading {
        after: 2000,
        pause: None,
    });
    let r = run(&fake, &["--duration", "1", "-s", "1024"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.exit_code(), 0);
    let p = &r.producer_flow[0];
    assert!(p.stuck_at_end && !p.blocked_at_end, "{p:?}");
    assert!(p.write_wait_s > 0.0);
    // What never left the tool's buffer is not counted as published...
    assert!(p.unsent > 0, "{p:?}");
    // ...and what was counted was all written to the socket: the broker read 2000 of it
    // and the kernel holds the rest.
    assert!(r.published >= 2000, "{}", r.published);
    assert!(
        r.notes.iter().any(|n| n.contains("not reading its socket")),
        "{:?}",
        r.notes
    );
}
