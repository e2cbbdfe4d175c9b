"""The request queue: one worker thread per loaded model, taking up to B waiting jobs that can share
a batch and running them as one model call.

A route decodes its input completely first (an upload is read whole, audio is decoded), then
:meth:`ModelWorker.submit` puts a :class:`Job` in the model's bounded queue (:class:`QueueFull`
when it holds ``max_queue`` jobs already) and awaits the job's events. The worker never waits on
a client: results go into the job's asyncio queue, from which the route streams them at the
client's pace. A job whose client has gone is skipped, or stopped between tokens.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Delta:
    text: str  # a streamed piece of a reply


@dataclass(frozen=True)
class Done:
    result: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException


@dataclass(eq=False)
class Job:
    kind: str  # which batch runner takes it (the served model's RUNNERS)
    key: Hashable  # jobs of one kind share a batch only when their keys are equal
    payload: Any
    batchable: bool = True  # False: runs alone (a streamed reply)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Delta | Done | Failed) -> None:
        """From the worker thread: hand an event to the route (never blocks)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            self.cancelled.set()

    def finish(self, result: Any) -> None:
        self.emit(Done(result))

    def fail(self, error: BaseException) -> None:
        self.emit(Failed(error))

    async def result(self) -> Any:
        """The job's result (a non-streamed request), raising its error."""
        try:
            while True:
                event = await self.events.get()
                if isinstance(event, Done):
                    return event.result
                if isinstance(event, Failed):
                    raise event.error
        finally:
            self.cancelled.set()  # done, or the client went away while waiting


class ModelWorker:
    """Runs ``run(kind, jobs)`` on its own thread for batches of up to ``batch_size`` queued jobs."""

    def __init__(self, name: str, run: Callable[[str, list[Job]], None], batch_size: int = 8,
                 max_queue: int = 64):
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch size and queue length must be at least 1")
        self.name, self.run, self.batch_size, self.max_queue = name, run, batch_size, max_queue
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran (for tests, stats)
        self.thread = threading.Thread(target=self._loop, name=f"speechllm-serve:{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        with self.cond:
            if self.closed:
                raise QueueFull(self.name)
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(self.name)
            self.waiting.append(job)
            self.cond.notify()
        return job

    def close(self) -> None:
        with self.cond:
            self.closed = True
            for job in self.waiting:
                job.cancelled.set()
            self.cond.notify_all()
        self.thread.join(timeout=10)

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.waiting and not self.closed:
                self.cond.wait()
            if self.closed:
                return None
            first = self.waiting.popleft()
            batch = [first]
            if first.batchable:
                for job in list(self.waiting):
                    if len(batch) >= self.batch_size:
                        break
                    if job.batchable and job.kind == first.kind and job.key == first.key:
                        batch.append(job)
                        self.waiting.remove(job)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            try:
                self.run(batch[0].kind, batch)
            except Exception as exc:  # the batch's fault is every job's answer; the worker goes on
                for job in batch:
                    job.fail(exc)
