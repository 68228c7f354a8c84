"""One real `drover` master for scripts/api-fuzz and scripts/soak.

1. `Master.start` runs `drover "master://127.0.0.1:0/api?log=info"` (through
   benchlib.procs: own session, wrapped in `timeout`, log to a file) with
   `DROVER_DATA_DIR` set, and reads the API key (first start only) and the
   bound port from its log.
2. `Master.kill9` SIGKILLs the master process only; `Master.start` again on
   the same data dir (with the key of the first start) is a restart.
3. `Api` talks HTTP/1.1 with `http.client`, one connection per thread; a
   write is never retried, so an answer is exactly what the master said to
   that one request (the soak counts on it to track acknowledged changes).
4. `/proc` readings: RSS, open descriptors, and `drover-worker` processes
   in a set of sessions.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from pathlib import Path

from benchlib import procs

ANSI = re.compile(r"\x1b\[[0-9;]*m")
KEY_RE = re.compile(r"API Key created: ([0-9a-f]{32})")
# A kept-alive connection is reused only if used within this many seconds.
IDLE_REUSE_S = 2.0
LISTEN_RE = re.compile(r"API listening on http://127\.0\.0\.1:(\d+)(/\S*)")


class Master:
    def __init__(self, proc: procs.Proc, pid: int, port: int, prefix: str, key: str, data: Path):
        self.proc, self.pid, self.port, self.prefix, self.key, self.data = proc, pid, port, prefix, key, data
        self.api = Api(port, prefix, key)

    @classmethod
    def start(
        cls,
        drover: str,
        worker: str,
        workdir: Path,
        data: Path,
        name: str,
        key: str | None = None,
        limit_s: float | None = None,
        extra_env: dict | None = None,
        port: int = 0,
    ) -> "Master":
        env = {
            "DROVER_DATA_DIR": str(data),
            "DROVER_WORKER_BIN": worker,
            "DROVER_TENANT_DIR": str(workdir / "tenants"),
        }
        env.update(extra_env or {})
        proc = procs.start(
            name,
            [drover, f"master://{procs.addr(port)}/api?log=info"],
            workdir,
            env=env,
            limit_s=limit_s,
        )
        port = prefix = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = ANSI.sub("", proc.log.read_text(errors="replace"))
            if key is None and (m := KEY_RE.search(text)):
                key = m.group(1)
            if m := LISTEN_RE.search(text):
                port, prefix = int(m.group(1)), m.group(2)
            if port and key:
                break
            if not proc.alive():
                break
            time.sleep(0.05)
        if not (port and key):
            raise RuntimeError(f"master {name} did not come up:\n{proc.tail(30)}")
        pid = next((s["pid"] for s in proc.members() if s["comm"] == "drover"), proc.popen.pid)
        return cls(proc, pid, port, prefix, key, data)

    def alive(self) -> bool:
        st = procs.proc_stat(self.pid)
        return st is not None and st["state"] not in ("Z", "X")

    def rss_kib(self) -> int:
        return procs.rss_kib(self.pid) or 0

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0

    def kill9(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        try:
            self.proc.popen.wait(timeout=30)
        except Exception:
            pass

    def stop(self, grace: float = 30) -> int | None:
        """SIGTERM (graceful: workers drain), then the session is cleaned up."""
        try:
            os.kill(self.pid, 15)
        except ProcessLookupError:
            pass
        procs.wait_until(lambda: not self.alive(), grace)
        procs.stop_sessions([self.proc], grace=2)
        return self.proc.popen.returncode


class Api:
    def __init__(self, port: int, prefix: str, key: str, timeout: float = 30):
        self.port, self.prefix, self.key, self.timeout = port, prefix, key, timeout
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        # The master closes a connection after 5 s idle (keep-alive); a write
        # is never retried, so a connection that may be stale is not reused.
        if c is not None and time.monotonic() - getattr(self.local, "used", 0) > IDLE_REUSE_S:
            c.close()
            c = None
        self.local.used = time.monotonic()
        if c is None:
            c = http.client.HTTPConnection(procs.check_loopback("127.0.0.1"), self.port, timeout=self.timeout)
            self.local.conn = c
        return c

    def call(self, method: str, path: str, body=None) -> tuple[int, object]:
        """One request; `(0, error text)` if no answer came (never retried)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-API-Key": self.key}
        if data is not None:
            headers["Content-Type"] = "application/json"
        c = self._conn()
        try:
            c.request(method, self.prefix + path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
        except (http.client.HTTPException, OSError) as e:
            c.close()
            self.local.conn = None
            return 0, f"{type(e).__name__}: {e}"
        self.local.used = time.monotonic()
        if r.getheader("Connection", "").lower() == "close":
            c.close()
            self.local.conn = None
        try:
            return r.status, (json.loads(raw) if raw else None)
        except ValueError:
            return r.status, raw.decode(errors="replace")

    def get_ok(self, path: str):
        st, v = self.call("GET", path)
        if st != 200:
            raise RuntimeError(f"GET {path}: {st} {v}")
        return v


def workers_in(sessions: set[int]) -> list[dict]:
    """Live `drover-worker` processes in `sessions` (zombies excluded)."""
    return [
        s
        for s in procs.all_stats()
        if s["session"] in sessions and s["comm"] == "drover-worker" and s["state"] not in ("Z", "X")
    ]


def raise_nofile(want: int) -> int:
    """Raises the soft RLIMIT_NOFILE towards `want` (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def binaries(root: Path, profile: str) -> tuple[str, str]:
    """`drover` and `drover-worker` of `profile` (env DROVER_BIN / DROVER_WORKER_BIN win)."""
    drover = os.environ.get("DROVER_BIN") or str(root / "target" / profile / "drover")
    worker = os.environ.get("DROVER_WORKER_BIN") or str(root / "target" / profile / "drover-worker")
    for b in (drover, worker):
        if not Path(b).is_file():
            raise SystemExit(f"{b} not found: run `cargo build --{profile} --workspace --bins` first"
                             if profile == "release" else f"{b} not found: run `cargo build --workspace --bins` first")
    return drover, worker
