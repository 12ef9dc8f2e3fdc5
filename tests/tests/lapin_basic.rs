//! lapin publishes and consumes through the real broker: order, exactly-once, properties, body sizes.

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::Server;

async fn connect(server: &Server) -> Connection {
    Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

#[tokio::test]
async fn ten_thousand_messages_arrive_once_in_order_with_properties() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "q10k".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for i in 0..10_000u32 {
        let mut headers = FieldTable::default();
        headers.insert("seq".into(), AMQPValue::LongUInt(i));
        headers.insert("name".into(), AMQPValue::LongString(format!("m{i}").into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_correlation_id(format!("c{i}").into())
            .with_priority(3)
            .with_headers(headers);
        ch.basic_publish(
            "".into(),
            "q10k".into(),
            BasicPublishOptions::default(),
            format!("body {i}").as_bytes(),
            props,
        )
        .await
        .unwrap();
    }
    let returned = ch.wait_for_confirms().await.unwrap();
    assert!(returned.is_empty());

    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(200, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "q10k".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10_000u32 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.data, format!("body {i}").as_bytes());
        assert!(!d.redelivered);
        let p = &d.properties;
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("text/plain"));
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            Some(format!("c{i}"))
        );
        assert_eq!(*p.priority(), Some(3));
        let h = p.headers().as_ref().expect("headers");
        assert_eq!(
            h.inner().get(&ShortString::from("seq")),
            Some(&AMQPValue::LongUInt(i))
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Nothing more: the queue is empty and nothing was duplicated.
    let q = ch
        .queue_declare(
            "q10k".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn bodies_of_edge_sizes_arrive_byte_for_byte() {
    let server = Server::start();
    let conn = connect(&server).await;
    let frame_max = conn.configuration().frame_max() as usize;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "sizes".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let sizes = [0usize, 1, frame_max - 1, frame_max + 1, 5 << 20];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).collect())
        .collect();
    for b in &bodies {
        ch.basic_publish(
            "".into(),
            "sizes".into(),
            BasicPublishOptions::default(),
            b,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    for b in &bodies {
        let got = loop {
            if let Some(m) = ch
                .basic_get("sizes".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                break m;
            }
        };
        assert_eq!(got.delivery.data.len(), b.len());
        assert!(got.delivery.data == *b, "body of {} bytes differs", b.len());
    }
}
