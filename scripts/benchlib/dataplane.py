"""Data-plane measurements: every forwarder in front of the same backends.

Per repetition every forwarder runs two blocks, each on a fresh instance:

* latency block, in front of the TCP echo backend (`drover-bench echo`):
  readiness probe, idle RSS of every process, ping-pong round trips
  (64 B, persistent connection, warm-up first), the same with every process
  on one CPU (the forwarder's own cost), new connections per second at
  concurrency 1 and 64 (connect → 64 B → echo → close);
* throughput block, in front of `iperf3 -s` (TCP and UDP on one port):
  iperf3 with 1 and 8 streams (CPU of the forwarder's processes before and
  after → CPU seconds per GB received; RSS sampled for the peak), then UDP at a
  fixed offered rate (received rate, loss).

Repetition r runs the forwarders in an order rotated by r, so slow drifts of
the shared machine hit all of them alike.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .forwarders import Forwarder


@dataclass
class Settings:
    reps: int
    tcp_seconds: int
    udp_seconds: int
    udp_rate: str
    ping_count: int
    conn_seconds: float
    conn_max: int
    ready_timeout: float = 20.0


QUICK = Settings(reps=1, tcp_seconds=1, udp_seconds=1, udp_rate="500M", ping_count=2000, conn_seconds=0.5, conn_max=5000)
# Five repetitions: single runs of one forwarder swing ±15 % on this shared
# 2-core VM (direct 33–50 Gbit/s within one run), and a median of three moved
# throughput ratios across their targets between runs.
FULL = Settings(reps=5, tcp_seconds=4, udp_seconds=3, udp_rate="500M", ping_count=20000, conn_seconds=2.0, conn_max=40000)


class Backends:
    """The echo backend and the iperf3 server, shared by every forwarder."""

    def __init__(self, bench_bin: str, ports: procs.Ports, workdir: Path):
        self.bench_bin, self.ports, self.workdir = bench_bin, ports, workdir
        self.echo_port = ports.take()
        self.echo = procs.start(
            "echo-backend", [bench_bin, "echo", "--port", str(self.echo_port), "--udp"], workdir
        )
        if not procs.wait_until(lambda: procs.echo_once(self.echo_port), 10):
            raise RuntimeError(f"echo backend did not start: {self.echo.tail()}")
        self.iperf = None
        self.iperf_port = 0
        self.restart_iperf()

    def restart_iperf(self) -> None:
        if self.iperf is not None:
            self.iperf.stop(grace=1)
        self.iperf_port = self.ports.take()
        self.iperf = procs.start(
            f"iperf3-server-{self.iperf_port}",
            ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.iperf_port)],
            self.workdir,
        )

        def up():
            r = procs.run(
                ["iperf3", "-c", "127.0.0.1", "-p", str(self.iperf_port), "-n", "64K", "-J"], timeout=8
            )
            return r.returncode == 0

        if not procs.wait_until(up, 15, 0.2):
            raise RuntimeError(f"iperf3 server did not start: {self.iperf.tail()}")

    def stop(self) -> None:
        procs.stop_sessions([p for p in (self.echo, self.iperf) if p is not None], grace=1)


def _bench_json(cmd: list[str], timeout: float, **kw) -> tuple[dict | None, str]:
    r = procs.run(cmd, timeout=timeout, **kw)
    if r.returncode != 0:
        return None, (r.stderr or r.stdout).strip()[-300:] or f"exit {r.returncode}"
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unparsable output: {r.stdout[-200:]!r}"


def _iperf(port: int, args: list[str], seconds: float, slack: float = 20) -> tuple[dict | None, str]:
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-J", "--connect-timeout", "3000", *args]
    r = procs.run(cmd, timeout=seconds + slack)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        return None, (r.stderr or r.stdout).strip()[-300:] or f"exit {r.returncode}"
    if data.get("error"):
        return None, str(data["error"])
    return data, ""


class Runner:
    def __init__(self, settings: Settings, backends: Backends, bench_bin: str, ports: procs.Ports, workdir: Path, deadline: float, log):
        self.s, self.b, self.bench_bin, self.ports = settings, backends, bench_bin, ports
        self.workdir, self.deadline, self.log = workdir, deadline, log

    # ------------------------------------------------------------ helpers

    def _start(self, f: Forwarder, target: int, udp: bool, tag: str) -> tuple[int, list[procs.Proc]]:
        if f.kind == "direct":
            return target, []
        listen, aux = self.ports.take(), self.ports.take()
        wd = self.workdir / f"{f.name}-{tag}-{listen}"
        return listen, f.start(listen, target, aux, wd, udp)

    def _dead(self, ps: list[procs.Proc]) -> str:
        for p in ps:
            if not p.alive():
                return f"{p.name} exited: {p.tail(5)}"
        return ""

    def _pingpong(self, target: str, **kw) -> tuple[dict | None, str]:
        return _bench_json(
            [self.bench_bin, "pingpong", "--addr", target, "--count", str(self.s.ping_count), "--warmup-ms", "300", "--warmup-count", "500", "--max-seconds", "30"],
            timeout=45,
            **kw,
        )

    def _pingpong_one_cpu(self, target: str, ps: list[procs.Proc]) -> tuple[dict | None, str]:
        """Round trips with the client, the forwarder and the echo backend all
        on one CPU: no round trip waits for an idle CPU to wake (on a VM
        without a cpuidle driver each such wake-up is a halt exit), so what
        is left is the forwarder's own cost. A diagnostic, not a target."""
        everywhere = os.sched_getaffinity(0)
        if len(everywhere) < 2:
            return None, ""
        one = {max(everywhere)}
        pids = [st["pid"] for p in [self.b.echo, *ps] for st in p.members()]
        procs.set_affinity(pids, one)
        try:
            return self._pingpong(target, preexec_fn=lambda: os.sched_setaffinity(0, one))
        finally:
            procs.set_affinity(pids, everywhere)

    # ------------------------------------------------------------ blocks

    def latency_block(self, f: Forwarder, m: dict, raw: dict, errors: list) -> None:
        listen, ps = self._start(f, self.b.echo_port, udp=False, tag="lat")
        try:
            t0 = time.monotonic()
            if not procs.wait_until(lambda: procs.echo_once(listen) or bool(self._dead(ps)), self.s.ready_timeout, 0.05) or self._dead(ps):
                errors.append(f"latency block: not ready after {self.s.ready_timeout:.0f} s {self._dead(ps)}")
                return
            m["ready_s"] = round(time.monotonic() - t0, 3)
            # A few more exchanges so that tunnels have their pools settled.
            for _ in range(3):
                procs.echo_once(listen)
            time.sleep(0.3)
            if ps:
                per = procs.rss_by_process(ps)
                m["rss_idle_kib"] = sum(r["rss_kib"] for r in per)
                m["rss_idle_procs_kib"] = [r["rss_kib"] for r in per]
                raw["rss_idle"] = per
            target = procs.addr(listen)
            pp, err = self._pingpong(target)
            if pp:
                raw["pingpong"] = pp
                m["rtt_p50_us"] = pp["rtt_us"]["p50"]
                m["rtt_p99_us"] = pp["rtt_us"]["p99"]
            else:
                errors.append(f"pingpong: {err}")
            pp, err = self._pingpong_one_cpu(target, ps)
            if pp:
                raw["pingpong_one_cpu"] = pp
                m["rtt1cpu_p50_us"] = pp["rtt_us"]["p50"]
            elif err:
                errors.append(f"pingpong on one CPU: {err}")
            for c in (1, 64):
                cr, err = _bench_json(
                    [self.bench_bin, "connrate", "--addr", target, "--concurrency", str(c), "--seconds", str(self.s.conn_seconds), "--max-conns", str(self.s.conn_max), "--timeout-ms", "3000"],
                    timeout=self.s.conn_seconds + 30,
                )
                if cr:
                    raw[f"connrate_c{c}"] = cr
                    m[f"conn{c}_rate"] = round(cr["rate"], 1)
                    m[f"conn{c}_p50_us"] = cr["latency_us"]["p50"]
                    m[f"conn{c}_p99_us"] = cr["latency_us"]["p99"]
                    bad = {k: v for k, v in cr["outcomes"].items() if k != "ok" and v}
                    if bad:
                        m[f"conn{c}_errors"] = sum(bad.values())
                        errors.append(f"connrate c={c}: failed exchanges {bad}")
                else:
                    errors.append(f"connrate c={c}: {err}")
            dead = self._dead(ps)
            if dead:
                errors.append(f"latency block: {dead}")
        finally:
            t = time.monotonic()
            procs.stop_sessions(ps, grace=3)
            if ps:
                m["stop_lat_s"] = round(time.monotonic() - t, 2)

    def throughput_block(self, f: Forwarder, m: dict, raw: dict, errors: list) -> None:
        udp = f.udp_capable
        listen, ps = self._start(f, self.b.iperf_port, udp=udp, tag="tput")
        try:
            t0 = time.monotonic()

            def ready():
                if self._dead(ps):
                    return True
                d, _ = _iperf(listen, ["-n", "64K"], 0, slack=4)
                return d is not None

            if not procs.wait_until(ready, self.s.ready_timeout, 0.1) or self._dead(ps):
                errors.append(f"throughput block: not ready after {self.s.ready_timeout:.0f} s {self._dead(ps)}")
                return
            m["tput_ready_s"] = round(time.monotonic() - t0, 3)
            for n in (1, 8):
                before = procs.cpu_ticks(ps)
                t = time.monotonic()
                with procs.RssSampler(ps) as rs:
                    d, err = _iperf(listen, ["-t", str(self.s.tcp_seconds), "-P", str(n)], self.s.tcp_seconds)
                wall = time.monotonic() - t
                cpu = (procs.cpu_ticks(ps) - before) / procs.CLK_TCK
                if d is None:
                    errors.append(f"iperf3 -P{n}: {err}")
                    # A failed test can leave the server stuck; the new one has
                    # another port, so this forwarder instance is done.
                    self.b.restart_iperf()
                    return
                    continue
                rcv = d["end"]["sum_received"]
                gb = rcv["bytes"] / 1e9
                m[f"tcp{n}_gbps"] = round(rcv["bits_per_second"] / 1e9, 3)
                raw[f"iperf_tcp_P{n}"] = {"end": {"sum_received": rcv, "sum_sent": d["end"].get("sum_sent"), "cpu_utilization_percent": d["end"].get("cpu_utilization_percent")}}
                if ps:
                    m[f"cpu_s_per_gb_{n}"] = round(cpu / gb, 3) if gb > 0 else None
                    m[f"cpu_cores_{n}"] = round(cpu / wall, 2)
                    m[f"rss_peak_{n}_kib"] = rs.peak_kib
            if udp or f.kind == "direct":
                d, err = _iperf(listen, ["-u", "-b", self.s.udp_rate, "-l", "1400", "-w", "2M", "-t", str(self.s.udp_seconds)], self.s.udp_seconds)
                if d is None:
                    errors.append(f"iperf3 -u: {err}")
                    self.b.restart_iperf()
                else:
                    end = d["end"]
                    s = end.get("sum_received") or end.get("sum") or {}
                    summ = end.get("sum") or {}
                    m["udp_mbps"] = round(s.get("bits_per_second", 0) / 1e6, 1)
                    lost = summ.get("lost_percent", s.get("lost_percent"))
                    m["udp_loss_pct"] = round(lost, 2) if lost is not None else None
                    raw["iperf_udp"] = {"sum": summ, "sum_received": end.get("sum_received"), "sum_sent": end.get("sum_sent")}
            dead = self._dead(ps)
            if dead:
                errors.append(f"throughput block: {dead}")
        finally:
            t = time.monotonic()
            procs.stop_sessions(ps, grace=3)
            if ps:
                m["stop_tput_s"] = round(time.monotonic() - t, 2)

    # ------------------------------------------------------------ run

    def run(self, fwds: list[Forwarder]) -> dict:
        out = {f.name: {"reps": []} for f in fwds}
        for r in range(self.s.reps):
            order = fwds[r % len(fwds) :] + fwds[: r % len(fwds)]
            for f in order:
                if time.monotonic() > self.deadline:
                    self.log(f"  time bound reached: skipping {f.name} rep {r + 1}")
                    out[f.name]["reps"].append({"rep": r, "skipped": "time bound"})
                    continue
                m, raw, errors = {}, {}, []
                t = time.monotonic()
                try:
                    self.latency_block(f, m, raw, errors)
                    self.throughput_block(f, m, raw, errors)
                except Exception as e:  # one forwarder's failure must not end the run
                    errors.append(f"{type(e).__name__}: {e}")
                took = time.monotonic() - t
                self.log(f"  rep {r + 1}/{self.s.reps} {f.name:20} {took:5.1f} s  " + _brief(m) + (f"  ERRORS: {errors}" if errors else ""))
                out[f.name]["reps"].append({"rep": r, "metrics": m, "raw": raw, "errors": errors})
        return out


def _brief(m: dict) -> str:
    def g(k, fmt):
        v = m.get(k)
        return fmt.format(v) if v is not None else "-"

    return (
        f"tcp1 {g('tcp1_gbps', '{:.1f}')} tcp8 {g('tcp8_gbps', '{:.1f}')} Gbit/s, "
        f"rtt p50 {g('rtt_p50_us', '{:.1f}')} µs, conn {g('conn1_rate', '{:.0f}')}/{g('conn64_rate', '{:.0f}')} /s, "
        f"udp {g('udp_mbps', '{:.0f}')} Mbit/s loss {g('udp_loss_pct', '{:.2f}')}%"
    )
