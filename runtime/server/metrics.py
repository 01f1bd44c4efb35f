"""`/metrics` in Prometheus' text format, with vLLM's metric names under an `ascendkit:` prefix.

Gauges and engine totals are read at scrape time from the engine thread's last stats snapshot (a
dict the engine thread replaces after every step), so a scrape never touches the scheduler while a
step runs.  Latency histograms are observed on the engine thread as each request finishes.  Each
server has its own registry: two servers in one process (tests) do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.engine.llm_engine import RequestOutput

disable_created_metrics()  # `*_created` timestamps double the output and no dashboard reads them

PREFIX = "ascendkit:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets (seconds): TTFT spans queueing plus a prefill, TPOT one decode step.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)

#: (metric name, help, stats key) of the gauges the engine snapshot feeds.
_GAUGES = (
    ("num_requests_running", "Requests in the running batch.", "running"),
    ("num_requests_waiting", "Accepted requests not running yet (queued in the server or the scheduler).",
     "waiting"),
    ("kv_cache_usage_perc", "Fraction of KV-cache blocks held by requests (1 = full).", "kv_cache_usage"),
    ("kv_cache_blocks_total", "KV-cache blocks allocated.", "kv_blocks_total"),
    ("kv_cache_blocks_free", "KV-cache blocks free (unreferenced prefix-cache blocks count as free).",
     "kv_blocks_free"),
)
_COUNTERS = (
    ("prompt_tokens", "Prompt tokens accepted.", "prompt_tokens"),
    ("generation_tokens", "Tokens generated.", "generation_tokens"),
    ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", "prefix_cache_query_tokens"),
    ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", "prefix_cache_hit_tokens"),
    ("num_preemptions", "Requests preempted (recomputed later) because KV blocks ran out.", "preemptions"),
)


class _EngineCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict], labels: dict[str, str]) -> None:
        self.snapshot = snapshot
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        names, values = list(self.labels), list(self.labels.values())
        for name, doc, key in _GAUGES:
            family = GaugeMetricFamily(PREFIX + name, doc, labels=names)
            family.add_metric(values, float(stats[key]))
            yield family
        for name, doc, key in _COUNTERS:
            family = CounterMetricFamily(PREFIX + name, doc, labels=names)
            family.add_metric(values, float(stats[key]))
            yield family
        if stats.get("device_memory_peak_bytes") is not None:  # CUDA/NPU; on CPU, process_resident_memory_bytes
            family = GaugeMetricFamily(PREFIX + "device_memory_peak_bytes",
                                       "Peak bytes the device allocator has held.", labels=names)
            family.add_metric(values, float(stats["device_memory_peak_bytes"]))
            yield family


class ServerMetrics:
    def __init__(self, model_name: str, snapshot: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        self.registry.register(_EngineCollector(snapshot, labels))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open fds

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, ["model_name"], buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time from arrival to the first token.", TTFT_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds", "Mean time between a request's output tokens.",
                              TPOT_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Time from arrival to the last token.", E2E_BUCKETS)
        self.success = Counter(PREFIX + "request_success", "Requests finished, by finish reason.",
                               ["model_name", "finished_reason"], registry=self.registry)
        self.model_name = model_name

    def observe(self, arrival: float, out: RequestOutput | None) -> None:
        """Called on the engine thread when a request finishes; `out` is None for an aborted one."""
        self.success.labels(self.model_name, out.finish_reason if out is not None else "abort").inc()
        if out is None:
            return
        times = out.token_times
        if not times:
            return
        self.ttft.observe(times[0] - arrival)
        self.e2e.observe(times[-1] - arrival)
        if len(times) > 1:
            self.tpot.observe((times[-1] - times[0]) / (len(times) - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
