"""Processes, ports and /proc readings for scripts/bench.

Every long-running process is started in a session of its own, wrapped in
`timeout` (so nothing outlives a crashed or killed bench run by more than the
run's bound), and registered so that `cleanup()` — called on normal exit, on
Ctrl-C and on SIGTERM — stops it: SIGTERM to the session's process group,
SIGKILL after a grace period, then SIGKILL to any straggler still in the
session (e.g. a drover master's workers, which run in groups of their own).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"
# Wrapper processes that are not part of what is measured.
WRAPPERS = {"timeout", "bash", "sh", "dash"}


def check_loopback(host: str) -> str:
    """Refuses anything that is not a loopback address."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host}: scripts/bench only uses loopback addresses")
    return host


def addr(port: int) -> str:
    return f"{check_loopback(LOOPBACK)}:{int(port)}"


# ---------------------------------------------------------------- ports


class Ports:
    """Hands out ports that are free for both TCP and UDP on 127.0.0.1.

    Taken from below the ephemeral range (32768+ on Linux), so an outgoing
    connection can never grab a port between the check and the bind; a port is
    never handed out twice in one run.
    """

    def __init__(self, lo: int = 20000, hi: int = 32000):
        self.next = lo
        self.hi = hi
        self.lock = threading.Lock()

    @staticmethod
    def _free(port: int) -> bool:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
            finally:
                s.close()
        return True

    def take(self) -> int:
        with self.lock:
            while self.next < self.hi:
                p = self.next
                self.next += 1
                if self._free(p):
                    return p
        raise RuntimeError("no free loopback ports left in 20000-32000")


# ---------------------------------------------------------------- /proc


def proc_stat(pid: int) -> dict | None:
    """state, ppid, pgrp, session, comm and CPU ticks of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    lp, rp = raw.find("("), raw.rfind(")")
    f = raw[rp + 2 :].split()
    return {
        "pid": pid,
        "comm": raw[lp + 1 : rp],
        "state": f[0],
        "ppid": int(f[1]),
        "pgrp": int(f[2]),
        "session": int(f[3]),
        # utime stime + reaped children's cutime cstime
        "ticks": int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]),
    }


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return 0  # zombie: no VmRSS line


def all_stats() -> list[dict]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st is not None:
                out.append(st)
    return out


def session_members(sessions: set[int]) -> list[dict]:
    return [s for s in all_stats() if s["session"] in sessions]


# ---------------------------------------------------------------- processes

_registry: list["Proc"] = []
_registry_lock = threading.Lock()
# Default wall-clock bound of every long-running process (set by the CLI).
LIMIT_S = 3600


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path | None
    extra_pids: set[int] = field(default_factory=set)

    @property
    def sid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def members(self) -> list[dict]:
        """Processes of this session that are measured (no wrappers, no zombies)."""
        return [
            s
            for s in session_members({self.sid})
            if s["comm"] not in WRAPPERS and s["state"] != "Z"
        ]

    def stop(self, grace: float = 3.0) -> None:
        stop_sessions([self], grace)

    def tail(self, n: int = 15) -> str:
        if self.log is None:
            return ""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start(
    name: str,
    cmd: list[str],
    logdir: Path,
    env: dict | None = None,
    stdout=None,
    limit_s: float | None = None,
    cwd: str | None = None,
    stdin=subprocess.DEVNULL,
) -> Proc:
    """Starts `cmd` in a new session under `timeout`, stderr (and stdout unless
    given) to `logdir/<name>.log`."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    fh = open(log, "ab")
    limit = int(limit_s or LIMIT_S)
    full = ["timeout", "-k", "5", str(limit), *cmd]
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.Popen(
        full,
        stdin=stdin,
        stdout=stdout if stdout is not None else fh,
        stderr=fh,
        env=e,
        cwd=cwd,
        start_new_session=True,
    )
    fh.close()
    proc = Proc(name, p, log)
    with _registry_lock:
        _registry.append(proc)
    return proc


def _signal_sessions(procs: list[Proc], sig: int) -> None:
    sids = {p.sid for p in procs}
    for p in procs:
        try:
            os.killpg(p.sid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    # Stragglers in other groups of the same sessions (e.g. drover workers).
    if sig == signal.SIGKILL:
        for s in session_members(sids):
            try:
                os.kill(s["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            for pid in p.extra_pids:
                st = proc_stat(pid)
                if st is not None and st["session"] in sids | {pid}:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


def stop_sessions(procs: list[Proc], grace: float = 3.0) -> None:
    procs = [p for p in procs if p is not None]
    _signal_sessions(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    _signal_sessions(procs, signal.SIGKILL)
    for p in procs:
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with _registry_lock:
            if p in _registry:
                _registry.remove(p)


def cleanup() -> None:
    with _registry_lock:
        procs = list(_registry)
    if procs:
        stop_sessions(procs, grace=2.0)


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Runs a bounded command, capturing output (never raises on exit status)."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f} s")
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


# ---------------------------------------------------------------- CPU placement


def set_affinity(pids: list[int], cpus: set[int]) -> None:
    """Every thread of every pid onto `cpus` (threads spawned later inherit it
    from the thread that spawns them). A process that exits meanwhile is skipped."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


# ---------------------------------------------------------------- sampling


def cpu_ticks(procs: list[Proc]) -> int:
    return sum(s["ticks"] for p in procs for s in p.members())


def rss_by_process(procs: list[Proc]) -> list[dict]:
    out = []
    for p in procs:
        for s in p.members():
            r = rss_kib(s["pid"])
            if r is not None:
                out.append({"proc": p.name, "pid": s["pid"], "comm": s["comm"], "rss_kib": r})
    return out


class RssSampler:
    """Samples the summed RSS of `procs` every `period` s until stopped."""

    def __init__(self, procs: list[Proc], period: float = 0.2):
        self.procs, self.period = procs, period
        self.peak_kib = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            total = sum(r["rss_kib"] for r in rss_by_process(self.procs))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.period)

    def __enter__(self):
        if self.procs:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._t.is_alive():
            self._t.join(timeout=2)


# ---------------------------------------------------------------- sockets


def echo_once(port: int, payload: bytes = b"ready-probe", timeout: float = 1.0) -> bool:
    """One connect → send → read-the-echo exchange."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(len(payload) - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == payload
    except OSError:
        return False


def wait_until(pred, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(period)


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    import math

    rank = max(1, math.ceil(p / 100.0 * len(v)))
    return v[min(rank, len(v)) - 1]


def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
