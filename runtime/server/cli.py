"""`ascendkit serve DIR` (alias `smoke_serve`): the OpenAI-compatible server on one engine.

The port is bound first (a taken one is a one-line error at once, not after a minute of loading),
then the model is loaded and warmed up, and only then is the `serving ... on http://` line printed
and are connections accepted, so every request is answered at full speed.  Binds 127.0.0.1 unless
`--host` says otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import click

from ascend_common.cli_support import debug_option, run_main
from ascend_common.errors import UserError
from runtime.engine.options import engine_args, engine_options

DEFAULT_PORT = 8000  # vLLM's


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a UserError naming the address."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    # Streaming writes many small chunks: without TCP_NODELAY (inherited by accepted sockets on
    # Linux) Nagle's algorithm holds each one until the client's delayed ACK, ~40 ms per chunk.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def configure_logging() -> None:
    """The runtime's INFO lines (`<device> kernel launch success`) on stderr, as vLLM prints its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("runtime")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@click.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to bind (0: any free port; the one chosen is printed).")
@click.option("--api-key", envvar="ASCENDKIT_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on /v1 routes [env: ASCENDKIT_API_KEY].")
@click.option("--served-model-name", default=None, help="The model name clients send [default: MODEL's name].")
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True,
              help="Requests that may wait beyond --max-num-seqs; more are refused with 503.")
@engine_options
@debug_option
def serve_command(model: Path, host: str, port: int, api_key: str | None, served_model_name: str | None,
                  max_queue: int, **kwargs) -> int:
    """Serve MODEL (a converted directory, an HF directory or a GGUF) with OpenAI's API:
    /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, /health, /metrics."""
    import uvicorn

    from runtime.engine.llm_engine import LLMEngine
    from runtime.server.app import build_app
    from runtime.server.async_engine import AsyncEngine

    # The port first: a taken one fails in a second, not after the model has loaded.
    sock = bind(host, port)
    configure_logging()
    name = served_model_name or model.resolve().name
    engine = AsyncEngine(LLMEngine(model, **engine_args(kwargs)), max_queue)
    app = build_app(engine, name, api_key)
    where = sock.getsockname()
    shown = f"[{where[0]}]" if ":" in where[0] else where[0]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True  # uvicorn drains, then its shutdown stops the engine loop below

    # Ctrl-C and SIGTERM are a server's normal end, and exit 0. Installed before the URL is printed,
    # so an early signal stops the server too.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():
            raise UserError(f"the HTTP server on {host}:{where[1]} did not start")
        time.sleep(0.01)
    info = engine.info
    click.echo(f"serving {name} on http://{shown}:{where[1]} (device {info.device}, "
               f"max_num_seqs {info.max_num_seqs}, max_model_len {info.max_model_len})")
    sys.stdout.flush()
    engine.run()  # the engine on the main thread (see AsyncEngine.run), until uvicorn shuts down
    while http.is_alive():  # after a failed step the server still answers (500, /health 503)
        http.join(0.2)
    click.echo("server stopped", err=True)
    return 0


def smoke_serve_main() -> None:
    run_main(serve_command, prog_name="smoke_serve")
