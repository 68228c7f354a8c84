"""scripts/bench: command line, orchestration, outputs."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import control, dataplane, forwarders, procs, report

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Drover's benchmark: data plane against direct and installed peers, control plane of the master. Loopback only.",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repetition, 1-s tests, small control-plane samples (≤ 3 min)")
    p.add_argument("--list", action="store_true", help="list the forwarders, whether they are installed, versions; then exit")
    p.add_argument("--install-peers", action="store_true", help="install socat, haproxy, nginx (+stream), iperf3 via apt and rathole via cargo; then exit")
    p.add_argument("--only", default="", help="comma-separated forwarders to measure (direct is always added)")
    p.add_argument("--skip", default="", help="comma-separated forwarders to leave out")
    p.add_argument("--reps", type=int, help="repetitions of the data plane (default 5, quick 1)")
    p.add_argument("--tcp-seconds", type=int, help="seconds per iperf3 TCP test (default 4, quick 1)")
    p.add_argument("--udp-rate", help="UDP offered rate for iperf3 -b (default 500M)")
    p.add_argument("--no-dataplane", action="store_true", help="skip the data-plane tests")
    p.add_argument("--no-control", action="store_true", help="skip the control-plane tests")
    p.add_argument("--scale-instances", type=int, help="instances of the scale test (default 1000, quick 100)")
    p.add_argument("--kills", type=int, help="kill -9 samples (default 20, quick 5)")
    p.add_argument("--max-minutes", type=float, help="stop scheduling tests after this long (default 25, quick 3)")
    p.add_argument("--report", help="where to write the Markdown report (default docs/benchmarks.md; quick: only in bench-results/)")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="directory for raw results (default bench-results/)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    p.add_argument("--render", metavar="RESULTS_JSON", help="re-render the report of an earlier run from its results.json, then exit")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def target_dir() -> Path:
    t = os.environ.get("CARGO_TARGET_DIR")
    return Path(t) if t else ROOT / "target"


def build(no_build: bool) -> dict:
    rel = target_dir() / "release"
    if not no_build:
        log("building: cargo build --release --workspace --bins")
        r = subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=ROOT, timeout=3600)
        if r.returncode != 0:
            raise SystemExit("bench: cargo build failed")
    bins = {n: str(rel / n) for n in ("drover", "drover-worker", "drover-bench")}
    missing = [b for b in bins.values() if not os.access(b, os.X_OK)]
    if missing:
        raise SystemExit(f"bench: missing binaries {missing} (build with cargo build --release --workspace --bins)")
    return bins


def loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_times() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def my_cpu_s() -> float:
    """CPU seconds of this process and every child it has reaped (so, by the
    end, every process the run started: each reaps its own children)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def other_cpu_pct(t0: list[int], t1: list[int], mine0: float, total_jiffies: int) -> float | None:
    """Share of the machine's CPU time used by processes outside this run."""
    if total_jiffies <= 0:
        return None
    d = [b - a for a, b in zip(t0, t1)]
    idle = d[3] + (d[4] if len(d) > 4 else 0)  # idle + iowait
    steal = d[7] if len(d) > 7 else 0
    busy_s = (total_jiffies - idle - steal) / procs.CLK_TCK
    other = busy_s - (my_cpu_s() - mine0)
    return round(max(0.0, 100 * other * procs.CLK_TCK / total_jiffies), 1)


def finish(results: dict) -> None:
    """Aggregates, notes and target verdicts from the raw results (also used by --render)."""
    mach = results["machine"]
    other = mach.get("other_cpu_pct")
    start_load = float(str(mach["load_start"]).split("/")[0])
    end5 = float(str(mach.get("load_end", "0 / 0")).split("/")[1])
    mach["noisy"] = start_load >= 1.0 or (other is not None and other >= 10) or (other is None and end5 >= 4.0)
    notes: list[tuple[str, str]] = [(n, "") for n in results.get("run_notes", [])]
    if results.get("dataplane"):
        results["aggregate"] = report.aggregate(results["dataplane"])
        for name, d in results["dataplane"].items():
            for rep in d["reps"]:
                who = f"{name} rep {rep['rep'] + 1}"
                for e in rep.get("errors") or []:
                    notes.append((e, who))
                if rep.get("skipped"):
                    notes.append((f"skipped ({rep['skipped']})", who))
                m = rep.get("metrics") or {}
                if (m.get("stop_lat_s") or 0) >= 2.9:
                    notes.append(("did not exit within 3 s of SIGTERM after the latency block (then SIGKILLed)", who))
                if (m.get("stop_tput_s") or 0) >= 2.9:
                    notes.append(("did not exit within 3 s of SIGTERM after the throughput block, whose last test was UDP (then SIGKILLed)", who))
    else:
        results["aggregate"] = {}
    cp = results.get("control") or {}
    for e in cp.get("errors", []):
        notes.append((e, "control plane"))
    for sec in ("gateway", "gateway_tput", "scale", "gateway_scale", "create"):
        for e in (cp.get(sec) or {}).get("errors", []) or []:
            notes.append((e, f"control plane, {sec}"))
    cr = cp.get("create") or {}
    q, pl = cr.get("ready_ms"), cr.get("plain_sse_ready_ms")
    if q and pl and pl["p99"] - q["p99"] > 10:
        notes.append((
            f"SSE: an ordinary subscriber saw the `ready` update later than one that ACKs every read at once "
            f"(p50 {pl['p50']:.1f} vs {q['p50']:.1f} ms, p99 {pl['p99']:.1f} vs {q['p99']:.1f} ms): small SSE frames wait "
            "for the client's delayed ACK, i.e. Nagle's algorithm is on for the API's TCP sockets (no TCP_NODELAY). "
            "The SSE lag rows are as an ordinary client sees them.",
            "",
        ))
    # One line per distinct note, naming everything it happened to.
    grouped: dict[str, list[str]] = {}
    for msg, who in notes:
        grouped.setdefault(msg, [])
        if who:
            grouped[msg].append(who)
    results["notes"] = [(f"{', '.join(_compact(w))}: " if w else "") + m for m, w in grouped.items()]
    results["targets"] = report.evaluate(results)


def _compact(whos: list[str]) -> list[str]:
    """["a rep 1", "a rep 2", "b rep 1"] → ["a (reps 1, 2)", "b (rep 1)"]."""
    by: dict[str, list[str]] = {}
    for w in whos:
        name, _, rep = w.partition(" rep ")
        by.setdefault(name, [])
        if rep:
            by[name].append(rep)
    return [f"{n} (rep{'s' if len(r) > 1 else ''} {', '.join(r)})" if r else n for n, r in by.items()]


def machine(bins: dict) -> dict:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) / 1024 / 1024
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    rev = procs.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], timeout=10).stdout.strip() or "?"
    ver = procs.run([bins.get("drover-worker", "drover-worker"), "--version"], timeout=10)
    drover = (ver.stdout.strip().splitlines() or ["drover"])[0] if ver.returncode == 0 else "drover"
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem,
        "os": os_name,
        "kernel": platform.release(),
        "load_start": loadavg(),
        "drover": f"{drover} (git {rev})",
        "rustc": procs.run(["rustc", "-V"], timeout=10).stdout.strip() or "rustc ?",
        "python": platform.python_version(),
        "versions": {t: forwarders.version_of(t) for t in forwarders.VERSION_CMDS},
        "sysctl": {k: _sysctl(k) for k in ("net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.core.rmem_max")},
        "nofile": list(__import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)),
    }


def cipher_speed(bench_bin: str) -> dict | None:
    """Bytes/s of AES-128-GCM (the cipher suite tls=1 links prefer) on one
    core, each way, on 16 KiB records, by `drover-bench cipher` with the
    `ring` build that rustls uses in drover-worker: what a tls=1 tunnel cannot
    spend less CPU on. (`openssl speed` is no measure of that: Debian's
    OpenSSL runs it at less than half the speed of ring's VAES code on this
    CPU.) Measured after the run, so it does not load the machine during it."""
    r = procs.run([bench_bin, "cipher", "--seconds", "2"], timeout=60)
    try:
        out = json.loads(r.stdout)
        return {"encrypt": float(out["encrypt"]), "decrypt": float(out["decrypt"]), "by": "ring"}
    except (ValueError, KeyError, TypeError):
        return None


def _sysctl(k: str) -> str:
    try:
        return Path("/proc/sys/" + k.replace(".", "/")).read_text().strip()
    except OSError:
        return "?"


def select(fwds, only: str, skip: str):
    names = {f.name for f in fwds}
    only_set = {x.strip() for x in only.split(",") if x.strip()}
    skip_set = {x.strip() for x in skip.split(",") if x.strip()}
    for n in only_set | skip_set:
        if n not in names:
            raise SystemExit(f"bench: unknown forwarder {n!r}; known: {', '.join(sorted(names))}")
    out = []
    for f in fwds:
        if f.kind == "direct" or ((not only_set or f.name in only_set) and f.name not in skip_set):
            out.append(f)
    return out


def do_list(worker: str) -> int:
    print(f"{'forwarder':20} {'kind':7} {'status':40} description")
    for f in forwarders.all_forwarders(worker):
        miss = f.missing() if f.kind == "peer" else ([] if os.access(worker, os.X_OK) or f.kind == "direct" else [worker])
        st = "ready" if not miss else "missing: " + ", ".join(miss)
        print(f"{f.name:20} {f.kind:7} {st:40} {f.label}")
    print()
    for t in forwarders.VERSION_CMDS:
        print(f"{t:8} {forwarders.version_of(t) or 'not installed'}")
    return 0


def main(argv=None) -> int:
    a = parse_args(argv if argv is not None else sys.argv[1:])
    rel = target_dir() / "release"
    if a.install_peers:
        return forwarders.install_peers()
    if a.list:
        return do_list(str(rel / "drover-worker"))
    if a.render:
        return render_only(Path(a.render), a.report)
    if shutil.which("iperf3") is None and not a.no_dataplane:
        raise SystemExit("bench: iperf3 is required (scripts/bench --install-peers)")

    quick = a.quick
    max_min = a.max_minutes or (3.0 if quick else 25.0)
    started = time.monotonic()
    # Reserve time for teardown and the report; tests stop being scheduled past this.
    deadline = started + max_min * 60 - (10 if quick else 45)
    procs.LIMIT_S = int(max_min * 60 + 300)
    procs.install_signal_handlers()
    atexit.register(procs.cleanup)

    bins = build(a.no_build)
    build_s = time.monotonic() - started
    deadline += build_s
    ts = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(a.out) / f"{ts}-{'quick' if quick else 'full'}"
    work = outdir / "work"
    work.mkdir(parents=True, exist_ok=True)
    s = dataplane.QUICK if quick else dataplane.FULL
    s = dataplane.Settings(**{**s.__dict__})
    if a.reps:
        s.reps = a.reps
    if a.tcp_seconds:
        s.tcp_seconds = a.tcp_seconds
    if a.udp_rate:
        s.udp_rate = a.udp_rate
    cps = control.CP_QUICK if quick else control.CP_FULL
    cps = control.CpSettings(**{**cps.__dict__})
    if a.scale_instances:
        cps.scale_instances = a.scale_instances
    if a.kills:
        cps.kills = a.kills

    steal0 = cpu_times()
    ru0 = my_cpu_s()
    mach = machine(bins)
    log(f"machine: {mach['cores']} cores, load {mach['load_start']}, kernel {mach['kernel']}; results in {outdir}")
    if float(mach["load_start"].split("/")[0]) >= 1.0:
        log("note: load average ≥ 1 — the machine is busy, numbers will be noisy")

    allf = forwarders.all_forwarders(bins["drover-worker"])
    chosen = select(allf, a.only, a.skip)
    skipped = {}
    fwds = []
    for f in chosen:
        miss = f.missing() if f.kind == "peer" else []
        if miss:
            skipped[f.name] = "missing " + ", ".join(miss)
        else:
            fwds.append(f)
    results = {
        "started_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "settings": {"quick": quick, **s.__dict__, "control": cps.__dict__, "max_minutes": max_min, "argv": sys.argv[1:]},
        "machine": mach,
        "forwarders": [{"name": f.name, "kind": f.kind, "label": f.label} for f in fwds],
        "skipped_peers": skipped,
        "peers_measured": [f.name for f in fwds if f.kind == "peer"],
        "run_notes": [],
    }
    ports = procs.Ports()
    backends = None
    interrupted = False
    try:
        backends = dataplane.Backends(bins["drover-bench"], ports, work)
        if not a.no_dataplane:
            log(f"data plane: {', '.join(f.name for f in fwds)} × {s.reps} repetition(s)" + (f"; not installed: {', '.join(skipped)}" if skipped else ""))
            # The control plane needs ~1/4 of the budget: stop the data plane in time for it.
            dp_deadline = deadline if a.no_control else started + build_s + (max_min * 60) * (0.62 if quick else 0.7)
            runner = dataplane.Runner(s, backends, bins["drover-bench"], ports, work, dp_deadline, log)
            results["dataplane"] = runner.run(fwds)
        if not a.no_control:
            log(f"control plane: create→running ×{cps.create_samples}, SSE {cps.sse_subscribers} subscribers, gateway, {cps.kills} kills, {cps.scale_instances} instances")
            cp = control.ControlPlane(cps, bins["drover"], bins["drover-worker"], bins["drover-bench"], backends, ports, work, deadline, log)
            results["control"] = cp.run()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        results["run_notes"].append("run interrupted (Ctrl-C / SIGTERM); partial results")
        interrupted = True
    finally:
        if backends:
            backends.stop()
        procs.cleanup()

    st1 = cpu_times()
    tot = sum(st1) - sum(steal0)
    mach["steal_pct"] = round(100 * (st1[7] - steal0[7]) / tot, 1) if tot > 0 and len(st1) > 7 else "?"
    mach["load_end"] = loadavg()
    mach["other_cpu_pct"] = other_cpu_pct(steal0, st1, ru0, tot)
    if not a.no_dataplane:
        mach["cipher"] = cipher_speed(bins["drover-bench"])
    results["elapsed_s"] = round(time.monotonic() - started - build_s, 1)
    results["build_s"] = round(build_s, 1)
    finish(results)
    rpath = outdir / "results.json"
    results["results_path"] = str(rpath.relative_to(ROOT)) if rpath.is_relative_to(ROOT) else str(rpath)
    rpath.write_text(json.dumps(results, indent=1, default=str))
    md = report.render(results)
    (outdir / "report.md").write_text(md)
    # A partial run never replaces the published report unless asked to.
    dest = a.report or (None if quick or interrupted else str(ROOT / "docs" / "benchmarks.md"))
    if dest:
        Path(dest).write_text(md)
    print()
    print(_console_summary(results))
    log(f"done in {results['elapsed_s'] / 60:.1f} min (+ {build_s:.0f} s build): {rpath}, {outdir / 'report.md'}" + (f", {dest}" if dest else ""))
    return 0


def render_only(path: Path, dest: str | None) -> int:
    results = json.loads(path.read_text())
    finish(results)
    md = report.render(results)
    (path.parent / "report.md").write_text(md)
    interrupted = any("interrupted" in n for n in results.get("run_notes", []))
    dest = dest or (None if results["settings"]["quick"] or interrupted else str(ROOT / "docs" / "benchmarks.md"))
    if dest:
        Path(dest).write_text(md)
    print(f"wrote {path.parent / 'report.md'}" + (f" and {dest}" if dest else ""))
    return 0


def _console_summary(results: dict) -> str:
    md = report.render(results)
    # Print the report without the long method section.
    return md.split("\n## Method")[0]
