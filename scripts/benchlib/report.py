"""Turns the raw results into medians, target verdicts and the Markdown report."""

from __future__ import annotations

from . import dataplane, procs

SHAPES = ["drover-single", "drover-reverse", "drover-reverse-tls", "drover-forward", "drover-forward-tls"]
SHAPE_LABEL = {
    "drover-single": "single-end",
    "drover-reverse": "reverse tunnel, tls=0",
    "drover-reverse-tls": "reverse tunnel, tls=1",
    "drover-forward": "forward tunnel, tls=0",
    "drover-forward-tls": "forward tunnel, tls=1",
}
MIB = 1024.0


# ---------------------------------------------------------------- aggregation


def aggregate(dataplane: dict) -> dict:
    """fwd → metric → {median, min, max, n}; list metrics → per-index medians."""
    agg = {}
    for name, d in dataplane.items():
        vals: dict[str, list] = {}
        for rep in d["reps"]:
            for k, v in (rep.get("metrics") or {}).items():
                vals.setdefault(k, []).append(v)
        a = {}
        for k, vs in vals.items():
            if vs and isinstance(vs[0], list):
                width = min(len(x) for x in vs)
                a[k] = {"median": [procs.median([x[i] for x in vs]) for i in range(width)], "n": len(vs)}
            else:
                nums = [x for x in vs if x is not None]
                if nums:
                    a[k] = {"median": procs.median(nums), "min": min(nums), "max": max(nums), "n": len(nums)}
        agg[name] = a
    return agg


def val(agg: dict, fwd: str, metric: str):
    return (agg.get(fwd, {}).get(metric) or {}).get("median")


def best_peer(agg: dict, peers: list[str], metric: str, higher: bool):
    cands = [(p, val(agg, p, metric)) for p in peers if val(agg, p, metric) is not None]
    if not cands:
        return None, None
    return (max if higher else min)(cands, key=lambda x: x[1])


# ---------------------------------------------------------------- targets


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "pass" if ok else "**MISS**"


def evaluate(results: dict) -> list[dict]:
    """Every target: what, measured (text), pass/miss/n-a, note."""
    agg = results.get("aggregate", {})
    peers = results.get("peers_measured", [])
    T = []

    def add(what, measured, ok, note=""):
        T.append({"target": what, "measured": measured, "ok": ok, "note": note})

    # Throughput.
    for shape, need in (("drover-single", 0.80), ("drover-reverse", 0.65)):
        for metric, label in (("tcp1_gbps", "1 stream"), ("tcp8_gbps", "8 streams")):
            d, x = val(agg, "direct", metric), val(agg, shape, metric)
            if x is None or d is None:
                add(f"TCP {label}, {SHAPE_LABEL[shape]} ≥ {need:.0%} of direct", "not measured", None)
                continue
            add(f"TCP {label}, {SHAPE_LABEL[shape]} ≥ {need:.0%} of direct", f"{x:.2f} Gbit/s = {x / d:.1%} of {d:.2f}", x / d >= need)
            bp, bv = best_peer(agg, peers, metric, True)
            if bp is None:
                add(f"TCP {label}, {SHAPE_LABEL[shape]} ahead of every peer", "no peer measured", None)
            else:
                add(f"TCP {label}, {SHAPE_LABEL[shape]} ahead of every peer", f"{x:.2f} vs best peer {bp} {bv:.2f} Gbit/s ({x / bv:.2f}×)", x > bv)
    # Latency added.
    d50 = val(agg, "direct", "rtt_p50_us")
    for shape in SHAPES:
        x = val(agg, shape, "rtt_p50_us")
        limit = 15 if shape == "drover-single" else 30
        what = f"added round trip p50, {SHAPE_LABEL[shape]} ≤ {limit} µs"
        if x is None or d50 is None:
            add(what, "not measured", None)
        else:
            one, d1 = val(agg, shape, "rtt1cpu_p50_us"), val(agg, "direct", "rtt1cpu_p50_us")
            own = f"; on one CPU +{one - d1:.1f} µs" if one is not None and d1 is not None else ""
            add(what, f"+{x - d50:.1f} µs ({x:.1f} vs direct {d50:.1f}{own})", x - d50 <= limit)
    # Connection rate.
    for shape in SHAPES:
        for c in (1, 64):
            metric = f"conn{c}_rate"
            x = val(agg, shape, metric)
            bp, bv = best_peer(agg, peers, metric, True)
            what = f"new connections/s at concurrency {c}, {SHAPE_LABEL[shape]} ≥ best peer"
            if x is None or bp is None:
                add(what, "not measured" if x is None else "no peer measured", None)
            else:
                add(what, f"{x:,.0f}/s vs {bp} {bv:,.0f}/s ({x / bv:.2f}×)", x >= bv)
    # Connect + first byte (the echo of the first 64 bytes) through a tunnel.
    for shape in SHAPES[1:]:
        x = val(agg, shape, "conn1_p50_us")
        what = f"connect + echo p50 at concurrency 1, {SHAPE_LABEL[shape]} ≤ {CONNECT_LIMIT_US} µs"
        d = val(agg, "direct", "conn1_p50_us")
        measured = "not measured" if x is None else f"{x:.1f} µs" + (f" (direct {d:.1f})" if d is not None else "")
        add(what, measured, None if x is None else x <= CONNECT_LIMIT_US)
    # CPU per GB.
    for shape in SHAPES:
        for n in (1, 8):
            x = val(agg, shape, f"cpu_s_per_gb_{n}")
            what = f"CPU per GB, {n} stream{'s' if n > 1 else ''}, {SHAPE_LABEL[shape]} ≤ 0.25 s"
            floor = cipher_floor(results) if shape.endswith("-tls") else None
            note = f"AES-GCM alone ≥ {floor:.2f} s/GB on this CPU" if floor is not None else ""
            # The same tunnel at tls=0 moves the bytes with no copy at all:
            # a tls=1 tunnel does that work plus the cipher's.
            plain = val(agg, shape.removesuffix("-tls"), f"cpu_s_per_gb_{n}") if floor is not None else None
            if plain is not None:
                note += f"; with the tls=0 tunnel's own {plain:.3f}: ≥ {floor + plain:.2f}"
            add(what, "not measured" if x is None else f"{x:.3f} s/GB", None if x is None else x <= 0.25, note)
    # Idle RSS per worker process.
    for shape in SHAPES:
        per = val(agg, shape, "rss_idle_procs_kib")
        what = f"idle drover-worker RSS, {SHAPE_LABEL[shape]} ≤ 6 MiB (each process)"
        if not per:
            add(what, "not measured", None)
        else:
            add(what, " + ".join(f"{p / MIB:.1f}" for p in per) + " MiB", max(per) <= 6 * MIB)
    cp = results.get("control") or {}
    sc = cp.get("scale") or {}
    if sc.get("worker_rss_kib"):
        w = sc["worker_rss_kib"]
        add("idle drover-worker RSS under the master ≤ 6 MiB", f"p50 {w['p50'] / MIB:.1f} MiB, max {w['max'] / MIB:.1f} MiB over {w['n']} workers", w["max"] <= 6 * MIB)
    # Control plane.
    if sc:
        n, ready = sc.get("instances"), sc.get("ready", 0)
        full = n is not None and n >= 1000
        note = "" if full else f"only {n} instances in this run (the target is for 1,000)"
        add(f"{n:,} instances created and running", f"{ready:,} ready in {sc.get('running_s')} s", ready == n)
        if sc.get("master_rss_kib"):
            add("master RSS with 1,000 running instances ≤ 150 MiB", f"{sc['master_rss_kib'] / MIB:.1f} MiB with {ready:,}", sc["master_rss_kib"] <= 150 * MIB if full else None, note)
    else:
        add("1,000 instances, master RSS ≤ 150 MiB", "not measured", None)
    cr = (cp.get("create") or {}).get("ready_ms")
    add("create → running p50 ≤ 20 ms", f"p50 {cr['p50']:.1f} ms, p99 {cr['p99']:.1f} ms" if cr else "not measured", cr["p50"] <= 20 if cr else None)
    rs = cp.get("restart") or {}
    if rs.get("served_ms"):
        add("restart after kill -9 ≤ 250 ms p50", f"p50 {rs['served_ms']['p50']:.1f} ms, p99 {rs['served_ms']['p99']:.1f} ms over {rs['kills']} kills", rs["served_ms"]["p50"] <= 250)
        add("0 refused connections during restarts", f"{rs['refused']} refused", rs["refused"] == 0)
        ot = rs.get("others")
        if ot:
            add("0 errors on other instances across the kills", f"{ot['errors']} errors ({ot['probe_attempts']} probe connections, {ot['transfer_bytes'] / 2**20:.1f} MiB transfer)", ot["errors"] == 0)
    else:
        add("restart after kill -9 ≤ 250 ms p50, 0 refused", "not measured", None)
    gw = cp.get("gateway") or {}
    c = gw.get("cold_ms")
    add("gateway cold start p50 ≤ 30 ms", f"p50 {c['p50']:.1f} ms over {c['n']}" if c else "not measured", c["p50"] <= 30 if c else None)
    w = gw.get("warm_overhead_p50_us")
    add("warm gateway handoff adds ≤ 100 µs p50", f"+{w:.0f} µs" if w is not None else "not measured", w <= 100 if w is not None else None)
    gt = cp.get("gateway_tput") or {}
    r = gt.get("ratio")
    add(
        "gateway throughput (one long transfer) ≥ 95% of the entry port",
        f"{r:.2f}× ({gt['gateway_gbps']:.1f} vs {gt['entry_gbps']:.1f} Gbit/s)" if r else "not measured",
        r >= 0.95 if r else None,
    )
    gs = cp.get("gateway_scale") or {}
    if gs.get("probes"):
        ok = gs["served"] == gs["probes"] and gs["woken_unprobed"] == 0 and not gs["errors"]
        full_size = gs["instances"] >= 1000 and gs["bindings"] >= 10000
        parked = (gs.get("states_before") or {}).get("parked", 0)
        add(
            "10,000 bindings with 1,000 parked instances served",
            f"{gs['bindings']:,} bindings, {parked:,}/{gs['instances']:,} parked: {gs['served']}/{gs['probes']} probes served, "
            f"{gs['woken_unprobed']} misrouted",
            ok if full_size else None,
        )
    else:
        add("10,000 bindings with 1,000 parked instances served", "not measured", None)
    return T


# ---------------------------------------------------------------- formatting


def fmt(v, kind: str) -> str:
    if v is None:
        return "–"
    if kind == "gbps":
        return f"{v:.2f}"
    if kind == "us":
        return f"{v:.1f}"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "mbps":
        return f"{v:,.0f}"
    if kind == "pct":
        return f"{v:.2f}"
    if kind == "cpu":
        return f"{v:.3f}"
    if kind == "cores":
        return f"{v:.2f}"
    if kind == "mib":
        return f"{v / MIB:.1f}"
    return str(v)


def _ratio(x, y):
    if x is None or y is None or y == 0:
        return "–"
    return f"{x / y:.2f}×"


def dp_table(results: dict, rows: list[tuple], title: str, unit_note: str) -> list[str]:
    """rows: (metric, label, kind, higher_is_better, target_fn(shape)->(text, ok) | None)."""
    agg = results["aggregate"]
    peers = results["peers_measured"]
    cols = ["what", "Drover", "direct", *peers, "÷ direct", "÷ best peer", "target", "result"]
    lines = [f"### {title}", "", unit_note, "", "| " + " | ".join(cols) + " |", "|" + "---|" * 1 + "---:|" * (len(cols) - 3) + "---|---|"]
    for metric, label, kind, higher, target in rows:
        d = val(agg, "direct", metric)
        pv = [val(agg, p, metric) for p in peers]
        bp, bv = best_peer(agg, peers, metric, higher)
        for shape in SHAPES:
            if shape not in agg:
                continue
            x = val(agg, shape, metric)
            tt, ok = target(shape, x, d, bv) if target else ("", None)
            ratios = kind != "pct"  # a ratio of loss percentages near 0 means nothing
            cells = [
                f"{label} · {SHAPE_LABEL[shape]}",
                f"**{fmt(x, kind)}**",
                fmt(d, kind),
                *[fmt(v, kind) for v in pv],
                _ratio(x, d) if ratios else "–",
                ((_ratio(x, bv) + f" ({bp})") if bp else "–") if ratios else "–",
                tt,
                verdict(ok) if tt else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _tput_target(metric):
    def t(shape, x, d, bv):
        need = {"drover-single": 0.80, "drover-reverse": 0.65}.get(shape)
        if need is None:
            return "", None
        text = f"≥ {need:.0%} direct, > every peer"
        if x is None or d is None:
            return text, None
        ok = x / d >= need and (bv is None or x > bv)
        return text, ok

    return t


def _lat_target(shape, x, d, bv):
    limit = 15 if shape == "drover-single" else 30
    text = f"added ≤ {limit} µs"
    if x is None or d is None:
        return text, None
    return f"{text} (+{x - d:.1f})", x - d <= limit


def _conn_target(shape, x, d, bv):
    if x is None or bv is None:
        return "≥ best peer", None
    return "≥ best peer", x >= bv


# Issue 3: connect + first byte through a tunnel, one client (the pool
# pays the tunnel's own round trip in advance).
CONNECT_LIMIT_US = 150


def _connect_target(shape, x, d, bv):
    if shape == "drover-single":
        return "", None
    text = f"≤ {CONNECT_LIMIT_US} µs"
    return text, (None if x is None else x <= CONNECT_LIMIT_US)


def _cpu_target(shape, x, d, bv):
    return "≤ 0.25", (None if x is None else x <= 0.25)


def _rss_cell(agg, fwd, metric):
    tot = val(agg, fwd, metric)
    per = val(agg, fwd, "rss_idle_procs_kib") if metric == "rss_idle_kib" else None
    if tot is None:
        return "–"
    s = f"{tot / MIB:.1f}"
    if per and len(per) > 1:
        s += " (" + " + ".join(f"{p / MIB:.1f}" for p in per) + ")"
    return s


def resources_table(results: dict) -> list[str]:
    agg, peers = results["aggregate"], results["peers_measured"]
    cols = ["what", "Drover", *peers, "÷ best peer", "target", "result"]
    lines = [
        "### Resources of the forwarder processes",
        "",
        "Sum over every process of the forwarder (a tunnel's server and client; nginx's master and workers; "
        "socat's forked children). CPU = utime + stime (+ reaped children) from `/proc/PID/stat` before and "
        "after each iperf3 test, per GB received. RSS = `VmRSS`; idle = after the readiness probe, before "
        "load (per process in parentheses); peak = highest sample (every 0.2 s) during the 8-stream test. "
        "`direct` has no forwarder process.",
        "",
        "| " + " | ".join(cols) + " |",
        "|---|" + "---:|" * (len(cols) - 3) + "---|---|",
    ]
    for metric, label, kind in (
        ("cpu_s_per_gb_1", "CPU s per GB, 1 stream", "cpu"),
        ("cpu_s_per_gb_8", "CPU s per GB, 8 streams", "cpu"),
        ("cpu_cores_8", "CPU used during 8 streams (cores)", "cores"),
        ("rss_idle_kib", "RSS idle, MiB", "mib"),
        ("rss_peak_8_kib", "RSS peak under 8 streams, MiB", "mib"),
    ):
        bp, bv = best_peer(agg, peers, metric, False)
        for shape in SHAPES:
            if shape not in agg:
                continue
            x = val(agg, shape, metric)
            if metric.startswith("cpu_s"):
                tt, ok = _cpu_target(shape, x, None, bv)
            elif metric == "rss_idle_kib":
                per = val(agg, shape, "rss_idle_procs_kib")
                tt, ok = "≤ 6 MiB per worker", (max(per) <= 6 * MIB if per else None)
            else:
                tt, ok = "", None
            if kind == "mib":
                cells = [_rss_cell(agg, shape, metric), *[_rss_cell(agg, p, metric) for p in peers]]
                cells[0] = f"**{cells[0]}**"
            else:
                cells = [f"**{fmt(x, kind)}**", *[fmt(val(agg, p, metric), kind) for p in peers]]
            lines.append(
                "| "
                + " | ".join([f"{label} · {SHAPE_LABEL[shape]}", *cells, (_ratio(x, bv) + f" ({bp})") if bp else "–", tt, verdict(ok) if tt else ""])
                + " |"
            )
    lines.append("")
    return lines


def _isolation(text: str) -> str:
    if "isolation on" in text:
        v = " (cgroup v1)" if "V1" in text else " (cgroup v2)" if "V2" in text else ""
        return "tenant isolation on: per-tenant uid, per-instance cgroups" + v if "cgroups" in text else text
    return text


def _ms(s, key="p50"):
    return f"{s[key]:.1f}" if s else "–"


def control_table(results: dict) -> list[str]:
    cp = results.get("control")
    if not cp:
        return ["## Control plane", "", "Not run.", ""]
    lines = [
        "## Control plane",
        "",
        "One `drover` master on loopback (`master://127.0.0.1:0/api?gateway=127.0.0.1:G`, G a free port; default "
        "log level; run as the invoking user), "
        "instances are single-end forwarders `client://127.0.0.1:P/127.0.0.1:ECHO?mode=1` (one worker process each). "
        "Percentiles are nearest-rank over the samples; n = sample count. "
        f"Master: {_isolation(cp.get('isolation', '?'))}.",
        "",
        "| what | Drover | n | target | result |",
        "|---|---:|---:|---|---|",
    ]

    def row(what, value, n="", target="", ok=None):
        lines.append(f"| {what} | {value} | {n} | {target} | {verdict(ok) if target else ''} |")

    c = cp.get("create") or {}
    r = c.get("ready_ms")
    row("create → running p50 (POST until an SSE `update` shows `worker.state`=`ready`), ms", _ms(r), r and r["n"], "≤ 20 ms", r and r["p50"] <= 20)
    row("create → running p99, ms", _ms(r, "p99"), r and r["n"])
    pl = c.get("plain_sse_ready_ms")
    row("create → `ready` event at an ordinary SSE client (no quick ACKs) p50 / p99, ms", f"{_ms(pl)} / {_ms(pl, 'p99')}", pl and pl["n"])
    s = c.get("serving_ms")
    row("create → serving p50 (POST until the first byte echoes through the new port), ms", _ms(s), s and s["n"])
    row("create → serving p99, ms", _ms(s, "p99"), s and s["n"])
    p = c.get("post_ms")
    row("POST /instances response time p50, ms", _ms(p), p and p["n"])
    ls, lr = c.get("log_spawned_ms"), c.get("log_ready_ms")
    row("POST sent → master logs `worker spawned` p50 (master log clock), ms", _ms(ls), ls and ls["n"])
    row("POST sent → master logs `worker ready` p50 (master log clock), ms", _ms(lr), lr and lr["n"])

    sc = cp.get("scale") or {}
    if sc:
        n = sc["instances"]
        full = n >= 1000
        row(f"{n:,} instances: POSTed (4 clients in parallel), s", sc.get("create_all_s"), n)
        row(f"{n:,} instances: all `ready`, s (from the first POST)", sc.get("running_s"), sc.get("ready"), "all running", sc.get("ready") == n)
        row("master RSS, idle (no instance), MiB", fmt(sc.get("master_rss_idle_kib"), "mib"))
        row(f"master RSS with {n:,} running, MiB", fmt(sc.get("master_rss_kib"), "mib"), "", "≤ 150 MiB at 1,000", (sc["master_rss_kib"] <= 150 * MIB) if (full and sc.get("master_rss_kib")) else None)
        w = sc.get("worker_rss_kib")
        row(f"total worker RSS with {n:,} running, MiB", fmt(sc.get("workers_rss_total_kib"), "mib"), sc.get("workers_measured"))
        row("worker RSS p50 / max, MiB", f"{w['p50'] / MIB:.1f} / {w['max'] / MIB:.1f}" if w else "–", w and w["n"], "≤ 6 MiB", (w["max"] <= 6 * MIB) if w else None)
        l = sc.get("list_ms")
        row(f"`GET /instances` with {n:,}: p50 / max, ms ({sc.get('list_bytes', 0) / 1024:.0f} KiB)", f"{_ms(l)} / {_ms(l, 'max')}", l and l["n"])
        sp = sc.get("spot_check") or {}
        row("spot check: instances echoing / tried", f"{sp.get('echoed')} / {sp.get('tried')}")
        row("master stop (SIGTERM → exit) with all running, s", sc.get("stop_s"))

    se = cp.get("sse") or {}
    if se:
        row(f"SSE fan-out: events delivered to {se['subscribers']} subscribers", f"{se['delivered']:,} / {se['expected']:,}", "", "all", se["delivered"] == se["expected"])
        lg = se.get("lag_ms")
        row("SSE lag p50 (PATCH sent → event read; one reader thread for all streams), ms", _ms(lg), lg and lg["n"])
        row("SSE lag p99 / max, ms", f"{_ms(lg, 'p99')} / {_ms(lg, 'max')}", lg and lg["n"])
        pm = se.get("patch_ms")
        row("PATCH response time p50 (for reference), ms", _ms(pm), pm and pm["n"])
        fe = se.get("first_event_ms")
        row("first event after subscribing p50 / max, ms", f"{_ms(fe)} / {_ms(fe, 'max')}", fe and fe["n"])

    rs = cp.get("restart") or {}
    if rs:
        sv = rs.get("served_ms")
        row("restart after `kill -9`: kill → first byte from the new worker p50, ms", _ms(sv), sv and sv["n"], "≤ 250 ms", sv and sv["p50"] <= 250)
        row("restart p99 / max, ms", f"{_ms(sv, 'p99')} / {_ms(sv, 'max')}", sv and sv["n"])
        ar = rs.get("api_ready_ms")
        row("kill → API shows the new worker `ready` p50, ms", _ms(ar), ar and ar["n"])
        row("connections refused during the restarts", rs.get("refused"), rs.get("kills"), "0", rs.get("refused") == 0)
        row("connections cut (reset / EOF / timeout) during the restarts", rs.get("cut"), rs.get("kills"))
        ot = rs.get("others") or {}
        if ot:
            row("errors on other instances (probe connections + long transfer, hash checked) across the kills", ot.get("errors"), ot.get("probe_attempts"), "0", ot.get("errors") == 0)

    gw = cp.get("gateway") or {}
    if gw:
        c = gw.get("cold_ms")
        row("gateway cold start (parked → first echoed byte) p50, ms", _ms(c), c and c["n"], "≤ 30 ms", c and c["p50"] <= 30)
        row("gateway cold start max, ms", _ms(c, "max"), c and c["n"])
        wp = gw.get("wait_parked_s")
        row("`idle=1s` instance: last traffic → `parked` p50, s", f"{wp['p50']:.1f}" if wp else "–", wp and wp["n"])
        wm = gw.get("warm") or {}
        for k, what in (("gateway", "the gateway"), ("entry", "`worker.entry`"), ("listener", "the instance's own port")):
            if k in wm:
                row(f"warm: connect + first echo p50 via {what}, µs", fmt(wm[k]["p50_us"], "us"), wm[k].get("n"))
        w = gw.get("warm_overhead_p50_us")
        per = gw.get("warm_overhead_per_rep_us") or []
        row("warm handoff overhead (gateway − entry p50; median of " + str(len(per)) + " runs: " + ", ".join(f"{x:.0f}" for x in per) + "), µs", fmt(w, "us"), "", "≤ 100 µs", (w <= 100) if w is not None else None)
    gt = cp.get("gateway_tput") or {}
    if gt:
        runs = gt.get("gbps") or {}
        for k, what in (("gateway", "the gateway"), ("entry", "`worker.entry`")):
            row(f"one {gt.get('seconds')}-s iperf3 transfer via {what} (median of: " + ", ".join(f"{x:.1f}" for x in runs.get(k, [])) + "), Gbit/s", fmt(gt.get(f"{k}_gbps"), "gbps"), len(runs.get(k, [])))
        r = gt.get("ratio")
        row("gateway throughput ÷ entry port", f"{r:.2f}×" if r else "–", "", "≥ 0.95×", r >= 0.95 if r else None)
    gs = cp.get("gateway_scale") or {}
    if gs:
        row(f"gateway at scale: {gs.get('instances'):,} `idle=1s` instances all `parked` after creation, s", gs.get("all_parked_s"), (gs.get("states_before") or {}).get("parked"))
        pm = gs.get("put_ms")
        row(f"{gs.get('bindings'):,} bindings written (4 clients): total s / PUT p50 ms", f"{gs.get('bind_all_s')} / {_ms(pm)}", pm and pm["n"])
        c = gs.get("cold_ms")
        row("probe by `X-Client-Id` → parked instance woken → echo, p50 / max, ms", f"{_ms(c)} / {_ms(c, 'max')}", c and c["n"])
        row("probes served / instances woken that no probe was bound to", f"{gs.get('served')}/{gs.get('probes')} / {gs.get('woken_unprobed')}", gs.get("probes"), "all / 0", gs.get("served") == gs.get("probes") and gs.get("woken_unprobed") == 0)
        if gs.get("master_rss_kib"):
            row("master RSS with the bindings / after the probes, MiB", f"{gs['master_rss_kib'] / 1024:.1f} / {gs.get('master_rss_end_kib', 0) / 1024:.1f}", "")
    lines.append("")
    return lines


def cipher_floor(results: dict) -> float | None:
    """CPU s per GB a tls=1 tunnel spends on AES-GCM alone (one encryption
    and one decryption per byte) at the speed measured after the run."""
    c = results.get("machine", {}).get("cipher")
    if not c or not c.get("encrypt") or not c.get("decrypt"):
        return None
    return 1e9 / c["encrypt"] + 1e9 / c["decrypt"]


def machine_lines(results: dict) -> list[str]:
    m = results["machine"]
    out = [
        "## Machine",
        "",
        f"- {m['cores']} cores ({m['cpu_model']}), {m['mem_gib']:.0f} GiB RAM, {m['os']}, kernel {m['kernel']}",
        f"- load average (1/5/15 min) at start {m['load_start']}, at end {m.get('load_end', '?')}; "
        f"CPU steal during the run {m.get('steal_pct', '?')} %"
        + (f"; CPU used by processes outside the run {m['other_cpu_pct']} % of the machine" if m.get("other_cpu_pct") is not None else ""),
        f"- Drover {m['drover']}; {m['rustc']}; Python {m['python']}",
    ]
    floor = cipher_floor(results)
    if floor is not None:
        c = m["cipher"]
        by = "`drover-bench cipher`: ring, as in drover-worker" if c.get("by") == "ring" else "`openssl speed`"
        out.append(
            f"- AES-128-GCM on one core ({by}, 16 KiB records): encrypt {c['encrypt'] / 1e9:.2f} GB/s, "
            f"decrypt {c['decrypt'] / 1e9:.2f} GB/s: a tls=1 tunnel encrypts and decrypts every byte, so its "
            f"cipher alone costs {floor:.2f} CPU s per GB on this CPU"
        )
    for tool, v in m["versions"].items():
        out.append(f"- {tool}: {v or 'not installed'}")
    out.append("")
    return out


def render(results: dict) -> str:
    s = results["settings"]
    L = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench{' --quick' if s['quick'] else ''}` on {results['started_utc']} (UTC) "
        f"in {results['elapsed_s'] / 60:.1f} min (plus {results.get('build_s', 0):.0f} s of `cargo build`). Raw values of every repetition: `{results['results_path']}` "
        "(ignored by git). How to run, what is measured and how: [the end of this file](#method).",
        "",
    ]
    if s["quick"]:
        L += [
            "> **Quick run** (`--quick`): one repetition, 1-second tests, smaller control-plane samples. "
            "A smoke test of the suite, not a measurement to quote; the full run takes the median of "
            f"{dataplane.FULL.reps} repetitions.",
            "",
        ]
    mach = results["machine"]
    if mach.get("noisy"):
        other = mach.get("other_cpu_pct")
        L += [
            f"> **Noisy run**: the machine was shared with other work (load average {mach['load_start']} at the start, "
            f"{mach.get('load_end', '?')} at the end"
            + (f"; processes outside the run used {other:.0f} % of the CPU time" if other is not None else "")
            + "). Absolute numbers move between runs; compare within a table (all forwarders were interleaved).",
            "",
        ]
    L += machine_lines(results)
    targets = results["targets"]
    misses = [t for t in targets if t["ok"] is False]
    L += ["## Targets", "", f"{sum(1 for t in targets if t['ok'])} pass, {len(misses)} miss, {sum(1 for t in targets if t['ok'] is None)} not measured / not applicable.", ""]
    L += ["| target | measured | result |", "|---|---|---|"]
    for t in targets:
        note = f" ({t['note']})" if t.get("note") else ""
        L.append(f"| {t['target']} | {t['measured']}{note} | {verdict(t['ok'])} |")
    L.append("")
    if misses:
        L += [f"**{len(misses)} target{'s' if len(misses) != 1 else ''} missed** (marked **MISS** here and in the tables below).", ""]
    if results.get("dataplane"):
        reps = s["reps"]
        L += [
            "## Data plane",
            "",
            f"Median of {reps} repetition{'s' if reps != 1 else ''}, interleaved across forwarders. Columns: Drover's shape "
            "(bold), `direct` (no forwarder), each peer measured in this run, Drover ÷ direct, Drover ÷ the best peer "
            "(named). Forwarders: " + "; ".join(f"`{f['name']}` = {f['label']}" for f in results["forwarders"] if f["kind"] != "drover") + ".",
            "",
        ]
        if results.get("skipped_peers"):
            L += ["Not measured (not installed; `scripts/bench --install-peers`): " + ", ".join(f"{k} ({v})" for k, v in results["skipped_peers"].items()) + ".", ""]
        L += dp_table(results, [
            ("tcp1_gbps", "1 stream", "gbps", True, _tput_target("tcp1_gbps")),
            ("tcp8_gbps", "8 streams", "gbps", True, _tput_target("tcp8_gbps")),
        ], "TCP throughput", f"Gbit/s received, iperf3, {s['tcp_seconds']} s per test, client → server through the forwarder.")
        L += dp_table(results, [
            ("rtt_p50_us", "p50", "us", False, _lat_target),
            ("rtt_p99_us", "p99", "us", False, None),
            ("rtt1cpu_p50_us", "p50, every process on one CPU", "us", False, None),
        ], "Round-trip latency", f"µs per 64-byte request/echo on one persistent connection (TCP_NODELAY), {s['ping_count']:,} round trips after a warm-up of ≥ 0.3 s and ≥ 500 round trips. "
            "The last row repeats it with client, forwarder and echo backend pinned to one CPU (see Method).")
        L += dp_table(results, [
            ("conn1_rate", "concurrency 1", "rate", True, _conn_target),
            ("conn64_rate", "concurrency 64", "rate", True, _conn_target),
            ("conn1_p50_us", "connect + echo p50 (µs), concurrency 1", "us", False, _connect_target),
        ], "New connections per second", f"connect → send 64 B → read the echo → close, for {s['conn_seconds']} s (or {s['conn_max']:,} connections).")
        L += dp_table(results, [
            ("udp_mbps", "received Mbit/s", "mbps", True, None),
            ("udp_loss_pct", "loss %", "pct", False, None),
        ], "UDP", f"iperf3 -u at {s['udp_rate']}bit/s offered, 1400-byte datagrams, {s['udp_seconds']} s; iperf3's TCP control connection goes through the same forwarder. Peers without UDP show –.")
        L += resources_table(results)
    L += control_table(results)
    if results.get("notes"):
        L += ["## Errors and notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    L += METHOD.splitlines()
    return "\n".join(L) + "\n"


METHOD = """## Method

Run from the repository root (Linux, loopback only; Python 3.11 standard library, iperf3):

```sh
scripts/bench --list            # forwarders found, versions
scripts/bench --install-peers   # socat, haproxy, nginx + stream module (apt), rathole (cargo install)
scripts/bench --quick           # smoke test, ≤ 3 minutes, report in bench-results/<time>-quick/report.md
scripts/bench                   # full run, ≤ 25 minutes on 2 cores, report here (docs/benchmarks.md)
```

`scripts/bench --help` lists the options (`--only`, `--skip`, `--reps`, `--no-control`,
`--no-dataplane`, `--report PATH`, `--max-minutes`, …). The script builds the workspace
(`cargo build --release --workspace --bins`) unless `--no-build`; the load driver is the
`drover-bench` binary of the `tests` crate (echo backend, ping-pong, connection rate, probe).

- **Isolation of runs.** Each forwarder instance gets fresh ports below the ephemeral range and
  its own working directory (configs, logs) under `bench-results/<time>/work/`. Every process is
  started in its own session, wrapped in `timeout`, and stopped (SIGTERM, then SIGKILL) when its
  block ends, when the run ends, on Ctrl-C or SIGTERM. Every address is 127.0.0.1; the Python
  code and the load driver refuse anything else.
- **Interleaving.** Repetition *r* runs every forwarder once, starting at a rotated position, so
  a slow drift of the shared machine hits all forwarders alike; every figure is the median of the
  repetitions (min and max are in the JSON).
- **Latency** needs a warm-up: for the first tens of milliseconds the scheduler keeps client and
  server on one CPU (fast round trips), then spreads them over both (an idle CPU's wake-up per
  round trip). Measuring before that settles makes `direct` look several times faster and the
  added latency meaningless.
- **Round trips on one CPU.** After the ordinary ping-pong, the same test runs with the client,
  every process of the forwarder and the echo backend pinned to one CPU, then unpinned. A round
  trip through a forwarder wakes two more processes than a direct one; spread over CPUs, each
  wake-up of an idle CPU costs a halt exit on a VM without a cpuidle driver (this one), and that
  cost, not the forwarder's work, dominates the added latency. On one CPU nobody waits for a
  CPU to wake, so the difference to `direct` is what the forwarder itself adds (its syscalls and
  context switches). A diagnostic next to the target, which is judged on the ordinary run.
- **Drover shapes** (`drover-worker` processes started directly, default parameters):
  single-end `client://127.0.0.1:L/127.0.0.1:T?mode=1`; reverse `server://127.0.0.1:A/127.0.0.1:L?mode=1`
  + `client://127.0.0.1:A/127.0.0.1:T?mode=2`; forward `server://127.0.0.1:A/127.0.0.1:T?mode=2`
  + `client://127.0.0.1:A/127.0.0.1:L?mode=2`; `tls=1` on the server URL.
- **Peers**: socat `TCP-LISTEN:L,fork,reuseaddr,backlog=4096` (UDP: `UDP-LISTEN:L,fork`);
  HAProxy `mode tcp`, one frontend/backend, default threads, `maxconn 8000` (no UDP); nginx
  `stream` module, `worker_processes auto`, UDP with `reuseport`; rathole server + client, TCP
  transport, no encryption (TCP and UDP services). Their configs are written per instance into the
  work directory.
- **Control plane**: see the row labels. create → running is timed on an SSE stream whose client
  ACKs every read at once (`TCP_QUICKACK`), so it times the state change and not TCP's delayed-ACK
  interplay; a second, ordinary stream shows what a plain SSE client sees. Between samples the
  deleted instance gets 0.15 s to stop, so each create meets an idle master. The gateway gets a
  fixed free port (this master refuses `gateway=…:0`). Restart kills are spread over separate instances that
  have each run ≥ 10 s (the supervisor restarts those at once and backs off shorter runs on
  purpose). During each kill a probe (`drover-bench probe`) keeps opening connections to that
  instance's port every 1 ms; "refused" counts `ECONNREFUSED`, "cut" counts connections that were
  reset, closed early or timed out (connections in flight when a worker is SIGKILLed are lost).
  Meanwhile another instance is under load through all the kills: a probe of fresh connections
  every 2 ms and one long transfer (64 KiB every 10 ms, SHA-256 compared both ways); "errors on
  other instances" counts its failed connections, a broken or altered transfer, and a restart of
  its worker (n = its probe connections).
- **Reading the numbers.** Load generator, forwarder and backend share the same cores, so a
  forwarder's throughput is bounded by the CPU it leaves to iperf3: CPU per GB is the better
  efficiency figure. Compare ratios within one run; absolute numbers move between runs on a
  shared VM.
- **Cipher floor.** After the run, `drover-bench cipher` times AES-128-GCM (what tls=1 links
  negotiate first) sealing and opening 16 KiB records in place, each way, on one core, with the
  `ring` code that rustls runs in drover-worker. A tls=1 tunnel encrypts every byte in one worker
  and decrypts it in the other, so 1/encrypt + 1/decrypt is CPU per GB it cannot go below with
  this CPU and this library; the tls=1 CPU targets show it beside the figure. (Runs before
  2026-11-27 08:00 used `openssl speed`, whose AES-GCM here is less than half as fast as ring's
  VAES code: their floor of 0.5–0.8 s/GB overstated it.)
"""
