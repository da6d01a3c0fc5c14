"""Start a group of ranks on 127.0.0.1, wait with bounded timeouts, and always clean up.

:func:`launch` hosts the rendezvous (a ``TCPStore`` on a port the OS picks, so no port race),
starts ``world_size`` worker processes (``python -m mpnn.deploy.worker``), each in its own session,
and waits for them without polling: one thread per process blocks in ``Popen.wait`` and posts the
exit to a queue. When a rank fails, the others get ``grace_s`` seconds to notice and stop by
themselves (a dead gloo peer closes its sockets, so pending transfers fail at once); whoever is
still alive after that, or after ``timeout_s`` overall, is killed (SIGTERM, then SIGKILL).
The function returns only when every worker process has been reaped.

:func:`torchrun` does the same through ``torch.distributed.run`` with a c10d rendezvous endpoint:
the command that runs the job across machines; :func:`torchrun_nodes` starts several such
"machines" (launcher processes) on one host against one c10d rendezvous, with elastic restarts.

**Who may connect.** gloo, NCCL and the c10d ``TCPStore`` authenticate nobody: any process that
reaches the rendezvous port or a rank's port can join the group, feed it tensors or stop it. So
every launcher here binds the store and the ranks to the one address it is given, ``host``
(loopback, ``127.0.0.1``, by default): the store through a socket bound to ``host``
(``TCPStore(master_listen_fd=...)``; a plain ``TCPStore`` listens on every interface), the gloo
ranks through ``GLOO_SOCKET_IFNAME`` = the interface that holds ``host``. A non-loopback ``host`` is
refused unless ``allow_remote=True``. **Multi-host runs belong on a trusted network** (a private
VLAN or a firewall that admits only the job's machines): nothing in these protocols keeps a
stranger on the same network out.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch

__all__ = ["DeployError", "RankOutcome", "LaunchResult", "launch", "torchrun", "torchrun_command",
           "torchrun_nodes", "free_port", "choose_backend", "leftover", "leftover_by_marker", "check_host",
           "interface_of", "bound_store", "listening"]


class DeployError(RuntimeError):
    """A distributed run failed; ``outcomes`` says what happened to every rank."""

    def __init__(self, message: str, outcomes: list, results: list):
        super().__init__(message)
        self.outcomes, self.results = outcomes, results


@dataclass
class RankOutcome:
    rank: int
    pid: int
    returncode: int | None
    exit_s: float | None            # seconds after start at which the process ended
    error: str | None = None        # first line of the rank's own error report
    killed_by_launcher: bool = False

    def describe(self) -> str:
        if self.returncode is not None and self.returncode < 0:
            how = f"died by signal {signal.Signals(-self.returncode).name}"
            if self.killed_by_launcher:
                how = "was still running and was killed by the launcher"
        elif self.returncode == 0:
            how = "finished"
        else:
            how = self.error or f"exited with status {self.returncode}"
        return f"rank {self.rank} (pid {self.pid}) {how}"


@dataclass
class LaunchResult:
    results: list                    # per rank, the job's result dict
    outcomes: list = field(default_factory=list)
    wall_s: float = 0.0


def leftover(pids) -> list[int]:
    """The pids among ``pids`` that still exist as live processes (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_host(host: str, allow_remote: bool = False) -> str:
    """``host`` as an IPv4 address; a non-loopback one only with ``allow_remote`` (see module doc)."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot resolve the launcher address {host!r} ({exc}); give an IPv4 address "
                          "such as 127.0.0.1", [], []) from exc
    if not addr.is_loopback and not allow_remote:
        raise DeployError(f"refusing to bind the rendezvous and the ranks to {host} ({addr}), which is not a "
                          "loopback address: gloo and the c10d store authenticate nobody, so anyone who "
                          "reaches that address can join or disrupt the job. Use host='127.0.0.1' on one "
                          "machine, or pass allow_remote=True on a trusted network only", [], [])
    return str(addr)


def interface_of(addr: str) -> str:
    """Name of the network interface that holds IPv4 address ``addr`` (``lo`` for 127.x)."""
    import fcntl
    import struct
    for _, name in socket.if_nameindex():        # SIOCGIFADDR: the interface's IPv4 address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(raw[20:24]) == addr:
            return name
    if ipaddress.ip_address(addr).is_loopback:
        return "lo"
    raise DeployError(f"no local interface holds {addr}: give one of this machine's addresses", [], [])


def bound_store(host: str, timeout_s: float, port: int = 0):
    """A ``TCPStore`` server that listens on ``host`` only (a plain one listens on every interface):
    the socket is bound here and handed over with ``master_listen_fd`` (the store then owns it)."""
    from torch.distributed import TCPStore
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    store = TCPStore(host, sock.getsockname()[1], None, True, timeout=timedelta(seconds=timeout_s),
                     wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.fileno())
    sock.detach()
    return store


def _proc_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def listening(pids) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of every TCP socket in LISTEN state owned by ``pids``, read from
    ``/proc/net/tcp`` and ``/proc/net/tcp6`` (``0.0.0.0`` / ``::`` = every interface)."""
    owner = {ino: pid for pid in pids for ino in _proc_inodes(pid)}
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in owner:          # 0A = TCP_LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = str(ipaddress.IPv6Address(raw))
                mapped = ipaddress.IPv6Address(raw).ipv4_mapped
                addr = str(mapped) if mapped else addr
            else:
                addr = str(ipaddress.IPv4Address(raw[::-1]))
            out.append((owner[f[9]], addr, int(hexport, 16)))
    return out


def leftover_by_marker(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (e.g. a run's temporary directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and leftover([int(d)]):
            found.append(int(d))
    return found


def choose_backend(device: str, world_size: int) -> tuple[str, str]:
    """``(backend, device)``: NCCL on GPUs when there is one GPU per rank, otherwise gloo on CPU
    (NCCL refuses two ranks on one GPU)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl", "cuda"
    return "gloo", "cpu"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_error(outdir: Path, rank: int, log: Path) -> str | None:
    f = outdir / f"error-{rank}.txt"
    if f.exists():
        return f.read_text().splitlines()[0]
    if log.exists() and log.stat().st_size:
        tail = log.read_text(errors="replace").strip().splitlines()
        return tail[-1] if tail else None
    return None


def launch(job: dict, world_size: int, *, timeout_s: float = 120.0, grace_s: float = 20.0,
           workdir: str | Path | None = None, threads: int = 1, env: dict | None = None,
           raise_on_failure: bool = True, host: str = "127.0.0.1", allow_remote: bool = False) -> LaunchResult:
    """Run ``job`` (see :mod:`mpnn.deploy.worker`) on ``world_size`` local ranks; see module doc.

    The store and the ranks listen on ``host`` only (loopback by default; a non-loopback address
    needs ``allow_remote=True``, and a trusted network: nothing authenticates who connects)."""
    if not 1 <= int(world_size) <= 16:
        raise ValueError(f"world_size must be between 1 and 16 on one machine, got {world_size}")
    host = check_host(host, allow_remote)
    ifname = interface_of(host)

    outdir = Path(tempfile.mkdtemp(prefix="mpnn-deploy-", dir=workdir))
    job = {"op_timeout_s": min(60.0, timeout_s), "threads": threads, **job}
    job_path = outdir / "job.pt"
    torch.save(job, job_path)
    store = bound_store(host, timeout_s)
    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                 "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": ifname, **(env or {})}
    procs, logs, done = [], [], queue.Queue()
    t_start = time.perf_counter()
    end_times: dict[int, float] = {}
    killed: set[int] = set()
    try:
        for r in range(world_size):
            log = outdir / f"log-{r}.txt"
            logs.append(log)
            with open(log, "wb") as fh:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "mpnn.deploy.worker", str(job_path), str(r), str(world_size),
                     str(store.port), host], stdout=fh, stderr=subprocess.STDOUT, env=child_env,
                    start_new_session=True))
        for r, p in enumerate(procs):
            threading.Thread(target=lambda r=r, p=p: done.put((r, p.wait())), daemon=True).start()
        deadline = t_start + timeout_s
        pending = set(range(world_size))
        while pending:
            try:
                r, rc = done.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            pending.discard(r)
            end_times[r] = time.perf_counter() - t_start
            if rc != 0:
                deadline = min(deadline, time.perf_counter() + grace_s)
    finally:
        for r, p in enumerate(procs):           # anything still alive: TERM, then KILL
            if p.poll() is None:
                killed.add(r)
                _kill_group(p, signal.SIGTERM)
        t_kill = time.perf_counter() + 3.0
        for r, p in enumerate(procs):
            try:
                p.wait(timeout=max(0.1, t_kill - time.perf_counter()))
            except subprocess.TimeoutExpired:
                _kill_group(p, signal.SIGKILL)
                p.wait()
            end_times.setdefault(r, time.perf_counter() - t_start)
        del store
    wall = time.perf_counter() - t_start
    outcomes, results = [], []
    for r, p in enumerate(procs):
        outcomes.append(RankOutcome(r, p.pid, p.returncode, end_times.get(r),
                                    _read_error(outdir, r, logs[r]), r in killed))
        f = outdir / f"result-{r}.pt"
        results.append(torch.load(f, weights_only=False) if f.exists() else None)
    if os.environ.get("MPNN_DEPLOY_KEEP"):
        print(f"mpnn.deploy: kept {outdir}")
    else:
        shutil.rmtree(outdir, ignore_errors=True)
    res = LaunchResult(results, outcomes, wall)
    if raise_on_failure and any(o.returncode != 0 for o in outcomes):
        lines = "\n  ".join(o.describe() for o in outcomes)
        raise DeployError(f"the distributed run failed after {wall:.1f} s:\n  {lines}", outcomes, results)
    return res


def torchrun_command(job_path: str | Path, nproc: int, endpoint: str, nnodes: int = 1,
                     run_id: str = "mpnn", max_restarts: int = 0, external_store: bool = False) -> list[str]:
    """The command for one machine of an ``nnodes``-machine run (run the same line on every machine;
    ``endpoint`` = ``host:port`` of one of them). With ``external_store`` the rendezvous store is
    hosted by the caller (bound to one address) and no agent hosts one (``is_host=false``)."""
    host = endpoint.rsplit(":", 1)[0]
    extra = [f"--local-addr={host}", "--rdzv-conf=is_host=false"] if external_store else []
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}", *extra, f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
            "-m", "mpnn.deploy.worker", "--torchrun", str(job_path)]


def torchrun_nodes(job: dict, nnodes: int, nproc_per_node: int, *, max_restarts: int = 0,
                   timeout_s: float = 120.0, threads: int = 1, host: str = "127.0.0.1",
                   allow_remote: bool = False) -> dict:
    """``nnodes`` torchrun launcher processes ("machines") on this host, one c10d rendezvous, each
    starting ``nproc_per_node`` ranks of ``job``; ``max_restarts`` elastic restarts per launcher.

    The rendezvous store is hosted here, bound to ``host`` (see module doc); the launchers join it
    as clients (``is_host=false``), do not host their own shared store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), and the ranks join it too (``MPNN_STORE``), with
    gloo on ``host``'s interface. While the run lasts, every TCP socket in LISTEN state of its
    processes is sampled (``listening``). At the end (or after ``timeout_s``) the launchers get
    SIGTERM, then every process of the run (found by its job directory in ``/proc/*/cmdline``) gets
    SIGKILL; ``leftover`` lists what still lived after that (must be empty).
    Returns ``results`` (per rank, the last attempt's), ``commands``, ``wall_s``, ``returncodes``
    (per launcher), ``listening`` (set of ``(address, port)``), ``leftover`` and ``logs``.
    """
    host = check_host(host, allow_remote)
    world = int(nnodes) * int(nproc_per_node)
    d = Path(tempfile.mkdtemp(prefix="mpnn-torchrun-"))
    try:
        job = {"op_timeout_s": min(60.0, timeout_s), "threads": threads, **job}
        job_path = d / "job.pt"
        torch.save(job, job_path)
        store = bound_store(host, timeout_s)
        endpoint = f"{host}:{store.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": interface_of(host),
               "MPNN_STORE": endpoint, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "PYTHONUNBUFFERED": "1"}
        cmd = torchrun_command(job_path, nproc_per_node, endpoint, nnodes, run_id=d.name,
                               max_restarts=max_restarts, external_store=True)
        t0 = time.perf_counter()
        agents, logs, seen = [], [d / f"launcher-{i}.log" for i in range(nnodes)], set()
        for log in logs:
            with open(log, "wb") as fh:
                agents.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))
        try:
            while any(a.poll() is None for a in agents) and time.perf_counter() - t0 < timeout_s:
                seen |= {(addr, port) for _, addr, port in listening(leftover_by_marker(str(d)))}
                time.sleep(0.25)
        finally:
            for a in agents:
                if a.poll() is None:
                    _kill_group(a, signal.SIGTERM)
            for a in agents:
                try:
                    a.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_group(a, signal.SIGKILL)
                    a.wait()
            for pid in leftover_by_marker(str(d)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.perf_counter() + 5
            while leftover_by_marker(str(d)) and time.perf_counter() < deadline:
                time.sleep(0.05)
            del store
        wall = time.perf_counter() - t0
        results = [torch.load(d / f"result-{r}.pt", weights_only=False) if (d / f"result-{r}.pt").exists()
                   else None for r in range(world)]
        errors = [(d / f"error-{r}.txt").read_text().splitlines()[0] for r in range(world)
                  if (d / f"error-{r}.txt").exists()]
        out = {"results": results, "commands": [cmd] * nnodes, "wall_s": wall,
               "returncodes": [a.returncode for a in agents], "listening": seen,
               "leftover": leftover_by_marker(str(d)), "errors": errors,
               "logs": [log.read_text(errors="replace") for log in logs], "dir": str(d)}
    finally:
        if not os.environ.get("MPNN_DEPLOY_KEEP"):
            shutil.rmtree(d, ignore_errors=True)
    if any(rc != 0 for rc in out["returncodes"]) or any(r is None for r in results):
        raise DeployError(f"torchrun ({nnodes} launchers x {nproc_per_node} ranks) ended with "
                          f"{out['returncodes']} after {wall:.1f} s: {errors or out['logs'][0][-2000:]}", [], results)
    return out


def torchrun(job: dict, nproc: int, *, timeout_s: float = 120.0, threads: int = 1,
             host: str = "127.0.0.1", allow_remote: bool = False) -> tuple[list, list[str], float]:
    """Run ``job`` under torchrun on one machine (loopback by default); returns (per-rank results,
    the command, seconds). See :func:`torchrun_nodes`."""
    out = torchrun_nodes(job, 1, nproc, timeout_s=timeout_s, threads=threads, host=host, allow_remote=allow_remote)
    return out["results"], out["commands"][0], out["wall_s"]
