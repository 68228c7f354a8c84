"""Targeted attacks on a running master for scripts/api-fuzz (the CI
versions, smaller, are tests/e2e/api_attack.rs). Each returns a dict of
figures and a list of problems (empty when the master held).
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time

from benchlib import procs

from .master import Master


_PORTS = procs.Ports()


def _server_url() -> str:
    """A reverse server on fresh loopback ports (runs without a client)."""
    return f"server://{procs.addr(_PORTS.take())}/{procs.addr(_PORTS.take())}?mode=1"


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _request(m: Master, method: str, path: str, extra: list[bytes] = (), body: bytes | None = None) -> bytes:
    head = f"{method} {m.prefix}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {m.key}\r\n".encode()
    for line in extra:
        head += line + b"\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
    return head + b"\r\n" + (body or b"")


def exchange(m: Master, raw: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Sends `raw` (from a thread, so an early answer is read meanwhile) and
    reads one response: status, headers (lowercase), body. Status 0: none."""
    s = socket.create_connection((procs.LOOPBACK, m.port), timeout=timeout)

    def send():
        try:
            s.sendall(raw)
        except OSError:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    buf = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
                if len(rest) >= int(hdrs.get("content-length", "0")):
                    return int(lines[0].split()[1]), hdrs, rest
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    finally:
        s.close()
    return 0, {}, buf


def _is_json_error(status: int, hdrs: dict, body: bytes, want: int) -> bool:
    if status != want or not hdrs.get("content-type", "").startswith("application/json"):
        return False
    try:
        v = json.loads(body)
    except ValueError:
        return False
    return isinstance(v, dict) and list(v) == ["error"] and isinstance(v["error"], str)


def big_bodies(m: Master, rounds: int = 4) -> tuple[dict, list[str]]:
    """10 MiB bodies on every route that takes one: 413 JSON, not buffered."""
    problems = []
    inst = m.api.call("POST", "/instances", {"url": _server_url()})
    iid = inst[1]["id"] if inst[0] == 201 else "00000000"
    big = b'{"url":"' + b"x" * (10 << 20) + b'"}'
    hwm0 = _status_kib(m.pid, "VmHWM")
    n = 0
    for _ in range(rounds):
        for method, path in [("POST", "/instances"), ("PATCH", f"/instances/{iid}"), ("PUT", f"/instances/{iid}"), ("POST", "/info"), ("PUT", "/clients/x")]:
            st, h, b = exchange(m, _request(m, method, path, body=big))
            n += 1
            if not _is_json_error(st, h, b, 413):
                problems.append(f"10 MiB {method} {path}: {st} {b[:120]!r}")
    hwm = _status_kib(m.pid, "VmHWM")
    if hwm - hwm0 > 8 * 1024:
        problems.append(f"10 MiB bodies: master peak RSS grew {hwm - hwm0} KiB")
    if iid != "00000000":
        m.api.call("DELETE", f"/instances/{iid}")
    return {"requests": n, "peak_rss_growth_kib": hwm - hwm0}, problems


def malformed(m: Master, rounds: int = 20) -> tuple[dict, list[str]]:
    """Deep nesting, invalid UTF-8, header floods, NUL in a header."""
    problems = []
    cases = [
        ("100k [", _request(m, "POST", "/instances", body=b"[" * 100_000), 413, True),
        ("60k [", _request(m, "POST", "/instances", body=b"[" * 60_000), 400, True),
        ("30k nested", _request(m, "POST", "/info", body=b"[" * 30_000 + b"]" * 30_000), 400, True),
        ("objects 10k deep", _request(m, "POST", "/instances", body=b'{"a":' * 10_000), 400, True),
        ("invalid UTF-8 body", _request(m, "POST", "/instances", body=b'{"url":"\xff\xfe"}'), 400, True),
        ("invalid UTF-8 key", _request(m, "GET", "/info").replace(m.key.encode(), b"\xff" * 32), 401, True),
        ("invalid UTF-8 header", _request(m, "GET", "/info", [b"X-Odd: \xff\xfe"]), 200, False),
        ("200 headers", _request(m, "GET", "/info", [f"X-F{i}: v".encode() for i in range(200)]), 431, False),
        ("5000 headers", _request(m, "GET", "/info", [f"X-F{i}: {'v' * 30}".encode() for i in range(5000)]), 431, False),
        ("256 KiB header", _request(m, "GET", "/info", [b"X-Big: " + b"a" * (256 << 10)]), 431, False),
        ("NUL in header", _request(m, "GET", "/info", [b"X-Nul: a\0b"]), 400, False),
    ]
    n = 0
    for _ in range(rounds):
        for name, raw, want, json_body in cases:
            st, h, b = exchange(m, raw)
            n += 1
            ok = _is_json_error(st, h, b, want) if json_body else st == want
            if not ok:
                problems.append(f"{name}: {st} {b[:120]!r}")
    return {"requests": n, "kinds": len(cases)}, problems


def idle_flood(m: Master, count: int, probes: int = 50) -> tuple[dict, list[str]]:
    """`count` connections that send nothing (a tenth stop inside a request
    head); meanwhile requests on new connections must be answered. Then the
    master must close the idle ones itself."""
    problems = []
    fds0 = m.fds()
    socks = []
    t0 = time.monotonic()
    try:
        for i in range(count):
            try:
                s = socket.create_connection((procs.LOOPBACK, m.port), timeout=30)
            except OSError as e:
                problems.append(f"idle connection {i}: {e}")
                break
            if i % 10 == 0:
                s.sendall(f"GET {m.prefix}/info HTTP/1.1\r\nHost: x\r\nX-Api".encode())
            socks.append(s)
        opened_s = time.monotonic() - t0
        peak_fds = m.fds()
        lat = []
        for _ in range(probes):
            api = type(m.api)(m.port, m.prefix, m.key, timeout=30)
            t = time.perf_counter()
            st, _ = api.call("GET", "/info")
            lat.append((time.perf_counter() - t) * 1000)
            api._conn().close()
            if st != 200:
                problems.append(f"GET /info with {len(socks)} idle connections open: {st}")
        # The master ends them (client request timeout); wait for every EOF.
        sel = selectors.DefaultSelector()
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        pending = len(socks)
        deadline = time.monotonic() + 180
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                try:
                    done = not key.fileobj.recv(65536)
                except OSError:
                    done = True
                if done:
                    sel.unregister(key.fileobj)
                    pending -= 1
        sel.close()
        closed_s = time.monotonic() - t0
        if pending:
            problems.append(f"{len(pending)} idle connections still open after 180 s")
    finally:
        for s in socks:
            s.close()
    procs.wait_until(lambda: m.fds() <= fds0 + 4, 30, period=0.2)
    if m.fds() > fds0 + 4:
        problems.append(f"master descriptors {fds0} before, {m.fds()} after the idle flood")
    return {
        "connections": len(socks),
        "open_s": round(opened_s, 1),
        "master_fds_peak": peak_fds,
        "master_fds_after": m.fds(),
        "info_p50_ms": round(procs.pct(lat, 50) or 0, 1),
        "info_max_ms": round(max(lat) if lat else 0, 1),
        "all_closed_by_master_s": round(closed_s, 1),
    }, problems


def sse_stall(m: Master, stalled: int = 64, events: int = 500) -> tuple[dict, list[str]]:
    """`stalled` SSE clients that never read while `events` frames of ~60 KiB
    are published; a reading subscriber must get them all, the master's RSS
    must stay bounded, and the stalled streams must be gone once closed."""
    problems = []
    st, inst = m.api.call("POST", "/instances", {"url": _server_url()})
    if st != 201:
        return {}, [f"sse: create: {st} {inst}"]
    iid = inst["id"]
    got_last = threading.Event()
    stop = threading.Event()
    received = [0]

    def reader():
        s = socket.create_connection((procs.LOOPBACK, m.port), timeout=5)
        s.sendall(_request(m, "GET", "/events"))
        buf = b""
        while not stop.is_set():
            try:
                chunk = s.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            received[0] += len(chunk)
            buf = (buf + chunk)[-200_000:]
            if b'"alias":"last"' in buf:
                got_last.set()
        s.close()

    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    socks = []
    for _ in range(stalled):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((procs.LOOPBACK, m.port))
        s.sendall(_request(m, "GET", "/events"))
        socks.append(s)

    def subscribers() -> int:
        st, text = m.api.call("GET", "/metrics")
        for line in str(text).splitlines():
            if line.startswith("drover_sse_subscribers "):
                return int(float(line.split()[1]))
        return -1

    procs.wait_until(lambda: subscribers() == stalled + 1, 30, period=0.2)
    rss0 = m.rss_kib()
    t0 = time.monotonic()
    for n in range(events):
        tags = {f"t{t:03}-{n}": f"{n:0>256}" for t in range(230)}
        alias = "last" if n + 1 == events else str(n)
        st, v = m.api.call("PATCH", f"/instances/{iid}", {"alias": alias, "meta": {"tags": tags}})
        if st != 200:
            problems.append(f"sse: PATCH {n}: {st} {v}")
            break
    publish_s = time.monotonic() - t0
    if not got_last.wait(60):
        problems.append("sse: the reading subscriber did not get the last event")
    rss1 = m.rss_kib()
    for s in socks:
        s.close()
    gone = procs.wait_until(lambda: subscribers() == 1, 60, period=0.5)
    if not gone:
        problems.append(f"sse: {subscribers()} subscribers registered after the stalled ones closed")
    stop.set()
    rt.join(timeout=10)
    m.api.call("DELETE", f"/instances/{iid}")
    published_mb = events * 60 * 1024 / 1e6
    if rss1 - rss0 > 128 * 1024:
        problems.append(f"sse: master RSS grew {(rss1 - rss0) // 1024} MiB with {stalled} stalled streams")
    return {
        "stalled_streams": stalled,
        "events": events,
        "published_mb": round(published_mb, 1),
        "unbounded_would_hold_mb": round(published_mb * stalled),
        "publish_s": round(publish_s, 1),
        "reader_mb": round(received[0] / 1e6, 1),
        "master_rss_before_mib": rss0 // 1024,
        "master_rss_after_mib": rss1 // 1024,
    }, problems
