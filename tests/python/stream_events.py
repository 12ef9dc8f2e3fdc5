"""Event streams with pika (docs/event-streams.md): a durable topic is a topic exchange bound to a stream.

A publisher appends order events (with publisher confirms) to the stream `orders.events` through the topic
exchange `orders`, each with an `x-stream-filter-value` (its region). Then:
- a projection replays the whole history from `first` and rebuilds its state;
- an "eu" service reads only the EU events (`x-stream-filter`);
- a billing service uses server-side offset tracking (`x-stream-automatic-offset-tracking` under its own
  consumer tag): it processes part of the stream, disconnects, and resumes right after the last event it
  acked;
- basic.get is refused (streams are read with consumers).
Prints OK at the end; any mismatch exits non-zero.
"""
import os
import time

import pika

URL = os.environ["AMQP_URL"]
STREAM = "orders.events"


def connect():
    return pika.BlockingConnection(pika.URLParameters(URL))


def read(ch, queue, n, arguments, tag=None):
    """Consume and ack n messages (not more); returns [(offset, body)]."""
    got = []

    def on_message(ch, method, props, body):
        if len(got) < n:  # the rest of the prefetch window stays unacked
            got.append((props.headers["x-stream-offset"], body.decode()))
            ch.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message, arguments=arguments, consumer_tag=tag)
    deadline = time.monotonic() + 10
    while len(got) < n:
        if time.monotonic() > deadline:
            raise SystemExit("timed out after %d of %d: %r" % (len(got), n, got))
        ch.connection.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    return got


def main():
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "7D"})
    ch.queue_bind(STREAM, "orders", "order.#")
    ch.confirm_delivery()
    regions = ["eu", "us", "ap"]
    for i in range(30):
        region = regions[i % 3]
        ch.basic_publish(
            "orders",
            "order.created",
            ("order-%d" % i).encode(),
            pika.BasicProperties(delivery_mode=2, headers={"x-stream-filter-value": region}),
        )
    conn.close()

    # a projection replays everything
    conn = connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    events = read(ch, STREAM, 30, {"x-stream-offset": "first"})
    assert [o for o, _ in events] == list(range(30)), events
    assert events[7][1] == "order-7"

    # the eu service sees its region only
    eu = read(ch, STREAM, 10, {"x-stream-offset": "first", "x-stream-filter": "eu"})
    assert all(int(b.split("-")[1]) % 3 == 0 for _, b in eu), eu

    # billing: reads from the start the first time, then always resumes after the last event it acked
    # (server-side offset tracking under its consumer tag)
    billing = {"x-stream-offset": "first", "x-stream-automatic-offset-tracking": True}
    part = read(ch, STREAM, 12, billing, tag="billing")
    assert [o for o, _ in part] == list(range(12)), part
    conn.close()

    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(30, 40):
        ch.basic_publish("orders", "order.paid", ("order-%d" % i).encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()

    conn = connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    rest = read(ch, STREAM, 28, billing, tag="billing")
    assert [o for o, _ in rest] == list(range(12, 40)), rest

    # basic.get is not for streams: 540 closes the connection
    try:
        ch.basic_get(STREAM)
        raise SystemExit("basic.get was accepted")
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert e.reply_code == 540, e
    print("OK")


if __name__ == "__main__":
    main()
