"""A server's memory, from the best source there is, and which source it was.

1. Its /metrics: ours exports the device allocator's peak (CUDA/NPU) and the process's resident set
   (on CPU the KV pool is allocated up front, so that is its high level); vLLM exports the KV cache's
   usage as a fraction (`vllm:kv_cache_usage_perc`, `vllm:gpu_cache_usage_perc` before v0.10), not bytes.
2. `npu-smi info` when the server runs on this host: the NPUs' memory in use.
3. The server process's peak resident set when it is ours (its pid is known).
Every source that answered is kept; `memory_gb` is the first of them in that order.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from ascend_common.proc_memory import peak_rss
from runtime.evaluation.endpoint import Endpoint

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def metric_samples(endpoint: Endpoint) -> dict[str, float]:
    """The unlabelled-or-first sample of every metric on /metrics ({} when it has none)."""
    import httpx

    if not endpoint.has("metrics"):
        return {}
    try:
        text = httpx.get(f"{endpoint.url}/metrics", headers=endpoint.headers, timeout=30).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            values.setdefault(name.split("{", 1)[0], float(value))
        except ValueError:
            continue
    return values


def server_memory(endpoint: Endpoint, pid: int | None = None) -> dict[str, Any]:
    """`memory_gb` and `memory_kind` (the source), the KV cache's usage where the server says it,
    and every source's figure under `memory_sources`."""
    samples = metric_samples(endpoint)
    sources: dict[str, float] = {}
    device = samples.get("ascendkit:device_memory_peak_bytes")
    if device is not None:
        sources["device peak"] = device
    elif endpoint.metrics_kind == "ascendkit" and "process_resident_memory_bytes" in samples:
        sources["process RSS"] = samples["process_resident_memory_bytes"]
    if urlparse(endpoint.url).hostname in LOCAL_HOSTS:
        from ascend_common.npu_smi import npu_memory_used_bytes

        npu = npu_memory_used_bytes()
        if npu is not None:
            sources["npu-smi"] = npu
    if pid is not None:
        rss = peak_rss(pid)
        if rss is not None:
            sources["process peak RSS"] = rss
    kv_usage = next((samples[k] for k in _KV_USAGE if k in samples), None)
    kind, chosen = next(iter(sources.items()), (None, None))
    return {"memory_gb": chosen / 1e9 if chosen is not None else None, "memory_kind": kind,
            "memory_sources": {k: v / 1e9 for k, v in sources.items()},
            "kv_cache_usage": kv_usage}
