"""Retry with backoff + dead-letter queue on Mailroom, with pika.

A work queue retries a failing message after 100 ms, 200 ms, 400 ms (exponential backoff), and after the
delivery limit moves it to a dead-letter queue, where it arrives with an x-death header saying why.
Good messages flow past the failing one while it waits.

Run: AMQP_URL=amqp://guest:guest@localhost:5672/%2f python failure_example.py
"""
import os
import time

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()

# 1. The dead-letter side: an exchange and a queue that collects what failed for good.
ch.exchange_declare("orders.dlx", exchange_type="direct")
ch.queue_declare("orders.dlq", durable=True)
ch.queue_bind("orders.dlq", "orders.dlx", routing_key="orders")

# 2. The work queue: failed messages are retried with exponential backoff (100, 200, 400 ms, capped at
#    1 s); after 3 returns (4 deliveries) the next failure dead-letters them to orders.dlx.
ch.queue_declare(
    "orders",
    durable=True,
    arguments={
        "x-dead-letter-exchange": "orders.dlx",
        "x-delayed-retry-min": 100,
        "x-delayed-retry-multiplier": 2,
        "x-delayed-retry-max": 1000,
        "x-delivery-limit": 3,
    },
)

# 3. Publish (persistent, with publisher confirms).
ch.confirm_delivery()
for body in [b"order-1", b"poison", b"order-2"]:
    ch.basic_publish("", "orders", body, pika.BasicProperties(delivery_mode=2))

# 4. Consume: "poison" always fails and is returned with requeue=True; the others succeed.
start = time.monotonic()
handled, attempts = [], []
for method, props, body in ch.consume("orders", inactivity_timeout=2.0):
    if method is None:  # nothing more within 2 s: the poison message has gone to the DLQ
        break
    count = (props.headers or {}).get("x-delivery-count", 0)  # absent on the first delivery
    if body == b"poison":
        attempts.append((count, round((time.monotonic() - start) * 1000)))
        ch.basic_nack(method.delivery_tag, requeue=True)
    else:
        handled.append(body.decode())
        ch.basic_ack(method.delivery_tag)
ch.cancel()

print("handled:", handled)
for count, at_ms in attempts:
    print(f"poison delivery with x-delivery-count={count} at ~{at_ms} ms")

# 5. The dead-letter queue has the poison message, with x-death telling what happened.
method, props, body = ch.basic_get("orders.dlq", auto_ack=True)
death = props.headers["x-death"][0]
print("dead-lettered:", body.decode())
print("x-death reason:", death["reason"], "queue:", death["queue"], "count:", death["count"])
print("x-first-death-reason:", props.headers["x-first-death-reason"])

assert handled == ["order-1", "order-2"], handled
assert [c for c, _ in attempts] == [0, 1, 2, 3], attempts
assert body == b"poison"
assert death["reason"] == "delivery_limit" and death["queue"] == "orders" and death["count"] == 1
conn.close()
print("OK")
