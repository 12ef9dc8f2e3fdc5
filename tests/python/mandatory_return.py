"""pika: a mandatory publish to no queue comes back through on_return with 312 NO_ROUTE."""
import os
import sys

import pika

conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
ch = conn.channel()
returned = []
ch.add_on_return_callback(lambda _ch, method, props, body: returned.append((method, props, body)))
ch.basic_publish("", "nowhere", b"bounce", pika.BasicProperties(message_id="r1"), mandatory=True)
# A round trip so the return (sent before the declare-ok) is processed.
ch.queue_declare("", exclusive=True)
conn.process_data_events(time_limit=0.5)
if len(returned) != 1:
    print("returns:", returned)
    sys.exit(1)
method, props, body = returned[0]
assert body == b"bounce", body
assert props.message_id == "r1", props
assert method.exchange == "" and method.routing_key == "nowhere", method
print("RETURNED", method.reply_code, method.reply_text)
conn.close()
