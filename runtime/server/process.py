"""`ascendkit serve` in a child process, for `smoke` and `bench --serve`: the load generator then
measures the server the way a client on another machine would, without sharing its GIL and cores'
time slices with the engine it measures."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ascend_common.errors import UserError

READY_TIMEOUT_S = 600  # loading a 7B model from a slow disk takes minutes
_URL = re.compile(r" on (http://\S+?:\d+) ")


class ServerProcess:
    """`with ServerProcess(model, args) as server:` serves on `server.url` until the block ends.

    `args` are `serve` options (see `engine_options.serve_args`); the port is always 0 (any free one,
    read back from the line the server prints once the model is loaded and warmed up)."""

    def __init__(self, model: Path, args: list[str] | None = None, env: dict[str, str] | None = None,
                 ready_timeout: float = READY_TIMEOUT_S) -> None:
        # The server's stderr goes to a file, not a pipe nobody drains (a full pipe would block it).
        self._log = tempfile.NamedTemporaryFile("w+", prefix="ascendkit-serve-", suffix=".log",  # noqa: SIM115
                                                delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "ascendkit", "serve", str(model), "--port", "0",
                                      *(args or [])], stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, **(env or {})})
        self._stderr_text: str | None = None
        self.url = self._wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> str:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        match = _URL.search(line[0]) if line else None
        if match is None:
            self.proc.kill()
            self.proc.wait()
            errors = [x for x in self.stderr().splitlines() if x.startswith("error:")]
            self._close_log()
            raise UserError(errors[-1].removeprefix("error: ") if errors
                            else f"the server did not start within {timeout:.0f} s")
        return match.group(1)

    def stderr(self) -> str:
        if self._stderr_text is not None:
            return self._stderr_text
        return Path(self._log.name).read_text(errors="replace")

    def _close_log(self) -> None:
        self._stderr_text = self.stderr()
        self._log.close()
        os.unlink(self._log.name)

    def stop(self, timeout: float = 60) -> int:
        """SIGINT, as Ctrl-C: the server drains and exits; its exit code (0 after a clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._stderr_text is None:
            self._close_log()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
