"""`ascendkit serve` as a real process on 127.0.0.1 for the server tests (runtime.server.process, on
the CPU), with an httpx client and the /metrics samples at hand."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from runtime.server.process import ServerProcess

READY_TIMEOUT_S = 240


class TestServer(ServerProcess):
    __test__ = False  # not a test class, whatever its name

    def __init__(self, model: Path, *args: str, env: dict | None = None) -> None:
        super().__init__(model, ["--device", "cpu", *args], env=env, ready_timeout=READY_TIMEOUT_S)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def metrics(self) -> dict[str, float]:
        """The /metrics samples labelled only by model_name, e.g. {"num_requests_running": 0.0}."""
        values = {}
        for line in self.client.get("/metrics").text.splitlines():
            match = re.match(r"ascendkit:(\w+)\{model_name=\"[^\"]*\"\} (\S+)$", line)
            if match:
                values[match.group(1)] = float(match.group(2))
        return values

    def stop(self, timeout: float = 60) -> int:
        self.client.close()
        return super().stop(timeout)
