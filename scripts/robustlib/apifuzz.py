"""scripts/api-fuzz: the OpenAPI document drives schemathesis against a real
master, then targeted attacks; the master must hold.

1. Outside: make sure schemathesis is installed (a venv under
   target/robustness/venv, from PyPI), then run the rest again inside a
   network namespace of its own (`unshare -n`, loopback only): the fuzzer
   creates instances from the document's examples and its own strings, some
   of which bind all interfaces or dial out (`/tcping`); in the namespace
   only loopback exists.
2. Inside: start the master (release binaries) with a fresh data dir,
   read its key, run `schemathesis run {prefix}/openapi.json --checks all`
   for the time budget with the hooks in st_hooks.py (follow API-key
   regeneration) and schemathesis.toml (the one documented exception).
3. Attacks (attacks.py): 10 MiB bodies, nesting/UTF-8/header floods,
   10,000 idle connections, SSE clients that never read.
4. The master must still answer; its RSS and descriptors are reported; a
   summary table is printed and written (results.json); exit 1 on any
   failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchlib import procs

from . import attacks
from .master import Master, binaries, raise_nofile

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV = ROOT / "target" / "robustness" / "venv"
NETNS_FLAG = "DROVER_API_FUZZ_NETNS"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/api-fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5, help="total time budget (default 5; schemathesis gets all but ~1.5 min)")
    p.add_argument("--idle", type=int, default=10_000, help="idle connections of the flood (default 10000)")
    p.add_argument("--stalled", type=int, default=64, help="SSE clients that never read (default 64)")
    p.add_argument("--debug", action="store_true", help="use target/debug binaries instead of target/release")
    p.add_argument("--out", help="results directory (default target/robustness/api-fuzz-<time>)")
    return p.parse_args(argv)


def ensure_schemathesis() -> Path:
    st = VENV / "bin" / "schemathesis"
    if st.is_file():
        return st
    log(f"installing schemathesis into {VENV} (PyPI)")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "schemathesis"], check=True, timeout=900)
    return st


def reexec_in_netns(argv) -> int:
    cmd = ["unshare", "--net", "--", sys.executable, str(ROOT / "scripts" / "api-fuzz"), *argv]
    env = dict(os.environ, **{NETNS_FLAG: "1"})
    return subprocess.run(cmd, env=env).returncode


def run_schemathesis(st: Path, m: Master, seconds: int, out: Path) -> dict:
    key_file = out / "current-key"
    key_file.write_text(m.key)
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS="st_hooks",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=str(HERE),
        DROVER_FUZZ_KEY=m.key,
        DROVER_FUZZ_KEY_FILE=str(key_file),
    )
    cmd = [
        str(st), "--config-file", str(HERE / "schemathesis.toml"), "run",
        f"http://127.0.0.1:{m.port}{m.prefix}/openapi.json",
        "--checks", "all", "--max-time", str(seconds), "--request-timeout", "20",
        "--report", "json,junit", "--report-dir", str(out / "schemathesis"), "--no-color",
    ]
    log(f"schemathesis for {seconds} s: {' '.join(cmd[3:])}")
    with open(out / "schemathesis.txt", "w") as fh:
        r = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=seconds + 600, cwd=out)
    m.key = key_file.read_text().strip()
    m.api.key = m.key
    reports = sorted((out / "schemathesis").glob("json-*.json"))
    rep = json.loads(reports[-1].read_text()) if reports else {}
    cases = rep.get("test_cases", {})
    return {
        "exit_code": r.returncode,
        "operations": rep.get("operations", {}).get("tested"),
        "cases": cases.get("generated"),
        "failures": cases.get("unique_failures"),
        "errors": len(rep.get("errors", [])) + (cases.get("errored") or 0),
        "seconds": round(rep.get("running_time", 0)),
        "phases": {k: v.get("status") for k, v in rep.get("phases", {}).items()},
        "summary": "\n".join(l for l in (out / "schemathesis.txt").read_text().splitlines() if re.match(r"\s*(❌|⚠️|Test cases|\d+ generated)", l)),
    }


def inside(args) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
    st = VENV / "bin" / "schemathesis"
    drover, worker = binaries(ROOT, "debug" if args.debug else "release")
    out = Path(args.out) if args.out else ROOT / "target" / "robustness" / f"api-fuzz-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile(args.idle + 4096)
    if nofile < args.idle + 1024:
        log(f"RLIMIT_NOFILE is {nofile}: the idle flood is cut to {nofile - 1024}")
        args.idle = max(0, nofile - 1024)
    budget = int(args.minutes * 60)
    procs.LIMIT_S = budget + 1800
    data = out / "data"
    m = Master.start(drover, worker, out, data, "master")
    log(f"master pid {m.pid} on 127.0.0.1:{m.port}{m.prefix}, data {data}")
    start = {"rss_kib": m.rss_kib(), "fds": m.fds()}
    results: dict = {"binaries": drover, "minutes": args.minutes}
    problems: list[str] = []
    try:
        sch = run_schemathesis(st, m, max(60, budget - 90), out)
        results["schemathesis"] = sch
        if sch["exit_code"] != 0 or sch["failures"] or sch["errors"]:
            problems.append(f"schemathesis: exit {sch['exit_code']}, {sch['failures']} failures, {sch['errors']} errors (see {out}/schemathesis.txt)")
        if not m.alive():
            problems.append("the master died during schemathesis")
        else:
            after_fuzz = {"rss_kib": m.rss_kib(), "fds": m.fds()}
            for name, fn in [
                ("big_bodies", lambda: attacks.big_bodies(m)),
                ("malformed", lambda: attacks.malformed(m)),
                ("idle_flood", lambda: attacks.idle_flood(m, args.idle)),
                ("sse_stall", lambda: attacks.sse_stall(m, args.stalled)),
            ]:
                log(f"attack: {name}")
                figures, found = fn()
                results[name] = figures
                problems += found
                if not m.alive():
                    problems.append(f"the master died during {name}")
                    break
        final_st, _ = m.api.call("GET", "/info") if m.alive() else (0, None)
        if final_st != 200:
            problems.append(f"the master does not answer at the end ({final_st})")
        results["master"] = {"start": start, "after_schemathesis": locals().get("after_fuzz"), "end": {"rss_kib": m.rss_kib(), "fds": m.fds()}}
    finally:
        rc = m.stop()
        results["master_exit"] = rc
    results["problems"] = problems
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report(results, out)
    return 1 if problems else 0


def report(r: dict, out: Path) -> None:
    print()
    print("== scripts/api-fuzz summary ==")
    s = r.get("schemathesis", {})
    print(f"schemathesis: {s.get('cases')} cases on {s.get('operations')} operations in {s.get('seconds')} s, "
          f"{s.get('failures')} failures, {s.get('errors')} errors, phases {s.get('phases')}")
    for name in ("big_bodies", "malformed", "idle_flood", "sse_stall"):
        if name in r:
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in r[name].items()))
    mm = r.get("master", {})
    for when in ("start", "after_schemathesis", "end"):
        if mm.get(when):
            print(f"master {when}: RSS {mm[when]['rss_kib'] // 1024} MiB, {mm[when]['fds']} fds")
    print(f"master exit status after SIGTERM: {r.get('master_exit')}")
    print(f"results: {out}/results.json")
    if r["problems"]:
        print("FAILED:")
        for p in r["problems"]:
            print(f"  - {p}")
    else:
        print("OK: no failure, no 5xx, no crash, no hang")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    procs.install_signal_handlers()
    if os.environ.get(NETNS_FLAG) != "1":
        ensure_schemathesis()
        probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            raise SystemExit(
                "scripts/api-fuzz runs the master in a network namespace of its own (only loopback); "
                f"`unshare --net` failed: {probe.stderr.decode().strip()} (it needs root or CAP_SYS_ADMIN)"
            )
        return reexec_in_netns(argv)
    try:
        return inside(args)
    finally:
        procs.cleanup()
