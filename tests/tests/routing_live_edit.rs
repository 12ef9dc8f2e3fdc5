//! Live edits: one connection publishes continuously to a topic exchange while another toggles bindings
//! (queue bindings and an exchange-to-exchange binding that feeds two queues at once). Every message must
//! have gone exactly where the binding set at its publish time said, within a precisely defined window of
//! uncertainty, and the publisher must never stall.
//!
//! # How publish time is bracketed
//!
//! Queue `all` is bound with `#` for the whole test, so every message (publisher's and editor's) lands in it;
//! a queue is FIFO, so `all` orders the moments each message was enqueued there. Write R(x) for the moment
//! the broker routed message x and A(x) for the moment it enqueued x on `all`; R(x) < A(x).
//!
//! * The editor, on its own channel, applies edit i (bind-ok/unbind-ok received: the edit was applied at
//!   E_i), then publishes marker m_i and waits for its confirm, and only then sends edit i+1. So
//!   E_i < R(m_i) < A(m_i) < E_{i+1}: marker m_i was routed with exactly the binding set after edit i.
//! * The publisher's connection routes and enqueues its messages one after the other (the broker handles a
//!   connection's frames in order), so A(M_{s-1}) < R(M_s) < A(M_s).
//! * If M_{s-1} follows marker m_i in `all`, then E_i < A(m_i) < A(M_{s-1}) < R(M_s): edit i was applied
//!   before M_s was routed. So lo(s) = number of markers before M_{s-1} in `all` (0 for s = 0).
//! * If M_s precedes marker m_j in `all`, then R(M_s) < A(M_s) < A(m_j) < E_{j+1}: edit j+1 was not yet
//!   applied. So hi(s) = (number of markers before M_s in `all`) + 1, capped at the number of edits.
//!
//! M_s must therefore have reached exactly the queues that the binding set after k edits gives for its key,
//! for some k in [lo(s), hi(s)] (usually two consecutive states: the edit in flight is the uncertainty).
//! Moreover the k chosen for successive messages must be non-decreasing (the broker cannot route M_{s+1}
//! with an older binding set than M_s), and all the queues a message reached must agree on one k (no torn
//! state: the e2e binding feeds `i1` and `i2` together or not at all).

mod routing_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use rand::{Rng, SeedableRng};
use routing_common::*;

/// The things the editor toggles: four queue bindings and one exchange-to-exchange binding.
const TOGGLES: [(&str, &str); 5] = [
    ("t0", "k.a"),
    ("t1", "k.*"),
    ("t2", "#.a"),
    ("t3", "k.#"),
    ("inner", "k.#"), // live --k.#--> inner (fanout) --> i1, i2
];
/// The publisher's keys, cycled.
const KEYS: [&str; 4] = ["k.a", "k.b", "x.a", "k.a.b"];
/// The marker key published after toggling each target (it matches the target's pattern).
const MARKER_KEY: [&str; 5] = ["k.a", "k.b", "x.a", "k.a.b", "k.a.b"];
const TOGGLED_QUEUES: [&str; 6] = ["t0", "t1", "t2", "t3", "i1", "i2"];

/// Does toggle `t`'s pattern match `key`? (The topic semantics are proven by routing_matrix; here a table.)
fn matches(t: usize, key: &str) -> bool {
    matches!(
        (t, key),
        (0, "k.a") | (1, "k.a" | "k.b") | (2, "k.a" | "x.a") | (3 | 4, "k.a" | "k.b" | "k.a.b")
    )
}

/// Bit set over TOGGLED_QUEUES of where a message with `key` goes under binding state `state` (bit t =
/// toggle t bound). `all` is implied.
fn expected(state: u8, key: &str) -> u8 {
    let mut out = 0u8;
    for t in 0..4 {
        if state & (1 << t) != 0 && matches(t, key) {
            out |= 1 << t;
        }
    }
    if state & (1 << 4) != 0 && matches(4, key) {
        out |= (1 << 4) | (1 << 5);
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Msg {
    P(u32),
    M(u32),
}

fn parse(body: &[u8]) -> Msg {
    let s = std::str::from_utf8(body).expect("utf8 body");
    let (kind, n) = s.split_once(':').expect("kind:n");
    let n: u32 = n.parse().expect("number");
    match kind {
        "p" => Msg::P(n),
        "m" => Msg::M(n),
        _ => panic!("unexpected body {s}"),
    }
}

async fn consume_all(conn: &lapin::Connection, queue: &str) -> Vec<Msg> {
    let ch = channel(conn).await;
    let n = count(&ch, queue).await as usize;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("drain-{queue}").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("draining {queue}: {} of {n} after 30 s", out.len()))
            .expect("consumer open")
            .expect("delivery");
        out.push(parse(&d.data));
    }
    let _ = ch.close(200, "bye".into()).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_edited_while_publishing_route_consistently() {
    let n: u32 = std::env::var("ROUTING_LIVE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let server = Server::start();
    let setup = connect(&server).await;
    let ch = channel(&setup).await;
    exchange(&ch, "live", ExchangeKind::Topic).await;
    exchange(&ch, "inner", ExchangeKind::Fanout).await;
    queue(&ch, "all").await;
    bind(&ch, "all", "live", "#").await;
    for q in TOGGLED_QUEUES {
        queue(&ch, q).await;
    }
    bind(&ch, "i1", "inner", "").await;
    bind(&ch, "i2", "inner", "").await;
    // Initial state: t0 and the e2e binding bound.
    bind(&ch, "t0", "live", "k.a").await;
    xbind(&ch, "inner", "live", "k.#").await;
    let initial: u8 = 0b1_0001;

    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(tokio::sync::Notify::new());

    // ---- publisher ----
    let pconn = connect(&server).await;
    let pch = confirm_channel(&pconn).await;
    let pub_done = done.clone();
    let pub_started = started.clone();
    let publisher = tokio::spawn(async move {
        // Wait until the editor is going, so edits overlap the whole run.
        pub_started.notified().await;
        let mut progress: Vec<(Instant, u32)> = vec![(Instant::now(), 0)];
        const BATCH: u32 = 250;
        for s in 0..n {
            pch.basic_publish(
                "live".into(),
                KEYS[(s as usize) % KEYS.len()].into(),
                BasicPublishOptions::default(),
                format!("p:{s}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
            if (s + 1) % BATCH == 0 || s + 1 == n {
                let returned = pch.wait_for_confirms().await.expect("confirms");
                assert!(returned.is_empty());
                progress.push((Instant::now(), s + 1));
            }
        }
        pub_done.store(true, Ordering::SeqCst);
        progress
    });

    // ---- editor ----
    let econn = connect(&server).await;
    let ech = confirm_channel(&econn).await;
    let ed_done = done.clone();
    let editor = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x005e_ed0f_ed17);
        let mut state = initial;
        // states[k] = binding state after k edits; markers[i-1] = (target, key) of marker i.
        let mut states = vec![state];
        let mut markers: Vec<(usize, &'static str)> = Vec::new();
        let mut first = true;
        while !ed_done.load(Ordering::SeqCst) {
            let t = rng.gen_range(0..TOGGLES.len());
            let (dest, pattern) = TOGGLES[t];
            let bound = state & (1 << t) != 0;
            match (t, bound) {
                (4, false) => xbind(&ech, dest, "live", pattern).await,
                (4, true) => xunbind(&ech, dest, "live", pattern).await,
                (_, false) => bind(&ech, dest, "live", pattern).await,
                (_, true) => unbind(&ech, dest, "live", pattern).await,
            }
            state ^= 1 << t;
            states.push(state);
            let i = states.len() - 1; // this edit's number, 1-based
            let key = MARKER_KEY[t];
            publish(&ech, "live", key, &format!("m:{i}"), BasicProperties::default()).await;
            markers.push((t, key));
            if first {
                started.notify_one();
                first = false;
            }
        }
        (states, markers)
    });

    let progress = publisher.await.expect("publisher task");
    let (states, markers) = editor.await.expect("editor task");
    let edits = states.len() - 1;
    assert!(
        edits >= 20,
        "only {edits} edits overlapped the publisher: the test proves little"
    );

    // ---- the publisher never stalled ----
    let mut max_gap = Duration::ZERO;
    for w in progress.windows(2) {
        assert!(w[1].1 > w[0].1);
        max_gap = max_gap.max(w[1].0 - w[0].0);
    }
    let elapsed = progress.last().unwrap().0 - progress[0].0;
    eprintln!(
        "live edit: {n} messages in {elapsed:?} ({:.0}/s), {edits} edits, longest gap between confirmed batches {max_gap:?}",
        n as f64 / elapsed.as_secs_f64()
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "the publisher made no progress for {max_gap:?} while bindings were edited"
    );

    // ---- collect ----
    let all = consume_all(&setup, "all").await;
    let mut reached: HashMap<Msg, u8> = HashMap::new();
    let mut problems: Vec<String> = Vec::new();
    for (qi, q) in TOGGLED_QUEUES.iter().enumerate() {
        let msgs = consume_all(&setup, q).await;
        let (mut last_p, mut last_m) = (None, None);
        for m in msgs {
            // FIFO per source channel, no duplicates.
            match m {
                Msg::P(s) => {
                    if last_p.is_some_and(|l| l >= s) {
                        problems.push(format!("{q}: p:{s} after p:{}", last_p.unwrap()));
                    }
                    last_p = Some(s);
                }
                Msg::M(i) => {
                    if last_m.is_some_and(|l| l >= i) {
                        problems.push(format!("{q}: m:{i} after m:{}", last_m.unwrap()));
                    }
                    last_m = Some(i);
                }
            }
            *reached.entry(m).or_default() |= 1 << qi;
        }
    }

    // `all` has every message once, each channel's in order.
    let mut pos_p = vec![usize::MAX; n as usize];
    let mut next_p = 0u32;
    let mut next_m = 1u32;
    // markers_before[pos] is computed on the fly.
    let mut markers_seen = 0usize;
    let mut markers_before_p = vec![0usize; n as usize];
    for (pos, m) in all.iter().enumerate() {
        match *m {
            Msg::P(s) => {
                assert_eq!(
                    s, next_p,
                    "`all`: publisher message out of order or lost/duplicated"
                );
                pos_p[s as usize] = pos;
                markers_before_p[s as usize] = markers_seen;
                next_p += 1;
            }
            Msg::M(i) => {
                assert_eq!(i, next_m, "`all`: marker out of order or lost/duplicated");
                markers_seen += 1;
                next_m += 1;
            }
        }
    }
    assert_eq!(next_p, n, "`all` holds every publisher message");
    assert_eq!(markers_seen, edits, "`all` holds every marker");

    // Markers: exactly the state after their edit.
    for (idx, (t, key)) in markers.iter().enumerate() {
        let i = idx + 1;
        let got = reached.get(&Msg::M(i as u32)).copied().unwrap_or(0);
        let want = expected(states[i], key);
        if got != want {
            problems.push(format!(
                "marker m:{i} (after toggling {}) key {key}: reached {} expected {} (state {:05b})",
                TOGGLES[*t].0,
                names(got),
                names(want),
                states[i]
            ));
        }
    }

    // Publisher messages: within [lo, hi], with a non-decreasing choice of state.
    let mut k_cur = 0usize;
    let mut widths = [0usize; 4];
    for s in 0..n as usize {
        let key = KEYS[s % KEYS.len()];
        let lo = if s == 0 { 0 } else { markers_before_p[s - 1] };
        let hi = (markers_before_p[s] + 1).min(edits);
        widths[(hi - lo).min(3)] += 1;
        let got = reached.get(&Msg::P(s as u32)).copied().unwrap_or(0);
        let from = lo.max(k_cur);
        match (from..=hi).find(|&k| expected(states[k], key) == got) {
            Some(k) => k_cur = k,
            None => {
                let any = (lo..=hi).find(|&k| expected(states[k], key) == got);
                problems.push(format!(
                    "p:{s} key {key}: reached {} but the states in its window [{lo}, {hi}] give {:?}{}",
                    names(got),
                    (lo..=hi)
                        .map(|k| names(expected(states[k], key)))
                        .collect::<Vec<_>>(),
                    match any {
                        Some(k) => format!(
                            " (matches state {k}, older than the state {k_cur} an earlier message saw)"
                        ),
                        None => String::new(),
                    }
                ));
                if problems.len() > 30 {
                    break;
                }
            }
        }
    }
    eprintln!("window widths (hi-lo = 0, 1, 2, 3+): {widths:?}");
    // Nothing else arrived in the toggled queues.
    let known = |m: &Msg| match *m {
        Msg::P(s) => s < n,
        Msg::M(i) => (i as usize) <= edits && i >= 1,
    };
    for m in reached.keys() {
        if !known(m) {
            problems.push(format!("unknown message {m:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    setup.close(200, "bye".into()).await.unwrap();
}

fn names(set: u8) -> String {
    let v: Vec<&str> = TOGGLED_QUEUES
        .iter()
        .enumerate()
        .filter(|(i, _)| set & (1 << i) != 0)
        .map(|(_, q)| *q)
        .collect();
    format!("{v:?}")
}
