//! Times a burst of durable queue declares on one connection (issue 17: "10,000 durable queue declares on one
//! connection take seconds, not minutes"), then deletes them.
//!
//!   cargo run --release -p mailroom-perf --example declare_burst -- [URI] [N]
//!
//! Two ways a client sends them: one at a time (each declare waits for its declare-ok, so each costs one
//! store round), and pipelined (all written at once, then the replies read: the broker's group commit lets
//! them share fsync rounds). Prints declares per second for both.

use std::time::Instant;

use mailroom_perf::amqp::Conn;
use mailroom_perf::uri::AmqpUri;
use protocol::{FieldTable, Frame, Method, QueueDeclare, QueueDelete};

fn declare(name: String) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: name.as_str().into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

fn delete(name: String) -> Method {
    Method::QueueDelete(QueueDelete {
        queue: name.as_str().into(),
        if_unused: false,
        if_empty: false,
        no_wait: false,
    })
}

async fn pipelined(c: &mut Conn, methods: impl Iterator<Item = Method>) -> anyhow::Result<usize> {
    let mut n = 0;
    for m in methods {
        c.wr.method(1, &m);
        n += 1;
    }
    c.wr.flush().await?;
    let mut got = 0;
    while got < n {
        match c.rd.next_frame().await? {
            Frame::Method(_, Method::QueueDeclareOk(_)) | Frame::Method(_, Method::QueueDeleteOk(_)) => {
                got += 1
            }
            Frame::Method(_, m @ (Method::ChannelClose(_) | Method::ConnectionClose(_))) => {
                anyhow::bail!("closed by the broker: {m:?}")
            }
            _ => {}
        }
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let uri = AmqpUri::parse(
        args.get(1)
            .map_or("amqp://guest:guest@127.0.0.1:5672/%2f", |s| s.as_str()),
    )?;
    let n: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let mut c = Conn::open(&uri, "declare-burst", Some(0)).await?;

    let t = Instant::now();
    for i in 0..n {
        c.rpc(declare(format!("burst-seq-{i}"))).await?;
    }
    let seq = t.elapsed();
    let t = Instant::now();
    pipelined(&mut c, (0..n).map(|i| declare(format!("burst-pipe-{i}")))).await?;
    let pipe = t.elapsed();
    println!(
        "{n} durable queue declares on one connection: one at a time {:.2} s ({:.0}/s), pipelined {:.2} s ({:.0}/s)",
        seq.as_secs_f64(),
        n as f64 / seq.as_secs_f64(),
        pipe.as_secs_f64(),
        n as f64 / pipe.as_secs_f64()
    );
    let t = Instant::now();
    let names = (0..n).flat_map(|i| [format!("burst-seq-{i}"), format!("burst-pipe-{i}")]);
    pipelined(&mut c, names.map(delete)).await?;
    println!("{} deletes pipelined: {:.2} s", 2 * n, t.elapsed().as_secs_f64());
    c.close().await;
    Ok(())
}
