#!/usr/bin/env python3
"""Tiny AMQP 0-9-1 probe for scripts/bench-compare.sh (standard library only).

Polls a broker until it completes the AMQP handshake and, optionally, until a passive
queue.declare succeeds and a consumer on that queue receives its first message. Prints one
JSON object on stdout with wall-clock times (ns since the epoch, time.time_ns(), the same
clock as `date +%s%N`), so the caller can subtract the time it exec'd the broker:

  {"ok": true, "connected_ns": ..., "declared_ns": ..., "message_count": N,
   "consumer_count": N, "first_delivery_ns": ..., "attempts": N}

Usage:
  amqp-probe.py --port 5682 [--host 127.0.0.1] [--user guest --password guest --vhost /]
                [--queue NAME [--consume]] [--timeout SECS] [--interval-ms MS]

Without --queue it only waits for the handshake (connection.open-ok). With --queue it also
passive-declares the queue (retrying while it does not exist yet); with --consume it then
consumes with manual ack and prefetch 1 and waits for the first basic.deliver, which is
left unacked (closing the connection requeues it).
"""

import argparse
import json
import socket
import struct
import sys
import time

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE


class ProbeError(Exception):
    pass


def shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


class Conn:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProbeError("connection closed by broker")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        typ, ch, size = struct.unpack(">BHI", self._read(7))
        payload = self._read(size)
        if self._read(1)[0] != FRAME_END:
            raise ProbeError("bad frame end")
        return typ, ch, payload

    def read_method(self, channel=None):
        """Next method frame: (class, method, args). Raises on connection/channel close."""
        while True:
            typ, ch, payload = self.read_frame()
            if typ != FRAME_METHOD:
                continue
            cls, meth = struct.unpack(">HH", payload[:4])
            args = payload[4:]
            if (cls, meth) in ((10, 50), (20, 40)):
                code = struct.unpack(">H", args[:2])[0]
                n = args[2]
                text = args[3 : 3 + n].decode(errors="replace")
                raise ProbeError(f"closed by broker: {code} {text}")
            return cls, meth, args

    def send_method(self, channel, cls, meth, args=b""):
        payload = struct.pack(">HH", cls, meth) + args
        self.sock.sendall(struct.pack(">BHI", FRAME_METHOD, channel, len(payload)) + payload + bytes([FRAME_END]))

    def expect(self, cls, meth):
        c, m, args = self.read_method()
        if (c, m) != (cls, meth):
            raise ProbeError(f"expected {cls}.{meth}, got {c}.{m}")
        return args


def handshake(conn, user, password, vhost):
    conn.sock.sendall(b"AMQP\x00\x00\x09\x01")
    conn.expect(10, 10)  # connection.start
    response = b"\0" + user.encode() + b"\0" + password.encode()
    conn.send_method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
    args = conn.expect(10, 30)  # connection.tune
    channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
    conn.send_method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
    conn.send_method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\0")
    conn.expect(10, 41)  # connection.open-ok


def probe_once(a, result):
    conn = Conn(a.host, a.port, a.io_timeout)
    try:
        handshake(conn, a.user, a.password, a.vhost)
        result.setdefault("connected_ns", time.time_ns())
        if not a.queue:
            return True
        conn.send_method(1, 20, 10, shortstr(""))
        conn.expect(20, 11)  # channel.open-ok
        # queue.declare passive
        conn.send_method(1, 50, 10, struct.pack(">H", 0) + shortstr(a.queue) + bytes([1]) + struct.pack(">I", 0))
        args = conn.expect(50, 11)
        n = args[0]
        msg_count, cons_count = struct.unpack(">II", args[1 + n : 9 + n])
        result["declared_ns"] = time.time_ns()
        result["message_count"] = msg_count
        result["consumer_count"] = cons_count
        if not a.consume:
            return True
        conn.send_method(1, 60, 10, struct.pack(">IHB", 0, 1, 0))  # basic.qos prefetch 1
        conn.expect(60, 11)
        conn.send_method(1, 60, 20, struct.pack(">H", 0) + shortstr(a.queue) + shortstr("probe") + b"\0" + struct.pack(">I", 0))
        conn.expect(60, 21)  # consume-ok
        deadline = time.monotonic() + a.timeout
        conn.sock.settimeout(max(1.0, a.timeout))
        while time.monotonic() < deadline:
            c, m, _ = conn.read_method()
            if (c, m) == (60, 60):  # basic.deliver
                result["first_delivery_ns"] = time.time_ns()
                return True
        raise ProbeError("no delivery")
    finally:
        # Polite close so the broker requeues the unacked delivery promptly.
        try:
            conn.send_method(0, 10, 50, struct.pack(">H", 200) + shortstr("probe done") + struct.pack(">HH", 0, 0))
            conn.sock.settimeout(2.0)
            while True:
                typ, _ch, payload = conn.read_frame()
                if typ == FRAME_METHOD and payload[:4] == struct.pack(">HH", 10, 51):
                    break
        except Exception:
            pass
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="guest")
    p.add_argument("--password", default="guest")
    p.add_argument("--vhost", default="/")
    p.add_argument("--queue")
    p.add_argument("--consume", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after SECS (default 120)")
    p.add_argument("--interval-ms", type=float, default=5.0, help="retry interval (default 5 ms)")
    p.add_argument("--io-timeout", type=float, default=10.0)
    a = p.parse_args()

    result = {"ok": False, "attempts": 0}
    deadline = time.monotonic() + a.timeout
    last_error = None
    while time.monotonic() < deadline:
        result["attempts"] += 1
        try:
            if probe_once(a, result):
                result["ok"] = True
                break
        except (OSError, ProbeError, struct.error, IndexError) as e:
            last_error = f"{type(e).__name__}: {e}"
        time.sleep(a.interval_ms / 1000.0)
    if not result["ok"]:
        result["error"] = last_error or "timeout"
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
