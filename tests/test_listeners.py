"""While a search runs, what listens beyond loopback is Ray's own, and Ray runs with token authentication."""
import os
import socket
import subprocess
import sys
import time

from conftest import ROOT

RAY_PACKAGE = os.path.dirname(__import__("ray").__file__)


def listeners() -> list[tuple[str, int, int]]:
    """(ip, port, pid) of every listening TCP socket of this machine, from /proc (no psutil in the project)."""
    inodes = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":   # LISTEN
                continue
            ip, port = f[1].split(":")
            raw = bytes.fromhex(ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))   # each 32-bit word is little-endian
            inodes[f"socket:[{f[9]}]"] = (socket.inet_ntop(family, raw), int(port, 16))
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        out += [(*inodes[link], int(pid)) for link in links if link in inodes]
    return out


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environ(pid: int) -> dict:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return {}
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def test_a_search_listens_beyond_loopback_only_through_ray_with_its_token_on(tmp_path):
    before = {(ip, port) for ip, port, _ in listeners()}
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}   # Ray's default for a new local Ray
    p = subprocess.Popen([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--samples", "2",
                          "--max-epochs", "2", "--grace-period", "1", "--name", "l", "--results", str(tmp_path),
                          "--data", "synthetic:train=20,val=10,px=64,seed=3"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    holders, auth, kinds = {}, {}, {}   # {(ip, port): pids holding the socket}: forked children share it
    deadline = time.time() + 600
    while p.poll() is None and time.time() < deadline:
        for ip, port, pid in listeners():
            if (ip, port) not in before:
                holders.setdefault((ip, port), set()).add(pid)
                auth.setdefault(pid, environ(pid).get("RAY_AUTH_MODE"))   # as the process was started
                kinds.setdefault(pid, cmdline(pid))
        time.sleep(0.3)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 0, out[-3000:]

    def rays(pid):
        return kinds[pid].startswith("ray::") or f"{RAY_PACKAGE}/" in kinds[pid]
    servers = [pid for pid, c in kinds.items() if "gcs_server" in c or "raylet" in c]
    assert servers, f"no Ray server seen listening: {kinds}"      # the check saw the search's Ray
    beyond = {addr: pids for addr, pids in holders.items() if addr[0] not in ("127.0.0.1", "::1")}
    driver = [addr for addr, pids in beyond.items() if p.pid in pids]
    # the driver's only one is the gRPC server of Ray's core worker, which every Ray driver runs
    assert len(driver) <= 1, f"the driver listens on {driver}"
    for addr, pids in beyond.items():
        assert addr in driver or any(map(rays, pids)), \
            f"not Ray's, listening on {addr}: {[kinds[pid][:200] for pid in pids]}"
    assert {auth[pid] for pid in servers} == {"token"}, auth   # started by the driver with token authentication on
