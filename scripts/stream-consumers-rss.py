#!/usr/bin/env python3
"""Broker memory per stream consumer far behind (issue 15), with pika.

Usage: stream-consumers-rss.py AMQP_URL BROKER_PID [MESSAGES] [CONSUMERS] [PREFETCH]

Fills stream `rss-test` with MESSAGES x 1 KiB (confirmed), reads the broker's VmRSS, then starts CONSUMERS
consumers (one connection each) from x-stream-offset `first` with prefetch PREFETCH; each takes its
window and acks nothing, so all of them stay at the start of the stream, MESSAGES behind the end. Reads
VmRSS again and prints the difference per consumer.
"""
import sys
import time

import pika


def rss_kb(pid):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    url, pid = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    consumers = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    prefetch = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("rss-test", durable=True, arguments={"x-queue-type": "stream"})
    ch.confirm_delivery()
    body = b"x" * 1024
    for _ in range(n):
        ch.basic_publish("", "rss-test", body)
    conn.close()
    time.sleep(2)
    before = rss_kb(pid)
    conns = []
    for i in range(consumers):
        c = pika.BlockingConnection(pika.URLParameters(url))
        ch = c.channel()
        ch.basic_qos(prefetch_count=prefetch)
        got = []
        ch.basic_consume("rss-test", lambda ch, m, p, b, got=got: got.append(m.delivery_tag),
                         arguments={"x-stream-offset": "first"})
        deadline = time.time() + 30
        while len(got) < prefetch and time.time() < deadline:
            c.process_data_events(time_limit=0.1)
        conns.append(c)
    time.sleep(2)
    for c in conns:
        c.process_data_events(time_limit=0)
    after = rss_kb(pid)
    print("messages %d, consumers %d (prefetch %d, all at offset 0): broker RSS %.1f MiB -> %.1f MiB, "
          "%.0f KiB per consumer" % (n, consumers, prefetch, before / 1024, after / 1024,
                                     (after - before) / consumers))
    for c in conns:
        c.close()


if __name__ == "__main__":
    main()
