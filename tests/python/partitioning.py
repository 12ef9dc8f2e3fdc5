"""Ordered per-entity processing with failover (docs/partitioning.md), with pika:

- an `x-consistent-hash` exchange `events` spreads entities over 4 partition queues (`events.p0`..`p3`),
  each declared with `x-single-active-consumer`, each bound with weight "1"; the routing key is the
  entity id, so all events of one entity go to one partition;
- 4 worker processes; worker i subscribes to partition i first (it becomes that partition's active
  consumer) and then to the other three (as standbys); prefetch 1, manual ack;
- the publisher sends 50 events for each of 40 entities with publisher confirms; half way through,
  worker 0 is killed with SIGKILL: its partition's standby consumers take over and the unacked event
  is redelivered.

Every worker appends "worker entity seq redelivered" to one shared log before it acks. Because a
partition has one active consumer with one unacked message, the log's order is the processing order
of each partition. The check: for every entity, the log shows seq 0, 1, 2, ... 49 in order, where an
event may repeat right after itself only (the redelivery of the event the killed worker had not
acked); no event is missing; partition 0's events after the kill were processed by another worker.

Run: `python partitioning.py` with AMQP_URL set (the Rust test tests/tests/partitioning.rs does it).
Prints PARTITIONING OK; exits 1 with the violations otherwise.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

import pika

URL = os.environ["AMQP_URL"]
PARTITIONS = 4
ENTITIES = 40
EVENTS = 50
EXCHANGE = "events"


def partition_queue(i):
    return f"events.p{i}"


def worker(index, log_path):
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    log = open(log_path, "a", buffering=1)

    def on_event(chan, method, props, body):
        entity, seq = body.decode().split(":")
        # Record, then ack: the next event of this partition is delivered only after the ack.
        log.write(f"{index} {entity} {seq} {int(method.redelivered)}\n")
        log.flush()
        time.sleep(0.002)  # some work
        chan.basic_ack(method.delivery_tag)

    # Own partition first: the first consumer of a single-active-consumer queue is the active one.
    ch.basic_consume(partition_queue(index), on_event)
    print("subscribed", flush=True)
    conn.sleep(0.5)
    for i in range(PARTITIONS):
        if i != index:
            ch.basic_consume(partition_queue(i), on_event)
    ch.start_consuming()


def main():
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "x-consistent-hash", durable=True)
    for i in range(PARTITIONS):
        q = partition_queue(i)
        ch.queue_declare(q, durable=True, arguments={"x-single-active-consumer": True})
        ch.queue_bind(q, EXCHANGE, routing_key="1")  # the binding key is the partition's weight
    ch.confirm_delivery()

    log_path = os.path.join(tempfile.mkdtemp(), "processed.log")
    open(log_path, "w").close()
    workers = []
    for i in range(PARTITIONS):
        p = subprocess.Popen([sys.executable, __file__, "worker", str(i), log_path], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"subscribed"
        workers.append(p)
    time.sleep(0.7)  # every worker has subscribed to its standbys too

    props = pika.BasicProperties(delivery_mode=2)
    killed_at = None
    for seq in range(EVENTS):
        for e in range(ENTITIES):
            ch.basic_publish(EXCHANGE, f"entity-{e}", f"entity-{e}:{seq}".encode(), props)
        if seq == EVENTS // 2:
            # Let the workers get going, then kill worker 0 (active on partition 0) mid-stream.
            conn.sleep(0.3)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            with open(log_path) as f:
                killed_at = sum(1 for _ in f)

    # Wait until every event was processed (bounded wait; the check below reports what is missing).
    deadline = time.time() + 120
    want = {(f"entity-{e}", s) for e in range(ENTITIES) for s in range(EVENTS)}
    while time.time() < deadline:
        with open(log_path) as f:
            seen = {(l.split()[1], int(l.split()[2])) for l in f if l.strip()}
        if seen >= want:
            break
        conn.sleep(0.2)
    for p in workers[1:]:
        p.send_signal(signal.SIGKILL)
        p.wait()

    with open(log_path) as f:
        lines = [l.split() for l in f if l.strip()]
    failures = []
    last = {}
    entity_worker_after_kill = {}
    partition_of = {}
    for n, (w, entity, seq, redelivered) in enumerate(lines):
        seq = int(seq)
        prev = last.get(entity, -1)
        if seq == prev + 1:
            pass
        elif seq == prev and redelivered == "1":
            pass  # the redelivery of the event the killed worker had not acked
        else:
            failures.append(f"{entity}: seq {seq} after {prev} (line {n}, worker {w}, redelivered {redelivered})")
        last[entity] = max(prev, seq)
        if killed_at is not None and n >= killed_at:
            entity_worker_after_kill.setdefault(entity, set()).add(w)
        partition_of.setdefault(entity, set()).add(w)
    for e in range(ENTITIES):
        if last.get(f"entity-{e}", -1) != EVENTS - 1:
            failures.append(f"entity-{e}: last processed seq {last.get(f'entity-{e}')}, want {EVENTS - 1}")
    if any("0" in ws for ws in entity_worker_after_kill.values()):
        failures.append("the killed worker processed events after it was killed")
    # The killed worker's entities were taken over: some entity was processed by worker 0 and then another.
    taken_over = [e for e, ws in partition_of.items() if "0" in ws and len(ws) > 1]
    if not taken_over:
        failures.append("no entity of worker 0's partition was taken over by another worker")
    if failures:
        print("\n".join(failures[:50]))
        sys.exit(1)
    print(f"PARTITIONING OK: {len(lines)} events processed, {len(taken_over)} entities taken over")
    conn.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(int(sys.argv[2]), sys.argv[3])
    else:
        main()
