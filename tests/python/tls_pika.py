"""pika over TLS (AMQPS) against Mailroom.

Usage: tls_pika.py MODE PORT CA [CERT KEY]
  MODE plain:      PLAIN login as guest/guest, publish and consume 100 messages, print "ROUNDTRIP 100".
  MODE external:   SASL EXTERNAL (the client certificate's CN is the user), same round trip.
  MODE refused:    SASL EXTERNAL expected to be refused: print "REFUSED".
  MODE mechanisms: read connection.start over TLS and print "MECHANISMS <list>".
"""
import socket
import ssl
import struct
import sys

import pika


def context(ca, cert, key):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def params(port, ctx, external):
    creds = pika.credentials.ExternalCredentials() if external else pika.PlainCredentials("guest", "guest")
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        credentials=creds,
        ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"),
        connection_attempts=1,
    )


def roundtrip(p):
    conn = pika.BlockingConnection(p)
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish(exchange="", routing_key=q, body=b"m%d" % i)
    got = []
    for method, _props, body in ch.consume(q, inactivity_timeout=5):
        if method is None:
            break
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == 100:
            break
    assert got == [b"m%d" % i for i in range(100)], got[:5]
    conn.close()
    print("ROUNDTRIP", len(got))


def mechanisms(port, ctx):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"AMQP\x00\x00\x09\x01")
    buf = b""
    while len(buf) < 7:
        buf += s.recv(4096)
    size = struct.unpack(">I", buf[3:7])[0]
    while len(buf) < 7 + size + 1:
        buf += s.recv(4096)
    payload = buf[7 : 7 + size]
    # class, method, version major/minor, then server-properties (a table), then mechanisms (a longstr)
    off = 4 + 2
    tlen = struct.unpack(">I", payload[off : off + 4])[0]
    off += 4 + tlen
    mlen = struct.unpack(">I", payload[off : off + 4])[0]
    print("MECHANISMS", payload[off + 4 : off + 4 + mlen].decode())
    s.close()


def main():
    mode, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cert = sys.argv[4] if len(sys.argv) > 4 else None
    key = sys.argv[5] if len(sys.argv) > 5 else None
    ctx = context(ca, cert, key)
    if mode == "plain":
        roundtrip(params(port, ctx, False))
    elif mode == "external":
        roundtrip(params(port, ctx, True))
    elif mode == "refused":
        try:
            pika.BlockingConnection(params(port, ctx, True))
        except pika.exceptions.ProbableAccessDeniedError as e:
            print("REFUSED", e)
        except pika.exceptions.ProbableAuthenticationError as e:
            print("REFUSED", e)
        else:
            print("CONNECTED")
            sys.exit(1)
    elif mode == "mechanisms":
        mechanisms(port, ctx)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
