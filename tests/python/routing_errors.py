"""pika: exchange and binding errors as pika reports them (ChannelClosedByBroker / ConnectionClosedByBroker
with RabbitMQ's codes and texts). Prints every mismatch; exits 1 if any."""
import os
import sys

import pika

URL = os.environ["AMQP_URL"]
failures = []

conn = pika.BlockingConnection(pika.URLParameters(URL))


def channel_error(what, fn, code, text):
    ch = conn.channel()
    try:
        fn(ch)
        # Publishes are asynchronous: a round trip makes the close arrive.
        ch.queue_declare("", exclusive=True)
        failures.append(f"{what}: no error, want {code} {text!r}")
    except pika.exceptions.ChannelClosedByBroker as e:
        if (e.reply_code, e.reply_text) != (code, text):
            failures.append(f"{what}: got {e.reply_code} {e.reply_text!r}, want {code} {text!r}")


def ok(what, fn):
    ch = conn.channel()
    try:
        fn(ch)
        ch.close()
    except pika.exceptions.AMQPError as e:
        failures.append(f"{what}: unexpected {e!r}")


setup = conn.channel()
setup.exchange_declare("x", "direct")
setup.queue_declare("q")
setup.queue_bind("q", "x", "k")

channel_error(
    "passive declare of a missing exchange",
    lambda c: c.exchange_declare("nx", passive=True),
    404,
    "NOT_FOUND - no exchange 'nx' in vhost '/'",
)
channel_error(
    "redeclare with another type",
    lambda c: c.exchange_declare("x", "fanout"),
    406,
    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'",
)
channel_error(
    "redeclare durable",
    lambda c: c.exchange_declare("x", "direct", durable=True),
    406,
    "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
)
channel_error(
    "redeclare auto_delete",
    lambda c: c.exchange_declare("x", "direct", auto_delete=True),
    406,
    "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
)
channel_error(
    "redeclare internal",
    lambda c: c.exchange_declare("x", "direct", internal=True),
    406,
    "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
)
channel_error(
    "amq. prefix",
    lambda c: c.exchange_declare("amq.foo", "direct"),
    403,
    "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
)
DEFAULT = "ACCESS_REFUSED - operation not permitted on the default exchange"
channel_error("declare the default exchange", lambda c: c.exchange_declare("", "direct"), 403, DEFAULT)
channel_error("delete the default exchange", lambda c: c.exchange_delete(""), 403, DEFAULT)
channel_error("bind to the default exchange", lambda c: c.queue_bind("q", "", "q"), 403, DEFAULT)
channel_error(
    "exchange.bind from the default exchange",
    lambda c: c.exchange_bind(destination="x", source=""),
    403,
    DEFAULT,
)
channel_error(
    "delete amq.direct",
    lambda c: c.exchange_delete("amq.direct"),
    403,
    "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
)
channel_error(
    "delete if-unused while bound",
    lambda c: c.exchange_delete("x", if_unused=True),
    406,
    "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use",
)
channel_error(
    "bind to a missing exchange",
    lambda c: c.queue_bind("q", "nx", "k"),
    404,
    "NOT_FOUND - no exchange 'nx' in vhost '/'",
)
channel_error(
    "bind a missing queue",
    lambda c: c.queue_bind("nq", "x", "k"),
    404,
    "NOT_FOUND - no queue 'nq' in vhost '/'",
)
channel_error(
    "exchange.bind to a missing destination",
    lambda c: c.exchange_bind(destination="nd", source="x"),
    404,
    "NOT_FOUND - no exchange 'nd' in vhost '/'",
)
channel_error(
    "publish to a missing exchange",
    lambda c: c.basic_publish("nx", "k", b"lost"),
    404,
    "NOT_FOUND - no exchange 'nx' in vhost '/'",
)
ok("unbind a missing binding", lambda c: c.queue_unbind("q", "x", "never"))
ok("exchange.unbind a missing binding", lambda c: c.exchange_unbind(destination="x", source="amq.direct", routing_key="never"))
ok("delete a missing exchange", lambda c: c.exchange_delete("never"))
ok("passive declare of an existing exchange", lambda c: c.exchange_declare("x", passive=True))

# Unknown type: connection error 503.
try:
    conn.channel().exchange_declare("y", "foo")
    failures.append("unknown exchange type: no error")
except pika.exceptions.ConnectionClosedByBroker as e:
    if (e.reply_code, e.reply_text) != (503, "COMMAND_INVALID - unknown exchange type 'foo'"):
        failures.append(f"unknown exchange type: got {e.reply_code} {e.reply_text!r}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ROUTING ERRORS OK")
