"""Spring-style RPC over direct reply-to with pika: 1,000 requests from 4 callers, every reply to its caller.

Each caller is its own connection with one channel that consumes from the pseudo-queue
`amq.rabbitmq.reply-to` in no-ack mode and publishes requests with reply_to = amq.rabbitmq.reply-to and a
correlation id, as Spring AMQP's RabbitTemplate does with its DirectReplyToMessageListenerContainer. Half
the callers wait for each reply before the next request (sendAndReceive), half send all their requests
first. A responder consumes the request queue and replies to each request's reply_to on the default
exchange, with the correlation id. No reply queue is ever declared.
"""
import os
import sys
import threading
import time
import uuid

import pika

URL = os.environ["AMQP_URL"]
QUEUE = "rpc.requests"
CALLERS = 4
PER_CALLER = 250
PREFIX = "amq.rabbitmq.reply-to."


def responder(ready, stop, errors):
    try:
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        ch = conn.channel()
        ch.queue_declare(QUEUE)
        ch.basic_qos(prefetch_count=64)

        def on_request(ch, method, props, body):
            if not (props.reply_to or "").startswith(PREFIX):
                errors.append("request without a reply name: %r" % props.reply_to)
            ch.basic_publish(
                "",
                props.reply_to,
                b"re:" + body,
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(QUEUE, on_request)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        errors.append("responder: %r" % e)
        ready.set()


def caller(i, results, errors):
    try:
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        ch = conn.channel()
        replies = {}

        def on_reply(_ch, method, props, body):
            if props.correlation_id in replies:
                errors.append("caller %d: reply %s twice" % (i, props.correlation_id))
            replies[props.correlation_id] = (body, method.routing_key, method.exchange)

        ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
        sent = {}
        wait_each = i % 2 == 0

        def wait_for(pred, what):
            deadline = time.time() + 60
            while not pred():
                if time.time() > deadline:
                    raise RuntimeError("caller %d: timed out waiting for %s" % (i, what))
                conn.process_data_events(time_limit=0.05)

        for k in range(PER_CALLER):
            cid = "%d-%d-%s" % (i, k, uuid.uuid4())
            body = ("caller %d request %d" % (i, k)).encode()
            sent[cid] = body
            ch.basic_publish(
                "",
                QUEUE,
                body,
                pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=cid),
            )
            if wait_each:
                wait_for(lambda: cid in replies, "reply %s" % cid)
        wait_for(lambda: len(replies) >= PER_CALLER, "all replies")
        if set(replies) != set(sent):
            errors.append("caller %d: replies for %d foreign or missing requests" % (i, len(set(replies) ^ set(sent))))
        names = set()
        for cid, (body, rk, exchange) in replies.items():
            if body != b"re:" + sent.get(cid, b"?"):
                errors.append("caller %d: reply %s has body %r" % (i, cid, body))
            if exchange != "":
                errors.append("caller %d: reply through exchange %r" % (i, exchange))
            names.add(rk)
        if len(names) != 1 or not next(iter(names)).startswith(PREFIX):
            errors.append("caller %d: replies addressed to %r" % (i, names))
        results[i] = (len(replies), next(iter(names)))
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported by the main thread
        errors.append("caller %d: %r" % (i, e))


def main():
    errors = []
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=responder, args=(ready, stop, errors))
    server.start()
    ready.wait(30)
    results = {}
    callers = [threading.Thread(target=caller, args=(i, results, errors)) for i in range(CALLERS)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    stop.set()
    server.join()
    names = {name for _, name in results.values()}
    if len(names) != CALLERS:
        errors.append("callers share reply names: %r" % results)
    total = sum(n for n, _ in results.values())
    if errors or total != CALLERS * PER_CALLER:
        print("ERRORS", errors[:20], "total", total)
        sys.exit(1)
    print("RPC OK", total)


main()
