// amqplib (Node.js) connects to amqp://localhost:PORT, publishes COUNT messages to QUEUE and closes at once,
// with the publishes still in flight: what amqplib's own callback-API test suite does. Prints "ok" and
// exits 0 only if the close completed without an error (no EPIPE/ECONNRESET, a real close-ok).
// Usage: node publish_close.js PORT QUEUE COUNT
const amqp = require('amqplib');

async function main() {
  const [port, queue, count] = [process.argv[2], process.argv[3], Number(process.argv[4])];
  // `localhost`, not 127.0.0.1: Node 17+ tries ::1 first.
  const conn = await amqp.connect(`amqp://guest:guest@localhost:${port}`);
  let failed = null;
  conn.on('error', (e) => { failed = e; });
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { durable: false });
  for (let i = 0; i < count; i++) {
    ch.sendToQueue(queue, Buffer.from(`message ${i}`));
  }
  await conn.close();
  if (failed) throw failed;
  console.log('ok');
}

let done = false;
process.on('exit', (code) => {
  if (!done && code === 0) {
    console.error('amqplib failed: the connection ended before close-ok (connection.close never completed)');
    process.exitCode = 1;
  }
});

main().then(() => { done = true; }).catch((e) => {
  console.error(`amqplib failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
