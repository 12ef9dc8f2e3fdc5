//! Exchange-to-exchange bindings (exchange.bind/unbind, chains, diamonds, cycles), alternate exchanges
//! (with mandatory returns only when nothing took the message) and internal exchanges, against the real
//! broker with lapin. RabbitMQ is the reference (rabbit_exchange:route/2 walks the graph visiting each
//! exchange once and delivers to each queue once; an exchange's alternate is used when it routed nowhere).

mod routing_common;

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;

const NO_ROUTE: Option<(u16, &str)> = Some((312, "NO_ROUTE"));

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the broker answered within 10 s (no hang)")
}

fn ae(name: &str) -> FieldTable {
    table(&[("alternate-exchange", s(name))])
}

async fn mandatory(ch: &lapin::Channel, x: &str, key: &str, body: &str) -> Option<(u16, String)> {
    within(publish_mandatory(ch, x, key, body, BasicProperties::default()))
        .await
        .map(|(code, text, b)| {
            assert_eq!(b, body.as_bytes(), "returned body");
            (code, text)
        })
}

fn no_route() -> Option<(u16, String)> {
    NO_ROUTE.map(|(c, t)| (c, t.to_string()))
}

#[tokio::test]
async fn exchange_to_exchange_chains_bind_and_unbind() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "x1", ExchangeKind::Direct).await;
    exchange(&ch, "x2", ExchangeKind::Topic).await;
    exchange(&ch, "x3", ExchangeKind::Fanout).await;
    exchange(&ch, "xh", ExchangeKind::Headers).await;
    let queues = ["q1", "q2", "q3", "q4", "qh"];
    for q in queues {
        queue(&ch, q).await;
    }
    bind(&ch, "q1", "x1", "k").await;
    xbind(&ch, "x2", "x1", "k").await; // x1 --k--> x2
    bind(&ch, "q2", "x2", "#").await;
    bind(&ch, "q3", "x2", "other").await;
    xbind(&ch, "x3", "x2", "k").await; // x2 --k--> x3
    bind(&ch, "q4", "x3", "").await;
    // A headers source for an e2e binding: binding arguments decide.
    ch.exchange_bind(
        "x3".into(),
        "xh".into(),
        "".into(),
        Default::default(),
        table(&[("x-match", s("any")), ("go", s("yes"))]),
    )
    .await
    .unwrap();
    bind(&ch, "qh", "xh", "").await;

    let cases = [
        case("k", &["q1", "q2", "q4"]),
        case("j", &[]),
        case("other", &[]), // x1 has no 'other' binding
    ];
    assert_no_errors(run_matrix(&ch, "x1", &queues, &cases).await);
    let cases = [
        case("other", &["q2", "q3"]),
        case("k", &["q2", "q4"]),
        case("z", &["q2"]),
    ];
    assert_no_errors(run_matrix(&ch, "x2", &queues, &cases).await);
    // qh's binding to xh has no arguments: x-match all with nothing to match takes every message.
    let cases = [
        hcase(Some(table(&[("go", s("yes"))])), &["q4", "qh"]),
        hcase(Some(table(&[("go", s("no"))])), &["qh"]),
        hcase(None, &["qh"]),
    ];
    assert_no_errors(run_matrix(&ch, "xh", &queues, &cases).await);

    // The delivered message keeps the exchange and key it was published with.
    publish(&ch, "x1", "k", "orig", BasicProperties::default()).await;
    let m = ch
        .basic_get("q4".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("message in q4");
    assert_eq!(
        (m.delivery.exchange.as_str(), m.delivery.routing_key.as_str()),
        ("x1", "k")
    );
    for q in queues {
        drain(&ch, q).await;
    }

    // exchange.unbind cuts the path; unbinding again (a missing binding) is a no-op.
    xunbind(&ch, "x2", "x1", "k").await;
    xunbind(&ch, "x2", "x1", "k").await;
    xunbind(&ch, "x3", "x1", "never-bound").await;
    let cases = [case("k", &["q1"])];
    assert_no_errors(run_matrix(&ch, "x1", &queues, &cases).await);
    let cases = [case("k", &["q2", "q4"])];
    assert_no_errors(run_matrix(&ch, "x2", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// Cycles (self-loop, x1 -> x2 -> x1, a 3-cycle of topics) and a diamond: each queue gets a message at most
/// once, and the publish is confirmed (nothing loops forever).
#[tokio::test]
async fn cycles_and_diamonds_deliver_at_most_once_and_do_not_hang() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    // x1 <-> x2 (fanouts), plus a self-loop on x1.
    exchange(&ch, "x1", ExchangeKind::Fanout).await;
    exchange(&ch, "x2", ExchangeKind::Fanout).await;
    queue(&ch, "c1").await;
    queue(&ch, "c2").await;
    bind(&ch, "c1", "x1", "").await;
    bind(&ch, "c2", "x2", "").await;
    xbind(&ch, "x2", "x1", "").await;
    xbind(&ch, "x1", "x2", "").await;
    xbind(&ch, "x1", "x1", "").await;
    let qs = ["c1", "c2"];
    assert_no_errors(within(run_matrix(&ch, "x1", &qs, &[case("a", &["c1", "c2"])])).await);
    assert_no_errors(within(run_matrix(&ch, "x2", &qs, &[case("a", &["c1", "c2"])])).await);

    // A 3-cycle of topic exchanges with patterns; a queue bound to every one of them.
    for x in ["t1", "t2", "t3"] {
        exchange(&ch, x, ExchangeKind::Topic).await;
    }
    queue(&ch, "all").await;
    queue(&ch, "t3only").await;
    xbind(&ch, "t2", "t1", "a.#").await;
    xbind(&ch, "t3", "t2", "*.b").await;
    xbind(&ch, "t1", "t3", "#").await;
    for x in ["t1", "t2", "t3"] {
        bind(&ch, "all", x, "#").await;
    }
    bind(&ch, "t3only", "t3", "#").await;
    let qs = ["all", "t3only"];
    let cases = [
        case("a.b", &["all", "t3only"]), // t1 -> t2 -> t3 -> (t1 visited)
        case("a.c", &["all"]),           // t1 -> t2, t2 does not pass 'a.c' on
        case("z", &["all"]),
    ];
    assert_no_errors(within(run_matrix(&ch, "t1", &qs, &cases)).await);
    let cases = [case("z.b", &["all", "t3only"]), case("z", &["all"])];
    assert_no_errors(within(run_matrix(&ch, "t2", &qs, &cases)).await);

    // Diamond: d1 -> d2, d1 -> d3, d2 -> d4, d3 -> d4; the queue on d4 (and on d2) gets one copy.
    for x in ["d1", "d2", "d3", "d4"] {
        exchange(&ch, x, ExchangeKind::Direct).await;
    }
    queue(&ch, "dq").await;
    xbind(&ch, "d2", "d1", "k").await;
    xbind(&ch, "d3", "d1", "k").await;
    xbind(&ch, "d4", "d2", "k").await;
    xbind(&ch, "d4", "d3", "k").await;
    bind(&ch, "dq", "d4", "k").await;
    bind(&ch, "dq", "d2", "k").await;
    assert_no_errors(within(run_matrix(&ch, "d1", &["dq"], &[case("k", &["dq"])])).await);

    // Thousands of publishes around the cycle still come back confirmed and counted once each.
    for i in 0..2000 {
        ch.basic_publish(
            "x1".into(),
            "".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let returned = within(ch.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty());
    assert_eq!(count(&ch, "c1").await, 2000);
    assert_eq!(count(&ch, "c2").await, 2000);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "ae", ExchangeKind::Fanout).await;
    exchange_with(&ch, "x", ExchangeKind::Direct, Default::default(), ae("ae")).await;
    queue(&ch, "qx").await;
    queue(&ch, "qa").await;
    bind(&ch, "qx", "x", "k").await;
    bind(&ch, "qa", "ae", "").await;
    let qs = ["qx", "qa"];
    let cases = [case("k", &["qx"]), case("z", &["qa"]), case("", &["qa"])];
    assert_no_errors(run_matrix(&ch, "x", &qs, &cases).await);

    // mandatory: no return when the AE took it, nor when x routed it.
    assert_eq!(mandatory(&ch, "x", "z", "m1").await, None);
    assert_eq!(mandatory(&ch, "x", "k", "m2").await, None);
    assert_eq!(drain(&ch, "qa").await, ["m1"]);
    assert_eq!(drain(&ch, "qx").await, ["m2"]);

    // The AE routes nowhere: now the mandatory message comes back 312 NO_ROUTE.
    unbind(&ch, "qa", "ae", "").await;
    assert_eq!(mandatory(&ch, "x", "z", "m3").await, no_route());
    // ...and a non-mandatory one is dropped without error.
    publish(&ch, "x", "z", "dropped", BasicProperties::default()).await;
    assert_eq!(count(&ch, "qa").await + count(&ch, "qx").await, 0);

    // An AE that does not exist: as if there were none.
    exchange_with(&ch, "y", ExchangeKind::Direct, Default::default(), ae("missing")).await;
    assert_eq!(mandatory(&ch, "y", "z", "m4").await, no_route());
    // Declaring it later makes it work (the argument is a name, resolved at publish time).
    exchange(&ch, "missing", ExchangeKind::Fanout).await;
    queue(&ch, "qm").await;
    bind(&ch, "qm", "missing", "").await;
    assert_eq!(mandatory(&ch, "y", "z", "m5").await, None);
    assert_eq!(drain(&ch, "qm").await, ["m5"]);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn alternate_exchange_chains_cycles_and_e2e_interplay() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    // x (ae1) -> ae1 routes nowhere (ae2) -> ae2 -> q2.
    exchange(&ch, "ae2", ExchangeKind::Fanout).await;
    exchange_with(&ch, "ae1", ExchangeKind::Direct, Default::default(), ae("ae2")).await;
    exchange_with(&ch, "x", ExchangeKind::Topic, Default::default(), ae("ae1")).await;
    queue(&ch, "q1").await;
    queue(&ch, "q2").await;
    bind(&ch, "q1", "ae1", "only").await;
    bind(&ch, "q2", "ae2", "").await;
    let qs = ["q1", "q2"];
    let cases = [case("only", &["q1"]), case("else", &["q2"])];
    assert_no_errors(run_matrix(&ch, "x", &qs, &cases).await);

    // AE cycle with nothing bound: returned, not hung.
    exchange_with(&ch, "ca", ExchangeKind::Direct, Default::default(), ae("cb")).await;
    exchange_with(&ch, "cb", ExchangeKind::Direct, Default::default(), ae("ca")).await;
    assert_eq!(mandatory(&ch, "ca", "k", "cyc").await, no_route());
    // An exchange that is its own AE.
    exchange_with(&ch, "self", ExchangeKind::Direct, Default::default(), ae("self")).await;
    assert_eq!(mandatory(&ch, "self", "k", "selfcyc").await, no_route());

    // x routes to an exchange (e2e) that routes nowhere: x routed somewhere, so x's AE is not used;
    // the inner exchange's own AE is.
    exchange(&ch, "outer_ae", ExchangeKind::Fanout).await;
    exchange(&ch, "inner_ae", ExchangeKind::Fanout).await;
    exchange_with(
        &ch,
        "outer",
        ExchangeKind::Fanout,
        Default::default(),
        ae("outer_ae"),
    )
    .await;
    exchange_with(
        &ch,
        "inner",
        ExchangeKind::Direct,
        Default::default(),
        ae("inner_ae"),
    )
    .await;
    queue(&ch, "qo").await;
    queue(&ch, "qi").await;
    bind(&ch, "qo", "outer_ae", "").await;
    bind(&ch, "qi", "inner_ae", "").await;
    xbind(&ch, "inner", "outer", "").await;
    let qs = ["qo", "qi"];
    assert_no_errors(run_matrix(&ch, "outer", &qs, &[case("k", &["qi"])]).await);
    // inner without AE: x's walk reaches an exchange but no queue; mandatory returns.
    exchange(&ch, "outer2", ExchangeKind::Fanout).await;
    exchange(&ch, "inner2", ExchangeKind::Direct).await;
    xbind(&ch, "inner2", "outer2", "").await;
    assert_eq!(mandatory(&ch, "outer2", "k", "deadend").await, no_route());

    // A headers exchange's AE, for messages without matching headers.
    exchange(&ch, "hae", ExchangeKind::Fanout).await;
    exchange_with(&ch, "hx", ExchangeKind::Headers, Default::default(), ae("hae")).await;
    queue(&ch, "hq").await;
    queue(&ch, "haeq").await;
    bind_args(&ch, "hq", "hx", "", table(&[("a", int(1))])).await;
    bind(&ch, "haeq", "hae", "").await;
    let cases = [
        hcase(Some(table(&[("a", int(1))])), &["hq"]),
        hcase(Some(table(&[("a", int(2))])), &["haeq"]),
        hcase(None, &["haeq"]),
    ];
    assert_no_errors(run_matrix(&ch, "hx", &["hq", "haeq"], &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// Mandatory returns through lapin's confirm: the Ack carries the returned message; its code and text.
#[tokio::test]
async fn mandatory_return_carries_312_no_route_and_the_message() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    let c = ch
        .basic_publish(
            "d".into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            b"back",
            BasicProperties::default().with_message_id("mid".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    let m = c.take_message().expect("returned message");
    assert_eq!((m.reply_code, m.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(m.delivery.data, b"back");
    assert_eq!(
        (m.delivery.exchange.as_str(), m.delivery.routing_key.as_str()),
        ("d", "nobody")
    );
    assert_eq!(
        m.delivery.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("mid")
    );
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_routes_via_bindings() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    let internal = ExchangeDeclareOptions {
        internal: true,
        ..Default::default()
    };
    exchange_with(&ch, "ix", ExchangeKind::Fanout, internal, FieldTable::default()).await;
    exchange(&ch, "front", ExchangeKind::Direct).await;
    queue(&ch, "iq").await;
    bind(&ch, "iq", "ix", "").await;
    xbind(&ch, "ix", "front", "k").await;
    // Reached through an e2e binding.
    assert_no_errors(run_matrix(&ch, "front", &["iq"], &[case("k", &["iq"]), case("j", &[])]).await);
    // Reached as an alternate exchange.
    exchange_with(&ch, "withae", ExchangeKind::Direct, Default::default(), ae("ix")).await;
    assert_eq!(mandatory(&ch, "withae", "nothing", "via-ae").await, None);
    assert_eq!(drain(&ch, "iq").await, ["via-ae"]);

    // A direct publish closes the channel with 403.
    let pubch = confirm_channel(&conn).await;
    let r = async {
        pubch
            .basic_publish(
                "ix".into(),
                "".into(),
                Default::default(),
                b"no",
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    expect_error(
        r,
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'ix' in vhost '/'",
    );
    assert_eq!(count(&ch, "iq").await, 0, "the refused message was not enqueued");
    // The connection and the other channel still work.
    assert_no_errors(run_matrix(&ch, "front", &["iq"], &[case("k", &["iq"])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}
