//! `x-consistent-hash` over real TCP with lapin (RabbitMQ's rabbitmq_consistent_hash_exchange plugin
//! semantics: one queue per message, by a consistent hash of the routing key, a header or a property;
//! the binding key is the weight; invalid weights are 406 with the plugin's texts), stickiness across a
//! restart, and the partition-failover pattern of docs/partitioning.md driven with pika
//! (tests/python/partitioning.py).

mod routing_common;

use std::collections::{HashMap, HashSet};

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::{run_python, Server};
use routing_common::*;

const QUEUES: [&str; 4] = ["ch.q0", "ch.q1", "ch.q2", "ch.q3"];

fn ch_kind() -> ExchangeKind {
    ExchangeKind::Custom("x-consistent-hash".into())
}

async fn declare_ring(ch: &lapin::Channel, exchange: &str, args: FieldTable) {
    exchange_with(
        ch,
        exchange,
        ch_kind(),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await;
    for q in QUEUES {
        durable_queue(ch, q).await;
        bind(ch, q, exchange, "1").await;
    }
}

/// Publishes `n` messages per entity and returns where each entity's messages went.
async fn placement(ch: &lapin::Channel, exchange: &str, entities: usize) -> HashMap<String, HashSet<String>> {
    for e in 0..entities {
        for i in 0..3 {
            publish(
                ch,
                exchange,
                &format!("entity-{e}"),
                &format!("entity-{e}:{i}"),
                BasicProperties::default(),
            )
            .await;
        }
    }
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for q in QUEUES {
        for body in drain(ch, q).await {
            let entity = body.split(':').next().unwrap().to_string();
            out.entry(entity).or_default().insert(q.to_string());
        }
    }
    out
}

#[tokio::test]
async fn each_key_reaches_one_queue_and_stays_there_across_a_restart() {
    let mut server = Server::start();
    let before = {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        declare_ring(&ch, "ring", FieldTable::default()).await;
        let p = placement(&ch, "ring", 60).await;
        assert_eq!(p.len(), 60, "every entity routed");
        for (e, qs) in &p {
            assert_eq!(qs.len(), 1, "{e} went to {qs:?}");
        }
        let used: HashSet<&String> = p.values().flatten().collect();
        assert_eq!(used.len(), 4, "60 entities spread over the 4 queues");
        // Queue q0 unbound and bound again: it goes to the end of the ring; the stored ring order must
        // keep that order across the restart (the bindings come back in key order).
        unbind(&ch, "ch.q0", "ring", "1").await;
        bind(&ch, "ch.q0", "ring", "1").await;
        placement(&ch, "ring", 60).await
    };
    server.restart();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    let after = placement(&ch, "ring", 60).await;
    assert_eq!(before, after, "same key, same queue after a restart");
}

#[tokio::test]
async fn hash_header_and_hash_property() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    declare_ring(&ch, "by-header", table(&[("hash-header", s("entity"))])).await;
    for i in 0..200 {
        let e = format!("e{}", i % 20);
        let headers = table(&[("entity", AMQPValue::LongString(e.as_str().into()))]);
        // A different routing key every time: only the header decides.
        publish(
            &ch,
            "by-header",
            &format!("rk-{i}"),
            &format!("{e}:{i}"),
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }
    let mut seen: HashMap<String, HashSet<&str>> = HashMap::new();
    for q in QUEUES {
        for body in drain(&ch, q).await {
            seen.entry(body.split(':').next().unwrap().into())
                .or_default()
                .insert(q);
        }
    }
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|qs| qs.len() == 1), "{seen:?}");

    for q in QUEUES {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    declare_ring(&ch, "by-msgid", table(&[("hash-property", s("message_id"))])).await;
    for i in 0..200 {
        let id = format!("m{}", i % 20);
        let props = BasicProperties::default().with_message_id(id.as_str().into());
        publish(&ch, "by-msgid", "same-key", &format!("{id}:{i}"), props).await;
    }
    let mut seen: HashMap<String, HashSet<&str>> = HashMap::new();
    for q in QUEUES {
        for body in drain(&ch, q).await {
            seen.entry(body.split(':').next().unwrap().into())
                .or_default()
                .insert(q);
        }
    }
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|qs| qs.len() == 1), "{seen:?}");
    let used: HashSet<&&str> = seen.values().flatten().collect();
    assert!(
        used.len() > 1,
        "the message id decides, not the (constant) routing key"
    );
}

#[tokio::test]
async fn invalid_weights_and_arguments_are_406_with_the_plugins_texts() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "ring", ch_kind()).await;
    queue(&ch, "q").await;
    // rabbit_exchange_type_consistent_hash:validate_binding/2, turned into 406 by rabbit_channel's
    // binding_action ({binding_invalid, Fmt, Args} -> precondition_failed).
    for (key, text) in [
        (
            "one",
            "PRECONDITION_FAILED - The binding key must be an integer: <<\"one\">>",
        ),
        (
            "0",
            "PRECONDITION_FAILED - The binding key must be greater than 0",
        ),
        (
            "10001",
            "PRECONDITION_FAILED - The binding key must not exceed 10000",
        ),
    ] {
        let ch = channel(&conn).await;
        let r = ch
            .queue_bind(
                "q".into(),
                "ring".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        expect_error(r, 406, text);
    }
    // validate/1 on exchange.declare.
    let ch2 = channel(&conn).await;
    let r = ch2
        .exchange_declare(
            "bad".into(),
            ch_kind(),
            ExchangeDeclareOptions::default(),
            table(&[("hash-header", s("h")), ("hash-property", s("message_id"))]),
        )
        .await;
    expect_error(
        r,
        406,
        "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive",
    );
    let ch3 = channel(&conn).await;
    let r = ch3
        .exchange_declare(
            "bad".into(),
            ch_kind(),
            ExchangeDeclareOptions::default(),
            table(&[("hash-property", s("user_id"))]),
        )
        .await;
    expect_error(r, 406, "PRECONDITION_FAILED - Unsupported property: user_id");
    // The broker keeps serving: the first channel still works.
    bind(&ch, "q", "ring", "3").await;
}

#[test]
fn pika_partition_failover_keeps_every_entity_in_order() {
    let server = Server::start();
    let out = run_python(&server, "partitioning.py", &[]);
    assert!(out.contains("PARTITIONING OK"), "{out}");
}
