//! Unit tests per exchange type and per error (kind and exact text).

use router::*;

fn r() -> Router {
    let mut r = Router::new("/");
    for q in ["q1", "q2", "q3"] {
        r.declare_queue(q.into());
    }
    r
}

fn def(name: &str, kind: ExchangeKind) -> ExchangeDef {
    ExchangeDef::new(name, kind)
}

fn route(r: &Router, x: &str, key: &str) -> Vec<String> {
    route_h(r, x, key, None)
}

fn route_h(r: &Router, x: &str, key: &str, h: Option<&Args>) -> Vec<String> {
    let mut out = Vec::new();
    r.route(x, key, h, &mut out).unwrap();
    let mut v: Vec<String> = out.iter().map(|n| n.to_string()).collect();
    let n = v.len();
    v.sort();
    v.dedup();
    assert_eq!(n, v.len(), "route output must be distinct");
    v
}

fn err(e: RouterError, kind: ErrorKind, text: &str) {
    assert_eq!(e.kind, kind, "{e:?}");
    assert_eq!(e.text, text);
}

fn s(v: &str) -> ArgValue {
    ArgValue::Str(v.into())
}

#[test]
fn predeclared_exchanges() {
    let r = Router::new("/");
    let names: Vec<&str> = {
        let mut v: Vec<&str> = r.exchanges().map(|d| &*d.name).collect();
        v.sort();
        v
    };
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
            "amq.topic"
        ]
    );
    // RabbitMQ's firehose exchange: internal, so clients cannot publish to it; the broker routes through it.
    assert!(r.exchange("amq.rabbitmq.trace").unwrap().internal);
    let mut out = Vec::new();
    assert!(r
        .route("amq.rabbitmq.trace", "publish.x", None, &mut out)
        .is_err());
    assert!(r
        .route_internal("amq.rabbitmq.trace", "publish.x", &mut out)
        .is_ok());
    assert_eq!(r.exchange("amq.match").unwrap().kind, ExchangeKind::Headers);
    assert!(r
        .exchanges()
        .all(|d| d.durable && !d.auto_delete && d.internal == (&*d.name == "amq.rabbitmq.trace")));
}

#[test]
fn exchange_kind_parse() {
    assert_eq!(ExchangeKind::parse("topic").unwrap(), ExchangeKind::Topic);
    assert_eq!("headers".parse::<ExchangeKind>().unwrap(), ExchangeKind::Headers);
    assert_eq!(ExchangeKind::Fanout.as_str(), "fanout");
    let e = ExchangeKind::parse("foo").unwrap_err();
    err(
        e.clone(),
        ErrorKind::CommandInvalid,
        "unknown exchange type 'foo'",
    );
    assert_eq!(e.reply_code(), 503);
    assert_eq!(e.reply_text(), "COMMAND_INVALID - unknown exchange type 'foo'");
}

#[test]
fn default_exchange_routes_by_queue_name() {
    let r = r();
    assert_eq!(route(&r, "", "q1"), ["q1"]);
    let mut out = vec!["stale".into()];
    let res = r.route("", "nope", None, &mut out).unwrap();
    assert!(out.is_empty());
    assert!(!res.matched);
}

#[test]
fn default_exchange_is_untouchable() {
    let mut r = r();
    let t = "operation not permitted on the default exchange";
    err(
        r.declare_exchange(def("", ExchangeKind::Direct)).unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    err(
        r.declare_exchange_passive("").unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    err(
        r.delete_exchange("", false).unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    err(
        r.bind(Binding::queue("", "q1", "q1")).unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    err(
        r.unbind(&Binding::queue("", "q1", "q1")).unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    err(
        r.bind(Binding::exchange("amq.direct", "", "k")).unwrap_err(),
        ErrorKind::AccessRefused,
        t,
    );
    assert_eq!(r.exchange("").unwrap().kind, ExchangeKind::Direct);
}

#[test]
fn reserved_prefix_and_system_exchanges() {
    let mut r = r();
    let e = r
        .declare_exchange(def("amq.foo", ExchangeKind::Direct))
        .unwrap_err();
    err(
        e.clone(),
        ErrorKind::AccessRefused,
        "exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    );
    assert_eq!(e.reply_code(), 403);
    // Redeclaring an existing amq.* exchange equivalently is fine.
    assert_eq!(
        r.declare_exchange(def("amq.direct", ExchangeKind::Direct))
            .unwrap(),
        Declared::Existed
    );
    err(
        r.declare_exchange(def("amq.direct", ExchangeKind::Fanout)).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but current is 'direct'",
    );
    err(
        r.delete_exchange("amq.topic", false).unwrap_err(),
        ErrorKind::AccessRefused,
        "deletion of system exchange 'amq.topic' in vhost '/' not allowed",
    );
    // Recovery may restore anything.
    r.restore_exchange(def("amq.custom", ExchangeKind::Fanout));
    assert!(r.exchange("amq.custom").is_some());
}

#[test]
fn declare_and_equivalence() {
    let mut r = Router::new("vh1");
    assert_eq!(
        r.declare_exchange(def("x", ExchangeKind::Direct)).unwrap(),
        Declared::Created
    );
    assert_eq!(
        r.declare_exchange(def("x", ExchangeKind::Direct)).unwrap(),
        Declared::Existed
    );
    err(
        r.declare_exchange(def("x", ExchangeKind::Fanout)).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'type' for exchange 'x' in vhost 'vh1': received 'fanout' but current is 'direct'",
    );
    let mut d = def("x", ExchangeKind::Direct);
    d.durable = false;
    err(
        r.declare_exchange(d).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'durable' for exchange 'x' in vhost 'vh1': received 'false' but current is 'true'",
    );
    let mut d = def("x", ExchangeKind::Direct);
    d.auto_delete = true;
    err(
        r.declare_exchange(d).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'auto_delete' for exchange 'x' in vhost 'vh1': received 'true' but current is 'false'",
    );
    let mut d = def("x", ExchangeKind::Direct);
    d.internal = true;
    err(
        r.declare_exchange(d).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'internal' for exchange 'x' in vhost 'vh1': received 'true' but current is 'false'",
    );
    // Arguments: like RabbitMQ, only alternate-exchange is compared.
    let mut d = def("x", ExchangeKind::Direct);
    d.arguments = Args::new().with("x-whatever", ArgValue::long(1));
    assert_eq!(r.declare_exchange(d).unwrap(), Declared::Existed);
    let mut d = def("x", ExchangeKind::Direct);
    d.arguments = Args::new().with("alternate-exchange", s("ae"));
    err(
        r.declare_exchange(d).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost 'vh1': received the value 'ae' of type 'longstr' but current is none",
    );
    let mut d = def("y", ExchangeKind::Topic);
    d.arguments = Args::new().with("alternate-exchange", s("ae1"));
    r.declare_exchange(d.clone()).unwrap();
    assert_eq!(r.declare_exchange(d.clone()).unwrap(), Declared::Existed);
    d.arguments = Args::new().with("alternate-exchange", s("ae2"));
    err(
        r.declare_exchange(d).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "inequivalent arg 'alternate-exchange' for exchange 'y' in vhost 'vh1': received 'ae2' but current is 'ae1'",
    );
}

#[test]
fn passive_declare() {
    let mut r = r();
    err(
        r.declare_exchange_passive("nope").unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'nope' in vhost '/'",
    );
    r.declare_exchange(def("x", ExchangeKind::Topic)).unwrap();
    assert_eq!(r.declare_exchange_passive("x").unwrap().kind, ExchangeKind::Topic);
}

#[test]
fn delete_exchange_semantics() {
    let mut r = r();
    assert_eq!(r.delete_exchange("missing", false).unwrap(), None);
    assert_eq!(r.delete_exchange("missing", true).unwrap(), None);
    r.declare_exchange(def("x", ExchangeKind::Direct)).unwrap();
    r.declare_exchange(def("up", ExchangeKind::Fanout)).unwrap();
    r.bind(Binding::queue("x", "q1", "k")).unwrap();
    r.bind(Binding::exchange("up", "x", "")).unwrap();
    err(
        r.delete_exchange("x", true).unwrap_err(),
        ErrorKind::PreconditionFailed,
        "exchange 'x' in vhost '/' in use",
    );
    // Only bindings as *source* count as use.
    r.declare_exchange(def("leaf", ExchangeKind::Fanout)).unwrap();
    r.bind(Binding::exchange("up", "leaf", "")).unwrap();
    assert!(r.delete_exchange("leaf", true).unwrap().is_some());
    let d = r.delete_exchange("x", false).unwrap().unwrap();
    assert_eq!(&*d.name, "x");
    assert!(r.exchange("x").is_none());
    assert!(r.bindings_for_queue("q1").is_empty());
    assert!(r.bindings_for_exchange("up").is_empty());
    assert_eq!(r.binding_count(), 0);
    let mut out = Vec::new();
    err(
        r.route("x", "k", None, &mut out).unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'x' in vhost '/'",
    );
}

#[test]
fn bind_errors() {
    let mut r = r();
    err(
        r.bind(Binding::queue("nox", "q1", "k")).unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'nox' in vhost '/'",
    );
    err(
        r.bind(Binding::queue("amq.direct", "noq", "k")).unwrap_err(),
        ErrorKind::NotFound,
        "no queue 'noq' in vhost '/'",
    );
    err(
        r.bind(Binding::exchange("amq.direct", "nox2", "k")).unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'nox2' in vhost '/'",
    );
    // Source is checked first.
    err(
        r.bind(Binding::queue("nox", "noq", "k")).unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'nox' in vhost '/'",
    );
    err(
        r.unbind(&Binding::queue("amq.direct", "noq", "k")).unwrap_err(),
        ErrorKind::NotFound,
        "no queue 'noq' in vhost '/'",
    );
    // Unbinding a missing binding is a no-op.
    assert_eq!(
        r.unbind(&Binding::queue("amq.direct", "q1", "k")).unwrap(),
        (false, vec![])
    );
}

#[test]
fn binding_identity_and_args_order() {
    let mut r = r();
    let a = Args::new().with("a", ArgValue::long(1)).with("b", s("x"));
    let b = Args::new().with("b", s("x")).with("a", ArgValue::long(1));
    assert_eq!(a, b);
    assert!(r
        .bind(Binding::queue("amq.direct", "q1", "k").with_args(a.clone()))
        .unwrap());
    assert!(!r
        .bind(Binding::queue("amq.direct", "q1", "k").with_args(b.clone()))
        .unwrap());
    // Different args => a second binding, but the queue gets the message once.
    assert!(r.bind(Binding::queue("amq.direct", "q1", "k")).unwrap());
    assert_eq!(route(&r, "amq.direct", "k"), ["q1"]);
    assert_eq!(r.bindings_for_queue("q1").len(), 2);
    assert_eq!(
        r.unbind(&Binding::queue("amq.direct", "q1", "k").with_args(b))
            .unwrap(),
        (true, vec![])
    );
    assert_eq!(route(&r, "amq.direct", "k"), ["q1"]);
    assert!(r.unbind(&Binding::queue("amq.direct", "q1", "k")).unwrap().0);
    assert!(route(&r, "amq.direct", "k").is_empty());
}

#[test]
fn direct_exchange() {
    let mut r = r();
    r.bind(Binding::queue("amq.direct", "q1", "a")).unwrap();
    r.bind(Binding::queue("amq.direct", "q2", "a")).unwrap();
    r.bind(Binding::queue("amq.direct", "q3", "b")).unwrap();
    r.bind(Binding::queue("amq.direct", "q3", "")).unwrap();
    assert_eq!(route(&r, "amq.direct", "a"), ["q1", "q2"]);
    assert_eq!(route(&r, "amq.direct", "b"), ["q3"]);
    assert_eq!(route(&r, "amq.direct", ""), ["q3"]);
    assert!(route(&r, "amq.direct", "A").is_empty());
    assert!(route(&r, "amq.direct", "a.b").is_empty());
}

#[test]
fn fanout_exchange() {
    let mut r = r();
    r.bind(Binding::queue("amq.fanout", "q1", "ignored")).unwrap();
    r.bind(Binding::queue("amq.fanout", "q2", "")).unwrap();
    r.bind(Binding::queue("amq.fanout", "q2", "other")).unwrap();
    assert_eq!(route(&r, "amq.fanout", "anything"), ["q1", "q2"]);
    let mut out = Vec::new();
    let res = r.route("amq.fanout", "", None, &mut out).unwrap();
    assert!(res.matched && !res.used_alternate);
}

#[test]
fn fanout_many_destinations_edit() {
    let mut r = Router::new("/");
    for i in 0..100 {
        let q = format!("q{i}");
        r.declare_queue(q.as_str().into());
        r.bind(Binding::queue("amq.fanout", &q, "")).unwrap();
    }
    assert_eq!(route(&r, "amq.fanout", "").len(), 100);
    for i in (0..100).step_by(2) {
        r.delete_queue(&format!("q{i}"));
    }
    let got = route(&r, "amq.fanout", "");
    assert_eq!(got.len(), 50);
    assert!(got.iter().all(|q| q[1..].parse::<u32>().unwrap() % 2 == 1));
}

#[test]
fn topic_exchange() {
    let mut r = Router::new("/");
    let cases: &[(&str, &str)] = &[
        ("qstar", "*"),
        ("qhash", "#"),
        ("qempty", ""),
        ("qab", "a.b"),
        ("qastar", "a.*"),
        ("qahash", "a.#"),
        ("qhashb", "#.b"),
        ("qahhb", "a.#.#.b"),
        ("qhs", "#.*"),
        ("qdots", "a..b"),
        ("qtrail", "a."),
        ("qlead", ".a"),
        ("qss", "*.*"),
        ("qstock", "stock.*.nyse"),
    ];
    for (q, p) in cases {
        r.declare_queue((*q).into());
        r.bind(Binding::queue("amq.topic", q, p)).unwrap();
    }
    let t = |k: &str| route(&r, "amq.topic", k);
    assert_eq!(t(""), ["qempty", "qhash"]);
    assert_eq!(t("a"), ["qahash", "qhash", "qhs", "qstar"]);
    assert_eq!(
        t("a.b"),
        ["qab", "qahash", "qahhb", "qastar", "qhash", "qhashb", "qhs", "qss"]
    );
    assert_eq!(t("a.x.y.b"), ["qahash", "qahhb", "qhash", "qhashb", "qhs"]);
    assert_eq!(t("a..b"), ["qahash", "qahhb", "qdots", "qhash", "qhashb", "qhs"]);
    assert_eq!(t("a."), ["qahash", "qastar", "qhash", "qhs", "qss", "qtrail"]);
    assert_eq!(t(".a"), ["qhash", "qhs", "qlead", "qss"]);
    assert_eq!(t("."), ["qhash", "qhs", "qss"]);
    assert_eq!(t("b"), ["qhash", "qhashb", "qhs", "qstar"]);
    assert_eq!(t("stock.ibm.nyse"), ["qhash", "qhs", "qstock"]);
    // Removal prunes without disturbing siblings.
    r.unbind(&Binding::queue("amq.topic", "qahhb", "a.#.#.b"))
        .unwrap();
    r.unbind(&Binding::queue("amq.topic", "qhash", "#")).unwrap();
    assert_eq!(route(&r, "amq.topic", "a.x.y.b"), ["qahash", "qhashb", "qhs"]);
    assert_eq!(route(&r, "amq.topic", ""), ["qempty"]);
}

#[test]
fn headers_exchange() {
    let mut r = r();
    let all = Args::new()
        .with("x-match", s("all"))
        .with("fmt", s("pdf"))
        .with("type", s("report"));
    let any = Args::new()
        .with("x-match", s("any"))
        .with("fmt", s("pdf"))
        .with("type", s("log"));
    let dflt = Args::new().with("fmt", s("pdf"));
    r.bind(Binding::queue("amq.headers", "q1", "").with_args(all))
        .unwrap();
    r.bind(Binding::queue("amq.headers", "q2", "").with_args(any))
        .unwrap();
    r.bind(Binding::queue("amq.headers", "q3", "").with_args(dflt))
        .unwrap();
    let h = |a: Args| route_h(&r, "amq.headers", "whatever", Some(&a));
    assert_eq!(
        h(Args::new().with("type", s("report")).with("fmt", s("pdf"))),
        ["q1", "q2", "q3"]
    );
    assert_eq!(h(Args::new().with("type", s("log"))), ["q2"]);
    assert_eq!(h(Args::new().with("fmt", s("pdf"))), ["q2", "q3"]);
    assert!(h(Args::new().with("fmt", s("doc"))).is_empty());
    assert!(route_h(&r, "amq.headers", "", None).is_empty());
}

#[test]
fn headers_x_keys_and_with_x() {
    let mut r = r();
    r.bind(
        Binding::queue("amq.match", "q1", "")
            .with_args(Args::new().with("x-match", s("all")).with("x-tag", s("t"))),
    )
    .unwrap();
    r.bind(
        Binding::queue("amq.match", "q2", "")
            .with_args(Args::new().with("x-match", s("all-with-x")).with("x-tag", s("t"))),
    )
    .unwrap();
    r.bind(
        Binding::queue("amq.match", "q3", "").with_args(
            Args::new()
                .with("x-match", s("any-with-x"))
                .with("x-tag", s("t"))
                .with("k", s("v")),
        ),
    )
    .unwrap();
    let h = |a: Args| route_h(&r, "amq.match", "", Some(&a));
    // `all` with only x- keys matches everything.
    assert_eq!(h(Args::new()), ["q1"]);
    assert_eq!(h(Args::new().with("x-tag", s("t"))), ["q1", "q2", "q3"]);
    assert_eq!(h(Args::new().with("k", s("v"))), ["q1", "q3"]);
    assert_eq!(h(Args::new().with("x-tag", s("u"))), ["q1"]);
}

#[test]
fn headers_value_semantics() {
    let mut r = r();
    r.bind(Binding::queue("amq.headers", "q1", "").with_args(Args::new().with("n", ArgValue::long(1))))
        .unwrap();
    r.bind(Binding::queue("amq.headers", "q2", "").with_args(Args::new().with("present", ArgValue::Void)))
        .unwrap();
    let h = |a: Args| route_h(&r, "amq.headers", "", Some(&a));
    // Erlang `==`: 1 == 1.0.
    assert_eq!(h(Args::new().with("n", ArgValue::double(1.0))), ["q1"]);
    assert_eq!(h(Args::new().with("n", ArgValue::Timestamp(1))), ["q1"]);
    assert!(h(Args::new().with("n", s("1"))).is_empty());
    assert_eq!(h(Args::new().with("present", ArgValue::Bool(false))), ["q2"]);
    // Top level: integer widths and float/double are not compared.
    for v in [
        ArgValue::Int(1, IntType::Byte),
        ArgValue::Int(1, IntType::UnsignedByte),
        ArgValue::Int(1, IntType::Short),
        ArgValue::Int(1, IntType::UnsignedShort),
        ArgValue::signedint(1),
        ArgValue::Int(1, IntType::UnsignedInt),
        ArgValue::Float(1.0, FloatType::Float),
    ] {
        assert_eq!(h(Args::new().with("n", v.clone())), ["q1"], "{v:?}");
    }
}

/// Inside arrays and tables values are Erlang `{Type, Value}` terms, so the
/// AMQP types must agree (`[{signedint,1}]` is not `[{long,1}]`).
#[test]
fn headers_nested_values_compare_with_types() {
    let mut r = r();
    let arr = |v: ArgValue| ArgValue::Array(vec![v]);
    r.bind(
        Binding::queue("amq.headers", "q1", "").with_args(Args::new().with("a", arr(ArgValue::signedint(1)))),
    )
    .unwrap();
    r.bind(
        Binding::queue("amq.headers", "q2", "")
            .with_args(Args::new().with("t", ArgValue::Table(Args::new().with("k", ArgValue::double(1.0))))),
    )
    .unwrap();
    r.bind(Binding::queue("amq.headers", "q3", "").with_args(Args::new().with("a", arr(s("1")))))
        .unwrap();
    let h = |a: Args| route_h(&r, "amq.headers", "", Some(&a));
    assert_eq!(h(Args::new().with("a", arr(ArgValue::signedint(1)))), ["q1"]);
    assert!(h(Args::new().with("a", arr(ArgValue::long(1)))).is_empty());
    assert!(h(Args::new().with("a", arr(ArgValue::Int(1, IntType::UnsignedInt)))).is_empty());
    assert!(h(Args::new().with("a", arr(ArgValue::double(1.0)))).is_empty());
    assert!(h(Args::new().with("a", arr(ArgValue::signedint(2)))).is_empty());
    assert!(h(Args::new().with("a", arr(ArgValue::Bytes(b"1".to_vec())))).is_empty());
    assert_eq!(h(Args::new().with("a", arr(s("1")))), ["q3"]);
    let tbl = |v: ArgValue| ArgValue::Table(Args::new().with("k", v));
    assert_eq!(h(Args::new().with("t", tbl(ArgValue::double(1.0)))), ["q2"]);
    assert!(h(Args::new().with("t", tbl(ArgValue::Float(1.0, FloatType::Float)))).is_empty());
    assert!(h(Args::new().with("t", tbl(ArgValue::long(1)))).is_empty());
}

#[test]
fn arg_type_names() {
    let names: Vec<&str> = [
        ArgValue::Int(-1, IntType::Byte),
        ArgValue::Int(1, IntType::UnsignedByte),
        ArgValue::Int(1, IntType::Short),
        ArgValue::Int(1, IntType::UnsignedShort),
        ArgValue::signedint(1),
        ArgValue::Int(1, IntType::UnsignedInt),
        ArgValue::long(1),
        ArgValue::Float(1.0, FloatType::Float),
        ArgValue::double(1.0),
        s("x"),
        ArgValue::Bytes(vec![1]),
        ArgValue::Timestamp(1),
        ArgValue::Decimal(1, 1),
        ArgValue::Void,
    ]
    .iter()
    .map(ArgValue::type_name)
    .collect();
    assert_eq!(
        names,
        [
            "byte",
            "unsignedbyte",
            "short",
            "unsignedshort",
            "signedint",
            "unsignedint",
            "long",
            "float",
            "double",
            "longstr",
            "binary",
            "timestamp",
            "decimal",
            "void"
        ]
    );
    assert_eq!(ArgValue::signedint(1).type_class(), "int");
    assert_eq!(ArgValue::Float(1.0, FloatType::Float).type_class(), "float");
}

/// Binding identity includes the AMQP types of the arguments.
#[test]
fn binding_identity_keeps_integer_types() {
    let mut r = r();
    let b = |v: ArgValue| Binding::queue("amq.direct", "q1", "k").with_args(Args::new().with("n", v));
    assert!(r.bind(b(ArgValue::signedint(1))).unwrap());
    assert!(r.bind(b(ArgValue::long(1))).unwrap());
    assert!(!r.bind(b(ArgValue::signedint(1))).unwrap());
    assert!(r.bind(b(ArgValue::Float(1.0, FloatType::Float))).unwrap());
    assert!(r.bind(b(ArgValue::double(1.0))).unwrap());
    assert_eq!(r.bindings_for_queue("q1").len(), 4);
    let mut got: Vec<ArgValue> = r
        .bindings_for_queue("q1")
        .into_iter()
        .map(|b| b.arguments.get("n").unwrap().clone())
        .collect();
    got.sort_by_key(|v| v.type_name());
    assert_eq!(
        got,
        [
            ArgValue::double(1.0),
            ArgValue::Float(1.0, FloatType::Float),
            ArgValue::long(1),
            ArgValue::signedint(1)
        ]
    );
    assert_eq!(r.unbind(&b(ArgValue::long(1))).unwrap(), (true, vec![]));
    assert_eq!(r.bindings_for_queue("q1").len(), 3);
}

/// `#.a.` × 12 then `z` against a 60-word key: exponential for a walk that
/// tries every split of the key among the `#`s; must finish promptly.
#[test]
fn pathological_topic_pattern_routes() {
    let mut r = r();
    let pattern = format!("{}z", "#.a.".repeat(12));
    r.bind(Binding::queue("amq.topic", "q1", &pattern)).unwrap();
    r.bind(Binding::queue("amq.topic", "q2", "a.#.a")).unwrap();
    let key = vec!["a"; 60].join(".");
    assert_eq!(route(&r, "amq.topic", &key), ["q2"]);
    assert_eq!(route(&r, "amq.topic", &format!("{key}.z")), ["q1"]);
    assert_eq!(route(&r, "amq.topic", &format!("{}z", "a.".repeat(12))), ["q1"]);
    assert!(route(&r, "amq.topic", &format!("{}z", "a.".repeat(11))).is_empty());
    // Each (trie node, word position) state is visited at most once: the
    // trie has 1 + 24 + 1 + 3 nodes, the key 61 positions.
    let mut scratch = RouteScratch::new();
    let mut out = Vec::new();
    r.route_with("amq.topic", &key, None, &mut out, &mut scratch)
        .unwrap();
    let visited = scratch.topic_states_visited();
    assert!(visited > 0 && visited <= 29 * 61, "{visited}");
}

#[test]
fn headers_invalid_x_match() {
    let mut r = r();
    err(
        r.bind(Binding::queue("amq.headers", "q1", "").with_args(Args::new().with("x-match", s("some"))))
            .unwrap_err(),
        ErrorKind::PreconditionFailed,
        "Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x",
    );
    err(
        r.bind(
            Binding::queue("amq.headers", "q1", "").with_args(Args::new().with("x-match", ArgValue::long(5))),
        )
        .unwrap_err(),
        ErrorKind::PreconditionFailed,
        "Invalid x-match field type long (value 5); expected longstr",
    );
    err(
        r.bind(
            Binding::queue("amq.headers", "q1", "")
                .with_args(Args::new().with("x-match", ArgValue::signedint(1))),
        )
        .unwrap_err(),
        ErrorKind::PreconditionFailed,
        "Invalid x-match field type signedint (value 1); expected longstr",
    );
    err(
        r.bind(
            Binding::queue("amq.headers", "q1", "").with_args(Args::new().with(
                "x-match",
                ArgValue::Array(vec![ArgValue::Int(1, IntType::UnsignedByte), s("a")]),
            )),
        )
        .unwrap_err(),
        ErrorKind::PreconditionFailed,
        "Invalid x-match field type array (value [{unsignedbyte,1},{longstr,<<\"a\">>}]); expected longstr",
    );
    // Non-headers exchanges do not validate.
    r.bind(Binding::queue("amq.direct", "q1", "").with_args(Args::new().with("x-match", s("some"))))
        .unwrap();
}

#[test]
fn internal_and_missing_exchange_publish() {
    let mut r = r();
    let mut d = def("int", ExchangeKind::Fanout);
    d.internal = true;
    r.declare_exchange(d).unwrap();
    r.bind(Binding::queue("int", "q1", "")).unwrap();
    let mut out = Vec::new();
    err(
        r.route("int", "", None, &mut out).unwrap_err(),
        ErrorKind::AccessRefused,
        "cannot publish to internal exchange 'int' in vhost '/'",
    );
    err(
        r.route("missing", "", None, &mut out).unwrap_err(),
        ErrorKind::NotFound,
        "no exchange 'missing' in vhost '/'",
    );
    // An internal exchange is still reachable through e2e bindings.
    r.bind(Binding::exchange("amq.fanout", "int", "")).unwrap();
    assert_eq!(route(&r, "amq.fanout", ""), ["q1"]);
}

#[test]
fn exchange_to_exchange_with_cycles() {
    let mut r = r();
    for (n, k) in [
        ("a", ExchangeKind::Fanout),
        ("b", ExchangeKind::Fanout),
        ("c", ExchangeKind::Topic),
    ] {
        r.declare_exchange(def(n, k)).unwrap();
    }
    r.bind(Binding::exchange("a", "b", "")).unwrap();
    r.bind(Binding::exchange("b", "a", "")).unwrap();
    r.bind(Binding::exchange("b", "c", "")).unwrap();
    r.bind(Binding::exchange("c", "a", "#")).unwrap();
    r.bind(Binding::exchange("a", "a", "")).unwrap();
    r.bind(Binding::queue("a", "q1", "")).unwrap();
    r.bind(Binding::queue("b", "q1", "")).unwrap();
    r.bind(Binding::queue("c", "q2", "x.*")).unwrap();
    assert_eq!(route(&r, "a", "x.y"), ["q1", "q2"]);
    assert_eq!(route(&r, "c", "x.y"), ["q1", "q2"]);
    assert_eq!(route(&r, "c", "z"), ["q1"]);
    r.delete_exchange("b", false).unwrap();
    assert_eq!(route(&r, "a", "x.y"), ["q1"]);
    assert!(r
        .bindings_for_exchange("c")
        .iter()
        .all(|b| b.destination != Destination::Exchange("b".into())));
}

#[test]
fn alternate_exchange() {
    let mut r = r();
    let mut d = def("main", ExchangeKind::Direct);
    d.arguments = Args::new().with("alternate-exchange", s("ae"));
    r.declare_exchange(d).unwrap();
    let mut d = def("ae", ExchangeKind::Fanout);
    d.arguments = Args::new().with("alternate-exchange", s("main"));
    r.declare_exchange(d).unwrap();
    r.bind(Binding::queue("main", "q1", "k")).unwrap();
    let mut out = Vec::new();
    let res = r.route("main", "k", None, &mut out).unwrap();
    assert_eq!(
        res,
        Routed {
            matched: true,
            used_alternate: false
        }
    );
    // Unroutable, AE has no bindings, AE's AE points back: terminates.
    let res = r.route("main", "zzz", None, &mut out).unwrap();
    assert_eq!(
        res,
        Routed {
            matched: false,
            used_alternate: true
        }
    );
    assert!(out.is_empty());
    r.bind(Binding::queue("ae", "q2", "")).unwrap();
    let res = r.route("main", "zzz", None, &mut out).unwrap();
    assert_eq!(
        res,
        Routed {
            matched: true,
            used_alternate: true
        }
    );
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0], "q2");
    // AE missing: nothing happens.
    let mut d = def("lonely", ExchangeKind::Topic);
    d.arguments = Args::new().with("alternate-exchange", s("ghost"));
    r.declare_exchange(d).unwrap();
    let res = r.route("lonely", "a", None, &mut out).unwrap();
    assert_eq!(
        res,
        Routed {
            matched: false,
            used_alternate: false
        }
    );
    // Binding to an exchange counts as "routed" for the AE decision even if
    // that exchange then routes nowhere (RabbitMQ's process_alternate).
    r.declare_exchange(def("sink", ExchangeKind::Fanout)).unwrap();
    r.bind(Binding::exchange("main", "sink", "s")).unwrap();
    let res = r.route("main", "s", None, &mut out).unwrap();
    assert_eq!(
        res,
        Routed {
            matched: false,
            used_alternate: false
        }
    );
}

#[test]
fn auto_delete_on_last_unbind_and_queue_delete() {
    let mut r = r();
    let mut d = def("ad", ExchangeKind::Direct);
    d.auto_delete = true;
    r.declare_exchange(d.clone()).unwrap();
    r.bind(Binding::queue("ad", "q1", "a")).unwrap();
    r.bind(Binding::queue("ad", "q2", "b")).unwrap();
    assert_eq!(
        r.unbind(&Binding::queue("ad", "q1", "a")).unwrap(),
        (true, vec![])
    );
    let (removed, deleted) = r.unbind(&Binding::queue("ad", "q2", "b")).unwrap();
    assert!(removed);
    assert_eq!(deleted, vec![Name::from("ad")]);
    assert!(r.exchange("ad").is_none());

    r.declare_exchange(d).unwrap();
    r.bind(Binding::queue("ad", "q3", "a")).unwrap();
    assert_eq!(r.delete_queue("q3"), vec![Name::from("ad")]);
    assert!(!r.has_queue("q3"));
    assert!(r.exchange("ad").is_none());
    assert!(r.delete_queue("q3").is_empty());
}

#[test]
fn auto_delete_cascades_through_exchange_deletion() {
    let mut r = r();
    for n in ["top", "mid"] {
        let mut d = def(n, ExchangeKind::Fanout);
        d.auto_delete = true;
        r.declare_exchange(d).unwrap();
    }
    r.declare_exchange(def("leaf", ExchangeKind::Fanout)).unwrap();
    r.bind(Binding::exchange("top", "mid", "")).unwrap();
    r.bind(Binding::exchange("mid", "leaf", "")).unwrap();
    r.bind(Binding::queue("leaf", "q1", "")).unwrap();
    let d = r.delete_exchange_full("leaf", false).unwrap().unwrap();
    assert_eq!(d.auto_deleted, vec![Name::from("mid"), Name::from("top")]);
    assert!(r.exchange("mid").is_none() && r.exchange("top").is_none());
    assert_eq!(r.binding_count(), 0);
}

#[test]
fn queue_lifecycle() {
    let mut r = Router::new("/");
    assert!(!r.has_queue("q"));
    r.declare_queue("q".into());
    r.declare_queue("q".into());
    assert!(r.has_queue("q"));
    r.bind(Binding::queue("amq.topic", "q", "a.*")).unwrap();
    r.bind(Binding::queue("amq.direct", "q", "a")).unwrap();
    assert_eq!(r.bindings_for_queue("q").len(), 2);
    assert!(r.delete_queue("q").is_empty());
    assert!(route(&r, "amq.topic", "a.b").is_empty());
    assert!(route(&r, "", "q").is_empty());
    r.declare_queue("q".into());
    assert!(r.bindings_for_queue("q").is_empty());
    assert!(route(&r, "amq.direct", "a").is_empty());
}

#[test]
fn bindings_listing() {
    let mut r = r();
    r.declare_exchange(def("x", ExchangeKind::Topic)).unwrap();
    r.bind(Binding::queue("x", "q1", "a.#")).unwrap();
    r.bind(Binding::exchange("amq.fanout", "x", "")).unwrap();
    let mut all: Vec<Binding> = r.bindings().collect();
    all.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(
        all,
        vec![
            Binding::exchange("amq.fanout", "x", ""),
            Binding::queue("x", "q1", "a.#")
        ]
    );
}

#[test]
fn restore_exchange_replaces() {
    let mut r = r();
    r.restore_exchange(def("x", ExchangeKind::Direct));
    r.bind(Binding::queue("x", "q1", "k")).unwrap();
    let mut d = def("x", ExchangeKind::Direct);
    d.durable = false;
    r.restore_exchange(d);
    assert!(!r.exchange("x").unwrap().durable);
    assert_eq!(route(&r, "x", "k"), ["q1"]);
    r.restore_exchange(def("x", ExchangeKind::Fanout));
    assert_eq!(r.exchange("x").unwrap().kind, ExchangeKind::Fanout);
    assert!(r.bindings_for_queue("q1").is_empty());
}

#[test]
fn route_with_explicit_scratch_and_reused_output() {
    let mut r = r();
    r.bind(Binding::queue("amq.topic", "q1", "#")).unwrap();
    let mut s = RouteScratch::new();
    let mut out = Vec::new();
    for _ in 0..3 {
        r.route_with("amq.topic", "a.b", None, &mut out, &mut s).unwrap();
        assert_eq!(out.len(), 1);
    }
}

#[test]
fn error_codes() {
    assert_eq!(ErrorKind::AccessRefused.reply_code(), 403);
    assert_eq!(ErrorKind::NotFound.reply_code(), 404);
    assert_eq!(ErrorKind::PreconditionFailed.reply_code(), 406);
    assert_eq!(ErrorKind::CommandInvalid.reply_code(), 503);
    assert_eq!(ErrorKind::NotAllowed.reply_code(), 530);
    let e = RouterError::new(ErrorKind::NotFound, "no exchange 'x' in vhost '/'");
    assert_eq!(e.to_string(), "no exchange 'x' in vhost '/'");
    assert_eq!(e.reply_text(), "NOT_FOUND - no exchange 'x' in vhost '/'");
}

/// Sender-selected distribution (RabbitMQ's CC/BCC headers, `mc:routing_keys/1` = [RoutingKey | CC ++ BCC]):
/// every key routes, each queue once; the default exchange takes each key as a queue name.
#[test]
fn route_multi_routes_every_key_once() {
    let mut r = r();
    r.declare_exchange(def("d", ExchangeKind::Direct)).unwrap();
    r.declare_exchange(def("t", ExchangeKind::Topic)).unwrap();
    r.bind(Binding::queue("d", "q1", "k1")).unwrap();
    r.bind(Binding::queue("d", "q2", "k2")).unwrap();
    r.bind(Binding::queue("d", "q3", "k1")).unwrap();
    r.bind(Binding::queue("t", "q3", "a.*")).unwrap();
    let multi = |x: &str, k: &str, extra: &[&str]| {
        let mut out = Vec::new();
        let routed = r.route_multi(x, k, extra, None, &mut out).unwrap();
        let mut v: Vec<String> = out.iter().map(|n| n.to_string()).collect();
        let n = v.len();
        v.sort();
        v.dedup();
        assert_eq!(n, v.len(), "distinct");
        (v, routed.matched)
    };
    assert_eq!(multi("d", "k1", &["k2", "k1", "none"]).0, ["q1", "q2", "q3"]);
    assert_eq!(multi("d", "none", &["k2"]), (vec!["q2".to_string()], true));
    assert_eq!(multi("t", "x", &["a.b", "a.c"]).0, ["q3"]);
    assert_eq!(multi("", "q1", &["q2", "nope", "q1"]).0, ["q1", "q2"]);
    assert_eq!(multi("", "nope", &[] as &[&str]), (vec![], false));
}

#[test]
fn policy_alternate_exchange_applies_unless_the_argument_gives_one() {
    let mut r = r();
    r.declare_exchange(def("main", ExchangeKind::Direct)).unwrap();
    r.declare_exchange(def("ae", ExchangeKind::Fanout)).unwrap();
    r.bind(Binding::queue("ae", "q3", "")).unwrap();
    assert!(route(&r, "main", "nothing").is_empty());
    assert!(r.set_policy_alternate("main", Some("ae")));
    assert_eq!(route(&r, "main", "nothing"), vec!["q3"]);
    // The declared definition is unchanged (a redeclare without the argument stays equivalent).
    assert!(r.exchange("main").unwrap().arguments.is_empty());
    r.declare_exchange(def("main", ExchangeKind::Direct)).unwrap();
    assert!(r.set_policy_alternate("main", None));
    assert!(route(&r, "main", "nothing").is_empty());
    // An exchange's own argument wins over the policy.
    let mut own = def("own", ExchangeKind::Direct);
    own.arguments = Args::new().with("alternate-exchange", ArgValue::Str("amq.fanout".into()));
    r.declare_exchange(own).unwrap();
    r.bind(Binding::queue("amq.fanout", "q1", "")).unwrap();
    r.set_policy_alternate("own", Some("ae"));
    assert_eq!(route(&r, "own", "x"), vec!["q1"]);
    assert!(!r.set_policy_alternate("missing", Some("ae")));
}

/// `route_msg_lazy` decodes a message's headers only when the walk reaches an exchange that reads them (a
/// headers exchange with bindings, a consistent-hash exchange with `hash-header`), and then once.
#[test]
fn lazy_headers_are_decoded_only_when_needed_and_once() {
    use std::cell::Cell;
    let mut r = r();
    r.declare_exchange(def("d", ExchangeKind::Direct)).unwrap();
    r.declare_exchange(def("h1", ExchangeKind::Headers)).unwrap();
    r.declare_exchange(def("h2", ExchangeKind::Headers)).unwrap();
    r.declare_exchange(def("empty-h", ExchangeKind::Headers)).unwrap();
    let mut ch = def("ch", ExchangeKind::ConsistentHash);
    ch.arguments = Args::new().with("hash-header", s("k"));
    r.declare_exchange(ch).unwrap();
    r.declare_exchange(def("ch-rk", ExchangeKind::ConsistentHash))
        .unwrap();
    r.bind(Binding::queue("d", "q1", "k")).unwrap();
    r.bind(Binding::exchange("d", "h1", "to-h")).unwrap();
    r.bind(Binding::exchange("d", "empty-h", "k")).unwrap();
    r.bind(Binding::exchange("h1", "h2", "").with_args(Args::new().with("a", s("1"))))
        .unwrap();
    r.bind(Binding::queue("h2", "q2", "").with_args(Args::new().with("a", s("1"))))
        .unwrap();
    r.bind(Binding::queue("ch", "q3", "1")).unwrap();
    r.bind(Binding::queue("ch-rk", "q3", "1")).unwrap();
    let calls = Cell::new(0);
    let decode = || {
        calls.set(calls.get() + 1);
        Some(Args::new().with("a", s("1")).with("k", s("v")))
    };
    let mut out = Vec::new();
    let none: &[&str] = &[];
    let mut run = |x: &str, key: &str| {
        calls.set(0);
        r.route_msg_lazy(x, key, none, &decode, &MsgProps::default(), &mut out)
            .unwrap();
        let mut v: Vec<String> = out.iter().map(|n| n.to_string()).collect();
        v.sort();
        (v, calls.get())
    };
    // Direct only (and an empty headers exchange): nothing decoded.
    assert_eq!(run("d", "k"), (vec!["q1".to_string()], 0));
    assert_eq!(run("", "q1"), (vec!["q1".to_string()], 0));
    assert_eq!(run("ch-rk", "any"), (vec!["q3".to_string()], 0));
    // Through two headers exchanges: decoded once.
    assert_eq!(run("d", "to-h"), (vec!["q2".to_string()], 1));
    assert_eq!(run("ch", "any"), (vec!["q3".to_string()], 1));
}
