"""Tensor parallel over torch.distributed: rank 0 is the engine's own process, ranks 1..N-1 are worker
processes (`python -m runtime.engine.tp_worker`) started and owned here.

Every rank holds its share of the weights and of the KV cache (its KV heads) and runs the same
forward pass; the collectives inside it (runtime.layers.parallel) are gloo on the CPU, nccl on CUDA, hccl on
an NPU. Rank 0 alone schedules and samples: each step it prepares the step's inputs and broadcasts
them (and every KV-pool growth) to the workers over a gloo group, as vLLM's multiprocess executor
broadcasts its scheduler output.

Start-up is two-phase so that a rank that cannot load fails fast instead of leaving the others
waiting in a rendezvous: every worker loads its weights, then reports "ok" or its error through the
TCP store; only when all are ok do the ranks form the process group. Nothing is left behind:
workers die with their parent (PR_SET_PDEATHSIG), a worker that dies makes rank 0's next collective
fail, and then, on Ctrl-C, on an error, at `shutdown()` and at interpreter exit every worker is
stopped and reaped.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import fields, is_dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ascend_common.errors import UserError
from runtime.engine.model_runner import ModelRunner, StepLogits
from runtime.engine.scheduler import ScheduledBatch
from runtime.model.loader import Checkpoint

log = logging.getLogger("runtime")
STARTUP_TIMEOUT_S = 600  # loading a large model on every rank
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: torch.device, rank: int) -> torch.device:
    return device if device.type == "cpu" else torch.device(device.type, rank)


def moved(obj: Any, device: torch.device | str) -> Any:
    """`obj` (tensors inside lists, tuples and dataclasses) with its tensors on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(moved(x, device) for x in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: moved(getattr(obj, f.name), device) for f in fields(obj)})
    return obj


def init_group(store, rank: int, size: int, device: torch.device):
    """The process group for the forward pass, and a gloo group for the step broadcasts."""
    import torch.distributed as dist

    backend = BACKENDS.get(device.type, "gloo")
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=120))
    return dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo")


def _shutdown_if_alive(ref: weakref.ref) -> None:
    executor = ref()
    if executor is not None:
        executor.shutdown()


class TPExecutor:
    """The engine's model runner when tensor_parallel_size > 1: same interface as `ModelRunner`."""

    def __init__(self, model: Path, ckpt: Checkpoint, size: int, device: torch.device, dtype: str,
                 block_size: int, kernels) -> None:
        import torch.distributed as dist
        from torch.distributed import TCPStore

        self.size, self.procs, self.logs, self.control = size, [], [], None
        if dist.is_initialized():
            raise UserError("another tensor-parallel engine is running in this process (torch.distributed has one "
                            "default group): call its engine.shutdown() first")
        ckpt.with_tensor_parallel(size, 0)  # a model that does not split fails here, before any process starts
        # CPU ranks share the cores: each gets its part, rather than every rank spinning on all of them
        self.threads = max(1, (os.cpu_count() or 1) // size) if device.type == "cpu" else 0
        self.saved_threads = torch.get_num_threads()
        port = free_port()
        self.store = TCPStore("127.0.0.1", port, size, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=STARTUP_TIMEOUT_S))
        self._at_exit = functools.partial(_shutdown_if_alive, weakref.ref(self))  # no strong ref: __del__ can run
        atexit.register(self._at_exit)
        try:
            spec = {"model": str(model), "size": size, "port": port, "device": device.type, "dtype": dtype,
                    "block_size": block_size, "threads": self.threads}
            if self.threads:
                torch.set_num_threads(self.threads)
            for rank in range(1, size):
                logfile = tempfile.TemporaryFile()  # noqa: SIM115 (read after the worker dies)
                self.logs.append(logfile)
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "runtime.engine.tp_worker", json.dumps({**spec, "rank": rank})],
                    stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile))
            self.runner = ModelRunner(ckpt.with_tensor_parallel(size, 0), rank_device(device, 0),
                                      getattr(torch, dtype), block_size, kernels)
            self._wait_for_workers()
            self.control = init_group(self.store, 0, size, device)
        except BaseException:
            self.shutdown()
            raise
        log.info("tensor parallel: %d ranks (%s)", size, BACKENDS.get(device.type, "gloo"))

    # -- the ModelRunner interface ------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name == "runner":  # not yet built (an error during __init__)
            raise AttributeError(name)
        return getattr(self.runner, name)

    def allocate(self, num_blocks: int) -> None:
        self._broadcast(("allocate", num_blocks))
        self.runner.allocate(num_blocks)

    def run(self, batch: ScheduledBatch) -> StepLogits:
        prepared = self.runner.prepare(batch)
        self._broadcast(("run", moved(prepared, "cpu")))
        try:
            return self.runner.execute(prepared)
        except RuntimeError as exc:
            raise self._failure(exc) from None

    # -- processes ----------------------------------------------------------------------------------
    def _broadcast(self, message: tuple) -> None:
        import torch.distributed as dist

        try:
            dist.broadcast_object_list([message], src=0, group=self.control)
        except RuntimeError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: BaseException) -> UserError:
        """A collective failed: a worker died. Stop them all and name the one that went."""
        time.sleep(0.2)  # let a dying worker's exit status land
        dead = [(r + 1, p.returncode) for r, p in enumerate(self.procs) if p.poll() is not None]
        detail = self._worker_error(dead[0][0]) if dead else ""
        self.shutdown()
        if dead:
            rank, code = dead[0]
            return UserError(f"tensor parallel rank {rank} exited (code {code}){': ' + detail if detail else ''}; "
                             f"every rank has been stopped")
        return UserError(f"tensor parallel step failed ({exc}); every rank has been stopped")

    def _worker_error(self, rank: int) -> str:
        logfile = self.logs[rank - 1]
        logfile.seek(0)
        lines = [line.strip() for line in logfile.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def _wait_for_workers(self) -> None:
        pending = set(range(1, self.size))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pending:
            for rank in sorted(pending):
                if self.store.check([f"worker{rank}"]):
                    status = self.store.get(f"worker{rank}").decode()
                    if status != "ok":
                        raise UserError(f"tensor parallel rank {rank}: {status}")
                    pending.discard(rank)
                elif self.procs[rank - 1].poll() is not None:
                    detail = self._worker_error(rank)
                    raise UserError(f"tensor parallel rank {rank} exited (code {self.procs[rank - 1].returncode}) "
                                    f"while loading{': ' + detail if detail else ''}")
            if time.monotonic() > deadline:
                raise UserError(f"tensor parallel ranks {sorted(pending)} did not load within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.05)

    def __del__(self) -> None:  # an engine dropped without shutdown() still stops its workers
        try:
            self.shutdown()
        except Exception as exc:  # noqa: BLE001 - never raise from a finalizer (interpreter shutdown included)
            log.debug("tensor parallel shutdown at finalization: %s", exc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def shutdown(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and leave the process group.

        No "stop" message: a shutdown can come from Ctrl-C or an error in the middle of a forward
        pass, when a worker waits in a collective rank 0 will never join; a gloo send to it would
        wait out the group's timeout. The workers hold nothing to save."""
        import torch.distributed as dist

        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.control is not None and dist.is_initialized():
            dist.destroy_process_group()
        self.control = None
        self.procs = [p for p in self.procs if p.poll() is None]
        for logfile in self.logs:
            logfile.close()
        self.logs = []
        torch.set_num_threads(self.saved_threads)
        atexit.unregister(self._at_exit)
