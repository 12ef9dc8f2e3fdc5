"""Flow control (issue 11) with pika, which announces the connection.blocked capability.

alarm HOOKFILE [memory|disk]: the broker runs with MAILROOM_TEST_RSS_FILE=HOOKFILE (a debug-build hook that makes its
memory monitor read the RSS from that file). Writing a size over the watermark raises the memory alarm:
the publishing connection gets connection.blocked ("low on memory") and is not read; a connection that
never published still declares, gets, acks; heartbeats keep the blocked connection alive. Writing a small
size clears it: connection.unblocked, and what was published while blocked is delivered, once. With
`disk`, the broker runs with MAILROOM_TEST_DISK_FREE_FILE=HOOKFILE instead (the free disk space its
monitor reads): 0 bytes free raises the disk alarm ("low on disk"), a large figure clears it.

throttle: the broker runs with a per-queue flow bound of 10 messages. A consumer that does not ack holds
the queue over its bound, so the publisher's confirms stop at the bound (its later publishes are not
read); a publisher to another queue is not throttled; a throttled publisher closes cleanly; once the
consumer acks, every message is delivered exactly once, in order.
"""
import os
import sys
import time

import pika

URL = os.environ["AMQP_URL"]


def params(heartbeat=None):
    p = pika.URLParameters(URL)
    if heartbeat is not None:
        p.heartbeat = heartbeat
    return p


def wait_for(conn, cond, what, secs=30):
    deadline = time.time() + secs
    while not cond():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        conn.process_data_events(time_limit=0.1)


# What the hook file says for "fine" and for "over the limit", and the reason connection.blocked gives.
KINDS = {
    "memory": ("0", "100GiB", "low on memory"),
    "disk": ("100GiB", "0", "low on disk"),
}


def alarm(hook, kind="memory"):
    fine, over, reason = KINDS[kind]
    with open(hook, "w") as f:
        f.write(fine)
    events = []
    pub = pika.BlockingConnection(params(heartbeat=1))
    pub.add_on_connection_blocked_callback(lambda c, m: events.append(("blocked", m.method.reason)))
    pub.add_on_connection_unblocked_callback(lambda c, m: events.append(("unblocked", None)))
    pch = pub.channel()
    pch.queue_declare("flow-alarm")
    for i in range(10):
        pch.basic_publish("", "flow-alarm", f"before-{i}".encode())
    pub.process_data_events(time_limit=0.2)

    with open(hook, "w") as f:
        f.write(over)
    wait_for(pub, lambda: events, "connection.blocked")
    assert events[0] == ("blocked", reason), events
    print("BLOCKED", events[0][1])

    # Published while blocked: not read by the broker until the alarm clears.
    for i in range(5):
        pch.basic_publish("", "flow-alarm", f"during-{i}".encode())
    # A long block: several heartbeat intervals (1 s) pass; the connection must stay up.
    end = time.time() + 4
    while time.time() < end:
        pub.process_data_events(time_limit=0.2)
    assert pub.is_open, "blocked connection closed by heartbeats"

    # A connection that never published declares, gets and acks as usual.
    con = pika.BlockingConnection(params())
    cch = con.channel()
    cch.queue_declare("flow-alarm-other")
    got = []
    while True:
        m, _, body = cch.basic_get("flow-alarm")
        if m is None:
            break
        got.append(body.decode())
        cch.basic_ack(m.delivery_tag)
    assert got == [f"before-{i}" for i in range(10)], got
    left = cch.queue_declare("flow-alarm", passive=True).method.message_count
    assert left == 0, f"publishes made while blocked were enqueued: {left}"
    print("CONSUMED WHILE BLOCKED", len(got))

    with open(hook, "w") as f:
        f.write(fine)
    wait_for(pub, lambda: len(events) >= 2, "connection.unblocked")
    assert events[1] == ("unblocked", None), events
    print("UNBLOCKED")
    pch.basic_publish("", "flow-alarm", b"after")
    pub.close()
    got = []
    deadline = time.time() + 30
    while len(got) < 6 and time.time() < deadline:
        m, _, body = cch.basic_get("flow-alarm")
        if m is None:
            con.process_data_events(time_limit=0.05)
            continue
        got.append(body.decode())
        cch.basic_ack(m.delivery_tag)
    assert got == [f"during-{i}" for i in range(5)] + ["after"], got
    assert cch.basic_get("flow-alarm")[0] is None
    con.close()
    print("ALARM OK")


def throttle():
    setup = pika.BlockingConnection(params())
    sch = setup.channel()
    sch.queue_declare("flow-q")
    sch.queue_declare("flow-other")

    con = pika.BlockingConnection(params())
    cch = con.channel()
    cch.basic_qos(prefetch_count=1)
    received = []
    tags = []

    def on_msg(ch, m, props, body):
        received.append(body.decode())
        tags.append(m.delivery_tag)

    cch.basic_consume("flow-q", on_msg)

    pub = pika.BlockingConnection(params())
    pch = pub.channel()
    n = 100
    for i in range(n):
        pch.basic_publish("", "flow-q", f"m-{i}".encode())
    # Give the broker time to read what it will read (the assertion holds however long this takes).
    end = time.time() + 2
    while time.time() < end:
        pub.process_data_events(time_limit=0.1)
        con.process_data_events(time_limit=0.01)
    ready = sch.queue_declare("flow-q", passive=True).method.message_count
    # The consumer holds one unacked message; the bound is 10 ready messages: the publish that took the
    # queue over it is the last one the broker handled.
    assert ready <= 11, f"queue grew past its flow bound: {ready} ready"
    print("THROTTLED ready", ready)

    # A publisher to another queue is not throttled.
    other = pika.BlockingConnection(params())
    och = other.channel()
    och.confirm_delivery()
    for i in range(50):
        och.basic_publish("", "flow-other", b"x")  # blocks until confirmed
    other.close()
    print("OTHER QUEUE NOT THROTTLED")

    # A second throttled publisher closes cleanly; what it published before closing is not lost.
    pub2 = pika.BlockingConnection(params())
    p2 = pub2.channel()
    for i in range(5):
        p2.basic_publish("", "flow-q", f"late-{i}".encode())
    pub2.close()
    print("THROTTLED CLOSE OK")

    # The consumer acks: everything arrives, exactly once, in order per publisher.
    expected = n + 5
    deadline = time.time() + 60
    while len(received) < expected and time.time() < deadline:
        con.process_data_events(time_limit=0.05)
        pub.process_data_events(time_limit=0)
        while tags:
            cch.basic_ack(tags.pop(0))
    assert len(received) == expected, (len(received), expected)
    mine = [b for b in received if b.startswith("m-")]
    assert mine == [f"m-{i}" for i in range(n)], mine[:20]
    late = [b for b in received if b.startswith("late-")]
    assert late == [f"late-{i}" for i in range(5)], late
    pub.close()
    con.close()
    setup.close()
    print("THROTTLE OK")


if __name__ == "__main__":
    if sys.argv[1] == "alarm":
        alarm(sys.argv[2], *sys.argv[3:4])
    else:
        throttle()
