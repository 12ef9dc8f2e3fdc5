"""pika publishes 10,000 messages and consumes them: exactly once, in order, properties and headers intact;
then bodies of edge sizes byte-for-byte."""
import os
import sys
import time

import pika

N = 10_000
params = pika.URLParameters(os.environ["AMQP_URL"])
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.queue_declare("pika10k")

for i in range(N):
    props = pika.BasicProperties(
        content_type="text/plain",
        correlation_id=f"c{i}",
        message_id=f"m{i}",
        priority=3,
        delivery_mode=1,
        headers={"seq": i, "name": f"m{i}", "nested": {"k": "v", "n": [1, 2, 3]}},
    )
    ch.basic_publish("", "pika10k", f"body {i}".encode(), props)

deadline = time.time() + 60
while True:
    q = ch.queue_declare("pika10k", passive=True)
    if q.method.message_count == N:
        break
    if time.time() > deadline:
        print("only", q.method.message_count, "messages arrived")
        sys.exit(1)
    conn.process_data_events(time_limit=0.05)

ch.basic_qos(prefetch_count=500)
expected = 0
errors = []


def on_message(chan, method, props, body):
    global expected
    i = expected
    if body != f"body {i}".encode():
        errors.append(f"#{i}: body {body!r}")
    if method.redelivered:
        errors.append(f"#{i}: redelivered")
    if props.content_type != "text/plain" or props.correlation_id != f"c{i}" or props.message_id != f"m{i}":
        errors.append(f"#{i}: props {props}")
    if props.priority != 3 or props.delivery_mode != 1:
        errors.append(f"#{i}: props {props}")
    h = props.headers or {}
    if h.get("seq") != i or h.get("name") != f"m{i}".encode() and h.get("name") != f"m{i}":
        errors.append(f"#{i}: headers {h}")
    nested = h.get("nested") or {}
    if nested.get("k") not in ("v", b"v") or nested.get("n") != [1, 2, 3]:
        errors.append(f"#{i}: nested headers {nested}")
    expected += 1
    if expected % 100 == 0 or expected == N:
        chan.basic_ack(method.delivery_tag, multiple=True)
    if expected == N:
        chan.stop_consuming()


ch.basic_consume("pika10k", on_message)
ch.start_consuming()
if errors:
    print("\n".join(errors[:20]))
    sys.exit(1)
q = ch.queue_declare("pika10k", passive=True)
if q.method.message_count != 0:
    print("left over:", q.method.message_count)
    sys.exit(1)
print("ORDERED", expected)

# Edge sizes.
frame_max = conn._impl.params.frame_max
ch.queue_declare("pika-sizes")
sizes = [0, 1, frame_max - 1, frame_max + 1, 5 << 20]
bodies = [bytes((i * 31) % 251 for i in range(n)) for n in sizes]
for b in bodies:
    ch.basic_publish("", "pika-sizes", b)
for n, b in zip(sizes, bodies):
    for _ in range(200):
        method, props, got = ch.basic_get("pika-sizes", auto_ack=True)
        if method is not None:
            break
        conn.process_data_events(time_limit=0.05)
    else:
        print("no message of size", n)
        sys.exit(1)
    if got != b:
        print(f"size {n}: got {len(got)} bytes, differs")
        sys.exit(1)
print("SIZES", frame_max, sizes)
conn.close()
