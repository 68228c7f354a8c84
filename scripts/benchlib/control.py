"""Control-plane measurements against a real `drover` master on loopback.

Phases (each bounded in time; instances are single-end clients
`client://127.0.0.1:P/127.0.0.1:ECHO?mode=1`, one worker process each):

1. create → running: POST /instances, then the time until an SSE `update`
   shows `worker.state` = `ready` (on a stream that ACKs at once, plus an
   ordinary stream for comparison), and separately until the first byte is
   echoed through the new listener (create → serving); the master's own log
   lines give the split (POST → `worker spawned` → `worker ready`).
2. SSE fan-out: N subscribers on /events; K alias changes (PATCH) spaced
   apart; per subscriber and change: delivered or not, and the lag from the
   PATCH being sent to the event arriving.
3. Gateway: cold start (instance with `idle=1s`, wait until parked, time a
   gateway connection to the first echoed byte), warm handoff (connect +
   first byte through the gateway versus the worker's `worker.entry`), and
   one long iperf3 transfer through the gateway versus the entry port.
4. Restart after `kill -9` of a worker: time from the kill to the first byte
   echoed by the replacement worker, and connections refused meanwhile (a probe
   keeps connecting to that instance's port through each kill). Another
   instance is under load through all the kills (a probe loop of fresh
   connections and one long paced transfer, hashed both ways): its errors
   must be 0.
5. Scale: many instances created and running (time, master RSS, total worker
   RSS, GET /instances latency) — on a fresh master.
6. Gateway at scale, on a fresh master: many `idle=1s` instances left to
   park, ten bindings per instance, then gateway connections by
   `X-Client-Id` for a sample of clients — each must be echoed and wake
   exactly its own instance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .dataplane import _iperf as dataplane_iperf

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class CpSettings:
    create_samples: int
    sse_subscribers: int
    sse_events: int
    cold_samples: int
    warm_reps: int
    warm_conns: int
    kills: int
    scale_instances: int
    gw_tput_reps: int
    gw_tput_seconds: int
    gw_scale_instances: int
    gw_scale_bindings: int
    gw_scale_probes: int


CP_QUICK = CpSettings(
    create_samples=10, sse_subscribers=100, sse_events=20, cold_samples=3, warm_reps=3, warm_conns=300, kills=5, scale_instances=100,
    gw_tput_reps=1, gw_tput_seconds=2, gw_scale_instances=100, gw_scale_bindings=1000, gw_scale_probes=20,
)
CP_FULL = CpSettings(
    create_samples=30, sse_subscribers=100, sse_events=50, cold_samples=10, warm_reps=5, warm_conns=1000, kills=20, scale_instances=1000,
    gw_tput_reps=3, gw_tput_seconds=5, gw_scale_instances=1000, gw_scale_bindings=10000, gw_scale_probes=100,
)


# ---------------------------------------------------------------- master + API


class Master:
    def __init__(self, drover: str, worker: str, workdir: Path, name: str, gateway_port: int):
        self.workdir = workdir
        data = workdir / f"{name}-data"
        # The gateway gets a fixed free port: this master refuses `gateway=…:0`.
        self.proc = procs.start(
            name,
            [drover, f"master://127.0.0.1:0/api?gateway={procs.addr(gateway_port)}"],
            workdir,
            env={"DROVER_DATA_DIR": str(data), "DROVER_WORKER_BIN": worker, "DROVER_TENANT_DIR": str(workdir / f"{name}-tenants")},
        )
        self.key = self.port = self.gateway = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (self.key and self.port and self.gateway):
            text = ANSI.sub("", self.proc.log.read_text(errors="replace"))
            if m := re.search(r"API Key created: ([0-9a-f]{32})", text):
                self.key = m.group(1)
            if m := re.search(r"API listening on https?://127\.0\.0\.1:(\d+)/api", text):
                self.port = int(m.group(1))
            if m := re.search(r"gateway listening addr=127\.0\.0\.1:(\d+)", text):
                self.gateway = int(m.group(1))
            if not self.proc.alive():
                break
            time.sleep(0.05)
        if not (self.key and self.port and self.gateway):
            raise RuntimeError(f"master did not come up: {self.proc.tail()}")
        self.pid = self._master_pid()
        text = ANSI.sub("", self.proc.log.read_text(errors="replace"))
        self.isolation = next((l.split("INFO", 1)[-1].strip() for l in text.splitlines() if "tenant isolation" in l), "no isolation line in the log")
        self.api = Api(self.port, self.key)

    def log_times(self, what: str) -> dict[str, float]:
        """instance id → Unix time of the first master log line `what … instance=ID`."""
        out: dict[str, float] = {}
        pat = re.compile(r"^(\S+Z)\s+\w+\s+" + re.escape(what) + r"\b.*?\binstance=([0-9a-f]{8})")
        for line in ANSI.sub("", self.proc.log.read_text(errors="replace")).splitlines():
            if mm := pat.match(line):
                try:
                    t = dt.datetime.fromisoformat(mm.group(1)).timestamp()
                except ValueError:
                    continue
                out.setdefault(mm.group(2), t)
        return out

    def _master_pid(self) -> int:
        for s in self.proc.members():
            if s["comm"] == "drover":
                return s["pid"]
        return self.proc.popen.pid

    def rss_kib(self) -> int:
        return procs.rss_kib(self.pid) or 0

    def stop(self, grace: float = 60) -> None:
        # Known worker pids are killed too if anything is left after the master.
        try:
            for v in self.api.list():
                pid = (v.get("worker") or {}).get("pid")
                if pid:
                    self.proc.extra_pids.add(pid)
        except Exception:
            pass
        procs.stop_sessions([self.proc], grace=grace)


class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(procs.check_loopback("127.0.0.1"), self.port, timeout=30)
            self.local.conn = c
        return c

    def call(self, method: str, path: str, body=None) -> tuple[int, object, float]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-API-Key": self.key}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            c = self._conn()
            t = time.perf_counter()
            try:
                c.request(method, "/api" + path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                dt = time.perf_counter() - t
                try:
                    out = json.loads(raw) if raw else None
                except ValueError:
                    out = raw.decode(errors="replace")
                return r.status, out, dt
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def create(self, url: str, **extra) -> dict:
        st, v, _ = self.call("POST", "/instances", {"url": url, **extra})
        if st != 201:
            raise RuntimeError(f"POST /instances {url}: {st} {v}")
        return v

    def get(self, iid: str) -> dict:
        st, v, _ = self.call("GET", f"/instances/{iid}")
        if st != 200:
            raise RuntimeError(f"GET /instances/{iid}: {st} {v}")
        return v

    def list(self) -> list:
        st, v, _ = self.call("GET", "/instances")
        if st != 200:
            raise RuntimeError(f"GET /instances: {st} {v}")
        return v

    def delete(self, iid: str) -> None:
        self.call("DELETE", f"/instances/{iid}")

    def wait_state(self, iid: str, states: set[str], timeout: float, period: float = 0.02) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            v = self.get(iid)
            if (v.get("worker") or {}).get("state") in states:
                return v
            if time.monotonic() > deadline:
                return None
            time.sleep(period)


def single_end_url(port: int, target: int, extra: str = "") -> str:
    return f"client://{procs.addr(port)}/{procs.addr(target)}?mode=1{extra}"


# ---------------------------------------------------------------- SSE client


class SseSubscribers:
    """N SSE streams read by one thread (selectors), events timestamped on arrival."""

    def __init__(self, port: int, key: str, n: int, on_event=None, quickack: bool = False):
        self.on_event = on_event
        # ACK every read at once (TCP_QUICKACK, re-armed after each recv): a
        # server that leaves Nagle on then cannot hold small frames back for
        # the client's delayed ACK.
        self.quickack = quickack
        self.sel = selectors.DefaultSelector()
        self.subs = []
        self.lock = threading.Lock()
        self.stop_flag = False
        req = (
            f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        for i in range(n):
            s = socket.create_connection((procs.check_loopback("127.0.0.1"), port), timeout=10)
            s.sendall(req)
            s.setblocking(False)
            sub = {"i": i, "sock": s, "raw": b"", "headers": None, "chunked": False, "body": b"", "events": [], "opened": time.perf_counter(), "closed": False}
            self.subs.append(sub)
            self.sel.register(s, selectors.EVENT_READ, sub)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop_flag:
            ready = self.sel.select(timeout=0.1)
            # One timestamp per wake-up: everything read in this batch had
            # arrived by then (reading and parsing 100 streams takes a while).
            now = time.perf_counter()
            for key, _ in ready:
                sub = key.data
                try:
                    data = sub["sock"].recv(262144)
                    if self.quickack:
                        sub["sock"].setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sub["closed"] = True
                    self.sel.unregister(sub["sock"])
                    continue
                self._feed(sub, data, now)

    def _feed(self, sub, data: bytes, now: float):
        sub["raw"] += data
        if sub["headers"] is None:
            end = sub["raw"].find(b"\r\n\r\n")
            if end < 0:
                return
            sub["headers"] = sub["raw"][:end].decode(errors="replace")
            sub["chunked"] = "transfer-encoding: chunked" in sub["headers"].lower()
            sub["raw"] = sub["raw"][end + 4 :]
        if sub["chunked"]:
            while True:
                nl = sub["raw"].find(b"\r\n")
                if nl < 0:
                    break
                size = int(sub["raw"][:nl].split(b";")[0] or b"0", 16)
                if len(sub["raw"]) < nl + 2 + size + 2:
                    break
                sub["body"] += sub["raw"][nl + 2 : nl + 2 + size]
                sub["raw"] = sub["raw"][nl + 2 + size + 2 :]
        else:
            sub["body"] += sub["raw"]
            sub["raw"] = b""
        while True:
            body = sub["body"].replace(b"\r\n", b"\n")
            end = body.find(b"\n\n")
            if end < 0:
                sub["body"] = body
                return
            frame, sub["body"] = body[:end].decode(errors="replace"), body[end + 2 :]
            for line in frame.split("\n"):
                if line.startswith("data:"):
                    try:
                        ev = json.loads(line[5:].strip())
                    except ValueError:
                        continue
                    rec = (now, ev.get("type"), ev.get("instance"))
                    with self.lock:
                        sub["events"].append(rec)
                    if self.on_event:
                        self.on_event(sub, rec)

    def close(self):
        self.stop_flag = True
        self.thread.join(timeout=2)
        for sub in self.subs:
            try:
                sub["sock"].close()
            except OSError:
                pass


# ---------------------------------------------------------------- phases


class ControlPlane:
    def __init__(self, cfg: CpSettings, drover: str, worker: str, bench_bin: str, backends, ports: procs.Ports, workdir: Path, deadline: float, log):
        self.cfg, self.drover, self.worker, self.bench_bin = cfg, drover, worker, bench_bin
        self.backends, self.echo_port = backends, backends.echo_port
        self.ports, self.workdir, self.deadline, self.log = ports, workdir, deadline, log
        self.out: dict = {"errors": []}

    def run(self) -> dict:
        t0 = time.monotonic()
        m = Master(self.drover, self.worker, self.workdir, "master", self.ports.take())
        self.out["master_rss_idle_kib"] = m.rss_kib()
        self.out["isolation"] = m.isolation
        try:
            # Instances for the kill -9 test first: they must have run ≥ 10 s
            # (shorter runs are backed off on purpose), and that time is
            # spent on the other phases.
            victims = self._start_victims(m)
            phases = (
                ("create", self.create_to_running),
                ("sse", self.sse_fanout),
                ("gateway", self.gateway),
                ("gateway throughput", self.gateway_throughput),
                ("restart", lambda mm: self.restart(mm, victims)),
            )
            for name, fn in phases:
                if time.monotonic() > self.deadline:
                    self.out["errors"].append(f"{name}: skipped (time bound)")
                    continue
                t = time.monotonic()
                try:
                    fn(m)
                except Exception as e:
                    self.out["errors"].append(f"{name}: {type(e).__name__}: {e}")
                self.log(f"  control plane: {name} done in {time.monotonic() - t:.1f} s")
        finally:
            m.stop(grace=20)
        for name, fn in (("scale", self.scale), ("gateway scale", self.gateway_scale)):
            if time.monotonic() > self.deadline:
                self.out["errors"].append(f"{name}: skipped (time bound)")
                continue
            t = time.monotonic()
            try:
                fn()
            except Exception as e:
                self.out["errors"].append(f"{name}: {type(e).__name__}: {e}")
            self.log(f"  control plane: {name} done in {time.monotonic() - t:.1f} s")
        self.out["seconds"] = round(time.monotonic() - t0, 1)
        return self.out

    # ------------------------------------------------------------ 1. create → running

    def create_to_running(self, m: Master) -> None:
        ready_at: dict[str, float] = {}
        cond = threading.Condition()

        def on_event(_sub, rec):
            t, typ, inst = rec
            if typ in ("create", "update") and inst and (inst.get("worker") or {}).get("state") == "ready":
                with cond:
                    ready_at.setdefault(inst["id"], t)
                    cond.notify_all()

        # The measuring stream ACKs at once (see SseSubscribers.quickack) so it
        # times the state change; a second, ordinary stream shows what a plain
        # SSE client sees.
        sse = SseSubscribers(m.port, m.key, 1, on_event, quickack=True)
        plain_at: dict[str, float] = {}

        def on_plain(_sub, rec):
            t, typ, inst = rec
            if typ in ("create", "update") and inst and (inst.get("worker") or {}).get("state") == "ready":
                plain_at.setdefault(inst["id"], t)

        plain = SseSubscribers(m.port, m.key, 1, on_plain)
        ready_ms, serve_ms, post_ms, errors = [], [], [], []
        t_post: dict[str, float] = {}
        posted_wall: dict[str, float] = {}
        try:
            time.sleep(0.3)
            for i in range(self.cfg.create_samples * 2):
                port = self.ports.take()
                url = single_end_url(port, self.echo_port)
                serving = i % 2 == 1
                wall = time.time()
                t = time.perf_counter()
                st, v, dt = m.api.call("POST", "/instances", {"url": url})
                if st != 201:
                    errors.append(f"POST {st} {v}")
                    continue
                iid = v["id"]
                posted_wall[iid] = wall
                if not serving:
                    t_post[iid] = t
                post_ms.append(dt * 1000)
                if serving:
                    # The master holds the listener from the create on: this
                    # connection waits in the backlog until the worker serves it.
                    ok = procs.echo_once(port, b"x" * 64, timeout=10)
                    if ok:
                        serve_ms.append((time.perf_counter() - t) * 1000)
                    else:
                        errors.append(f"{iid}: no echo within 10 s of the create")
                else:
                    with cond:
                        cond.wait_for(lambda: iid in ready_at, timeout=10)
                    if iid in ready_at:
                        ready_ms.append((ready_at[iid] - t) * 1000)
                    else:
                        v2 = m.api.get(iid)
                        errors.append(f"{iid}: no SSE update with state ready within 10 s (state {v2['worker']['state']})")
                m.api.delete(iid)
                # Let the deleted instance's worker finish stopping: the next
                # create is measured on an idle master.
                time.sleep(0.15)
            time.sleep(0.2)
        finally:
            sse.close()
            plain.close()
        plain_ms = [(plain_at[i] - t) * 1000 for i, t in t_post.items() if i in plain_at]
        # Where the time goes, from the master's own log lines.
        spawned, ready = m.log_times("worker spawned"), m.log_times("worker ready")
        to_spawn = [(spawned[i] - w) * 1000 for i, w in posted_wall.items() if i in spawned]
        to_ready = [(ready[i] - w) * 1000 for i, w in posted_wall.items() if i in ready]
        self.out["create_log_ms"] = {i: [round((spawned.get(i, 0) - w) * 1000, 2), round((ready.get(i, 0) - w) * 1000, 2)] for i, w in posted_wall.items()}
        self.out["create"] = {
            "samples": len(ready_ms),
            "plain_sse_ready_ms": _summ(plain_ms),
            "log_spawned_ms": _summ(to_spawn),
            "log_ready_ms": _summ(to_ready),
            "ready_ms": _summ(ready_ms),
            "serving_ms": _summ(serve_ms),
            "post_ms": _summ(post_ms),
            "raw_ready_ms": [round(x, 2) for x in ready_ms],
            "raw_serving_ms": [round(x, 2) for x in serve_ms],
            "errors": errors[:20],
        }

    # ------------------------------------------------------------ 2. SSE fan-out

    def sse_fanout(self, m: Master) -> None:
        n, k = self.cfg.sse_subscribers, self.cfg.sse_events
        inst = m.api.create(single_end_url(self.ports.take(), self.echo_port))
        iid = inst["id"]
        expect_initial = len(m.api.list())
        t_open = time.perf_counter()
        sse = SseSubscribers(m.port, m.key, n)
        try:

            def initial_done():
                with sse.lock:
                    return all(sum(1 for e in s["events"] if e[1] == "initial") >= expect_initial for s in sse.subs)

            procs.wait_until(initial_done, 15, 0.02)
            with sse.lock:
                first = [s["events"][0][0] - s["opened"] for s in sse.subs if s["events"]]
                initial_ok = sum(1 for s in sse.subs if sum(1 for e in s["events"] if e[1] == "initial") >= expect_initial)
            time.sleep(0.2)
            sent: dict[str, float] = {}
            patch_ms = []
            for j in range(k):
                alias = f"sse-{j}"
                sent[alias] = time.perf_counter()
                st, v, dt = m.api.call("PATCH", f"/instances/{iid}", {"alias": alias})
                patch_ms.append(dt * 1000)
                if st != 200:
                    self.out["errors"].append(f"sse PATCH: {st} {v}")
                time.sleep(0.02)

            def got(s):
                seen = {e[2].get("alias") for e in s["events"] if e[1] == "update" and e[2] and e[2].get("id") == iid}
                return seen

            def all_delivered():
                with sse.lock:
                    return all(len(got(s) & sent.keys()) == k for s in sse.subs)

            procs.wait_until(all_delivered, 5, 0.05)
            lags, delivered, closed = [], 0, 0
            with sse.lock:
                for s in sse.subs:
                    closed += s["closed"]
                    firsts = {}
                    for t, typ, inst2 in s["events"]:
                        if typ == "update" and inst2 and inst2.get("id") == iid and inst2.get("alias") in sent:
                            firsts.setdefault(inst2["alias"], t)
                    delivered += len(firsts)
                    lags += [(t - sent[a]) * 1000 for a, t in firsts.items()]
        finally:
            sse.close()
            m.api.delete(iid)
        self.out["sse"] = {
            "subscribers": n,
            "events_sent": k,
            "expected": n * k,
            "delivered": delivered,
            "streams_closed_early": closed,
            "initial_bursts_complete": initial_ok,
            "first_event_ms": _summ([x * 1000 for x in first]),
            "lag_ms": _summ(lags),
            "patch_ms": _summ(patch_ms),
            "open_s": round(time.perf_counter() - t_open, 2),
        }

    # ------------------------------------------------------------ 3. gateway

    def gateway(self, m: Master) -> None:
        cfg = self.cfg
        out = {"cold_ms": None, "errors": []}
        # Cold start: parked → first echoed byte through the gateway.
        cold = m.api.create(single_end_url(self.ports.take(), self.echo_port, "&idle=1s"))
        cid = cold["id"]
        st, v, _ = m.api.call("PUT", "/clients/127.0.0.1", {"instance": cid})
        if st not in (200, 201, 204):
            raise RuntimeError(f"PUT /clients/127.0.0.1: {st} {v}")
        cold_ms, park_s = [], []
        payload = b"c" * 64
        for _ in range(cfg.cold_samples):
            if time.monotonic() > self.deadline:
                break
            t = time.monotonic()
            if m.api.wait_state(cid, {"parked"}, timeout=30, period=0.05) is None:
                out["errors"].append("cold: instance never parked within 30 s")
                break
            park_s.append(time.monotonic() - t)
            time.sleep(0.2)
            t = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", m.gateway), timeout=10) as s:
                    s.settimeout(10)
                    s.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        c = s.recv(64)
                        if not c:
                            break
                        got += c
                if got == payload:
                    cold_ms.append((time.perf_counter() - t) * 1000)
                else:
                    out["errors"].append(f"cold: short echo {len(got)} B")
            except OSError as e:
                out["errors"].append(f"cold: {e}")
        out["cold_ms"] = _summ(cold_ms)
        out["raw_cold_ms"] = [round(x, 2) for x in cold_ms]
        out["wait_parked_s"] = _summ(park_s)
        m.api.delete(cid)

        # Warm handoff: the same instance through the gateway vs its entry port.
        lport = self.ports.take()
        warm = m.api.create(single_end_url(lport, self.echo_port))
        wid = warm["id"]
        v = m.api.wait_state(wid, {"ready"}, timeout=15)
        entry = (v or {}).get("worker", {}).get("entry")
        if not entry:
            out["errors"].append(f"warm: no worker.entry ({v and v.get('worker')})")
        else:
            host, eport = entry.rsplit(":", 1)
            procs.check_loopback(host)
            m.api.call("PUT", "/clients/127.0.0.1", {"instance": wid})
            paths = {"gateway": procs.addr(m.gateway), "entry": procs.addr(int(eport)), "listener": procs.addr(lport)}
            # One client alternates gateway / entry / listener connection by
            # connection, so the three are compared under the same conditions.
            res = {p: [] for p in paths}
            for r in range(cfg.warm_reps):
                names = list(paths)
                names = names[r % 3 :] + names[: r % 3]
                d, err = _bench(self.bench_bin, ["connrate", "--addr", ",".join(paths[n] for n in names), "--concurrency", "1", "--seconds", "10", "--max-conns", str(3 * cfg.warm_conns)], 40)
                if d is None:
                    out["errors"].append(f"warm: {err}")
                    continue
                bad = {k2: v2 for k2, v2 in d["outcomes"].items() if k2 != "ok" and v2}
                if bad:
                    out["errors"].append(f"warm: failed exchanges {bad}")
                for n in names:
                    res[n].append(d["per_addr"][paths[n]])
            med = lambda name, key: procs.median([d[key] for d in res[name]])
            out["warm"] = {name: {"p50_us": med(name, "p50"), "p99_us": med(name, "p99"), "n": sum(d["n"] for d in res[name])} for name in paths}
            diffs = [g["p50"] - e["p50"] for g, e in zip(res["gateway"], res["entry"])]
            out["warm_overhead_p50_us"] = procs.median(diffs)
            out["warm_overhead_per_rep_us"] = [round(x, 1) for x in diffs]
            out["warm_raw"] = res
        m.api.delete(wid)
        self.out["gateway"] = out

    def gateway_throughput(self, m: Master) -> None:
        """One long iperf3 transfer through the gateway vs the entry port,
        alternating, to the same instance: the master copies no payload, so
        the two should match."""
        cfg = self.cfg
        out: dict = {"errors": [], "seconds": cfg.gw_tput_seconds}
        inst = m.api.create(single_end_url(self.ports.take(), self.backends.iperf_port))
        iid = inst["id"]
        try:
            v = m.api.wait_state(iid, {"ready"}, timeout=15)
            entry = (v or {}).get("worker", {}).get("entry")
            if not entry:
                raise RuntimeError(f"no worker.entry ({v and v.get('worker')})")
            host, eport = entry.rsplit(":", 1)
            procs.check_loopback(host)
            m.api.call("PUT", "/clients/127.0.0.1", {"instance": iid})
            paths = {"gateway": m.gateway, "entry": int(eport)}
            gbps: dict[str, list[float]] = {p: [] for p in paths}
            for r in range(cfg.gw_tput_reps):
                for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                    if time.monotonic() > self.deadline:
                        break
                    d, err = dataplane_iperf(paths[name], ["-t", str(cfg.gw_tput_seconds)], cfg.gw_tput_seconds)
                    if d is None:
                        out["errors"].append(f"{name}: {err}")
                        self.backends.restart_iperf()
                        continue
                    gbps[name].append(d["end"]["sum_received"]["bits_per_second"] / 1e9)
            out["gbps"] = {p: [round(x, 2) for x in v] for p, v in gbps.items()}
            g, e = procs.median(gbps["gateway"]), procs.median(gbps["entry"])
            out["gateway_gbps"], out["entry_gbps"] = g, e
            out["ratio"] = round(g / e, 3) if g and e else None
        finally:
            m.api.delete(iid)
            self.out["gateway_tput"] = out

    # ------------------------------------------------------------ 4. restart after kill -9

    def _start_victims(self, m: Master) -> list[dict]:
        victims = []
        for _ in range(self.cfg.kills):
            port = self.ports.take()
            v = m.api.create(single_end_url(port, self.echo_port))
            victims.append({"id": v["id"], "port": port})
        # The bystander: never killed, under load while the others are.
        port = self.ports.take()
        self.bystander = {"id": m.api.create(single_end_url(port, self.echo_port))["id"], "port": port}
        for vi in [*victims, self.bystander]:
            if m.api.wait_state(vi["id"], {"ready"}, timeout=20) is None:
                self.out["errors"].append(f"restart: victim {vi['id']} not ready")
        self.victims_ready = time.monotonic()
        return victims

    def _probe(self, name: str, port: int, interval_ms: int, seconds: int) -> procs.Proc:
        """`drover-bench probe` on `port` until its stdin closes (see `_finish_probe`)."""
        return procs.start(
            name,
            [self.bench_bin, "probe", "--addr", procs.addr(port), "--interval-ms", str(interval_ms), "--timeout-ms", "3000", "--seconds", str(seconds)],
            self.workdir,
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )

    def restart(self, m: Master, victims: list[dict]) -> None:
        # A worker that ran ≥ 10 s is restarted at once (DESIGN §2).
        wait = self.victims_ready + 11 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        lat_ms, api_ms, refused_total, cut_total, samples = [], [], 0, 0, []
        by = self.bystander
        by_pid = (m.api.get(by["id"]).get("worker") or {}).get("pid")
        by_probe = self._probe(f"probe-bystander-{by['port']}", by["port"], interval_ms=2, seconds=900)
        transfer = _PacedTransfer(by["port"])
        for vi in victims:
            if time.monotonic() > self.deadline:
                break
            v = m.api.get(vi["id"])
            pid, restarts = v["worker"]["pid"], v["worker"]["restarts"]
            if not pid:
                self.out["errors"].append(f"restart: {vi['id']} has no pid ({v['worker']})")
                continue
            probe = self._probe(f"probe-{vi['port']}", vi["port"], interval_ms=1, seconds=60)
            time.sleep(0.1)
            refused = cut = 0
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            served = None
            while time.perf_counter() - t0 < 10:
                try:
                    with socket.create_connection(("127.0.0.1", vi["port"]), timeout=5) as s:
                        s.settimeout(5)
                        s.sendall(b"k" * 32)
                        got = b""
                        while len(got) < 32:
                            c = s.recv(32)
                            if not c:
                                break
                            got += c
                    if len(got) == 32:
                        served = (time.perf_counter() - t0) * 1000
                        break
                    cut += 1
                except ConnectionRefusedError:
                    refused += 1
                except OSError:
                    cut += 1
                time.sleep(0.001)
            nv = m.api.wait_state(vi["id"], {"ready"}, timeout=10, period=0.01)
            api_done = (time.perf_counter() - t0) * 1000
            new_pid = nv and nv["worker"]["pid"]
            time.sleep(0.1)
            pr = _finish_probe(probe)
            procs.stop_sessions([probe], grace=1)
            po = pr.get("outcomes", {})
            refused += po.get("refused", 0)
            cut += sum(po.get(k, 0) for k in ("reset", "eof", "timeout", "other"))
            refused_total += refused
            cut_total += cut
            if served is not None:
                lat_ms.append(served)
            api_ms.append(api_done)
            samples.append({"id": vi["id"], "old_pid": pid, "new_pid": new_pid, "restarts_before": restarts, "restarts_after": nv and nv["worker"]["restarts"], "served_ms": served and round(served, 2), "api_ready_ms": round(api_done, 2), "refused": refused, "cut": cut, "probe_attempts": pr.get("attempts"), "probe_error": pr.get("error"), "probe_failures": pr.get("failures", [])[:5]})
            if new_pid == pid or new_pid is None:
                self.out["errors"].append(f"restart: {vi['id']} pid {pid} not replaced ({nv and nv['worker']})")
            time.sleep(0.2)
        tr = transfer.finish()
        bp = _finish_probe(by_probe)
        procs.stop_sessions([by_probe], grace=1)
        bo = bp.get("outcomes", {})
        probe_errors = sum(v for k, v in bo.items() if k != "ok") + (1 if bp.get("error") else 0)
        bv = m.api.get(by["id"]).get("worker") or {}
        restarted = int(bv.get("pid") != by_pid or bool(bv.get("restarts")))
        others = {
            "instances": 1,
            "probe_attempts": bp.get("attempts"),
            "probe_errors": probe_errors,
            "probe_failures": bp.get("failures", [])[:5],
            "transfer_bytes": tr["bytes"],
            "transfer_error": tr["error"],
            "transfer_hash_ok": tr["hash_ok"],
            "restarted": restarted,
            "errors": probe_errors + (0 if tr["error"] is None and tr["hash_ok"] else 1) + restarted,
        }
        if others["errors"]:
            self.out["errors"].append(f"restart: {others['errors']} errors on the other instance ({others})")
        for vi in [*victims, by]:
            m.api.delete(vi["id"])
        self.out["restart"] = {
            "kills": len(samples),
            "served_ms": _summ(lat_ms),
            "api_ready_ms": _summ(api_ms),
            "refused": refused_total,
            "cut": cut_total,
            "others": others,
            "samples": samples,
        }

    # ------------------------------------------------------------ 5. scale

    def scale(self) -> None:
        n = self.cfg.scale_instances
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 8 * n + 1024))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        out = {"instances": n, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "errors": []}
        m = Master(self.drover, self.worker, self.workdir, "master-scale", self.ports.take())
        try:
            out["master_rss_idle_kib"] = m.rss_kib()
            ports = [self.ports.take() for _ in range(n)]
            ids: list[str] = []
            lock = threading.Lock()
            post_ms = []
            t0 = time.perf_counter()

            def creator(chunk):
                for p in chunk:
                    try:
                        st, v, dt = m.api.call("POST", "/instances", {"url": single_end_url(p, self.echo_port)})
                    except Exception as e:
                        st, v, dt = 0, str(e), 0
                    with lock:
                        if st == 201:
                            ids.append(v["id"])
                            post_ms.append(dt * 1000)
                        elif len(out["errors"]) < 20:
                            out["errors"].append(f"POST: {st} {v}")

            threads = [threading.Thread(target=creator, args=(ports[i::4],)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            out["create_all_s"] = round(time.perf_counter() - t0, 2)
            out["post_ms"] = _summ(post_ms)
            mine = set(ids)
            states: dict = {}
            bound = time.monotonic() + max(60, n * 0.3)
            while time.monotonic() < bound:
                lst = m.api.list()
                states = {}
                for v in lst:
                    if v.get("id") in mine:
                        s = (v.get("worker") or {}).get("state")
                        states[s] = states.get(s, 0) + 1
                if states.get("ready", 0) == len(mine):
                    break
                time.sleep(0.25)
            out["running_s"] = round(time.perf_counter() - t0, 2)
            out["states"] = states
            out["ready"] = states.get("ready", 0)
            time.sleep(1.0)
            out["master_rss_kib"] = m.rss_kib()
            lst = m.api.list()
            pids = [(v.get("worker") or {}).get("pid") for v in lst if v.get("id") in mine]
            rss = [procs.rss_kib(p) for p in pids if p]
            rss = [r for r in rss if r]
            out["workers_measured"] = len(rss)
            out["workers_rss_total_kib"] = sum(rss)
            out["worker_rss_kib"] = _summ(rss)
            lat, size = [], 0
            for _ in range(10):
                st, v, dt = m.api.call("GET", "/instances")
                lat.append(dt * 1000)
                size = len(json.dumps(v))
            out["list_ms"] = _summ(lat)
            out["list_bytes"] = size
            # Spot check: a sample of the instances really serves.
            sample = ports[:: max(1, n // 20)]
            out["spot_check"] = {"tried": len(sample), "echoed": sum(procs.echo_once(p, timeout=5) for p in sample)}
        finally:
            t = time.monotonic()
            m.stop(grace=120)
            out["stop_s"] = round(time.monotonic() - t, 1)
        self.out["scale"] = out


    # ------------------------------------------------------------ 6. gateway at scale

    def gateway_scale(self) -> None:
        cfg = self.cfg
        n, nb = cfg.gw_scale_instances, cfg.gw_scale_bindings
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 8 * n + 1024))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        out: dict = {"instances": n, "bindings": nb, "errors": []}
        m = Master(self.drover, self.worker, self.workdir, "master-gwscale", self.ports.take())
        try:
            ids = self._create_many(m, [single_end_url(self.ports.take(), self.echo_port, "&idle=1s") for _ in range(n)], out)
            t0 = time.perf_counter()
            mine = set(ids)
            states: dict = {}
            while time.perf_counter() - t0 < max(120, n * 0.3):
                states = self._states(m, mine)
                if states.get("parked", 0) == len(mine):
                    break
                time.sleep(0.5)
            out["all_parked_s"] = round(time.perf_counter() - t0, 1)
            out["states_before"] = states
            # Bindings: client c<i> → instance i mod n, written by 4 threads.
            put_ms: list[float] = []
            lock = threading.Lock()

            def binder(idx):
                for i in idx:
                    st, v, dt_ = m.api.call("PUT", f"/clients/c{i}", {"instance": ids[i % len(ids)]})
                    with lock:
                        if st in (200, 201):
                            put_ms.append(dt_ * 1000)
                        elif len(out["errors"]) < 20:
                            out["errors"].append(f"PUT /clients/c{i}: {st} {v}")

            t0 = time.perf_counter()
            threads = [threading.Thread(target=binder, args=(range(k, nb, 4),)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=900)
            out["bind_all_s"] = round(time.perf_counter() - t0, 2)
            out["put_ms"] = _summ(put_ms)
            out["master_rss_kib"] = m.rss_kib()
            # Probes: clients bound to distinct (so parked) instances, spread
            # over the whole client range: c<i> is bound to instance i mod n.
            k_max = min(cfg.gw_scale_probes, len(ids))
            per = max(1, nb // len(ids))
            probes = [k * (len(ids) // k_max) + len(ids) * (k % per) for k in range(k_max)]
            cold_ms, served, woke = [], 0, set()
            for i in probes:
                req = f"GET / HTTP/1.1\r\nHost: bench\r\nX-Client-Id: c{i}\r\n\r\n".encode()
                t = time.perf_counter()
                if _echo(m.gateway, req, timeout=15):
                    cold_ms.append((time.perf_counter() - t) * 1000)
                    served += 1
                woke.add(ids[i % len(ids)])
            states = self._states(m, mine, detail=True)
            awake = {iid for iid, st in states.items() if st != "parked"}
            out["probes"] = len(probes)
            out["served"] = served
            out["cold_ms"] = _summ(cold_ms)
            # Reaping may already have parked a probed instance again; an awake
            # instance no probe was bound to would be a misroute.
            out["woken_unprobed"] = len(awake - woke)
            st, page, _ = m.api.call("GET", "/clients?limit=100")
            out["clients_page_ok"] = st == 200
            out["master_rss_end_kib"] = m.rss_kib()
        finally:
            m.stop(grace=120)
            self.out["gateway_scale"] = out

    def _create_many(self, m: Master, urls: list[str], out: dict) -> list[str]:
        ids: list[str] = []
        lock = threading.Lock()

        def creator(chunk):
            for u in chunk:
                try:
                    st, v, _ = m.api.call("POST", "/instances", {"url": u})
                except Exception as e:
                    st, v = 0, str(e)
                with lock:
                    if st == 201:
                        ids.append(v["id"])
                    elif len(out["errors"]) < 20:
                        out["errors"].append(f"POST: {st} {v}")

        threads = [threading.Thread(target=creator, args=(urls[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        return ids

    @staticmethod
    def _states(m: Master, mine: set[str], detail: bool = False) -> dict:
        """worker.state counts of `mine` (or, with detail, id → state)."""
        got: dict = {}
        for v in m.api.list():
            if v.get("id") in mine:
                s = (v.get("worker") or {}).get("state")
                if detail:
                    got[v["id"]] = s
                else:
                    got[s] = got.get(s, 0) + 1
        return got


def _echo(port: int, payload: bytes, timeout: float) -> bool:
    """Connect, send `payload`, read it back whole."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                c = s.recv(65536)
                if not c:
                    return False
                got += c
            return got == payload
    except OSError:
        return False


class _PacedTransfer:
    """One long echo transfer on one connection to 127.0.0.1:`port`: a
    64 KiB chunk every 10 ms from a writer thread, a reader thread hashing
    what comes back; `finish` half-closes, waits for the rest and compares
    SHA-256 and length both ways."""

    CHUNK = 64 * 1024

    def __init__(self, port: int):
        self.stop_flag = False
        self.error: str | None = None
        self.sent, self.back = hashlib.sha256(), hashlib.sha256()
        self.n_sent = self.n_back = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(30)
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self):
        i = 0
        try:
            while not self.stop_flag:
                chunk = bytes([(i * 7 + j) % 251 for j in range(256)]) * (self.CHUNK // 256)
                self.sock.sendall(chunk)
                self.sent.update(chunk)
                self.n_sent += len(chunk)
                i += 1
                time.sleep(0.01)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = self.error or f"write after {self.n_sent} bytes: {e}"

    def _read(self):
        try:
            while True:
                c = self.sock.recv(1 << 16)
                if not c:
                    return
                self.back.update(c)
                self.n_back += len(c)
        except OSError as e:
            self.error = self.error or f"read after {self.n_back} bytes: {e}"

    def finish(self) -> dict:
        self.stop_flag = True
        self.writer.join(timeout=30)
        self.reader.join(timeout=60)
        if self.reader.is_alive() and self.error is None:
            self.error = f"no EOF after {self.n_back} of {self.n_sent} bytes"
        self.sock.close()
        ok = self.n_back == self.n_sent and self.sent.digest() == self.back.digest()
        return {"bytes": self.n_sent, "hash_ok": ok, "error": self.error}


def _finish_probe(probe: procs.Proc) -> dict:
    """Closes the probe's stdin (its stop signal) and reads its JSON line."""
    result: dict = {}

    def read():
        try:
            result["out"] = probe.popen.stdout.read()
        except OSError as e:
            result["err"] = str(e)

    try:
        probe.popen.stdin.close()
    except OSError:
        pass
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=10)
    try:
        return json.loads(result.get("out", b"").decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": result.get("err") or f"no output from the probe: {probe.tail(3)}", "outcomes": {}}


def _bench(bench_bin: str, args: list[str], timeout: float) -> tuple[dict | None, str]:
    r = procs.run([bench_bin, *args], timeout=timeout)
    if r.returncode != 0:
        return None, (r.stderr or r.stdout).strip()[-300:]
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unparsable: {r.stdout[-200:]!r}"


def _summ(values: list[float]) -> dict | None:
    if not values:
        return None
    r = lambda x: round(x, 3)
    return {"n": len(values), "p50": r(procs.pct(values, 50)), "p99": r(procs.pct(values, 99)), "min": r(min(values)), "max": r(max(values)), "mean": r(sum(values) / len(values))}
