"""The engine on its own thread (the main one), fed by the server's event loop on another.

`LLMEngine` is single-threaded: one `step()` at a time, and nothing else may touch the scheduler or
the block manager while it runs.  The HTTP side is asyncio.  Between them sits one lock-protected
inbox (new requests, aborts) that the engine thread drains before every step, and one asyncio queue
per request that the engine thread fills through `loop.call_soon_threadsafe`.  The event loop never
waits for a step, and a step never waits for a client.

Admission is bounded: at most `max_num_seqs` requests run and `max_queue` more wait; a request
beyond that is refused at once (`QueueFull`, a 503) rather than queued without limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.engine.llm_engine import EngineInfo, RequestOutput
from runtime.sampling_params import SamplingParams

log = logging.getLogger("runtime.server")


class ServedEngine(Protocol):
    """All the server uses of an engine (`LLMEngine` is one): the server reaches no further in, so
    nothing on the HTTP side can touch the scheduler, the block manager or the model runner."""

    tokenizer: Any  # a transformers tokenizer, or None

    @property
    def info(self) -> EngineInfo: ...

    def check_request(self, ids: list[int], params: SamplingParams) -> None: ...

    def add_request(self, prompt: list[int], params: SamplingParams | None = None) -> int: ...

    def abort(self, request_id: int) -> None: ...

    def has_unfinished(self) -> bool: ...

    def step(self) -> list[RequestOutput]: ...

    def stats(self) -> dict: ...


class QueueFull(Exception):
    """Every running slot and every queue place is taken."""


class EngineDead(Exception):
    """A step raised: the engine's state is unknown, so it takes no more requests."""


@dataclass
class RequestStream:
    """One engine request as the HTTP side sees it. The engine thread puts `(stream, output)` on
    `queue` (shared by the streams of one HTTP request) until the finished output, or
    `(stream, exception)`. `arrival` is when the server accepted it: TTFT counts the queueing."""

    prompt_token_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float = field(default_factory=time.perf_counter)
    request_id: int | None = None  # the engine's id, set on the engine thread
    done: bool = False

    def _put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self, item))


class AsyncEngine:
    """Runs `engine.step()` in a loop, while any request is unfinished, on the thread that calls
    `run()` (the serve command's main thread; HTTP runs on another).

    The server sees the engine only through this object: `info` and `tokenizer` (fixed once built),
    `check_request`, `submit`/`outputs`/`abort`, and `stats()`.
    `on_finish(stream, output)` is called on the engine thread for each request that ends, with None
    for an aborted one (for the server's latency histograms)."""

    def __init__(self, engine: ServedEngine, max_queue: int,
                 on_finish: Callable[[RequestStream, RequestOutput | None], None] | None = None) -> None:
        self._engine = engine
        self.info: EngineInfo = engine.info
        self.tokenizer = engine.tokenizer
        self.capacity = self.info.max_num_seqs + max_queue
        self.on_finish = on_finish
        self.error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[RequestStream] = []
        self._aborts: list[RequestStream] = []
        self._live: dict[int, RequestStream] = {}
        self._admitted = 0  # requests accepted and not yet finished
        self._stopping = False
        self.snapshot: dict = engine.stats()  # the last step's stats, for /metrics (no cross-thread reads)

    def stop(self) -> None:
        """Make `run` return (after the step in progress)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    # -- the event loop's side ------------------------------------------------------------------
    def check_request(self, ids: list[int], params: SamplingParams) -> None:
        """The engine's `check_request` (ValueError if it cannot be served): it reads only the config
        and the tokenizer, so the event loop calls it while a step runs."""
        self._engine.check_request(ids, params)

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[RequestStream]:
        """Queue one request per prompt (each checked with `check_request`), all or none:
        QueueFull if they do not all fit, EngineDead after a failed step."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        streams = [RequestStream(ids, params, loop, queue) for ids in prompts]
        with self._wake:
            if self.error is not None:
                raise EngineDead(self.error)
            if self._admitted + len(streams) > self.capacity:
                raise QueueFull(f"the server is at capacity ({self._admitted} requests running or queued, "
                                f"at most {self.capacity}); retry later")
            self._admitted += len(streams)
            self._inbox.extend(streams)
            self._wake.notify()
        return streams

    @staticmethod
    async def outputs(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(index in `streams`, output) as steps produce them, until every stream has finished;
        raises what the engine raised for any of them."""
        index = {id(s): i for i, s in enumerate(streams)}
        queue = streams[0].queue
        pending = len(streams)
        while pending:
            stream, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield index[id(stream)], item
            if item.finished:
                pending -= 1

    def abort(self, stream: RequestStream) -> None:
        """Stop a request (its client went away) and free its blocks; a no-op once it is finished."""
        with self._wake:
            if stream.done:
                return
            self._aborts.append(stream)
            self._wake.notify()

    def stats(self) -> dict:
        """The last step's engine stats, with `waiting` counting every accepted request that is not
        running: in the scheduler's queue, or still in the inbox the engine has not drained. (The
        snapshot alone would read "nothing waiting" between a request's acceptance and the engine's
        next pass, and for aborts not yet carried out.)"""
        snapshot = self.snapshot
        with self._lock:
            admitted = self._admitted
        return {**snapshot, "waiting": max(0, admitted - snapshot["running"])}

    # -- the engine thread ------------------------------------------------------------------------
    def run(self) -> None:
        """Step while there is work, wait while there is none, until `stop()` or a failed step.

        `serve` calls this on the process's main thread and runs the HTTP event loop on another:
        on CPU a decode step issued from a thread other than the one that built the model's OpenMP
        pool measured ~40% slower (SmolLM2-135M bf16: 57 vs 41 ms per token), and the event loop's
        own work is light."""
        while True:
            with self._wake:
                while not (self._inbox or self._aborts or self._stopping or self._engine.has_unfinished()):
                    self._wake.wait()
                if self._stopping:
                    return
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
            try:
                self._admit(inbox)
                self._abort(aborts)
                if self._engine.has_unfinished():
                    self._deliver(self._engine.step())
                self.snapshot = self._engine.stats()
            except Exception as exc:
                log.exception("engine step failed; the server takes no more requests")
                self._die(f"engine step failed: {type(exc).__name__}: {exc}")
                return

    def _admit(self, inbox: list[RequestStream]) -> None:
        for stream in inbox:
            try:
                stream.request_id = self._engine.add_request(stream.prompt_token_ids, stream.params)
            except ValueError as exc:  # the server checked it first; only a race could get here
                self._close(stream, exc)
                continue
            self._live[stream.request_id] = stream

    def _abort(self, aborts: list[RequestStream]) -> None:
        for stream in aborts:
            if stream.done:
                continue
            if stream.request_id is None:  # failed admission: already closed
                continue
            self._engine.abort(stream.request_id)
            self._live.pop(stream.request_id, None)
            if self.on_finish is not None:
                self.on_finish(stream, None)
            self._close(stream, None)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._live.get(out.request_id)
            if stream is None:
                continue
            stream._put(out)
            if out.finished:
                del self._live[out.request_id]
                if self.on_finish is not None:
                    self.on_finish(stream, out)
                self._close(stream, None)

    def _close(self, stream: RequestStream, error: BaseException | None) -> None:
        with self._lock:
            stream.done = True
            self._admitted -= 1
        if error is not None:
            stream._put(error)

    def _die(self, message: str) -> None:
        with self._lock:
            self.error = message
            pending = [*self._live.values(), *self._inbox]
            self._live.clear()
            self._inbox.clear()
        for stream in pending:
            self._close(stream, EngineDead(message))
