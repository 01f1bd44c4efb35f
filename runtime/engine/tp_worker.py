"""A tensor-parallel worker (rank 1..N-1), started by `TPExecutor`: load this rank's share, report
through the TCP store, join the process group, then run every step rank 0 broadcasts, until rank 0
terminates it (or dies: then the kernel kills this process too).

    python -m runtime.engine.tp_worker '{"model": ..., "rank": 1, "size": 2, "port": ..., "device": "cpu", ...}'
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from datetime import timedelta


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _die_with_parent()
    spec = json.loads(argv[0])
    rank, size = spec["rank"], spec["size"]
    import torch
    import torch.distributed as dist
    from torch.distributed import TCPStore

    from runtime.engine.model_runner import ModelRunner
    from runtime.engine.tp_executor import init_group, moved, rank_device
    from runtime.model.loader import open_model
    from runtime.platform import resolve

    store = TCPStore("127.0.0.1", spec["port"], size, is_master=False, timeout=timedelta(seconds=600))
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        if os.environ.get("ASCENDKIT_FAILPOINT") == f"tp-rank-load:{rank}":  # fault injection for the tests
            raise RuntimeError("injected failure while loading")
        platform = resolve(spec["device"])
        device = rank_device(platform.device, rank)
        ckpt = open_model(spec["model"]).with_tensor_parallel(size, rank)
        runner = ModelRunner(ckpt, device, getattr(torch, spec["dtype"]), spec["block_size"], platform.kernels())
    except Exception as exc:  # noqa: BLE001 - any load failure goes to rank 0, which raises it
        store.set(f"worker{rank}", f"{type(exc).__name__}: {exc}")
        return 1
    store.set(f"worker{rank}", "ok")
    control = init_group(store, rank, size, device)
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=control)
        message = box[0]
        if message[0] == "allocate":
            runner.allocate(message[1])
        elif message[0] == "run":
            runner.execute(moved(message[1], device))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; rank 0 reports it
        sys.exit(130)
