//! A connection reuses the queues its last publish reached while the vhost's exchanges, bindings and
//! queues are unchanged (`broker/src/session.rs` `RouteCache`, `broker/src/topology.rs`). These tests
//! publish the same exchange and routing key again and again from one connection while another
//! connection edits what the route depends on, and check that every publish after an edit's reply went
//! where the new topology says: as in RabbitMQ, where a publish routes through the current bindings
//! (rabbit_exchange:route/2 reads them per message), an edit is in force once its -ok is received.
//! Routes that read the message (headers, consistent hash on a header, CC/BCC) are never reused.

mod routing_common;

use lapin::options::*;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;

fn headers(pairs: &[(&str, &str)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(&pairs.iter().map(|(k, v)| (*k, s(v))).collect::<Vec<_>>()))
}

#[tokio::test]
async fn the_same_key_follows_every_binding_edit_made_on_another_connection() {
    let server = Server::start();
    let (pc, ec) = (connect(&server).await, connect(&server).await);
    let (p, e) = (confirm_channel(&pc).await, channel(&ec).await);
    exchange(&e, "rc.x", ExchangeKind::Direct).await;
    for q in ["rc.a", "rc.b"] {
        queue(&e, q).await;
    }
    bind(&e, "rc.a", "rc.x", "k").await;
    let mut expect_a = Vec::new();
    let mut expect_b = Vec::new();
    for round in 0..20 {
        // a few publishes with the same exchange and key (the cache is warm after the first) ...
        for i in 0..3 {
            let body = format!("{round}-{i}");
            publish(&p, "rc.x", "k", &body, BasicProperties::default()).await;
            match round % 4 {
                0 => expect_a.push(body),
                1 => {
                    expect_a.push(body.clone());
                    expect_b.push(body)
                }
                2 => expect_b.push(body),
                _ => {}
            }
        }
        // ... then an edit on the other connection, in force once its -ok is back
        match round % 4 {
            0 => bind(&e, "rc.b", "rc.x", "k").await,
            1 => unbind(&e, "rc.a", "rc.x", "k").await,
            2 => unbind(&e, "rc.b", "rc.x", "k").await,
            _ => bind(&e, "rc.a", "rc.x", "k").await,
        }
    }
    assert_eq!(drain(&e, "rc.a").await, expect_a);
    assert_eq!(drain(&e, "rc.b").await, expect_b);
}

#[tokio::test]
async fn a_deleted_and_redeclared_queue_or_exchange_is_routed_to_afresh() {
    let server = Server::start();
    let (pc, ec) = (connect(&server).await, connect(&server).await);
    let (p, e) = (confirm_channel(&pc).await, channel(&ec).await);
    // The default exchange: the queue named by the key.
    queue(&e, "rc.q").await;
    publish(&p, "", "rc.q", "1", BasicProperties::default()).await;
    publish(&p, "", "rc.q", "2", BasicProperties::default()).await;
    e.queue_delete("rc.q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let ret = publish_mandatory(&p, "", "rc.q", "3", BasicProperties::default()).await;
    assert_eq!(
        ret.map(|r| (r.0, r.1)),
        Some((312, "NO_ROUTE".to_string())),
        "the deleted queue's cached route must not swallow a mandatory publish"
    );
    queue(&e, "rc.q").await;
    publish(&p, "", "rc.q", "4", BasicProperties::default()).await;
    assert_eq!(
        drain(&e, "rc.q").await,
        ["4"],
        "the new queue, not the deleted one"
    );

    // An exchange deleted and declared again with another type and other bindings.
    exchange(&e, "rc.e", ExchangeKind::Direct).await;
    for q in ["rc.e1", "rc.e2"] {
        queue(&e, q).await;
    }
    bind(&e, "rc.e1", "rc.e", "k").await;
    publish(&p, "rc.e", "k", "a", BasicProperties::default()).await;
    publish(&p, "rc.e", "k", "b", BasicProperties::default()).await;
    e.exchange_delete("rc.e".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    exchange(&e, "rc.e", ExchangeKind::Fanout).await;
    bind(&e, "rc.e2", "rc.e", "").await;
    publish(&p, "rc.e", "k", "c", BasicProperties::default()).await;
    assert_eq!(drain(&e, "rc.e1").await, ["a", "b"]);
    assert_eq!(drain(&e, "rc.e2").await, ["c"]);

    // An exchange deleted for good: the publisher's channel is closed with 404, as RabbitMQ does.
    e.exchange_delete("rc.e".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let r = p
        .basic_publish(
            "rc.e".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"d",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await;
    let err = r.expect_err("publish to a deleted exchange");
    assert_eq!(
        amqp_error(&err),
        (404, "NOT_FOUND - no exchange 'rc.e' in vhost '/'".into())
    );
}

#[tokio::test]
async fn routes_that_read_the_message_are_not_reused() {
    let server = Server::start();
    let conn = connect(&server).await;
    let (p, e) = (confirm_channel(&conn).await, channel(&conn).await);
    // Headers exchange: same exchange and (ignored) key, different headers.
    exchange(&e, "rc.h", ExchangeKind::Headers).await;
    for q in ["rc.h1", "rc.h2"] {
        queue(&e, q).await;
    }
    bind_args(
        &e,
        "rc.h1",
        "rc.h",
        "",
        table(&[("x-match", s("all")), ("t", s("1"))]),
    )
    .await;
    bind_args(
        &e,
        "rc.h2",
        "rc.h",
        "",
        table(&[("x-match", s("all")), ("t", s("2"))]),
    )
    .await;
    for (i, t) in ["1", "2", "1", "2", "2"].iter().enumerate() {
        publish(&p, "rc.h", "k", &format!("{i}"), headers(&[("t", t)])).await;
    }
    assert_eq!(drain(&e, "rc.h1").await, ["0", "2"]);
    assert_eq!(drain(&e, "rc.h2").await, ["1", "3", "4"]);

    // CC: the same key with and without sender-selected keys.
    exchange(&e, "rc.d", ExchangeKind::Direct).await;
    for q in ["rc.d1", "rc.d2"] {
        queue(&e, q).await;
    }
    bind(&e, "rc.d1", "rc.d", "k").await;
    bind(&e, "rc.d2", "rc.d", "other").await;
    let cc = BasicProperties::default().with_headers(table(&[(
        "CC",
        AMQPValue::FieldArray(vec![AMQPValue::LongString(LongString::from("other"))].into()),
    )]));
    publish(&p, "rc.d", "k", "plain", BasicProperties::default()).await;
    publish(&p, "rc.d", "k", "cc", cc).await;
    publish(&p, "rc.d", "k", "plain again", BasicProperties::default()).await;
    assert_eq!(drain(&e, "rc.d1").await, ["plain", "cc", "plain again"]);
    assert_eq!(drain(&e, "rc.d2").await, ["cc"]);

    // Consistent hash on a header: the same routing key, the queue chosen by the header.
    let args = table(&[("hash-header", s("entity"))]);
    e.exchange_declare(
        "rc.ch".into(),
        ExchangeKind::Custom("x-consistent-hash".into()),
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    for q in ["rc.c1", "rc.c2"] {
        queue(&e, q).await;
        bind(&e, q, "rc.ch", "1").await;
    }
    let mut by_entity = std::collections::HashMap::new();
    for i in 0..40 {
        let entity = format!("e{}", i % 8);
        publish(
            &p,
            "rc.ch",
            "k",
            &format!("{entity}:{i}"),
            headers(&[("entity", &entity)]),
        )
        .await;
    }
    let (c1, c2) = (drain(&e, "rc.c1").await, drain(&e, "rc.c2").await);
    assert!(
        !c1.is_empty() && !c2.is_empty(),
        "8 entities over 2 queues: both used ({c1:?} / {c2:?})"
    );
    for (q, bodies) in [("rc.c1", &c1), ("rc.c2", &c2)] {
        for b in bodies {
            let entity = b.split(':').next().unwrap().to_string();
            let first = by_entity.entry(entity.clone()).or_insert(q);
            assert_eq!(*first, q, "entity {entity} reached both queues");
        }
    }
}
