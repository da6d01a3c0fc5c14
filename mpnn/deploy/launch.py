"""Start a group of ranks on 127.0.0.1, wait with bounded timeouts, and always clean up.

:func:`launch` hosts the rendezvous (a ``TCPStore`` on a port the OS picks, so no port race),
starts ``world_size`` worker processes (``python -m mpnn.deploy.worker``), each in its own session,
and waits for them without polling: one thread per process blocks in ``Popen.wait`` and posts the
exit to a queue. When a rank fails, the others get ``grace_s`` seconds to notice and stop by
themselves (a dead gloo peer closes its sockets, so pending transfers fail at once); whoever is
still alive after that, or after ``timeout_s`` overall, is killed (SIGTERM, then SIGKILL).
The function returns only when every worker process has been reaped.

:func:`torchrun` does the same through ``torch.distributed.run`` with a c10d rendezvous endpoint:
the command that runs the job across machines.
"""
from __future__ import annotations

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
           "free_port", "choose_backend", "leftover"]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
           raise_on_failure: bool = True) -> LaunchResult:
    """Run ``job`` (see :mod:`mpnn.deploy.worker`) on ``world_size`` local ranks; see module doc."""
    if not 1 <= int(world_size) <= 16:
        raise ValueError(f"world_size must be between 1 and 16 on one machine, got {world_size}")
    from torch.distributed import TCPStore

    outdir = Path(tempfile.mkdtemp(prefix="mpnn-deploy-", dir=workdir))
    job = {"op_timeout_s": min(60.0, timeout_s), "threads": threads, **job}
    job_path = outdir / "job.pt"
    torch.save(job, job_path)
    store = TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=timeout_s),
                     wait_for_workers=False)
    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                 "PYTHONUNBUFFERED": "1", **(env or {})}
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
                     str(store.port)], stdout=fh, stderr=subprocess.STDOUT, env=child_env,
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
                     run_id: str = "mpnn") -> list[str]:
    """The command for one machine of an ``nnodes``-machine run (run the same line on every machine;
    ``endpoint`` = ``host:port`` of one of them)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}", "--max-restarts=0", "-m", "mpnn.deploy.worker", "--torchrun",
            str(job_path)]


def torchrun(job: dict, nproc: int, *, timeout_s: float = 120.0, threads: int = 1) -> tuple[list, list[str], float]:
    """Run ``job`` under torchrun on loopback; returns (per-rank results, the command, seconds)."""
    with tempfile.TemporaryDirectory(prefix="mpnn-torchrun-") as d:
        job = {"op_timeout_s": min(60.0, timeout_s), "threads": threads, **job}
        job_path = Path(d) / "job.pt"
        torch.save(job, job_path)
        cmd = torchrun_command(job_path, nproc, f"127.0.0.1:{free_port()}")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(p, signal.SIGKILL)
            out, _ = p.communicate()
            raise DeployError(f"torchrun did not finish within {timeout_s} s", [], [])
        finally:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)
                p.wait()
        wall = time.perf_counter() - t0
        results = [torch.load(Path(d) / f"result-{r}.pt", weights_only=False)
                   if (Path(d) / f"result-{r}.pt").exists() else None for r in range(nproc)]
        if p.returncode != 0 or any(r is None for r in results):
            errs = [(Path(d) / f"error-{r}.txt").read_text().splitlines()[0]
                    for r in range(nproc) if (Path(d) / f"error-{r}.txt").exists()]
            raise DeployError(f"torchrun exited with {p.returncode}: {errs or out.decode()[-2000:]}", [], results)
    return results, cmd, wall
