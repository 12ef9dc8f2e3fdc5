#!/usr/bin/env python3
"""Turn a scripts/bench-compare.sh results directory into the generated section of
docs/performance.md (between the bench-compare markers; everything else is kept).

Usage: bench-report.py RESULTS_DIR DOC.md [--stdout]
"""

import glob
import json
import os
import statistics
import sys

BEGIN = "<!-- bench-compare:begin -->"
END = "<!-- bench-compare:end -->"
BROKERS = ("mailroom", "rabbitmq")

# (row label, scenario, metric, target kind, target value, target text)
#   kind "ratio": Mailroom ÷ RabbitMQ ≥ value; "max_us": Mailroom's value ≤ value µs;
#   "min_self": Mailroom's value ≥ value; "max_self": Mailroom's value < value;
#   "all_ok": every Mailroom run passed its checks; None: no target (shown for reference)
# The throughput figure of S1-S5 and F3 is the consume rate *while the producers publish*
# (issue 11, 13); reports from before mailroom-perf measured it fall back to the overall rate
# and say so.
ROWS = [
    ("S1 1→1, 16 B transient, autoack", "S1", "consume_rate_publishing", "ratio", 5, "≥ 5×"),
    ("S2 1→1, 1 KiB transient, manual ack", "S2", "consume_rate_publishing", "ratio", 4, "≥ 4×"),
    ("S3 1→1, 1 KiB persistent, confirms", "S3", "consume_rate_publishing", "ratio", 3, "≥ 3×"),
    ("S4 4→4 over 4 queues, 256 B", "S4", "consume_rate_publishing", "ratio", 4, "≥ 4×"),
    ("S5 fanout 1→10 queues, 256 B", "S5", "consume_rate_publishing", "ratio", 4, "≥ 4×"),
    ("S6 publish {s6} × 1 KiB persistent", "S6", "publish_rate", "ratio", 3, "≥ 3×"),
    ("S6 drain", "S6", "consume_rate", "ratio", 4, "≥ 4×"),
    ("L1 10 k msg/s, 1 KiB: latency p50", "L1", "pub_p50", None, None, "—"),
    ("L1 latency p99", "L1", "pub_p99", "max_us", 1000, "Mailroom p99 ≤ 1 ms"),
    ("L1M the same in 1 ms bursts (--pacing ms): latency p99", "L1M", "pub_p99", None, None, "—"),
    ("F1 4→1 queue←1, 1 KiB: consume ÷ publish while publishing", "F1", "keep_up_ratio", "min_self", 0.8,
     "Mailroom ≥ 0.8"),
    ("F1 peak broker RSS", "F1", "rss_peak_kb", "max_self", 512 * 1024, "Mailroom < 512 MiB"),
    ("F1 latency p99 while publishing", "F1", "pub_p99", "max_us", 1e6, "Mailroom p99 < 1 s"),
    ("F2 4→1 queue, no consumer: accepted", "F2", "queue_depth_publish_end", None, None, "—"),
    ("F2 producers' blocked time (sum)", "F2", "blocked_s", None, None, "—"),
    ("F2 peak broker RSS", "F2", "rss_peak_kb", "max_self", 384 * 1024, "Mailroom < 384 MiB"),
    ("F2 every accepted message delivered once after the drain", "F2", "exactly_once", "all_ok", None,
     "every Mailroom run"),
    ("F3 4→4 consumers on 1 queue, 256 B", "F3", "consume_rate_publishing", "ratio", 4, "≥ 4×"),
]

UNITS = {
    "consume_rate_publishing": "consume msg/s while publishing",
    "consume_rate": "drain msg/s",
    "publish_rate": "publish msg/s",
    "pub_p50": "latency while publishing",
    "pub_p99": "latency while publishing",
    "keep_up_ratio": "consume ÷ routed rate while publishing",
    "rss_peak_kb": "peak RSS (every 100 ms)",
    "queue_depth_publish_end": "messages in the queue once publishing ended",
    "blocked_s": "s blocked (connection.blocked)",
    "exactly_once": "run checks",
}


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None


def fmt_rate(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def fmt_us(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} ms"
    return f"{v:.0f} µs"


def fmt_ms(v):
    if v is None:
        return "—"
    if v >= 10000:
        return f"{v / 1000:.1f} s"
    return f"{v:.0f} ms"


def fmt_bytes(v):
    if v is None:
        return "—"
    return f"{v:,.1f} B".replace(",", " ")


def first_line(path):
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
        return lines[-1][:160] if lines else ""
    except OSError:
        return ""


def run_failure(run):
    """None when the run counts; else a short reason."""
    r, meta = run["report"], run["meta"]
    rc = meta.get("rc") if meta else None
    if r is None:
        why = f"no report (exit {rc})"
        tail = first_line(run["stderr"])
        if tail:
            why += f": {tail}"
        return why
    if not r.get("ok", False):
        bits = []
        for k in ("lost", "duplicated", "unconfirmed", "nacked"):
            if r.get(k):
                bits.append(f"{k} {r[k]}")
        if r.get("errors"):
            bits.append("error: " + str(r["errors"][0])[:120])
        return "not ok (" + (", ".join(bits) or f"exit {rc}") + ")"
    return None


def fmt_kib(v):
    if v is None:
        return "—"
    if v >= 1 << 20:
        return f"{v / (1 << 20):.2f} GiB"
    return f"{v / 1024:.0f} MiB"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}"


def fmt_count(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k"
    return f"{v:.0f}"


def fmt_secs(v):
    return "—" if v is None else f"{v:.1f} s"


def fmt_ns(v):
    return "—" if v is None else f"{v:,.0f} ns".replace(",", " ")


def fmt_yes(v):
    return "—" if v is None else ("yes" if v else "no")


FORMATS = {
    "p50": fmt_us, "p99": fmt_us, "pub_p50": fmt_us, "pub_p99": fmt_us,
    "keep_up_ratio": fmt_ratio, "rss_peak_kb": fmt_kib, "queue_depth_publish_end": fmt_count,
    "backlog_publish_end": fmt_count, "blocked_s": fmt_secs, "cpu_ns": fmt_ns, "exactly_once": fmt_yes,
}


def metric_note(r, m):
    """(value or None, note) of metric m in report r; note is "overall" when an older report
    lacked the while-publishing figure and the overall one stands in."""
    if r is None:
        return None, None
    lat = r.get("latency_us") or {}
    broker = r.get("broker") or {}
    if m in ("p50", "p99"):
        return lat.get(m), None
    if m in ("pub_p50", "pub_p99"):
        if "latency_publishing_us" not in r:
            return lat.get(m[4:]), "overall"
        if not r.get("latency_publishing_samples"):
            return None, None
        return r["latency_publishing_us"].get(m[4:]), None
    if m == "consume_rate_publishing" and m not in r:
        return r.get("consume_rate"), "overall"
    if m == "rss_peak_kb":
        return broker.get("rss_peak_kb"), None
    if m == "cpu_ns":
        v = broker.get("cpu_ns_per_consumed")
        return (v if v is not None else broker.get("cpu_ns_per_published")), None
    if m == "exactly_once":
        ok = r.get("ok") and r.get("drained") and not r.get("lost") and not r.get("duplicated")
        return (1 if ok else 0), None
    return r.get(m), None


def metric(r, m):
    return metric_note(r, m)[0]


def collect(results):
    runs = {}
    for meta_path in sorted(glob.glob(os.path.join(results, "runs", "*.meta.json"))):
        base = meta_path[: -len(".meta.json")]
        meta = load_json(meta_path) or {}
        key = (meta.get("scenario"), meta.get("broker"))
        runs.setdefault(key, []).append(
            {"meta": meta, "report": load_json(base + ".json"), "stderr": base + ".stderr"}
        )
    for v in runs.values():
        v.sort(key=lambda r: r["meta"].get("rep", 0))
    return runs


def cell(runs, m, fmt):
    """(median or None, text) over the runs that are ok."""
    if not runs:
        return None, "not run"
    failed = [run_failure(r) for r in runs if run_failure(r) is not None]
    good_runs = [r for r in runs if run_failure(r) is None]
    notes = {metric_note(r["report"], m)[1] for r in good_runs} - {None}
    good = [v for v in (metric(r["report"], m) for r in good_runs) if v is not None]
    if not good_runs:
        vals = [v for v in (metric(r["report"], m) for r in runs) if v is not None]
        txt = "**FAILED**: " + "; ".join(sorted(set(failed)))
        if vals:
            txt += f" (measured {fmt(statistics.median(vals))})"
        return None, txt
    if not good:
        return None, "— (not in these reports)"
    med = statistics.median(good)
    txt = fmt(med)
    if len(good) > 1:
        txt += f" ({fmt(min(good))} – {fmt(max(good))})"
    if "overall" in notes:
        txt += " (overall rate: report from before the while-publishing figure)"
    if failed:
        txt += f"; {len(failed)} of {len(runs)} runs failed: " + "; ".join(sorted(set(failed)))
    return med, txt


def rss_capped(runs):
    """Runs whose publishing was stopped by --max-broker-rss."""
    return sum(1 for r in runs if ((r["report"] or {}).get("broker") or {}).get("rss_cap_hit_kb"))


def cell_short(runs, m, fmt):
    """Median over the runs that passed, or a short failure marker."""
    good = [v for v in (metric(r["report"], m) for r in runs if run_failure(r) is None) if v is not None]
    if not good:
        return "FAILED" if all(run_failure(r) for r in runs) else "—"
    return fmt(statistics.median(good))


def generate(results):
    env = load_json(os.path.join(results, "env.json")) or {}
    runs = collect(results)
    out = []
    w = out.append
    date = env.get("started_at", "?")
    w(f"Generated by `scripts/bench-compare.sh` — do not edit by hand (re-run to regenerate).")
    w("")
    w(f"- **Date**: {date} → {env.get('finished_at', '?')}")
    mem = env.get("mem_total_kb")
    mem_txt = f"{mem / 1024 / 1024:.1f} GiB" if mem else "?"
    w(
        f"- **Machine**: {env.get('nproc', '?')} CPUs ({env.get('cpu_model', '?')}), {mem_txt} RAM, "
        f"Linux {env.get('kernel', '?')}"
    )
    loads = []
    for v in runs.values():
        for r in v:
            la = (r["meta"] or {}).get("loadavg_before")
            if la:
                loads.append(float(la.split()[0]))
    if loads:
        w(
            f"- **Load average (1 min) before each run**: {min(loads):.1f} – {max(loads):.1f} "
            f"(median {statistics.median(loads):.1f})"
        )
    overrides = env.get("env_overrides", "")
    cmd = env.get("command", "make bench-compare")
    w(f"- **Command**: `{(overrides + ' ' if overrides else '') + cmd}`")
    w(
        f"- **Brokers**: Mailroom at {env.get('git', '?')} — release build, fresh data dir, default config — vs "
        f"RabbitMQ {env.get('rabbitmq_version', '?')} (Debian package, Erlang/OTP {env.get('erlang_otp', '?')}, "
        f"private node, default config, no plugins); both on 127.0.0.1, load tool `mailroom-perf` on the same machine"
    )
    rep = env.get("repeat", "?")
    flow = ""
    if env.get("flow_duration") is not None:
        flow = f", F1–F3: {env['flow_duration']:g} s"
    w(
        f"- **Runs**: each scenario {rep}× per broker, alternating Mailroom / RabbitMQ; "
        f"{env.get('duration', '?'):g} s of publishing (S6: {env.get('s6_count', '?')} messages{flow}); "
        f"figures are medians (min – max in brackets when more than one run)"
    )
    if env.get("flow_duration") is not None:
        wm = env.get("flow_watermark") or "none (default configuration)"
        cap = env.get("max_broker_rss") or "0"
        w(
            f"- **Flow control**: F2 runs on brokers restarted with a memory high watermark of {wm} "
            f"(Mailroom `--memory-high-watermark` when the build has it, RabbitMQ "
            f"`vm_memory_high_watermark.absolute`); every run watches the broker process "
            f"(`--broker-pid`: RSS every 100 ms, CPU per message) and stops publishing if its RSS "
            f"reaches {cap if cap != '0' else 'no cap'} (`--max-broker-rss`, to protect the shared machine)"
        )
    wms = sorted({(r["meta"] or {}).get("watermark") for k, v in runs.items() if k[0] == "F2" for r in v} - {None})
    if wms:
        w(f"- **F2 watermark actually used**: " + "; ".join(
            f"{b}: " + ", ".join(sorted({(r['meta'] or {}).get('watermark', '?') for r in runs.get(('F2', b), [])}))
            for b in BROKERS if runs.get(("F2", b))))
    w("")
    w("| scenario | metric | Mailroom | RabbitMQ | Mailroom ÷ RabbitMQ | target | met |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    met_summary = []
    for label, s, m, kind, tval, ttxt in ROWS:
        if not runs.get((s, "mailroom")) and not runs.get((s, "rabbitmq")) and s.startswith("F"):
            continue  # flow-control presets not in this run (older results)
        label = label.replace("{s6}", f"{env.get('s6_count', 200000) / 1000:g} k")
        fmt = FORMATS.get(m, fmt_rate)
        mr, mtxt = cell(runs.get((s, "mailroom"), []), m, fmt)
        rr, rtxt = cell(runs.get((s, "rabbitmq"), []), m, fmt)
        unit = UNITS.get(m, m)
        if m == "rss_peak_kb":
            n = rss_capped(runs.get((s, "mailroom"), []))
            if n:
                mtxt += f" (publishing stopped at the RSS cap in {n} run(s))"
            n = rss_capped(runs.get((s, "rabbitmq"), []))
            if n:
                rtxt += f" (publishing stopped at the RSS cap in {n} run(s))"
        ratio_txt = "—"
        met = "—"
        if not runs.get((s, "mailroom")) and not runs.get((s, "rabbitmq")):
            met = "not run"
        if met == "not run":
            pass
        elif kind == "min_self":
            met = "n/a (failed run)" if mr is None else ("yes" if mr >= tval else "**no**")
        elif kind == "max_self":
            met = "n/a (failed run)" if mr is None else ("yes" if mr < tval else "**no**")
        elif kind == "all_ok":
            mruns = runs.get((s, "mailroom"), [])
            good = [r for r in mruns if run_failure(r) is None and metric(r["report"], m)]
            met = "yes" if mruns and len(good) == len(mruns) else "**no**"
            mtxt = f"{len(good)} of {len(mruns)} runs"
            rruns = runs.get((s, "rabbitmq"), [])
            rgood = [r for r in rruns if run_failure(r) is None and metric(r["report"], m)]
            rtxt = f"{len(rgood)} of {len(rruns)} runs" if rruns else "not run"
        elif kind == "ratio":
            if mr is not None and rr:
                ratio = mr / rr
                ratio_txt = f"{ratio:.2f}×"
                met = "yes" if ratio >= tval else "**no**"
            else:
                met = "n/a (failed run)"
        elif kind == "max_us":
            if mr is not None:
                met = "yes" if mr <= tval else "**no**"
            else:
                met = "n/a (failed run)"
            if mr and rr:
                ratio_txt = f"{mr / rr:.2f}× (lower is better)"
        if kind:
            met_summary.append((label, met))
        w(f"| {label} | {unit} | {mtxt} | {rtxt} | {ratio_txt} | {ttxt} | {met} |")

    # M1
    m1 = {b: load_json(os.path.join(results, f"m1-{b}.json")) for b in BROKERS}
    if env.get("m1") and any(m1.values()):
        per = {}
        allin = {}
        txt = {}
        for b in BROKERS:
            d = m1.get(b)
            if not d:
                txt[b] = "not run"
                per[b] = None
                continue
            fill = load_json(os.path.join(results, f"m1-{b}-fill.json"))
            ok = d.get("fill_rc") == 0 and fill and fill.get("ok") and d.get("queued") == d.get("count")
            if d.get("rss_mid_kb") is not None and d.get("half"):
                # Slope over the second half: the cost per queued message beyond the fixed part.
                val = (d["rss_after_10s_kb"] - d["rss_mid_kb"]) * 1024 / (d["count"] - d["half"])
            else:
                val = (d["rss_after_10s_kb"] - d["rss_before_kb"]) * 1024 / d["count"]
            total = (d["rss_after_10s_kb"] - d["rss_before_kb"]) * 1024 / d["count"]
            per[b] = val if ok else None
            allin[b] = total if ok else None
            txt[b] = f"{fmt_bytes(val)} (all-in {fmt_bytes(total)})"
            if not ok:
                txt[b] = f"**FAILED** (fill exit {d.get('fill_rc')}, queued {d.get('queued')}; measured {fmt_bytes(val)})"
        met = "—"
        if per["mailroom"] is not None:
            met = "yes" if per["mailroom"] < 1 else "**no**"
        else:
            met = "n/a (failed run)"
        ratio = "—"
        if allin.get("mailroom") is not None and allin.get("rabbitmq"):
            # All-in figures: a garbage-collected broker's second-half slope can even be negative.
            ratio = f"{allin['mailroom'] / allin['rabbitmq']:.4f}× all-in (lower is better)"
        n = env.get("m1_count", 0)
        w(
            f"| M1 {n / 1e6:g} M × 1 KiB persistent queued, no consumer | RSS growth per message over the second half (all-in: over the whole fill) | "
            f"{txt['mailroom']} | {txt['rabbitmq']} | {ratio} | Mailroom < 1 B/message | {met} |"
        )
        met_summary.append(("M1", met))
    w("")
    short = {
        "S6 drain": "S6 drain",
        "L1 latency p99": "L1 p99",
        "F1 peak broker RSS": "F1 RSS",
        "F1 latency p99 while publishing": "F1 p99",
        "F2 peak broker RSS": "F2 RSS",
        "F2 every accepted message delivered once after the drain": "F2 exactly once",
    }

    def short_label(l):
        if l in short:
            return short[l]
        if l.startswith("S6 publish"):
            return "S6 publish"
        if l.startswith("F1 4→1"):
            return "F1 keep-up"
        return l.split(" ")[0]

    w(
        "Targets: "
        + ", ".join(
            f"{short_label(l)} {'met' if m == 'yes' else ('MISSED' if m == '**no**' else m)}"
            for l, m in met_summary
        )
        + "."
    )

    # Side by side: what each broker did in each scenario.
    order = {s: i for i, s in enumerate(env.get("scenarios") or ["S1", "S2", "S3", "S4", "S5", "S6", "L1", "L1M"])}
    scen = sorted({k[0] for k in runs}, key=lambda x: (order.get(x, 99), x))
    if scen:
        w("")
        w(
            "Side by side (medians over the runs that passed; consume rate and latency are measured "
            "*while the producers publish*; backlog = routed copies not yet delivered when publishing "
            "stopped; RSS sampled every 100 ms; broker CPU per delivery, or per publish without deliveries; "
            "blocked (connection.blocked) and socket-wait times are summed over the producers):"
        )
        w("")
        w("| scenario | broker | publish msg/s | consume msg/s while publishing | backlog at end of publishing | "
          "p50 / p99 while publishing | peak broker RSS | broker CPU per message | producers blocked / socket wait |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for sc in scen:
            for b in BROKERS:
                rs = runs.get((sc, b), [])
                if not rs:
                    continue
                txt = lambda m, f: cell_short(rs, m, f)
                after = any((r["report"] or {}).get("consume_after_publish") for r in rs)
                consume = txt("consume_rate_publishing", fmt_rate)
                if after:
                    consume = f"— (consumers start after; drain {txt('consume_rate', fmt_rate)})"
                lat = f"{txt('pub_p50', fmt_us)} / {txt('pub_p99', fmt_us)}"
                if after:
                    lat = "—"
                flow = f"{txt('blocked_s', fmt_secs)} / {txt('write_wait_s', fmt_secs)}"
                w(
                    f"| {sc} | {b} | {txt('publish_rate', fmt_rate)} | {consume} | "
                    f"{txt('backlog_publish_end', fmt_count)} | {lat} | {txt('rss_peak_kb', fmt_kib)} | "
                    f"{txt('cpu_ns', fmt_ns)} | {flow} |"
                )

    # M1 and recovery details
    if env.get("m1") and any(m1.values()):
        w("")
        w("M1 details (VmRSS from /proc/PID/status; RabbitMQ: beam.smp; fill: 1 producer, confirms window 100, "
          "`mailroom-perf -x 1 -y 0 --persistent --durable -s 1024 -c 100 --count N -e '' --queues 1 "
          "--queue-prefix mailroom-m1- --no-cleanup`, fresh broker):")
        w("")
        w("| broker | RSS before | RSS after the first half | RSS right after fill | RSS 10 s later | queued | fill time | fill rate (first half) |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for b in BROKERS:
            d = m1.get(b)
            if not d:
                continue
            fill = load_json(os.path.join(results, f"m1-{b}-fill.json")) or {}
            w(
                f"| {b} | {d['rss_before_kb'] / 1024:.1f} MiB | "
                f"{(d.get('rss_mid_kb') or 0) / 1024:.1f} MiB | {d['rss_after_kb'] / 1024:.1f} MiB | "
                f"{d['rss_after_10s_kb'] / 1024:.1f} MiB | {d.get('queued')} | {d.get('fill_s')} s | "
                f"{fmt_rate(fill.get('publish_rate'))} msg/s |"
            )
    recs = []
    for b in BROKERS:
        for how in ("TERM", "KILL"):
            d = load_json(os.path.join(results, f"recovery-{b}-{how}.json"))
            if d:
                recs.append(d)
    if recs:
        w("")
        w(
            "Restart with the M1 queue on disk (times from the broker's exec; a probe polls every 2 ms: AMQP "
            "handshake, passive queue.declare, first basic.deliver to a consumer):"
        )
        w("")
        w("| broker | stopped by | stop took | handshake | passive declare (count) | first delivery | RSS after |")
        w("| --- | --- | --- | --- | --- | --- | --- |")
        for d in recs:
            how = "SIGTERM" if d["stop"] == "TERM" else "kill -9"
            if not d.get("ok"):
                w(f"| {d['broker']} | {how} | {fmt_ms(d.get('stop_ms'))} | **FAILED**: {d.get('error')} | | | |")
                continue
            w(
                f"| {d['broker']} | {how} | {fmt_ms(d.get('stop_ms'))} | {fmt_ms(d.get('connect_ms'))} | "
                f"{fmt_ms(d.get('declare_ms'))} ({d.get('message_count')}) | {fmt_ms(d.get('first_delivery_ms'))} | "
                f"{d.get('rss_after_recovery_kb', 0) / 1024:.1f} MiB |"
            )

    # every run
    w("")
    w("<details><summary>Every run</summary>")
    w("")
    w("| scenario | broker | # | publish msg/s | consume msg/s while publishing | drain msg/s | overall consume msg/s | "
      "backlog at end of publishing | p50 / p99 while publishing | p50 / p99 all | peak RSS | broker CPU s | "
      "CPU ns/msg | blocked s | socket wait s | tool CPU s | load before | result |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (s, b), rs in sorted(runs.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        for r in rs:
            rep_ = r["report"] or {}
            meta = r["meta"] or {}
            lat = rep_.get("latency_us") or {}
            fail = run_failure(r)
            m = lambda k, f: f(metric(rep_, k)) if rep_ else "—"
            notes = "; ".join(rep_.get("notes") or [])
            result = "ok" if fail is None else fail
            if notes:
                result += f" — {notes[:200]}"
            w(
                f"| {s} | {b} | {meta.get('rep')} | {fmt_rate(rep_.get('publish_rate'))} | "
                f"{m('consume_rate_publishing', fmt_rate) if 'consume_rate_publishing' in rep_ else '—'} | "
                f"{fmt_rate(rep_.get('drain_rate'))} | {fmt_rate(rep_.get('consume_rate'))} | "
                f"{m('backlog_publish_end', fmt_count)} | "
                f"{m('pub_p50', fmt_us) if 'latency_publishing_us' in rep_ else '—'} / "
                f"{m('pub_p99', fmt_us) if 'latency_publishing_us' in rep_ else '—'} | "
                f"{fmt_us(lat.get('p50'))} / {fmt_us(lat.get('p99'))} | {m('rss_peak_kb', fmt_kib)} | "
                f"{meta.get('broker_cpu_s', '—')} | {m('cpu_ns', fmt_ns)} | {m('blocked_s', fmt_secs)} | "
                f"{m('write_wait_s', fmt_secs)} | {rep_.get('cpu_s', '—')} | {meta.get('loadavg_before', '—')} | "
                f"{result} |"
            )
    w("")
    w("</details>")
    w("")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown = os.path.abspath(results)
    if shown.startswith(root + os.sep):
        shown = os.path.relpath(shown, root)
    w(f"Raw JSON: `{shown}/` "
      "(gitignored, one `mailroom-perf --json` report plus a `.meta.json` per run).")
    return "\n".join(out) + "\n"


SKELETON = """# Performance

## Mailroom vs RabbitMQ (`make bench-compare`)

{begin}
{end}
"""


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    results, doc = sys.argv[1], sys.argv[2]
    section = generate(results)
    if "--stdout" in sys.argv[3:]:
        sys.stdout.write(section)
        return
    try:
        text = open(doc).read()
    except FileNotFoundError:
        text = SKELETON.format(begin=BEGIN, end=END)
    # The markers count only on lines of their own (the doc may mention them in prose).
    lines = text.split("\n")
    try:
        b = lines.index(BEGIN)
        e = lines.index(END, b + 1)
    except ValueError:
        lines = text.rstrip("\n").split("\n") + [
            "", "## Mailroom vs RabbitMQ (`make bench-compare`)", "", BEGIN, END, ""]
        b = lines.index(BEGIN)
        e = b + 1
    new = "\n".join(lines[: b + 1] + section.rstrip("\n").split("\n") + lines[e:])
    tmp = doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, doc)


if __name__ == "__main__":
    main()
