//! Routing matrices per exchange type against the real broker (lapin): which queues get which messages for
//! direct, fanout, topic, headers, the default exchange and the predeclared amq.* exchanges; a message that
//! matches one queue through several bindings is enqueued once; binding identity includes the arguments.
//! RabbitMQ is the reference (rabbit_exchange_type_topic / _headers semantics).

mod routing_common;

use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;

#[tokio::test]
async fn direct_matrix_several_keys_and_several_queues_per_key() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    let queues = ["dq1", "dq2", "dq3", "dq4"];
    for q in queues {
        queue(&ch, q).await;
    }
    bind(&ch, "dq1", "d", "a").await;
    bind(&ch, "dq2", "d", "a").await;
    bind(&ch, "dq2", "d", "b").await;
    bind(&ch, "dq3", "d", "c").await;
    bind(&ch, "dq3", "d", "").await;
    // In a direct exchange '#' and '*' are plain characters.
    bind(&ch, "dq4", "d", "#").await;
    bind(&ch, "dq4", "d", "a.*").await;
    let cases = [
        case("a", &["dq1", "dq2"]),
        case("b", &["dq2"]),
        case("c", &["dq3"]),
        case("", &["dq3"]),
        case("#", &["dq4"]),
        case("a.*", &["dq4"]),
        case("a.b", &[]),
        case("A", &[]),
        case("a ", &[]),
        case("d", &[]),
    ];
    assert_no_errors(run_matrix(&ch, "d", &queues, &cases).await);

    // Unbinding one key of dq2 leaves the other; unbinding dq1 leaves dq2 on 'a'.
    unbind(&ch, "dq2", "d", "b").await;
    unbind(&ch, "dq1", "d", "a").await;
    let cases = [case("a", &["dq2"]), case("b", &[]), case("c", &["dq3"])];
    assert_no_errors(run_matrix(&ch, "d", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn fanout_matrix_ignores_the_key() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "f", ExchangeKind::Fanout).await;
    let queues = ["fq1", "fq2", "fq3"];
    for q in queues {
        queue(&ch, q).await;
    }
    bind(&ch, "fq1", "f", "ignored").await;
    bind(&ch, "fq2", "f", "").await;
    bind(&ch, "fq2", "f", "other").await; // two bindings: still one copy
    let cases = [
        case("", &["fq1", "fq2"]),
        case("ignored", &["fq1", "fq2"]),
        case("x.y.z", &["fq1", "fq2"]),
        case("#", &["fq1", "fq2"]),
    ];
    assert_no_errors(run_matrix(&ch, "f", &queues, &cases).await);

    unbind(&ch, "fq1", "f", "ignored").await;
    unbind(&ch, "fq2", "f", "other").await; // fq2's '' binding remains
    let cases = [case("anything", &["fq2"])];
    assert_no_errors(run_matrix(&ch, "f", &queues, &cases).await);
    unbind(&ch, "fq2", "f", "").await;
    let cases = [case("anything", &[])];
    assert_no_errors(run_matrix(&ch, "f", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// Topic keys split on '.', the empty key has no words; '*' is exactly one (possibly empty) word, '#' zero
/// or more.
#[tokio::test]
async fn topic_matrix_star_hash_empty_words() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    let bindings = [
        ("t_star", "a.*"),
        ("t_hasha", "a.#"),
        ("t_all", "#"),
        ("t_empty", ""),
        ("t_one", "*"),
        ("t_mid", "a.*.c"),
        ("t_ab", "a.#.#.b"),
        ("t_hs", "#.*"),
        ("t_ew", "a..b"),
        ("t_ss", "*.*"),
        ("t_hb", "#.b"),
        ("t_lit", "a.b"),
        ("t_hah", "#.a.#"),
    ];
    let queues: Vec<&str> = bindings.iter().map(|(q, _)| *q).collect();
    for (q, k) in bindings {
        queue(&ch, q).await;
        bind(&ch, q, "t", k).await;
    }
    let cases = [
        case("", &["t_all", "t_empty"]),
        case("a", &["t_hasha", "t_all", "t_one", "t_hs", "t_hah"]),
        case(
            "a.b",
            &[
                "t_star", "t_hasha", "t_all", "t_ab", "t_hs", "t_ss", "t_hb", "t_lit", "t_hah",
            ],
        ),
        case("a.x.c", &["t_hasha", "t_all", "t_mid", "t_hs", "t_hah"]),
        case(
            "a..b",
            &["t_hasha", "t_all", "t_ab", "t_hs", "t_ew", "t_hb", "t_hah"],
        ),
        case("a.x.y.b", &["t_hasha", "t_all", "t_ab", "t_hs", "t_hb", "t_hah"]),
        case("b", &["t_all", "t_one", "t_hs", "t_hb"]),
        case(".", &["t_all", "t_hs", "t_ss"]),
        case("a.", &["t_star", "t_hasha", "t_all", "t_hs", "t_ss", "t_hah"]),
        case("x.a.b", &["t_all", "t_hs", "t_hb", "t_hah"]),
        case("A.B", &["t_all", "t_hs", "t_ss"]),
        case("a.b.c", &["t_hasha", "t_all", "t_mid", "t_hs", "t_hah"]),
        case(".b", &["t_all", "t_hs", "t_ss", "t_hb"]),
        case("#", &["t_all", "t_one", "t_hs"]),
        case("*", &["t_all", "t_one", "t_hs"]),
    ];
    assert_no_errors(run_matrix(&ch, "t", &queues, &cases).await);

    // '#' alone still matches everything after the others are unbound; unbinding it stops that.
    for (q, k) in bindings {
        if q != "t_all" {
            unbind(&ch, q, "t", k).await;
        }
    }
    let cases = [
        case("", &["t_all"]),
        case("a.b", &["t_all"]),
        case("..", &["t_all"]),
    ];
    assert_no_errors(run_matrix(&ch, "t", &queues, &cases).await);
    unbind(&ch, "t_all", "t", "#").await;
    let cases = [case("", &[]), case("a", &[])];
    assert_no_errors(run_matrix(&ch, "t", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// 'a.#.#.b' and 'a.#.b' are different bindings (different keys) even if they match the same keys:
/// removing one keeps the other working.
#[tokio::test]
async fn topic_equivalent_patterns_are_distinct_bindings() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "t", "a.#.#.b").await;
    bind(&ch, "q", "t", "a.#.b").await;
    assert_no_errors(run_matrix(&ch, "t", &["q"], &[case("a.x.b", &["q"])]).await);
    unbind(&ch, "q", "t", "a.#.b").await;
    assert_no_errors(run_matrix(&ch, "t", &["q"], &[case("a.x.b", &["q"]), case("a.b", &["q"])]).await);
    unbind(&ch, "q", "t", "a.#.#.b").await;
    assert_no_errors(run_matrix(&ch, "t", &["q"], &[case("a.x.b", &[])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}

fn h(pairs: &[(&str, AMQPValue)]) -> Option<FieldTable> {
    Some(table(pairs))
}

#[tokio::test]
async fn headers_matrix_all_any_with_x() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    let bindings: Vec<(&str, FieldTable)> = vec![
        (
            "h_all",
            table(&[("x-match", s("all")), ("a", int(1)), ("b", s("x"))]),
        ),
        (
            "h_any",
            table(&[("x-match", s("any")), ("a", int(1)), ("b", s("x"))]),
        ),
        ("h_default", table(&[("a", int(1))])),
        ("h_empty_all", table(&[("x-match", s("all"))])),
        ("h_empty_any", table(&[("x-match", s("any"))])),
        (
            "h_allx",
            table(&[("x-match", s("all-with-x")), ("x-k", s("v")), ("a", int(1))]),
        ),
        ("h_anyx", table(&[("x-match", s("any-with-x")), ("x-k", s("v"))])),
        ("h_any_plainx", table(&[("x-match", s("any")), ("x-k", s("v"))])),
        ("h_all_plainx", table(&[("x-match", s("all")), ("x-k", s("v"))])),
        ("h_void", table(&[("x-match", s("all")), ("c", AMQPValue::Void)])),
    ];
    let queues: Vec<&str> = bindings.iter().map(|(q, _)| *q).collect();
    for (q, args) in &bindings {
        queue(&ch, q).await;
        // The routing key does not matter for a headers exchange.
        bind_args(&ch, q, "h", "some.key", args.clone()).await;
    }
    let always = ["h_empty_all", "h_all_plainx"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = always.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let cases = [
        hcase(None, &with(&[])),
        hcase(h(&[]), &with(&[])),
        hcase(h(&[("a", int(1))]), &with(&["h_any", "h_default"])),
        hcase(
            h(&[("a", int(1)), ("b", s("x"))]),
            &with(&["h_all", "h_any", "h_default"]),
        ),
        hcase(
            h(&[("b", s("x")), ("a", int(1))]),
            &with(&["h_all", "h_any", "h_default"]),
        ),
        hcase(h(&[("a", int(1)), ("b", s("y"))]), &with(&["h_any", "h_default"])),
        hcase(h(&[("b", s("x"))]), &with(&["h_any"])),
        hcase(h(&[("x-k", s("v"))]), &with(&["h_anyx"])),
        hcase(
            h(&[("x-k", s("v")), ("a", int(1))]),
            &with(&["h_allx", "h_anyx", "h_any", "h_default"]),
        ),
        hcase(h(&[("x-k", s("w"))]), &with(&[])),
        // Types matter between strings and numbers: "1" is not 1.
        hcase(h(&[("a", s("1"))]), &with(&[])),
        // ...but integers compare by value whatever their width (Erlang ==).
        hcase(
            h(&[("a", AMQPValue::LongLongInt(1))]),
            &with(&["h_any", "h_default"]),
        ),
        hcase(h(&[("c", s("anything"))]), &with(&["h_void"])),
        hcase(
            h(&[("c", int(0)), ("a", int(1)), ("zz", int(9))]),
            &with(&["h_void", "h_any", "h_default"]),
        ),
        hcase(h(&[("a", int(2))]), &with(&[])),
    ];
    assert_no_errors(run_matrix(&ch, "h", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// Binding arguments are part of a binding's identity: two bindings of one queue that differ only by
/// arguments are both live, and unbind removes only the one whose arguments match.
#[tokio::test]
async fn binding_arguments_are_part_of_the_identity() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    exchange(&ch, "d", ExchangeKind::Direct).await;
    queue(&ch, "hq").await;
    queue(&ch, "dq").await;
    let a1 = table(&[("x-match", s("any")), ("a", int(1))]);
    let b2 = table(&[("x-match", s("any")), ("b", int(2))]);
    bind_args(&ch, "hq", "h", "", a1.clone()).await;
    bind_args(&ch, "hq", "h", "", b2.clone()).await;
    let cases = [
        hcase(h(&[("a", int(1))]), &["hq"]),
        hcase(h(&[("b", int(2))]), &["hq"]),
        hcase(h(&[("a", int(1)), ("b", int(2))]), &["hq"]),
    ];
    assert_no_errors(run_matrix(&ch, "h", &["hq"], &cases).await);
    // Unbind without arguments matches no binding: a no-op.
    unbind(&ch, "hq", "h", "").await;
    // Unbind with the same arguments in another order removes b2 (identity uses sorted arguments).
    let b2_reordered = table(&[("b", int(2)), ("x-match", s("any"))]);
    ch.queue_unbind("hq".into(), "h".into(), "".into(), b2_reordered)
        .await
        .unwrap();
    let cases = [
        hcase(h(&[("a", int(1))]), &["hq"]),
        hcase(h(&[("b", int(2))]), &[]),
    ];
    assert_no_errors(run_matrix(&ch, "h", &["hq"], &cases).await);

    // Same on a direct exchange: the key matches both bindings, the copy is single.
    bind(&ch, "dq", "d", "k").await;
    bind_args(&ch, "dq", "d", "k", table(&[("foo", int(1))])).await;
    assert_no_errors(run_matrix(&ch, "d", &["dq"], &[case("k", &["dq"])]).await);
    unbind(&ch, "dq", "d", "k").await;
    assert_no_errors(run_matrix(&ch, "d", &["dq"], &[case("k", &["dq"])]).await);
    ch.queue_unbind("dq".into(), "d".into(), "k".into(), table(&[("foo", int(1))]))
        .await
        .unwrap();
    assert_no_errors(run_matrix(&ch, "d", &["dq"], &[case("k", &[])]).await);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    let queues = ["q1", "q2", "a.b", "*"];
    for q in queues {
        queue(&ch, q).await;
    }
    let cases = [
        case("q1", &["q1"]),
        case("q2", &["q2"]),
        case("a.b", &["a.b"]),
        case("*", &["*"]),
        case("Q1", &[]),
        case("", &[]),
        case("q3", &[]),
        case("#", &[]),
    ];
    assert_no_errors(run_matrix(&ch, "", &queues, &cases).await);
    // A mandatory publish to no queue comes back 312 NO_ROUTE.
    let r = publish_mandatory(&ch, "", "q3", "bounce", BasicProperties::default()).await;
    assert_eq!(r, Some((312, "NO_ROUTE".to_string(), b"bounce".to_vec())));
    // A deleted queue is no longer a route.
    ch.queue_delete("q2".into(), Default::default()).await.unwrap();
    let r = publish_mandatory(&ch, "", "q2", "bounce2", BasicProperties::default()).await;
    assert_eq!(r.map(|r| r.0), Some(312));
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn predeclared_amq_exchanges_route_by_their_type() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    let queues = ["pd", "pf1", "pf2", "pt", "ph", "pm"];
    for q in queues {
        queue(&ch, q).await;
    }
    // They exist, with their type and durable=true: an equivalent redeclare is accepted.
    for (x, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        assert!(exchange_exists(&conn, x).await, "{x} is predeclared");
        let opts = lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        exchange_with(&ch, x, kind, opts, FieldTable::default()).await;
    }
    bind(&ch, "pd", "amq.direct", "k").await;
    bind(&ch, "pf1", "amq.fanout", "").await;
    bind(&ch, "pf2", "amq.fanout", "zzz").await;
    bind(&ch, "pt", "amq.topic", "a.*").await;
    bind_args(
        &ch,
        "ph",
        "amq.headers",
        "",
        table(&[("x-match", s("any")), ("a", int(1))]),
    )
    .await;
    bind_args(&ch, "pm", "amq.match", "", table(&[("b", s("x"))])).await;

    assert_no_errors(run_matrix(&ch, "amq.direct", &queues, &[case("k", &["pd"]), case("j", &[])]).await);
    assert_no_errors(run_matrix(&ch, "amq.fanout", &queues, &[case("k", &["pf1", "pf2"])]).await);
    assert_no_errors(
        run_matrix(
            &ch,
            "amq.topic",
            &queues,
            &[case("a.b", &["pt"]), case("a", &[]), case("a.b.c", &[])],
        )
        .await,
    );
    assert_no_errors(
        run_matrix(
            &ch,
            "amq.headers",
            &queues,
            &[
                hcase(h(&[("a", int(1))]), &["ph"]),
                hcase(h(&[("b", s("x"))]), &[]),
            ],
        )
        .await,
    );
    assert_no_errors(
        run_matrix(
            &ch,
            "amq.match",
            &queues,
            &[hcase(h(&[("b", s("x"))]), &["pm"]), hcase(None, &[])],
        )
        .await,
    );
    conn.close(200, "bye".into()).await.unwrap();
}

/// A message that matches a queue through several bindings (several topic patterns, a direct key plus an
/// exchange-to-exchange path, several headers bindings) is enqueued on it once.
#[tokio::test]
async fn several_matching_bindings_enqueue_once() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    exchange(&ch, "f", ExchangeKind::Fanout).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    queue(&ch, "q").await;
    queue(&ch, "other").await;
    for k in ["a.b", "a.*", "*.b", "a.#", "#", "#.b", "#.#"] {
        bind(&ch, "q", "t", k).await;
    }
    bind(&ch, "other", "t", "a.b").await;
    // t -> f (twice, different keys) -> q: q is reached directly and via f.
    xbind(&ch, "f", "t", "a.b").await;
    xbind(&ch, "f", "t", "#").await;
    bind(&ch, "q", "f", "").await;
    bind(&ch, "q", "f", "x").await;
    let cases = [case("a.b", &["q", "other"]), case("z", &["q"])];
    assert_no_errors(run_matrix(&ch, "t", &["q", "other"], &cases).await);

    bind_args(&ch, "q", "h", "", table(&[("x-match", s("any")), ("a", int(1))])).await;
    bind_args(&ch, "q", "h", "", table(&[("x-match", s("all")), ("a", int(1))])).await;
    bind_args(&ch, "q", "h", "", table(&[("b", int(2))])).await;
    let cases = [hcase(h(&[("a", int(1)), ("b", int(2))]), &["q"])];
    assert_no_errors(run_matrix(&ch, "h", &["q", "other"], &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}

/// Header values compare as RabbitMQ's `PV == DV` on the decoded values: numbers by value across widths and
/// between integers and floats, longstr equal to a byte array with the same bytes; but inside arrays the
/// elements are `{Type, Value}` pairs, so the element types must agree.
#[tokio::test]
async fn headers_value_equality_follows_erlang_terms() {
    use lapin::types::{ByteArray, FieldArray};
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "h", ExchangeKind::Headers).await;
    let queues = ["num", "str", "arr"];
    for q in queues {
        queue(&ch, q).await;
    }
    bind_args(
        &ch,
        "num",
        "h",
        "",
        table(&[("x-match", s("any")), ("n", int(1))]),
    )
    .await;
    bind_args(
        &ch,
        "str",
        "h",
        "",
        table(&[("x-match", s("any")), ("s", s("x"))]),
    )
    .await;
    let arr = |v: AMQPValue| AMQPValue::FieldArray(FieldArray::from(vec![v]));
    bind_args(
        &ch,
        "arr",
        "h",
        "",
        table(&[("x-match", s("any")), ("a", arr(int(1)))]),
    )
    .await;
    let cases = [
        hcase(h(&[("n", AMQPValue::ShortShortInt(1))]), &["num"]),
        hcase(h(&[("n", AMQPValue::LongLongInt(1))]), &["num"]),
        hcase(h(&[("n", AMQPValue::Double(1.0))]), &["num"]),
        hcase(h(&[("n", AMQPValue::Double(1.5))]), &[]),
        hcase(h(&[("n", AMQPValue::Timestamp(1))]), &["num"]),
        hcase(h(&[("n", AMQPValue::Boolean(true))]), &[]),
        hcase(
            h(&[("s", AMQPValue::ByteArray(ByteArray::from(&b"x"[..])))]),
            &["str"],
        ),
        hcase(h(&[("s", s("X"))]), &[]),
        hcase(h(&[("a", arr(int(1)))]), &["arr"]),
        hcase(h(&[("a", arr(int(2)))]), &[]),
        // {long, 1} is not {signedint, 1}: no match inside an array.
        hcase(h(&[("a", arr(AMQPValue::LongLongInt(1)))]), &[]),
    ];
    assert_no_errors(run_matrix(&ch, "h", &queues, &cases).await);
    conn.close(200, "bye".into()).await.unwrap();
}
