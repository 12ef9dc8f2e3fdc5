"""Failure handling seen through pika: x-death decodes to the documented types, x-delivery-count is an int
absent on the first delivery, a reject-publish queue nacks (pika raises NackError), and an invalid argument
closes the channel with 406 naming it."""
import datetime
import os
import sys
import time

import pika
from pika import exceptions

url = os.environ["AMQP_URL"]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


# --- x-death through pika ---
ch.queue_declare("p.dlq")
ch.queue_declare("p.work", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "p.dlq"})
ch.basic_publish("", "p.work", b"m", pika.BasicProperties(expiration="60000", headers={"keep": "me"}))
method, props, body = ch.basic_get("p.work")
check(props.headers is None or "x-delivery-count" not in props.headers, "no x-delivery-count on first delivery")
ch.basic_nack(method.delivery_tag, requeue=True)
method, props, body = ch.basic_get("p.work")
check(props.headers.get("x-delivery-count") == 1, f"x-delivery-count 1 after nack: {props.headers}")
check(isinstance(props.headers.get("x-delivery-count"), int), "x-delivery-count is an int")
check(method.redelivered, "redelivered flag")
ch.basic_reject(method.delivery_tag, requeue=False)
deadline = time.time() + 3
while True:
    method, props, body = ch.basic_get("p.dlq", auto_ack=True)
    if method or time.time() > deadline:
        break
    time.sleep(0.02)
check(method is not None, "dead-lettered")
h = props.headers
check(h.get("keep") == "me", "headers kept")
check(props.expiration is None, "expiration removed")
xd = h.get("x-death")
check(isinstance(xd, list) and len(xd) == 1 and isinstance(xd[0], dict), f"x-death is a list of one table: {xd!r}")
d = xd[0]
check(d.get("count") == 1 and isinstance(d.get("count"), int), "count 1 (int)")
check(d.get("reason") == "rejected", "reason rejected")
check(d.get("queue") == "p.work", "queue p.work")
check(d.get("exchange") == "", "exchange ''")
check(d.get("routing-keys") == ["p.work"], f"routing-keys {d.get('routing-keys')!r}")
check(d.get("original-expiration") == "60000", f"original-expiration {d.get('original-expiration')!r}")
check(isinstance(d.get("time"), datetime.datetime), f"time is a timestamp: {d.get('time')!r}")
check(h.get("x-first-death-reason") == "rejected", "x-first-death-reason")
check(h.get("x-first-death-queue") == "p.work", "x-first-death-queue")
check(h.get("x-first-death-exchange") == "", "x-first-death-exchange")
check(h.get("x-last-death-reason") == "rejected", "x-last-death-reason")

# --- reject-publish: pika's confirm mode raises NackError ---
ch.queue_declare("p.full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
ch.confirm_delivery()
ch.basic_publish("", "p.full", b"first")
try:
    ch.basic_publish("", "p.full", b"second")
    check(False, "second publish to a full reject-publish queue should be nacked")
except exceptions.NackError:
    check(True, "NackError for the rejected publish")
q = ch.queue_declare("p.full", passive=True)
check(q.method.message_count == 1, "queue keeps the old message")

# --- invalid argument: channel closed with 406 naming it ---
bad = conn.channel()
try:
    bad.queue_declare("p.bad", arguments={"x-overflow": "sideways"})
    check(False, "x-overflow sideways should be refused")
except exceptions.ChannelClosedByBroker as e:
    check(e.reply_code == 406 and "x-overflow" in e.reply_text, f"406 naming x-overflow: {e.reply_code} {e.reply_text}")

conn.close()
if failures:
    print("FAILURES:", failures)
    sys.exit(1)
print("OK")
