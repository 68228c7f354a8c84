"""scripts/soak: the whole system under churn for a bounded time.

1. Echo servers (Python, selectors) on loopback; one master (release
   binaries) on a fixed loopback API port with its own data dir.
2. 200 instances: server/client pairs (reverse and forward) and single-end
   forwards, each towards an echo server; every instance with an entrance
   is a traffic target.
3. Until the time is up, all at once:
   - traffic threads: connect to a random entrance, send 1-32 KiB of random
     bytes, read the echo back, compare (a mismatch is corruption);
   - one API thread: random PATCH (alias, restart flag, meta tags, actions
     stop/start/restart/reset), PUT url, DELETE + POST, POST /info alias.
     What each 2xx answer says is recorded as the acknowledged state; a
     request that got no answer (master killed meanwhile) may or may not
     have been applied, so both states are accepted for it;
   - `kill -9` of a random worker every few seconds;
   - `kill -9` of the master at 20 % and 40 % of the time, then a restart
     on the same data dir; after each, the acknowledged state is checked;
   - a sampler every 10 s: master RSS and descriptors, worker processes
     (and leaked ones: not children of the live master), every instance's
     byte counters (they must never decrease except after a reset).
4. At the end: a graceful stop, a restart (state checked once more), every
   running tunnel must echo again, a final stop; no `drover-worker` may be
   left. The summary prints the RSS/fd table; exit 1 on a violated check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

from benchlib import procs

from .master import Master, binaries, raise_nofile, workers_in

ROOT = Path(__file__).resolve().parents[2]
COUNTERS = ("tcprx", "tcptx", "udprx", "udptx")
# Target RSS growth of the master from warm-up to the end of its run.
RSS_GROWTH_LIMIT = 0.10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10, help="length of the churn (default 10)")
    p.add_argument("--instances", type=int, default=200, help="instances (default 200)")
    p.add_argument("--traffic-threads", type=int, default=6, help="traffic threads (default 6)")
    p.add_argument("--api-rate", type=float, default=4, help="API changes per second (default 4)")
    p.add_argument("--worker-kill-every", type=float, default=3, help="seconds between worker kills (default 3)")
    p.add_argument("--warmup", type=float, default=180, help="seconds after each master start before its RSS baseline is taken (default 180): its bounded structures (the SSE replay ring of 4,096 events, log rings, allocator pools) fill first")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--debug", action="store_true", help="use target/debug binaries")
    p.add_argument("--out", help="results directory (default target/robustness/soak-<time>)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- echo


class EchoServer(threading.Thread):
    """Echoes every byte on every connection, one thread, selectors."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((procs.LOOPBACK, 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.stop_flag = threading.Event()

    def run(self):
        out: dict = {}
        while not self.stop_flag.is_set():
            for key, mask in self.sel.select(timeout=0.5):
                if key.data is None:
                    try:
                        c, _ = self.sock.accept()
                    except OSError:
                        continue
                    c.setblocking(False)
                    out[c] = b""
                    self.sel.register(c, selectors.EVENT_READ, "c")
                    continue
                c = key.fileobj
                try:
                    if mask & selectors.EVENT_READ:
                        data = c.recv(65536)
                        if not data:
                            raise OSError("eof")
                        out[c] += data
                    if out[c]:
                        n = c.send(out[c])
                        out[c] = out[c][n:]
                    self.sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if out[c] else 0), "c")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.sel.unregister(c)
                    out.pop(c, None)
                    c.close()


# ---------------------------------------------------------------- state


class Expected:
    """What the master acknowledged, per instance: each field maps to the set
    of values it may have (one value after a 2xx; two after a request that
    got no answer)."""

    FIELDS = ("alias", "restart", "tags", "url")

    def __init__(self):
        self.inst: dict[str, dict] = {}
        self.master_alias = {""}
        # Creates that got no answer: that many unknown instances may appear.
        self.unsure_creates = 0
        self.lock = threading.Lock()

    @staticmethod
    def _fields(view: dict) -> dict:
        return {"alias": view["alias"], "restart": view["restart"], "tags": json.dumps(view["meta"]["tags"], sort_keys=True), "url": view["url"]}

    def acked(self, view: dict) -> None:
        with self.lock:
            e = self.inst.setdefault(view["id"], {"exists": {True}})
            e["exists"] = {True}
            for k, v in self._fields(view).items():
                e[k] = {v}

    def unsure(self, iid: str, fields: dict) -> None:
        with self.lock:
            e = self.inst.get(iid)
            if e is None:
                return
            for k, v in fields.items():
                e.setdefault(k, set()).add(v)

    def deleted(self, iid: str, sure: bool) -> None:
        with self.lock:
            if iid in self.inst:
                self.inst[iid]["exists"] = {False} if sure else {True, False}

    def check(self, views: list[dict]) -> list[str]:
        """Differences between `views` (GET /instances) and what was acked."""
        problems = []
        have = {v["id"]: v for v in views if v["id"] != "********"}
        with self.lock:
            for iid, e in self.inst.items():
                v = have.get(iid)
                if v is None:
                    if True in e["exists"] and False not in e["exists"]:
                        problems.append(f"{iid}: acknowledged, missing after restart")
                    continue
                if True not in e["exists"]:
                    problems.append(f"{iid}: deletion acknowledged, present after restart")
                    continue
                for k, got in self._fields(v).items():
                    if k in e and got not in e[k]:
                        problems.append(f"{iid}.{k}: {got!r}, acknowledged {sorted(map(str, e[k]))}")
            unknown = sorted(set(have) - set(self.inst))
            if len(unknown) > self.unsure_creates:
                problems.append(f"{len(unknown)} instances never acknowledged ({self.unsure_creates} creates got no answer): {unknown[:5]}")
        return problems


# ---------------------------------------------------------------- the run


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.drover, self.worker = binaries(ROOT, "debug" if args.debug else "release")
        self.out = Path(args.out) if args.out else ROOT / "target" / "robustness" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = self.out / "data"
        self.ports = procs.Ports()
        self.api_port = self.ports.take()
        self.echo = [EchoServer() for _ in range(4)]
        self.expected = Expected()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.entries: dict[str, int] = {}  # instance id -> entrance port (traffic target)
        self.singles: set[str] = set()  # single-end forwards (PUT/DELETE targets)
        self.partner: dict[str, str] = {}  # entrance end of a pair -> its other end
        self.sessions: set[int] = set()
        self.master: Master | None = None
        self.incarnation = 0
        self.stats = {"traffic_ok": 0, "traffic_failed": 0, "bytes_verified": 0, "corrupt": 0, "api_2xx": 0, "api_4xx": 0, "api_5xx": 0, "api_no_answer": 0, "worker_kills": 0, "master_kills": 0}
        self.samples: list[dict] = []
        self.ops = open(self.out / "ops.jsonl", "w", buffering=1)
        self.t0 = time.monotonic()
        self.counters: dict[str, dict] = {}  # id -> last sample of counters
        self.resets: dict[str, int] = {}  # id -> resets acked or attempted since the last sample
        self.violations: list[str] = []
        self.leaks_seen: list[str] = []
        # Held while the master is killed and restarted, and while sampling.
        self.phase_lock = threading.Lock()
        # The next sample compares counters across a master kill -9.
        self.across_kill = False
        self.backwards = {"within_run": 0, "across_master_kill": 0}

    # -------------------------------------------------------- helpers

    def api(self):
        return self.master.api

    def bump(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def start_master(self, key: str | None) -> None:
        self.incarnation += 1
        self.master = Master.start(self.drover, self.worker, self.out, self.data, f"master-{self.incarnation}", key=key, port=self.api_port, limit_s=self.args.minutes * 60 + 1800)
        self.sessions.add(self.master.proc.sid)
        log(f"master #{self.incarnation} pid {self.master.pid} on 127.0.0.1:{self.api_port}")

    def create(self, url: str, entry: int | None, single: bool) -> str | None:
        st, v = self.call("POST", "/instances", {"url": url, "alias": f"soak-{self.rng.randrange(1 << 30):x}"})
        self.count(st)
        if st == 201:
            self.expected.acked(v)
            with self.lock:
                if entry:
                    self.entries[v["id"]] = entry
                if single:
                    self.singles.add(v["id"])
            return v["id"]
        if st == 0:
            with self.expected.lock:
                self.expected.unsure_creates += 1
        return None

    def call(self, method: str, path: str, body=None) -> tuple[int, object]:
        """An API change, logged with its answer to ops.jsonl."""
        t = round(time.monotonic() - self.t0, 3)
        st, v = self.api().call(method, path, body)
        brief = {k: v.get(k) for k in ("id", "alias", "restart", "url", "status")} if isinstance(v, dict) else v
        with self.lock:
            self.ops.write(json.dumps({"t": t, "run": self.incarnation, "op": f"{method} {path}", "body": body, "status": st, "answer": brief}) + "\n")
        return st, v

    def count(self, st: int) -> None:
        self.bump("api_no_answer" if st == 0 else "api_2xx" if st < 300 else "api_5xx" if st >= 500 else "api_4xx")

    def single_url(self, listen: int) -> str:
        echo = self.rng.choice(self.echo).port
        return f"client://{procs.addr(listen)}/{procs.addr(echo)}?mode=1"

    def populate(self) -> None:
        n = self.args.instances
        pairs = n * 3 // 10  # 30 % pairs (two instances each), the rest single-end
        for i in range(pairs):
            t, e = self.ports.take(), self.ports.take()
            echo = self.rng.choice(self.echo).port
            key = f"k{i}"
            if i % 2 == 0:  # reverse: users at the server's entrance
                entry = self.create(f"server://{key}@{procs.addr(t)}/{procs.addr(e)}?mode=1", e, False)
                other = self.create(f"client://{key}@{procs.addr(t)}/{procs.addr(echo)}?mode=2", None, False)
            else:  # forward: users at the client's entrance
                other = self.create(f"server://{key}@{procs.addr(t)}/{procs.addr(echo)}?mode=2", None, False)
                entry = self.create(f"client://{key}@{procs.addr(t)}/{procs.addr(e)}?mode=2", e, False)
            if entry and other:
                self.partner[entry] = other
        for _ in range(n - 2 * pairs):
            p = self.ports.take()
            self.create(self.single_url(p), p, True)
        log(f"created {len(self.expected.inst)} instances ({pairs} pairs)")

    # -------------------------------------------------------- threads

    def traffic(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                if not self.entries:
                    time.sleep(0.1)
                    continue
                iid, port = rng.choice(list(self.entries.items()))
            payload = rng.randbytes(rng.randrange(1024, 32 * 1024))
            try:
                with socket.create_connection((procs.LOOPBACK, port), timeout=5) as s:
                    s.settimeout(10)
                    s.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                if got == payload:
                    self.bump("traffic_ok")
                    self.bump("bytes_verified", len(payload))
                elif got and got != payload[: len(got)]:
                    self.bump("corrupt")
                    self.violations.append(f"corrupted echo through {iid} (port {port})")
                else:
                    self.bump("traffic_failed")
            except OSError:
                self.bump("traffic_failed")
                time.sleep(0.05)

    def api_churn(self) -> None:
        rng = self.rng
        period = 1.0 / self.args.api_rate
        while not self.stop.is_set():
            time.sleep(period)
            # Not while the master is killed, restarted and checked: a change
            # answered meanwhile would race the check.
            with self.phase_lock:
                self.api_change(rng)

    def api_change(self, rng: random.Random) -> None:
        with self.lock:
            ids = [i for i in self.expected.inst if True in self.expected.inst[i]["exists"]]
            singles = [i for i in self.singles if i in ids]
        if not ids:
            return
        iid = rng.choice(ids)
        op = rng.choices(["alias", "tags", "restart", "action", "put", "recreate", "info"], [30, 15, 10, 25, 8, 7, 5])[0]
        if op in ("put", "recreate") and not singles:
            op = "alias"
        if op == "alias":
            body = {"alias": f"a-{rng.randrange(1 << 30):x}"}
        elif op == "tags":
            body = {"meta": {"tags": {f"k{j}": f"{rng.randrange(1 << 20)}" for j in range(rng.randrange(0, 6))}}}
        elif op == "restart":
            body = {"restart": rng.random() < 0.8}
        elif op == "action":
            body = {"action": rng.choice(["stop", "start", "restart", "reset", "start"])}
        if op in ("alias", "tags", "restart", "action"):
            if body.get("action") == "reset":
                with self.lock:
                    self.resets[iid] = self.resets.get(iid, 0) + 1
            st, v = self.call("PATCH", f"/instances/{iid}", body)
            self.count(st)
            if st == 200:
                self.expected.acked(v)
            elif st == 0:
                unsure = {k: val for k, val in (("alias", body.get("alias")), ("restart", body.get("restart"))) if val is not None}
                if "meta" in body:
                    unsure["tags"] = json.dumps(body["meta"]["tags"], sort_keys=True)
                self.expected.unsure(iid, unsure)
        elif op == "put":
            iid = rng.choice(singles)
            port = self.ports.take()
            url = self.single_url(port)
            st, v = self.call("PUT", f"/instances/{iid}", {"url": url})
            self.count(st)
            if st == 200:
                self.expected.acked(v)
                with self.lock:
                    self.entries[iid] = port
            elif st == 0:
                with self.lock:
                    self.entries.pop(iid, None)
                self.expected.unsure(iid, {"url": url})
        elif op == "recreate":
            iid = rng.choice(singles)
            with self.lock:
                self.entries.pop(iid, None)
                self.singles.discard(iid)
            st, v = self.call("DELETE", f"/instances/{iid}")
            self.count(st)
            if st == 204:
                self.expected.deleted(iid, True)
            elif st == 0:
                self.expected.deleted(iid, False)
            p = self.ports.take()
            self.create(self.single_url(p), p, True)
        elif op == "info":
            alias = f"m-{rng.randrange(1 << 30):x}"
            st, v = self.call("POST", "/info", {"alias": alias})
            self.count(st)
            if st == 200:
                self.expected.master_alias = {alias}
            elif st == 0:
                self.expected.master_alias.add(alias)

    def worker_killer(self) -> None:
        while not self.stop.wait(self.args.worker_kill_every):
            st, views = self.api().call("GET", "/instances")
            if st != 200:
                continue
            pids = [v["worker"]["pid"] for v in views if v.get("worker") and v["worker"].get("pid")]
            if pids:
                pid = self.rng.choice(pids)
                stt = procs.proc_stat(pid)
                if stt and stt["comm"] == "drover-worker" and stt["session"] in self.sessions:
                    os.kill(pid, signal.SIGKILL)
                    self.bump("worker_kills")

    # -------------------------------------------------------- sampling

    def sample(self, phase: str) -> None:
        m = self.master
        st, views = m.api.call("GET", "/instances")
        workers = workers_in(self.sessions)
        leaked = [w["pid"] for w in workers if w["ppid"] != m.pid]
        row = {
            "t": round(time.monotonic() - self.t0),
            "incarnation": self.incarnation,
            "phase": phase,
            "rss_kib": m.rss_kib(),
            "fds": m.fds(),
            "workers": len(workers),
            "leaked": len(leaked),
            "instances": len(views) - 1 if st == 200 else None,
            "running": sum(1 for v in views if (v.get("worker") or {}).get("state") == "ready") if st == 200 else None,
            "log_lines": self.log_lines(views) if st == 200 else None,
            "store_mb": round(sum(f.stat().st_size for f in self.data.rglob("*") if f.is_file()) / 1e6, 1),
        }
        self.samples.append(row)
        if leaked:
            self.leaks_seen.append(f"t={row['t']}s: workers {leaked} not children of master {m.pid}")
        if st != 200:
            return
        with self.lock:
            resets = dict(self.resets)
            self.resets.clear()
        for v in views:
            iid = v["id"]
            if iid == "********":
                continue
            now = {c: v[c] for c in COUNTERS}
            prev = self.counters.get(iid)
            if prev is not None and not resets.get(iid):
                back = [c for c in COUNTERS if now[c] < prev[c]]
                if back:
                    where = "across_master_kill" if self.across_kill else "within_run"
                    self.backwards[where] += 1
                    self.violations.append(f"t={row['t']}s {iid}: counters went back ({where}) " + ", ".join(f"{c} {prev[c]}->{now[c]}" for c in back))
            self.counters[iid] = now
        self.across_kill = False

    def log_lines(self, views: list[dict]) -> tuple[int, int]:
        """Worker log lines the master holds (its per-instance rings), and their bytes."""
        lines = size = 0
        for v in views[1:]:
            st, got = self.master.api.call("GET", f"/instances/{v['id']}/logs?tail=1000")
            if st == 200:
                lines += len(got["logs"])
                size += sum(len(l) for l in got["logs"])
        return lines, size

    def sampler(self) -> None:
        while not self.stop.wait(10):
            with self.phase_lock:
                if self.master.alive():
                    self.sample("run")

    # -------------------------------------------------------- checks

    def verify_state(self, when: str) -> None:
        st, views = self.master.api.call("GET", "/instances")
        if st != 200:
            self.violations.append(f"{when}: GET /instances {st}")
            return
        problems = self.expected.check(views)
        st, info = self.master.api.call("GET", "/info")
        if st == 200 and info["alias"] not in self.expected.master_alias:
            problems.append(f"master alias {info['alias']!r}, acknowledged {self.expected.master_alias}")
        log(f"{when}: {len(views) - 1} instances, {len(problems)} lost acknowledged changes")
        self.violations += [f"{when}: {p}" for p in problems]
        self.lost = getattr(self, "lost", 0) + len(problems)

    def wait_running(self, timeout: float) -> int:
        """Waits until every instance with restart:true is ready; returns how many are."""
        def ready():
            st, views = self.master.api.call("GET", "/instances")
            if st != 200:
                return False
            want = [v for v in views[1:] if v["status"] == "running"]
            return all((v.get("worker") or {}).get("state") in ("ready", "parked") for v in want)
        procs.wait_until(ready, timeout, period=1)
        st, views = self.master.api.call("GET", "/instances")
        return sum(1 for v in views[1:] if (v.get("worker") or {}).get("state") == "ready") if st == 200 else 0

    def kill_master(self) -> None:
        with self.phase_lock:
            self._kill_master()

    def _kill_master(self) -> None:
        old = self.master
        log(f"kill -9 master #{self.incarnation} (pid {old.pid})")
        old.kill9()
        with self.lock:
            self.ops.write(json.dumps({"t": round(time.monotonic() - self.t0, 3), "event": f"kill -9 master #{self.incarnation}"}) + "\n")
        self.bump("master_kills")
        # Workers follow the master by PDEATHSIG.
        gone = procs.wait_until(lambda: not workers_in({old.proc.sid}), 30, period=0.2)
        if not gone:
            self.violations.append(f"workers of killed master #{self.incarnation} still alive 30 s later: {[w['pid'] for w in workers_in({old.proc.sid})]}")
        self.start_master(old.key)
        self.verify_state(f"after kill -9 #{self.stats['master_kills']}")
        self.across_kill = True
        self.sample(f"restart-{self.incarnation}")

    def final_echo(self) -> tuple[int, int]:
        st, views = self.master.api.call("GET", "/instances")
        running = {v["id"] for v in views[1:] if v["status"] == "running"} if st == 200 else set()
        with self.lock:
            # A pair carries traffic only when both of its ends run.
            targets = {i: p for i, p in self.entries.items() if i in running and self.partner.get(i, i) in running}
        failed = []
        for iid, port in targets.items():
            ok = procs.wait_until(lambda: procs.echo_once(port, os.urandom(2048), timeout=2), 30, period=0.5)
            if not ok:
                failed.append(iid)
        if failed:
            byid = {v["id"]: v for v in views}
            detail = []
            for iid in failed[:10]:
                v, o = byid.get(iid, {}), byid.get(self.partner.get(iid, ""), {})
                detail.append(f"{iid} port {targets[iid]} url {v.get('url')} worker {v.get('worker')}" + (f" / other end {o.get('id')} {o.get('status')} {o.get('worker')}" if o else ""))
            self.violations.append(f"{len(failed)} running tunnels do not echo at the end:\n      " + "\n      ".join(detail))
        return len(targets), len(failed)

    # -------------------------------------------------------- main

    def run(self) -> int:
        raise_nofile(65536)
        for e in self.echo:
            e.start()
        self.t0 = time.monotonic()
        self.start_master(None)
        self.populate()
        ready = self.wait_running(180)
        log(f"{ready} workers ready; churn for {self.args.minutes} min")
        self.sample("start")
        threads = [threading.Thread(target=self.traffic, args=(i,), daemon=True) for i in range(self.args.traffic_threads)]
        threads += [threading.Thread(target=f, daemon=True) for f in (self.api_churn, self.worker_killer, self.sampler)]
        for t in threads:
            t.start()
        run_s = self.args.minutes * 60
        t_start = time.monotonic()
        for frac in (0.2, 0.4):
            while time.monotonic() - t_start < run_s * frac:
                time.sleep(0.5)
            self.kill_master()
        while time.monotonic() - t_start < run_s:
            time.sleep(0.5)
        self.stop.set()
        for t in threads:
            t.join(timeout=30)
        self.sample("end")
        log("graceful stop, restart, final checks")
        rc = self.master.stop(grace=60)
        if rc not in (0, None):
            self.violations.append(f"master exit status {rc} after SIGTERM")
        left = workers_in(self.sessions)
        if left:
            self.violations.append(f"workers left after a graceful stop: {[w['pid'] for w in left]}")
        self.start_master(self.master.key)
        self.verify_state("after the final restart")
        self.wait_running(180)
        echoed, failed = self.final_echo()
        self.master.stop(grace=60)
        procs.wait_until(lambda: not workers_in(self.sessions), 30)
        left = workers_in(self.sessions)
        if left:
            self.violations.append(f"workers left after the final stop: {[w['pid'] for w in left]}")
        for e in self.echo:
            e.stop_flag.set()
        return self.report(echoed, failed)

    def report(self, echoed: int, failed: int) -> int:
        rss_rows = self.rss_table()
        if self.leaks_seen:
            self.violations += self.leaks_seen
        result = {
            "minutes": self.args.minutes,
            "warmup_s": self.args.warmup,
            "instances": self.args.instances,
            "stats": self.stats,
            "unsure_creates": self.expected.unsure_creates,
            "lost_acknowledged": getattr(self, "lost", 0),
            "counters_backwards": self.backwards,
            "final_echo": {"tunnels": echoed, "failed": failed},
            "rss": rss_rows,
            "samples": self.samples,
            "violations": self.violations,
        }
        (self.out / "results.json").write_text(json.dumps(result, indent=2))
        print()
        print("== scripts/soak summary ==")
        s = self.stats
        print(f"{self.args.instances} instances, {self.args.minutes} min, {self.incarnation} master runs ({s['master_kills']} kill -9), {s['worker_kills']} worker kill -9")
        print(f"traffic: {s['traffic_ok']} echoes verified ({s['bytes_verified'] / 1e6:.1f} MB), {s['traffic_failed']} refused/reset during churn, {s['corrupt']} corrupted")
        print(f"API: {s['api_2xx']} 2xx, {s['api_4xx']} 4xx, {s['api_5xx']} 5xx, {s['api_no_answer']} without answer (master killed)")
        print(f"acknowledged changes lost: {result['lost_acknowledged']}; tunnels echoing at the end: {echoed - failed}/{echoed}")
        print(f"counters that went back: {self.backwards['within_run']} within a master run, {self.backwards['across_master_kill']} across a master kill -9")
        print()
        print(f"{'t (s)':>6} {'run':>3} {'phase':<10} {'RSS MiB':>8} {'fds':>5} {'workers':>7} {'leaked':>6} {'ready':>5} {'log lines':>9} {'log MB':>6} {'store MB':>8}")
        for r in self.samples:
            ll, lb = r.get("log_lines") or (0, 0)
            print(f"{r['t']:>6} {r['incarnation']:>3} {r['phase']:<10} {r['rss_kib'] / 1024:>8.1f} {r['fds']:>5} {r['workers']:>7} {r['leaked']:>6} {r['running'] if r['running'] is not None else '-':>5} {ll:>9} {lb / 1e6:>6.1f} {r.get('store_mb', 0):>8.1f}")
        print()
        for r in rss_rows:
            print(f"master run {r['incarnation']}: warm-up RSS {r['warm_kib'] / 1024:.1f} MiB at t={r['warm_t']}s, end {r['end_kib'] / 1024:.1f} MiB at t={r['end_t']}s: {r['growth'] * 100:+.1f} %; fds {r['warm_fds']} -> {r['end_fds']}")
        print(f"results: {self.out}/results.json")
        if self.violations:
            print(f"FAILED ({len(self.violations)}):")
            for v in self.violations[:50]:
                print(f"  - {v}")
            return 1
        print("OK")
        return 0

    def rss_table(self) -> list[dict]:
        """Per master run: RSS at warm-up (first sample ≥ --warmup s after the
        run began) and at its last sample; the longest run must stay within
        the growth limit, and its descriptors must not grow either."""
        rows = []
        for inc in sorted({r["incarnation"] for r in self.samples}):
            mine = [r for r in self.samples if r["incarnation"] == inc and r["phase"] in ("run", "end", "start") or r["incarnation"] == inc and r["phase"].startswith("restart")]
            if len(mine) < 2:
                continue
            t_begin = mine[0]["t"]
            warm = next((r for r in mine if r["t"] - t_begin >= self.args.warmup), None)
            end = mine[-1]
            if warm is None or warm is end:
                continue
            rows.append({"incarnation": inc, "warm_t": warm["t"], "warm_kib": warm["rss_kib"], "end_t": end["t"], "end_kib": end["rss_kib"], "growth": (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"], "warm_fds": warm["fds"], "end_fds": end["fds"], "span_s": end["t"] - warm["t"]})
        if rows:
            longest = max(rows, key=lambda r: r["span_s"])
            if longest["growth"] > RSS_GROWTH_LIMIT:
                self.violations.append(f"master run {longest['incarnation']}: RSS grew {longest['growth'] * 100:.1f} % from warm-up to end (limit {RSS_GROWTH_LIMIT * 100:.0f} %)")
            if longest["end_fds"] > longest["warm_fds"] + 16:
                self.violations.append(f"master run {longest['incarnation']}: descriptors {longest['warm_fds']} -> {longest['end_fds']}")
        return rows


def main(argv=None) -> int:
    import sys

    args = parse_args(sys.argv[1:] if argv is None else argv)
    procs.install_signal_handlers()
    procs.LIMIT_S = int(args.minutes * 60) + 1800
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        procs.cleanup()
