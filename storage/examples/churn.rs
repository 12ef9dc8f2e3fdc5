//! Publish N messages, ack (delete) them all, and report disk use, flushes and timings.
//!
//! ```text
//! cargo run --release -p mailroom-storage --example churn -- [N] [options]
//!   N                  messages per round (default 100000)
//!   --size BYTES       body size (default 1024)
//!   --batch B          messages per append batch / per ack batch (default 100)
//!   --producers P      concurrent producers, one queue each; each waits for its batch to be
//!                      durable before the next one, like a confirm-mode publisher (default 4)
//!   --rounds R         publish+ack rounds, to show that space is reused (default 2)
//!   --dir PATH         store directory (default: a fresh temp dir, removed at the end)
//!   --cache-mib M      sled cache (default 64)
//!   --segment-mib M    message segment size (default 8)
//!   --publish-only     publish one round and exit, keeping the data (use with --dir)
//!   --open-only        open an existing --dir, time it and the first read, and exit
//! ```
//!
//! Cold open: `--publish-only --dir D`, then drop D's files from the page cache
//! (`find D -type f -exec dd if={} iflag=nocache count=0 status=none \;`), then `--open-only --dir D`.
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use storage::{QueueRecord, Store, StoreOptions, StoredMessage};

struct Args {
    n: u64,
    size: usize,
    batch: usize,
    producers: u32,
    rounds: u32,
    dir: Option<PathBuf>,
    cache_mib: u64,
    segment_mib: u64,
    publish_only: bool,
    open_only: bool,
}

fn parse() -> Args {
    let mut a = Args {
        n: 100_000,
        size: 1024,
        batch: 100,
        producers: 4,
        rounds: 2,
        dir: None,
        cache_mib: 64,
        segment_mib: 8,
        publish_only: false,
        open_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().expect("missing value");
        match arg.as_str() {
            "--size" => a.size = val().parse().unwrap(),
            "--batch" => a.batch = val().parse().unwrap(),
            "--producers" => a.producers = val().parse().unwrap(),
            "--rounds" => a.rounds = val().parse().unwrap(),
            "--dir" => a.dir = Some(val().into()),
            "--cache-mib" => a.cache_mib = val().parse().unwrap(),
            "--segment-mib" => a.segment_mib = val().parse().unwrap(),
            "--publish-only" => a.publish_only = true,
            "--open-only" => a.open_only = true,
            n => a.n = n.replace('_', "").parse().expect("N"),
        }
    }
    a
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn open(dir: &std::path::Path, a: &Args) -> Store {
    Store::open(
        dir,
        StoreOptions {
            cache_capacity_bytes: a.cache_mib * 1024 * 1024,
            segment_bytes: a.segment_mib * 1024 * 1024,
            ..StoreOptions::default()
        },
    )
    .expect("open")
}

fn main() {
    let a = parse();
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("mailroom-churn")
                .tempdir()
                .unwrap();
            tmp.path().to_path_buf()
        }
    };
    println!(
        "dir {} | {} msgs x {} B per round, batch {}, {} producers, {} rounds",
        dir.display(),
        a.n,
        a.size,
        a.batch,
        a.producers,
        a.rounds
    );
    if a.open_only {
        open_only(&dir, &a);
        return;
    }
    let mut store = open(&dir, &a);
    let queues: Vec<u32> = (0..a.producers)
        .map(|i| {
            let id = store.next_queue_id().unwrap();
            store
                .put_queue(&QueueRecord {
                    id,
                    vhost: "/".into(),
                    name: format!("churn-{i}"),
                    durable: true,
                    ..Default::default()
                })
                .unwrap();
            id
        })
        .collect();
    store.flush_blocking().unwrap();
    println!("empty store: {}", mib(store.size_on_disk().unwrap()));
    let body = Bytes::from(vec![0x5Au8; a.size]);
    let props = Bytes::from_static(&[0x10, 0x00, 0x02]); // stand-in for AMQP property bytes
    let per_queue = a.n / a.producers as u64;

    for round in 1..=a.rounds {
        // ---- publish
        let s0 = store.stats();
        let t0 = Instant::now();
        std::thread::scope(|sc| {
            for &q in &queues {
                let store = store.clone();
                let body = body.clone();
                let props = props.clone();
                let batch = a.batch as u64;
                sc.spawn(move || {
                    let base = (round as u64 - 1) * per_queue;
                    let mut seq = base;
                    while seq < base + per_queue {
                        let end = (seq + batch).min(base + per_queue);
                        let msgs: Vec<StoredMessage> = (seq..end)
                            .map(|_| StoredMessage {
                                exchange: "amq.direct".into(),
                                routing_key: "churn".into(),
                                properties: props.clone(),
                                body: body.clone(),
                                published_at_ms: 1,
                                ..Default::default()
                            })
                            .collect();
                        let items: Vec<(u32, u64, &StoredMessage)> = msgs
                            .iter()
                            .enumerate()
                            .map(|(i, m)| (q, seq + i as u64, m))
                            .collect();
                        let t = store.append_messages(&items).unwrap();
                        store.wait_durable_blocking(t).expect("durable");
                        seq = end;
                    }
                });
            }
        });
        let el = t0.elapsed();
        let s1 = store.stats();
        let published = per_queue * a.producers as u64;
        let flushes = s1.flushes - s0.flushes;
        let fsyncs = s1.fsyncs - s0.fsyncs;
        println!(
            "round {round}: published {published} in {:.2} s = {:.0} msg/s, {} flush rounds ({:.0} msgs/round), {} fsyncs = {:.2} fsyncs/1000 msgs, disk {}",
            el.as_secs_f64(),
            published as f64 / el.as_secs_f64(),
            flushes,
            published as f64 / flushes.max(1) as f64,
            fsyncs,
            fsyncs as f64 * 1000.0 / published as f64,
            mib(store.size_on_disk().unwrap())
        );
        if a.publish_only {
            drop(store);
            println!("published; kept in {}", dir.display());
            return;
        }

        // ---- queue inspection at peak
        let t0 = Instant::now();
        let b = store.queue_bounds(queues[0]).unwrap();
        let tb = t0.elapsed();
        let t0 = Instant::now();
        let c = store.count_messages(queues[0]).unwrap();
        let tc = t0.elapsed();
        println!(
            "  queue {}: bounds {:?} in {:.3} ms; count {} in {:.3} ms",
            queues[0],
            b,
            tb.as_secs_f64() * 1e3,
            c,
            tc.as_secs_f64() * 1e3
        );

        if round == 1 {
            // ---- close and reopen at peak
            let t0 = Instant::now();
            drop(store);
            let tclose = t0.elapsed();
            let t0 = Instant::now();
            store = open(&dir, &a);
            let topen = t0.elapsed();
            let t0 = Instant::now();
            let b = store.queue_bounds(queues[0]).unwrap().unwrap();
            let first = store.read_messages(queues[0], b.0, 1).unwrap();
            assert_eq!(first.len(), 1);
            println!(
                "  close {:.0} ms, reopen {:.0} ms, bounds + first message {:.1} ms",
                tclose.as_secs_f64() * 1e3,
                topen.as_secs_f64() * 1e3,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }

        // ---- consume and ack in batches
        let s0 = store.stats();
        let t0 = Instant::now();
        let mut acked = 0u64;
        for &q in &queues {
            let mut from = 0;
            loop {
                let page = store.read_messages(q, from, 1000).unwrap();
                if page.is_empty() {
                    break;
                }
                from = page.last().unwrap().0 + 1;
                for chunk in page.chunks(a.batch) {
                    let seqs: Vec<u64> = chunk.iter().map(|(s, _)| *s).collect();
                    store.delete_messages(q, &seqs).unwrap();
                    acked += seqs.len() as u64;
                }
            }
        }
        store.flush_blocking().unwrap();
        let el = t0.elapsed();
        let s1 = store.stats();
        println!(
            "  acked {acked} in {:.2} s = {:.0} msg/s, {} flushes, {} fsyncs, disk {}",
            el.as_secs_f64(),
            acked as f64 / el.as_secs_f64(),
            s1.flushes - s0.flushes,
            s1.fsyncs - s0.fsyncs,
            mib(store.size_on_disk().unwrap())
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
        println!("  after 2 s idle: disk {}", mib(store.size_on_disk().unwrap()));
    }
    let st = store.stats();
    println!(
        "since the reopen after round 1: {} writes, {} flushes, {} fsyncs, {} logical; sled's size_on_disk {}",
        st.writes,
        st.flushes,
        st.fsyncs,
        mib(st.bytes_written),
        mib(store.sled_size_on_disk().unwrap())
    );
    drop(store);
    println!(
        "after close: disk {}",
        mib(storage::dir_allocated_bytes(&dir).unwrap())
    );
}

fn open_only(dir: &std::path::Path, a: &Args) {
    println!(
        "disk before open: {}",
        mib(storage::dir_allocated_bytes(dir).unwrap())
    );
    let t0 = Instant::now();
    let store = open(dir, a);
    let topen = t0.elapsed();
    let t0 = Instant::now();
    let queues: Vec<u32> = store.queues().unwrap().iter().map(|q| q.id).collect();
    let b = store.queue_bounds(queues[0]).unwrap().unwrap();
    let first = store.read_messages(queues[0], b.0, 1).unwrap();
    assert_eq!(first.len(), 1);
    let tfirst = t0.elapsed();
    let total: u64 = queues.iter().map(|q| store.count_messages(*q).unwrap()).sum();
    println!(
        "open {:.0} ms, then bounds + first message {:.1} ms; {} queues, {} messages",
        topen.as_secs_f64() * 1e3,
        tfirst.as_secs_f64() * 1e3,
        queues.len(),
        total
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for l in status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        {
            println!("  {l}");
        }
    }
}
