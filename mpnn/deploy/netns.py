"""Ranks in their own network namespaces, joined by veth pairs and a bridge, links shaped by ``tc``.

The multi-part deployment document's first experiment compares one server with several "with varying network
conditions". On one Linux machine (root needed) :class:`Network` builds them::

       ns <prefix>-r0          ns <prefix>-r1   ...        ns <prefix>-hub
       eth0 10.77.0.1  ===veth===  p0 ]                     bridge br0 10.77.0.254
       eth0 10.77.0.2  ===veth===  p1 ]-- br0               (the shared store's file server)


* bandwidth: a ``tbf`` qdisc on each rank's ``eth0`` caps what that server sends (its uplink):
  :func:`shape` (``tc qdisc replace dev eth0 root tbf rate R burst B latency 200ms``);
* latency: this kernel has no ``netem``, so the latency is emulated in the engine's transport:
  ``ShardedMLP.send_delay_s`` (:mod:`mpnn.deploy.engine`) holds every exchange's outgoing messages ``d`` seconds
  before they are handed to gloo (one delay per exchange and rank: messages sent together travel
  in parallel, as on a link with one-way latency ``d``);
* the shared store: a file server (:func:`serve`, stdlib only) in the hub namespace writes what the
  ranks send it over their shaped links, standing for the document's network file system.

Traffic never leaves the namespaces the run creates: nothing is attached to the host's namespace.
:class:`Network` is a context manager; its ``__exit__`` (and a ``finally`` around the setup)
deletes every namespace it made, which deletes their veth pairs and the bridge with them; at
start it removes stale namespaces of earlier runs whose process is gone (:func:`cleanup_stale`).
:func:`available` says whether this machine can do it (root, ``ip netns add``, veth, ``tbf``).

:func:`run_group` starts ``world_size`` ranks (``python -m mpnn.deploy.netns rank ...``), inside the
namespaces or, with ``net=None``, on 127.0.0.1; rank 0 hosts the rendezvous store. It waits with a
bounded timeout and kills every rank's process group on failure or timeout. Module top level
imports the standard library only, so :func:`serve` runs as a plain script.
"""
from __future__ import annotations

import os
import queue
import secrets
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["PREFIX", "NetnsError", "available", "cleanup_stale", "Network", "shape", "tbf_args",
           "run_group", "serve", "send_file", "list_namespaces"]

PREFIX = "mpnnx"          # every namespace this module creates is named mpnnx-<pid>-<id>-...
SUBNET = "10.77.0"
HUB_IP = f"{SUBNET}.254"
STORE_PORT = 29500        # free by construction: rank 0's namespace is new
FILE_PORT = 29600


class NetnsError(RuntimeError):
    """Namespaces, veth or tc failed; the message quotes the command and its error."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [shutil.which("ip") or "ip", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [shutil.which("tc") or "tc", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def list_namespaces() -> list[str]:
    p = _ip("netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces ``<prefix>-<pid>-...`` whose creating process ``pid`` no longer runs."""
    gone = []
    for name in list_namespaces():
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == prefix and parts[1].isdigit() and not _alive(int(parts[1])):
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def available() -> tuple[bool, str]:
    """``(True, "")`` when this machine can build the emulated network, else ``(False, reason)``;
    the reason starts with "needs root" when the process is not root."""
    if not sys.platform.startswith("linux"):
        return False, f"needs root: network namespaces exist on Linux only; this is {sys.platform}"
    if os.geteuid() != 0:
        return False, f"needs root: network namespaces, veth pairs and tc need root (euid {os.geteuid()})"
    if not (shutil.which("ip") and shutil.which("tc")):
        return False, "needs root: and iproute2; the `ip` and `tc` commands are not installed"
    try:
        with Network(1, tag="probe") as net:
            shape(net.rank_ns(0), 100e6)
    except (NetnsError, OSError) as err:
        return False, f"needs root: with network namespaces, veth pairs and tc tbf; here: {err}"
    return True, ""


def tbf_args(rate_bps: float) -> list[str]:
    """``tbf`` parameters for a link of ``rate_bps`` bit/s: burst = 0.5 ms of traffic (at least
    16 kB, so one GSO packet passes), a queue of 200 ms."""
    burst = max(16 * 1024, int(rate_bps / 8 * 5e-4))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "200ms"]


def shape(ns: str | None, rate_bps: float | None, dev: str = "eth0") -> None:
    """Cap what ``dev`` sends to ``rate_bps`` (``None``: remove the cap). ``ns=None``: this namespace."""
    pre = ["-n", ns] if ns else []
    if rate_bps is None:
        _tc(*pre, "qdisc", "del", "dev", dev, "root", check=False)
    else:
        _tc(*pre, "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_bps))


class Network:
    """``world_size`` namespaces on a bridge (see module doc); ``with Network(4) as net: ...``."""

    def __init__(self, world_size: int, tag: str = "run", prefix: str = PREFIX):
        if not 1 <= int(world_size) <= 200:
            raise ValueError(f"world_size must be 1..200, got {world_size}")
        self.world_size = int(world_size)
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}-{tag}"
        self.hub = f"{self.name}-hub"
        self.created: list[str] = []

    def rank_ns(self, r: int) -> str:
        return f"{self.name}-r{r}"

    def rank_ip(self, r: int) -> str:
        return f"{SUBNET}.{r + 1}"

    def __enter__(self) -> "Network":
        cleanup_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for ns in [self.hub] + [self.rank_ns(r) for r in range(self.world_size)]:
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for r in range(self.world_size):
            ns = self.rank_ns(r)
            # both ends are born inside the run's namespaces: nothing touches the host's
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{r}", "netns", self.hub)
            _ip("-n", self.hub, "link", "set", f"p{r}", "master", "br0")
            _ip("-n", self.hub, "link", "set", f"p{r}", "up")
            _ip("-n", ns, "addr", "add", f"{self.rank_ip(r)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        for ns in reversed(self.created):
            _ip("netns", "del", ns, check=False)
        self.created = []

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- the shared store's file server

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        f = self.request.makefile("rb")
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            n_name, n_data = struct.unpack("!IQ", head)
            name = f.read(n_name).decode()
            data = f.read(n_data)
            target = Path(self.server.root) / Path(name).name
            target.write_bytes(data)
            self.request.sendall(b"k")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(root: str, host: str = "0.0.0.0", port: int = FILE_PORT) -> None:
    """The file server: ``(name, bytes)`` records in, one file per record in ``root``, one ack byte out."""
    srv = _Server((host, port), _Handler)
    srv.root = root
    srv.serve_forever()


def send_file(sock: socket.socket, name: str, data: bytes) -> None:
    """Send one record to :func:`serve` and wait for its acknowledgement (the file is written)."""
    nb = name.encode()
    sock.sendall(struct.pack("!IQ", len(nb), len(data)) + nb + data)
    if sock.recv(1) != b"k":
        raise ConnectionError("the shared store's file server closed the connection")


# ---------------------------------------------------------------------- starting ranks

def _kill(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_group(job: dict, world_size: int, *, net: Network | None = None, timeout_s: float = 180.0,
              file_server: bool = False, threads: int = 1) -> list[dict]:
    """Run ``job`` (a kind of :data:`mpnn.deploy.worker.JOBS` or of this module's jobs) on
    ``world_size`` ranks; returns each rank's result. Raises :class:`NetnsError` naming each failed
    rank's error; every process started here is reaped before it returns."""
    import torch   # lazy: the module top level stays stdlib-only

    outdir = Path(tempfile.mkdtemp(prefix="mpnn-netns-"))
    store_dir = outdir / "store"
    store_dir.mkdir()
    if net is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            host, port = "127.0.0.1", s.getsockname()[1]
        ifname = "lo"
    else:
        host, port, ifname = net.rank_ip(0), STORE_PORT, "eth0"
    job = {"op_timeout_s": min(60.0, timeout_s), "threads": threads, **job,
           "netns": net is not None, "file_server": f"{HUB_IP}:{FILE_PORT}" if file_server else None}
    job_path = outdir / "job.pt"
    torch.save(job, job_path)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": ifname}
    procs: list[subprocess.Popen] = []
    done: queue.Queue = queue.Queue()
    failed, timed_out = [], False
    try:
        if file_server:
            if net is None:
                raise ValueError("the file server lives in the hub namespace: pass net=")
            procs.append(subprocess.Popen(["ip", "netns", "exec", net.hub, sys.executable, "-S", str(Path(__file__)),
                                           "serve", str(store_dir)], stdout=subprocess.DEVNULL,
                                          stderr=open(outdir / "log-server.txt", "wb"), start_new_session=True))
        ranks = []
        for r in range(world_size):
            cmd = [sys.executable, "-m", "mpnn.deploy.netns", "rank", str(job_path), str(r), str(world_size),
                   host, str(port)]
            if net is not None:
                cmd = ["ip", "netns", "exec", net.rank_ns(r)] + cmd
            with open(outdir / f"log-{r}.txt", "wb") as fh:
                p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            ranks.append(p)
            procs.append(p)
            threading.Thread(target=lambda r=r, p=p: done.put((r, p.wait())), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        pending = set(range(world_size))
        while pending:
            try:
                r, rc = done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                timed_out = True
                break
            pending.discard(r)
            if rc != 0:
                failed.append(r)
                deadline = min(deadline, time.monotonic() + 10.0)   # the others get 10 s to notice
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                _kill(p, signal.SIGKILL)
                p.wait()
    try:
        if failed or timed_out:
            errs = []
            for r in range(world_size):
                f, log = outdir / f"error-{r}.txt", outdir / f"log-{r}.txt"
                text = f.read_text() if f.exists() else (log.read_text(errors="replace") if log.exists() else "")
                if text.strip():
                    errs.append(f"rank {r}: {text.strip().splitlines()[0][:300]}")
            why = f"timed out after {timeout_s:.0f} s" if timed_out else f"ranks {failed} failed"
            raise NetnsError(f"the group {why}: " + ("; ".join(errs) or "no error report"))
        return [torch.load(outdir / f"result-{r}.pt", weights_only=False) for r in range(world_size)]
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


# ---------------------------------------------------------------------- jobs (run inside the ranks)

def _set_condition(job: dict, cond: dict, models) -> None:
    """Cap this rank's uplink (in a namespace) and set the emulated latency of its ``models``."""
    if job.get("netns"):
        shape(None, cond.get("rate_bps"))
    for m in models:
        if m is not None:
            m.send_delay_s = float(cond.get("delay_s", 0.0))


def job_conditions(job: dict, rank: int, device) -> dict:
    """Every plan and the single-process step under every condition (``{"rate_bps", "delay_s"}``),
    interleaved: each round visits the conditions in an order rotated by one each round; under
    each, this rank caps its uplink and sets the emulated latency, then the group times one
    training step of every plan (and rank 0 the single-process step) after a barrier each, as
    :func:`mpnn.deploy.worker.job_interleaved` does. Returns ``rows[condition][config]``."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from .engine import reference_model
    from .rank_work import DTYPES, batch, plan_models, timed_step
    plans, x, y, params, models = plan_models(job, rank, device)
    seed, lr, dtype = job["seed"], job["lr"], DTYPES[job.get("dtype", "float32")]
    ref = reference_model(params) if rank == 0 else None
    opt = torch.optim.SGD(ref.parameters(), lr=lr) if ref is not None else None
    conds, n_cfg = job["conditions"], len(plans) + 1
    rows = [[[] for _ in range(n_cfg)] for _ in conds]
    try:
        for i in range(job["warmup"] + job["repeats"]):
            xb, yb = batch(x, y, i, job["batch"], seed)
            for ci in [(i + o) % len(conds) for o in range(len(conds))]:
                _set_condition(job, conds[ci], models)
                for j in [(i + o) % n_cfg for o in range(n_cfg)]:
                    dist.barrier()
                    row = None
                    if j < len(plans) and models[j] is not None:
                        row = timed_step(models[j], xb, yb, lr, device)
                    elif j == len(plans) and ref is not None:
                        t0 = time.perf_counter()
                        opt.zero_grad()
                        F.cross_entropy(ref(xb.to(dtype)), yb).backward()
                        opt.step()
                        row = {"t0": t0, "t1": time.perf_counter()}
                    if row is not None and i >= job["warmup"]:
                        rows[ci][j].append({"round": i - job["warmup"], **row})
    finally:
        _set_condition(job, {"rate_bps": None, "delay_s": 0.0}, models)
    dist.barrier()
    return {"conditions": rows}


def job_sync(job: dict, rank: int, device) -> dict:
    """Training steps of ``job["plan"]`` with a synchronisation to the shared store every ``k`` steps.

    Per round, for each condition (uplink rate) and each ``k`` of ``job["sync_every"]``, in orders
    rotated each round: after a barrier, ``k`` SGD steps, then every rank sends its rows
    (``torch.save`` bytes) to the hub's file server over its shaped link, and a barrier marks the
    checkpoint complete. ``k = 0``: ``max(sync_every)`` steps and no synchronisation."""
    import io

    import torch
    import torch.distributed as dist

    from .engine import ShardedMLP, init_params
    from .plan import Plan
    from .rank_work import DTYPES, batch, make_data
    plan = Plan.from_dict(job["plan"])
    dtype = DTYPES[job.get("dtype", "float32")]
    x, y = make_data(job["data"], plan.sizes[0], plan.sizes[-1])
    active = rank < plan.world_size      # ranks beyond the plan only join the barriers
    model = ShardedMLP(plan, rank, params=init_params(plan.sizes, job["seed"], dtype), device=device,
                       dtype=dtype, timeout_s=job["op_timeout_s"]) if active else None
    host, port = job["file_server"].rsplit(":", 1)
    sock = None
    for _ in range(100):                 # the file server may still be starting
        try:
            sock = socket.create_connection((host, int(port)), timeout=float(job["op_timeout_s"]))
            break
        except OSError:
            time.sleep(0.1)
    if sock is None:
        raise ConnectionError(f"no file server at {host}:{port} after 10 s")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ks = list(job["sync_every"])
    rows, step = [], 0
    try:
        conds = job["sync_conditions"]
        for i in range(job["warmup"] + job["repeats"]):
            for ci in [(i + o) % len(conds) for o in range(len(conds))]:
                _set_condition(job, conds[ci], [model])
                for j in [(i + o) % len(ks) for o in range(len(ks))]:
                    k = ks[j]
                    n = k if k else max(ks)
                    dist.barrier()
                    t0 = time.perf_counter()
                    for _ in range(n if active else 0):
                        model.train_step(*batch(x, y, step, job["batch"], job["seed"]), lr=job["lr"])
                        step += 1
                    ts = time.perf_counter()
                    nbytes = 0
                    if k and active:
                        buf = io.BytesIO()
                        torch.save(model.shard_state(), buf)
                        nbytes = buf.getbuffer().nbytes
                        send_file(sock, f"rank{rank}.pt", buf.getvalue())
                    if k:
                        dist.barrier()
                    t1 = time.perf_counter()
                    if i >= job["warmup"] and active:
                        rows.append({"condition": ci, "round": i - job["warmup"], "k": k, "steps": n,
                                     "t0": t0, "ts": ts, "t1": t1, "shard_bytes": nbytes})
    finally:
        sock.close()
        _set_condition(job, {"rate_bps": None, "delay_s": 0.0}, [model])
    dist.barrier()
    return {"rows": rows}


JOBS = {"conditions": job_conditions, "sync": job_sync}


# ---------------------------------------------------------------------- what a rank runs

def _rank_main(job_path: str, rank: int, world_size: int, host: str, port: int) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from . import scaling, worker
    worker.JOBS.update(JOBS)
    worker.JOBS.update(scaling.JOBS)
    job = __import__("torch").load(job_path, weights_only=False)
    store = dist.TCPStore(host, port, world_size=None, is_master=rank == 0,
                          timeout=timedelta(seconds=float(job.get("op_timeout_s", 60))), wait_for_workers=False)
    status = worker.run_rank(job_path, rank, world_size, store)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "rank":
        a = sys.argv[2:]
        _rank_main(a[0], int(a[1]), int(a[2]), a[3], int(a[4]))
    else:
        raise SystemExit(f"usage: netns.py serve DIR | -m mpnn.deploy.netns rank JOB RANK WORLD HOST PORT; got {sys.argv[1:]}")
