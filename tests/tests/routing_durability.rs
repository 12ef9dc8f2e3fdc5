//! Durable exchanges and their bindings survive a restart (stop + restart on the same data dir); transient
//! ones do not; deletions (exchange.delete, unbind, queue.delete, auto-delete) stay deleted after a restart.
//! A binding is durable when both its ends are (as RabbitMQ).

mod routing_common;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn restart(server: &mut Server) {
    server.stop();
    server.restart();
}

#[tokio::test]
async fn durable_exchanges_and_bindings_survive_transient_ones_do_not() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        exchange_with(&ch, "dt", ExchangeKind::Topic, durable(), FieldTable::default()).await;
        exchange_with(&ch, "df", ExchangeKind::Fanout, durable(), FieldTable::default()).await;
        exchange_with(&ch, "dh", ExchangeKind::Headers, durable(), FieldTable::default()).await;
        exchange_with(&ch, "dae", ExchangeKind::Fanout, durable(), FieldTable::default()).await;
        exchange_with(
            &ch,
            "dx",
            ExchangeKind::Direct,
            durable(),
            table(&[("alternate-exchange", s("dae"))]),
        )
        .await;
        let internal = ExchangeDeclareOptions {
            durable: true,
            internal: true,
            auto_delete: false,
            ..Default::default()
        };
        exchange_with(&ch, "dint", ExchangeKind::Fanout, internal, FieldTable::default()).await;
        exchange(&ch, "tx", ExchangeKind::Direct).await;
        durable_queue(&ch, "dq1").await;
        durable_queue(&ch, "dq2").await;
        durable_queue(&ch, "dq3").await;
        durable_queue(&ch, "dqae").await;
        queue(&ch, "tq").await;
        bind(&ch, "dq1", "dt", "a.#").await;
        xbind(&ch, "df", "dt", "*.b").await; // durable e2e binding
        bind(&ch, "dq2", "df", "").await;
        bind_args(
            &ch,
            "dq3",
            "dh",
            "",
            table(&[("x-match", s("any")), ("k", s("v"))]),
        )
        .await;
        bind(&ch, "dq3", "dx", "key").await;
        bind(&ch, "dqae", "dae", "").await;
        xbind(&ch, "dint", "dx", "int").await;
        bind(&ch, "dq1", "dint", "").await;
        bind(&ch, "dq1", "amq.direct", "pre").await; // durable predeclared source
                                                     // Transient: the exchange, the queue, and bindings with a transient end.
        bind(&ch, "dq1", "tx", "k").await;
        bind(&ch, "tq", "dt", "#").await;
        xbind(&ch, "tx", "dt", "#").await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    for x in ["dt", "df", "dh", "dx", "dae", "dint"] {
        assert!(exchange_exists(&conn, x).await, "durable exchange {x} survives");
    }
    assert!(!exchange_exists(&conn, "tx").await, "transient exchange is gone");
    assert!(!queue_exists(&conn, "tq").await, "transient queue is gone");

    let ch = confirm_channel(&conn).await;
    // Flags and arguments survived: equivalent redeclares pass...
    exchange_with(
        &ch,
        "dx",
        ExchangeKind::Direct,
        durable(),
        table(&[("alternate-exchange", s("dae"))]),
    )
    .await;
    let internal = ExchangeDeclareOptions {
        durable: true,
        internal: true,
        ..Default::default()
    };
    exchange_with(&ch, "dint", ExchangeKind::Fanout, internal, FieldTable::default()).await;
    // ...and a different type is refused.
    let probe = channel(&conn).await;
    expect_error(
        probe
            .exchange_declare("dt".into(), ExchangeKind::Direct, durable(), FieldTable::default())
            .await,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'dt' in vhost '/': received 'direct' but current is 'topic'",
    );

    let qs = ["dq1", "dq2", "dq3", "dqae"];
    assert_no_errors(
        run_matrix(
            &ch,
            "dt",
            &qs,
            &[
                case("a.b", &["dq1", "dq2"]),
                case("a", &["dq1"]),
                case("z.b", &["dq2"]),
                case("z", &[]),
            ],
        )
        .await,
    );
    assert_no_errors(
        run_matrix(
            &ch,
            "dh",
            &qs,
            &[hcase(Some(table(&[("k", s("v"))])), &["dq3"]), hcase(None, &[])],
        )
        .await,
    );
    assert_no_errors(
        run_matrix(
            &ch,
            "dx",
            &qs,
            &[
                case("key", &["dq3"]),
                case("int", &["dq1"]),
                case("other", &["dqae"]),
            ],
        )
        .await,
    );
    assert_no_errors(run_matrix(&ch, "amq.direct", &qs, &[case("pre", &["dq1"])]).await);
    // The internal exchange is still internal.
    let probe = confirm_channel(&conn).await;
    let r = async {
        probe
            .basic_publish(
                "dint".into(),
                "".into(),
                Default::default(),
                b"x",
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    expect_error(
        r,
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'dint' in vhost '/'",
    );
    // A second restart changes nothing.
    conn.close(200, "bye".into()).await.unwrap();
    restart(&mut server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    assert_no_errors(run_matrix(&ch, "dt", &qs, &[case("a.b", &["dq1", "dq2"])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn deleted_durable_exchange_stays_deleted_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        exchange_with(
            &ch,
            "gone",
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await;
        durable_queue(&ch, "dq").await;
        bind(&ch, "dq", "gone", "k").await;
        ch.exchange_delete("gone".into(), Default::default())
            .await
            .unwrap();
        assert!(!exchange_exists(&conn, "gone").await);
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    assert!(
        !exchange_exists(&conn, "gone").await,
        "a deleted durable exchange came back after restart"
    );
    conn.close(200, "bye".into()).await.unwrap();
}

/// exchange.delete removes the exchange's bindings; recreating an exchange of the same name must not bring
/// them back after a restart.
#[tokio::test]
async fn bindings_of_a_deleted_exchange_do_not_come_back_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        exchange_with(&ch, "x", ExchangeKind::Direct, durable(), FieldTable::default()).await;
        exchange_with(&ch, "dst", ExchangeKind::Fanout, durable(), FieldTable::default()).await;
        durable_queue(&ch, "dq").await;
        durable_queue(&ch, "dq2").await;
        bind(&ch, "dq", "x", "k").await;
        xbind(&ch, "dst", "x", "k").await;
        bind(&ch, "dq2", "dst", "").await;
        ch.exchange_delete("x".into(), Default::default()).await.unwrap();
        exchange_with(&ch, "x", ExchangeKind::Direct, durable(), FieldTable::default()).await;
        assert_no_errors(run_matrix(&ch, "x", &["dq", "dq2"], &[case("k", &[])]).await);
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    assert_no_errors(run_matrix(&ch, "x", &["dq", "dq2"], &[case("k", &[])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn unbind_and_queue_delete_stay_done_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        exchange_with(&ch, "x", ExchangeKind::Topic, durable(), FieldTable::default()).await;
        exchange_with(&ch, "x2", ExchangeKind::Fanout, durable(), FieldTable::default()).await;
        durable_queue(&ch, "keep").await;
        durable_queue(&ch, "unbound").await;
        durable_queue(&ch, "deleted").await;
        bind(&ch, "keep", "x", "#").await;
        bind(&ch, "unbound", "x", "#").await;
        bind(&ch, "unbound", "x", "a.*").await;
        bind(&ch, "deleted", "x", "#").await;
        xbind(&ch, "x2", "x", "e2e").await;
        bind(&ch, "keep", "x2", "").await;
        unbind(&ch, "unbound", "x", "#").await;
        xunbind(&ch, "x2", "x", "e2e").await;
        ch.queue_delete("deleted".into(), Default::default())
            .await
            .unwrap();
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    assert!(!queue_exists(&conn, "deleted").await);
    // Re-create "deleted" (not bound) to prove its old binding did not come back.
    durable_queue(&ch, "deleted").await;
    let qs = ["keep", "unbound", "deleted"];
    assert_no_errors(
        run_matrix(
            &ch,
            "x",
            &qs,
            &[
                case("z", &["keep"]),
                case("a.b", &["keep", "unbound"]),
                case("e2e", &["keep"]),
            ],
        )
        .await,
    );
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn auto_deleted_durable_exchange_stays_deleted_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        let opts = ExchangeDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        };
        exchange_with(&ch, "ad", ExchangeKind::Fanout, opts, FieldTable::default()).await;
        exchange_with(&ch, "ad_q", ExchangeKind::Fanout, opts, FieldTable::default()).await;
        exchange_with(&ch, "ad_keep", ExchangeKind::Fanout, opts, FieldTable::default()).await;
        durable_queue(&ch, "dq").await;
        durable_queue(&ch, "dq2").await;
        bind(&ch, "dq", "ad", "").await;
        unbind(&ch, "dq", "ad", "").await;
        bind(&ch, "dq2", "ad_q", "").await;
        ch.queue_delete("dq2".into(), Default::default()).await.unwrap();
        bind(&ch, "dq", "ad_keep", "").await;
        assert!(!exchange_exists(&conn, "ad").await);
        assert!(!exchange_exists(&conn, "ad_q").await);
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    assert!(
        !exchange_exists(&conn, "ad").await,
        "auto-deleted (unbind) came back"
    );
    assert!(
        !exchange_exists(&conn, "ad_q").await,
        "auto-deleted (queue.delete) came back"
    );
    assert!(
        exchange_exists(&conn, "ad_keep").await,
        "bound durable auto-delete exchange survives"
    );
    let ch = confirm_channel(&conn).await;
    assert_no_errors(run_matrix(&ch, "ad_keep", &["dq"], &[case("", &["dq"])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// exchange.delete of a destination auto-deletes a durable auto-delete source that lost its last binding;
/// after a restart neither comes back.
#[tokio::test]
async fn exchanges_removed_by_exchange_delete_cascade_stay_deleted_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        let ad = ExchangeDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        };
        exchange_with(&ch, "src_ad", ExchangeKind::Fanout, ad, FieldTable::default()).await;
        exchange_with(&ch, "dst", ExchangeKind::Fanout, durable(), FieldTable::default()).await;
        xbind(&ch, "dst", "src_ad", "").await;
        ch.exchange_delete("dst".into(), Default::default())
            .await
            .unwrap();
        assert!(!exchange_exists(&conn, "dst").await);
        assert!(
            !exchange_exists(&conn, "src_ad").await,
            "src_ad went with its last binding"
        );
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    let dst = exchange_exists(&conn, "dst").await;
    let src = exchange_exists(&conn, "src_ad").await;
    assert_eq!((dst, src), (false, false), "(dst, src_ad) exist after restart");
    conn.close(200, "bye".into()).await.unwrap();
}

/// When an auto-delete exchange goes (its last queue binding removed), the e2e bindings *to* it go too. A new
/// exchange of the same name must not inherit them after a restart.
#[tokio::test]
async fn bindings_to_an_auto_deleted_exchange_do_not_come_back_after_restart() {
    let mut server = Server::start();
    let ad = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        exchange_with(&ch, "x", ExchangeKind::Direct, durable(), FieldTable::default()).await;
        exchange_with(&ch, "ad", ExchangeKind::Fanout, ad, FieldTable::default()).await;
        durable_queue(&ch, "dq").await;
        durable_queue(&ch, "dq2").await;
        xbind(&ch, "ad", "x", "k").await; // x --k--> ad
        bind(&ch, "dq", "ad", "").await;
        unbind(&ch, "dq", "ad", "").await; // ad auto-deleted, with x --k--> ad
        assert!(!exchange_exists(&conn, "ad").await);
        exchange_with(&ch, "ad", ExchangeKind::Fanout, ad, FieldTable::default()).await;
        bind(&ch, "dq2", "ad", "").await;
        assert_no_errors(run_matrix(&ch, "x", &["dq", "dq2"], &[case("k", &[])]).await);
        conn.close(200, "bye".into()).await.unwrap();
    }
    restart(&mut server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    assert_no_errors(run_matrix(&ch, "x", &["dq", "dq2"], &[case("k", &[])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}
