"""One inference thread fed by a bounded queue, batching what it can.

MLX inference (and mlx_whisper's global model holder) is not meant to be driven from several
threads at once, so the HTTP side only decodes and validates; every transcription runs here and
each caller waits on its own Future. Jobs submitted with a batch key (same model and decoding
options) that wait together are decoded as ONE batch through the batch transcriber (dynamic
batching); a batchable job alone is a batch of one, so its text does not depend on the traffic.

A caller that gives up cancels its Future: a queued job is then taken out of the queue at once
(its place is free); a running one finishes for the others in its batch and its result is dropped.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# (audio 16 kHz mono float32, model target chosen by the operator, mlx_whisper options) -> result
Transcriber = Callable[[np.ndarray, str, dict], dict]
# (target, audios, shared options, on_segment(index, segment) or None) -> one result per audio
BatchTranscriber = Callable[[str, list, dict, Any], list]


class QueueFullError(RuntimeError):
    """More requests are waiting than the server accepts."""


class ShuttingDownError(RuntimeError):
    """The server is stopping: queued work is refused."""


@dataclass(eq=False)
class _Job:
    fut: Future
    audio: np.ndarray | None
    target: Any                  # a model target, or the function of a call()
    options: dict
    key: tuple | None = None     # batch key; None: the one-by-one transcriber
    on_segment: Callable[[dict], None] | None = None


class InferenceWorker:
    def __init__(self, transcriber: Transcriber, max_pending: int = 32,
                 batch_transcriber: BatchTranscriber | None = None, max_batch: int = 8,
                 gather_seconds: float = 0.05) -> None:
        self._transcriber = transcriber
        self._batch_transcriber = batch_transcriber
        self.max_pending, self.max_batch, self.gather_seconds = max_pending, max_batch, gather_seconds
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._running = 0
        self._closed = self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mlx-bald-inference", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        with self._cv:
            return len(self._jobs) + self._running

    def submit(self, audio: np.ndarray, target: str, options: dict, batch: bool = False,
               on_segment: Callable[[dict], None] | None = None) -> Future:
        """Queue a transcription. ``batch``: decode it with the batch transcriber, together with
        other waiting jobs of the same target and options; ``on_segment``: streamed segments
        (a streaming job is decoded alone)."""
        key = None
        if (batch or on_segment) and self._batch_transcriber is not None:
            key = (target, tuple(sorted((k, repr(v)) for k, v in options.items())))
        job = _Job(Future(), audio, target, options, key, on_segment)
        with self._cv:
            if self._closed:
                raise ShuttingDownError("the server is shutting down; try again later")
            if len(self._jobs) >= self.max_pending:
                raise QueueFullError("too many requests are waiting; try again later")
            self._jobs.append(job)
            self._cv.notify_all()
        job.fut.add_done_callback(lambda f: f.cancelled() and self._forget(job))
        return job.fut

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the inference thread (e.g. to preload a model), past the queue limit."""
        job = _Job(Future(), None, fn, {})
        with self._cv:
            self._jobs.append(job)
            self._cv.notify_all()
        return job.fut

    def close(self) -> tuple[int, int]:
        """Refuse new work and fail the queued jobs with ShuttingDownError; the running ones
        finish. Returns (refused, running)."""
        with self._cv:
            self._closed = True
            queued, running = list(self._jobs), self._running
            self._jobs.clear()
        refused = 0
        for job in queued:
            if job.fut.set_running_or_notify_cancel():
                job.fut.set_exception(ShuttingDownError("the server is shutting down"))
                refused += 1
        return refused, running

    def stop(self, timeout: float = 5.0) -> None:
        self.close()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _forget(self, job: _Job) -> None:
        with self._cv:
            if job in self._jobs:
                self._jobs.remove(job)

    def _take(self) -> list[_Job] | None:
        """The next job with the waiting jobs of its batch key (up to max_batch, waiting up to
        gather_seconds for requests that arrive together); None once stopping."""
        with self._cv:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cv.wait()
            first = self._jobs.popleft()
            batch = [first]
            if first.key is not None and first.on_segment is None:
                deadline = time.monotonic() + self.gather_seconds
                while len(batch) < self.max_batch:
                    same = [j for j in self._jobs if j.key == first.key and j.on_segment is None]
                    for job in same[: self.max_batch - len(batch)]:
                        self._jobs.remove(job)
                        batch.append(job)
                    left = deadline - time.monotonic()
                    if len(batch) >= self.max_batch or left <= 0 or self._closed:
                        break
                    self._cv.wait(left)
            batch = [j for j in batch if j.fut.set_running_or_notify_cancel()]
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                if jobs:
                    self._run(jobs)
            finally:
                with self._cv:
                    self._running = 0

    def _run(self, jobs: list[_Job]) -> None:
        first = jobs[0]
        try:
            if first.audio is None:
                results = [first.target()]
            elif first.key is None:
                results = [self._transcriber(first.audio, first.target, dict(first.options))]
            else:
                stream = (lambda _i, seg: first.on_segment(seg)) if first.on_segment else None
                results = self._batch_transcriber(first.target, [j.audio for j in jobs],
                                                  dict(first.options), stream)
            for job, result in zip(jobs, results):
                job.fut.set_result(result)
        except BaseException as exc:  # handed to the waiting requests
            for job in jobs:
                job.fut.set_exception(exc)
