"""Wrong credentials: pika must see an authentication error (the broker closes with 403 ACCESS_REFUSED)."""
import os
import sys
import urllib.parse

import pika
from pika import exceptions

url = os.environ["AMQP_URL"]
parts = urllib.parse.urlsplit(url)
bad = url.replace(f"{parts.username}:{parts.password}@", "guest:wrong@")
params = pika.URLParameters(bad)
params.connection_attempts = 1
try:
    conn = pika.BlockingConnection(params)
except (exceptions.ProbableAuthenticationError, exceptions.AuthenticationError) as e:
    print("AUTH_REFUSED", type(e).__name__, e)
    sys.exit(0)
except exceptions.AMQPConnectionError as e:
    inner = e.args[0] if e.args else None
    if isinstance(inner, (exceptions.ProbableAuthenticationError, exceptions.AuthenticationError)):
        print("AUTH_REFUSED", type(inner).__name__, inner)
        sys.exit(0)
    print("UNEXPECTED connection error", type(e).__name__, repr(e))
    sys.exit(1)
print("UNEXPECTED: connected with wrong credentials")
conn.close()
sys.exit(1)
