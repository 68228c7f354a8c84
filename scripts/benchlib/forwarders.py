"""What is measured on the data plane: `direct`, Drover's shapes, and peers.

A forwarder makes 127.0.0.1:LISTEN forward to 127.0.0.1:TARGET (TCP, and UDP on
the same port number when `udp` is set) and is one or more processes, each
started by `procs.start` in a session of its own. All of them are measured
(RSS, CPU): a tunnel's server and client alike.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import procs

NGINX_STREAM_MODULES = [
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/share/nginx/modules/ngx_stream_module.so",
]


@dataclass
class Forwarder:
    name: str  # key in results and table columns
    kind: str  # direct | drover | peer
    label: str  # human description
    shape: str | None = None  # drover: single | reverse | forward
    tls: int = 0
    needs: tuple[str, ...] = ()
    udp_capable: bool = True
    worker: str = ""  # drover-worker path

    # ------------------------------------------------------------ start

    def start(self, listen: int, target: int, aux: int, workdir: Path, udp: bool) -> list[procs.Proc]:
        """Starts the forwarder; returns its processes (none for direct)."""
        if self.kind == "direct":
            return []
        workdir.mkdir(parents=True, exist_ok=True)
        cmds = getattr(self, "_cmd_" + self.name.replace("-", "_").split("_")[0])(
            listen, target, aux, workdir, udp
        )
        env = {"RUST_LOG": "warn"}
        if "DROVER_WORKER_THREADS" in os.environ:
            env["DROVER_WORKER_THREADS"] = os.environ["DROVER_WORKER_THREADS"]
        out = []
        for i, (tag, cmd) in enumerate(cmds):
            out.append(procs.start(f"{self.name}-{tag}-{listen}", cmd, workdir, env=env))
        return out

    def _cmd_drover(self, L, T, A, wd, udp):
        w = self.worker
        tls = "&tls=1" if self.tls else ""
        if self.shape == "single":
            return [("client", [w, f"client://127.0.0.1:{L}/127.0.0.1:{T}?mode=1"])]
        if self.shape == "reverse":
            return [
                ("server", [w, f"server://127.0.0.1:{A}/127.0.0.1:{L}?mode=1{tls}"]),
                ("client", [w, f"client://127.0.0.1:{A}/127.0.0.1:{T}?mode=2"]),
            ]
        if self.shape == "forward":
            return [
                ("server", [w, f"server://127.0.0.1:{A}/127.0.0.1:{T}?mode=2{tls}"]),
                ("client", [w, f"client://127.0.0.1:{A}/127.0.0.1:{L}?mode=2"]),
            ]
        raise ValueError(self.shape)

    def _cmd_socat(self, L, T, A, wd, udp):
        cmds = [
            (
                "tcp",
                [
                    "socat",
                    f"TCP-LISTEN:{L},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
                    f"TCP:127.0.0.1:{T}",
                ],
            )
        ]
        if udp:
            cmds.append(
                ("udp", ["socat", f"UDP-LISTEN:{L},bind=127.0.0.1,reuseaddr,fork", f"UDP:127.0.0.1:{T}"])
            )
        return cmds

    def _cmd_haproxy(self, L, T, A, wd, udp):
        cfg = wd / "haproxy.cfg"
        cfg.write_text(
            "global\n"
            "  maxconn 8000\n"
            "defaults\n"
            "  mode tcp\n"
            "  timeout connect 5s\n"
            "  timeout client 120s\n"
            "  timeout server 120s\n"
            "frontend bench_in\n"
            f"  bind 127.0.0.1:{L}\n"
            "  default_backend bench_out\n"
            "backend bench_out\n"
            f"  server target 127.0.0.1:{T}\n"
        )
        return [("tcp", ["haproxy", "-db", "-q", "-f", str(cfg)])]

    def _cmd_nginx(self, L, T, A, wd, udp):
        load = ""
        for m in NGINX_STREAM_MODULES:
            if Path(m).exists():
                load = f"load_module {m};\n"
                break
        udp_server = ""
        if udp:
            # reuseport: one socket per worker, so one client's datagrams all go
            # through one worker and one upstream socket (iperf3 needs that).
            udp_server = (
                f"  server {{ listen 127.0.0.1:{L} udp reuseport; proxy_pass 127.0.0.1:{T}; "
                "proxy_timeout 30s; }\n"
            )
        cfg = wd / "nginx.conf"
        cfg.write_text(
            load + "daemon off;\n"
            "worker_processes auto;\n"
            "worker_rlimit_nofile 16384;\n"
            f"pid {wd}/nginx.pid;\n"
            f"error_log {wd}/nginx-error.log warn;\n"
            "events { worker_connections 8192; }\n"
            "stream {\n"
            f"  server {{ listen 127.0.0.1:{L} backlog=4096; proxy_pass 127.0.0.1:{T}; }}\n"
            + udp_server
            + "}\n"
        )
        return [("nginx", ["nginx", "-p", str(wd), "-e", str(wd / "nginx-error.log"), "-c", str(cfg)])]

    def _cmd_rathole(self, L, T, A, wd, udp):
        token = secrets.token_hex(16)
        server = wd / "server.toml"
        client = wd / "client.toml"
        s = f'[server]\nbind_addr = "127.0.0.1:{A}"\ndefault_token = "{token}"\n\n'
        s += f'[server.services.bench_tcp]\nbind_addr = "127.0.0.1:{L}"\n'
        c = f'[client]\nremote_addr = "127.0.0.1:{A}"\ndefault_token = "{token}"\n\n'
        c += f'[client.services.bench_tcp]\nlocal_addr = "127.0.0.1:{T}"\n'
        if udp:
            s += f'\n[server.services.bench_udp]\ntype = "udp"\nbind_addr = "127.0.0.1:{L}"\n'
            c += f'\n[client.services.bench_udp]\ntype = "udp"\nlocal_addr = "127.0.0.1:{T}"\n'
        server.write_text(s)
        client.write_text(c)
        return [("server", ["rathole", "-s", str(server)]), ("client", ["rathole", "-c", str(client)])]

    # ------------------------------------------------------------ detection

    def missing(self) -> list[str]:
        miss = [n for n in self.needs if shutil.which(n) is None]
        if self.name.startswith("nginx") and not miss and not nginx_stream_available():
            miss.append("nginx stream module (libnginx-mod-stream)")
        return miss


def nginx_stream_available() -> bool:
    if any(Path(m).exists() for m in NGINX_STREAM_MODULES):
        return True
    r = procs.run(["nginx", "-V"], timeout=10)
    text = r.stdout + r.stderr
    return "--with-stream" in text and "--with-stream=dynamic" not in text


def all_forwarders(worker: str) -> list[Forwarder]:
    d = [
        Forwarder("direct", "direct", "no forwarder: clients talk to the backend"),
        Forwarder("drover-single", "drover", "single-end forward (`client://…?mode=1`)", "single", 0, udp_capable=True),
        Forwarder("drover-reverse", "drover", "reverse tunnel, tls=0", "reverse", 0),
        Forwarder("drover-reverse-tls", "drover", "reverse tunnel, tls=1", "reverse", 1),
        Forwarder("drover-forward", "drover", "forward tunnel, tls=0", "forward", 0),
        Forwarder("drover-forward-tls", "drover", "forward tunnel, tls=1", "forward", 1),
        Forwarder("socat", "peer", "socat, fork per connection", needs=("socat",)),
        Forwarder("haproxy", "peer", "HAProxy, mode tcp", needs=("haproxy",), udp_capable=False),
        Forwarder("nginx", "peer", "nginx stream module", needs=("nginx",)),
        Forwarder("rathole", "peer", "rathole tunnel (server + client, TCP transport)", needs=("rathole",)),
    ]
    for f in d:
        if f.kind == "drover":
            f.worker = worker
    return d


VERSION_CMDS = {
    "socat": (["socat", "-V"], "socat version"),
    "haproxy": (["haproxy", "-v"], "HAProxy version"),
    "nginx": (["nginx", "-v"], "nginx version"),
    "rathole": (["rathole", "--version"], ""),
    "iperf3": (["iperf3", "--version"], "iperf"),
}


def version_of(tool: str) -> str | None:
    cmd, marker = VERSION_CMDS[tool]
    if shutil.which(cmd[0]) is None:
        return None
    r = procs.run(cmd, timeout=10)
    lines = [l.strip() for l in (r.stdout + "\n" + r.stderr).splitlines() if l.strip()]
    if tool == "rathole":
        for l in lines:
            if "Build Version" in l:
                return "rathole " + l.split(":", 1)[1].strip()
        return lines[0] if lines else "rathole (unknown version)"
    for l in lines:
        if marker in l:
            return l.split(" - ")[0].split(" running on")[0]
    return lines[0] if lines else None


def install_peers() -> int:
    """Installs the peers from Debian packages and crates.io (root)."""
    apt = [
        "iperf3",
        "socat",
        "haproxy",
        "nginx",
        "libnginx-mod-stream",
        "procps",
        # rathole's default features build against OpenSSL.
        "pkg-config",
        "libssl-dev",
    ]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    import os
    import subprocess

    e = dict(os.environ, **env)
    steps = [["apt-get", "update"], ["apt-get", "install", "-y", *apt]]
    for s in steps:
        print("+", " ".join(s), flush=True)
        if subprocess.call(s, env=e, timeout=1800) != 0:
            print(f"bench: {' '.join(s)} failed")
            return 1
    if shutil.which("rathole") is None:
        # rathole 0.5.0's lock file pins a `time` release that current rustc
        # rejects, so --locked can fail; then let cargo resolve afresh.
        for s in (["cargo", "install", "rathole", "--locked"], ["cargo", "install", "rathole"]):
            print("+", " ".join(s), flush=True)
            if subprocess.call(s, timeout=3600) == 0:
                break
        else:
            print("bench: cargo install rathole failed")
            return 1
    print("peers installed:")
    for t in VERSION_CMDS:
        print(f"  {t:8} {version_of(t) or 'MISSING'}")
    return 0
