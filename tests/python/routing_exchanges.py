"""pika: routing through every exchange type, exchange-to-exchange bindings (with a cycle), alternate
exchanges and mandatory returns (on_return), internal exchanges. Prints every mismatch; exits 1 if any."""
import os
import sys

import pika

URL = os.environ["AMQP_URL"]
failures = []


def check(what, got, want):
    if got != want:
        failures.append(f"{what}: got {got!r}, want {want!r}")


conn = pika.BlockingConnection(pika.URLParameters(URL))
ch = conn.channel()
ch.confirm_delivery()
returned = []
ch.add_on_return_callback(lambda _c, method, props, body: returned.append((method.reply_code, method.reply_text, body)))


def queues(*names):
    for q in names:
        ch.queue_declare(q)


def drain(q):
    out = []
    while True:
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode())


def matrix(exchange, qs, cases):
    """cases: list of (routing_key, headers, expected queue list). Publishes body c<i> for each."""
    for i, (key, headers, _want) in enumerate(cases):
        props = pika.BasicProperties(headers=headers) if headers is not None else None
        ch.basic_publish(exchange, key, f"c{i}".encode(), props)
    got = {}
    for q in qs:
        for body in drain(q):
            got.setdefault(body, []).append(q)
    for i, (key, headers, want) in enumerate(cases):
        check(f"{exchange!r} key={key!r} headers={headers!r}", sorted(got.pop(f"c{i}", [])), sorted(want))
    if got:
        failures.append(f"{exchange!r}: unexpected {got!r}")


# ---- direct ----
ch.exchange_declare("p.direct", "direct")
queues("pd1", "pd2")
ch.queue_bind("pd1", "p.direct", "a")
ch.queue_bind("pd2", "p.direct", "a")
ch.queue_bind("pd2", "p.direct", "b")
matrix("p.direct", ["pd1", "pd2"], [("a", None, ["pd1", "pd2"]), ("b", None, ["pd2"]), ("c", None, [])])

# ---- fanout ----
ch.exchange_declare("p.fanout", "fanout")
queues("pf1", "pf2")
ch.queue_bind("pf1", "p.fanout", "x")
ch.queue_bind("pf2", "p.fanout")
matrix("p.fanout", ["pf1", "pf2"], [("anything", None, ["pf1", "pf2"]), ("", None, ["pf1", "pf2"])])

# ---- topic ----
ch.exchange_declare("p.topic", "topic")
topic_bindings = {"pt_star": "a.*", "pt_hash": "a.#", "pt_all": "#", "pt_empty": "", "pt_ab": "a.#.#.b", "pt_hs": "#.*"}
for q, k in topic_bindings.items():
    ch.queue_declare(q)
    ch.queue_bind(q, "p.topic", k)
tq = list(topic_bindings)
matrix(
    "p.topic",
    tq,
    [
        ("", None, ["pt_all", "pt_empty"]),
        ("a", None, ["pt_hash", "pt_all", "pt_hs"]),
        ("a.b", None, ["pt_star", "pt_hash", "pt_all", "pt_ab", "pt_hs"]),
        ("a..b", None, ["pt_hash", "pt_all", "pt_ab", "pt_hs"]),
        ("a.x.y.b", None, ["pt_hash", "pt_all", "pt_ab", "pt_hs"]),
        ("b", None, ["pt_all", "pt_hs"]),
    ],
)

# ---- headers ----
ch.exchange_declare("p.headers", "headers")
hb = {
    "ph_all": {"x-match": "all", "a": 1, "b": "x"},
    "ph_any": {"x-match": "any", "a": 1, "b": "x"},
    "ph_allx": {"x-match": "all-with-x", "x-k": "v"},
    "ph_anyx": {"x-match": "any-with-x", "x-k": "v", "a": 2},
}
for q, args in hb.items():
    ch.queue_declare(q)
    ch.queue_bind(q, "p.headers", "", arguments=args)
hq = list(hb)
matrix(
    "p.headers",
    hq,
    [
        ("", None, []),
        ("", {"a": 1}, ["ph_any"]),
        ("", {"a": 1, "b": "x"}, ["ph_all", "ph_any"]),
        ("", {"x-k": "v"}, ["ph_allx", "ph_anyx"]),
        ("", {"a": 2}, ["ph_anyx"]),
        ("", {"b": "y"}, []),
    ],
)

# ---- default and predeclared ----
queues("pdef")
matrix("", ["pdef"], [("pdef", None, ["pdef"]), ("nope", None, [])])
ch.queue_bind("pdef", "amq.topic", "#.z")
matrix("amq.topic", ["pdef"], [("a.z", None, ["pdef"]), ("a", None, [])])
ch.queue_bind("pdef", "amq.match", "", arguments={"x-match": "any", "m": True})
matrix("amq.match", ["pdef"], [("", {"m": True}, ["pdef"]), ("", {"m": False}, [])])

# ---- exchange-to-exchange, with a cycle ----
ch.exchange_declare("p.e1", "fanout")
ch.exchange_declare("p.e2", "fanout")
queues("pe1", "pe2")
ch.queue_bind("pe1", "p.e1")
ch.queue_bind("pe2", "p.e2")
ch.exchange_bind(destination="p.e2", source="p.e1")
ch.exchange_bind(destination="p.e1", source="p.e2")
matrix("p.e1", ["pe1", "pe2"], [("k", None, ["pe1", "pe2"])])
ch.exchange_unbind(destination="p.e1", source="p.e2")
matrix("p.e2", ["pe1", "pe2"], [("k", None, ["pe2"])])
matrix("p.e1", ["pe1", "pe2"], [("k", None, ["pe1", "pe2"])])

# ---- alternate exchange and mandatory ----
ch.exchange_declare("p.ae", "fanout")
ch.exchange_declare("p.withae", "direct", arguments={"alternate-exchange": "p.ae"})
queues("pae", "pmain")
ch.queue_bind("pmain", "p.withae", "k")
ch.queue_bind("pae", "p.ae")
ch.basic_publish("p.withae", "k", b"routed", mandatory=True)
ch.basic_publish("p.withae", "other", b"to-ae", mandatory=True)
conn.process_data_events(time_limit=0.2)
check("returns while the AE takes the message", returned, [])
check("pmain", drain("pmain"), ["routed"])
check("pae", drain("pae"), ["to-ae"])
ch.queue_unbind("pae", "p.ae")
try:
    ch.basic_publish("p.withae", "other", b"bounce", mandatory=True)
    failures.append("basic_publish of an unroutable mandatory message did not raise UnroutableError")
except pika.exceptions.UnroutableError as e:
    got = [(m.method.reply_code, m.method.reply_text, m.body) for m in e.messages]
    check("UnroutableError messages", got, [(312, "NO_ROUTE", b"bounce")])
conn.process_data_events(time_limit=0.2)
check("on_return after the AE routes nowhere", returned, [(312, "NO_ROUTE", b"bounce")])

# ---- internal exchange ----
ch.exchange_declare("p.internal", "fanout", internal=True)
ch.exchange_declare("p.front", "direct")
queues("pint")
ch.queue_bind("pint", "p.internal")
ch.exchange_bind(destination="p.internal", source="p.front", routing_key="k")
matrix("p.front", ["pint"], [("k", None, ["pint"]), ("j", None, [])])
ch2 = conn.channel()
try:
    ch2.basic_publish("p.internal", "", b"refused")
    ch2.queue_declare("", exclusive=True)  # a round trip so the close arrives
    failures.append("publish to an internal exchange did not close the channel")
except pika.exceptions.ChannelClosedByBroker as e:
    check(
        "internal publish close",
        (e.reply_code, e.reply_text),
        (403, "ACCESS_REFUSED - cannot publish to internal exchange 'p.internal' in vhost '/'"),
    )
check("pint after the refused publish", drain("pint"), [])

conn.close()
if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ROUTING OK")
