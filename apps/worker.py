"""One inference thread fed by a bounded queue, batching what it can.

MLX inference (and mlx_whisper's global model holder) is not meant to be driven from several
threads at once, so HTTP threads only decode and validate; every transcription runs here and
each caller waits on its own Future. Jobs submitted with a batch key (same model and decoding
options) that wait together are decoded as ONE batch through the batch transcriber (dynamic
batching); a batchable job alone is a batch of one, so its text does not depend on the traffic.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

# (audio 16 kHz mono float32, model target chosen by the operator, mlx_whisper options) -> result
Transcriber = Callable[[np.ndarray, str, dict], dict]
# (target, audios, shared options, on_segment(index, segment) or None) -> one result per audio
BatchTranscriber = Callable[[str, list, dict, Any], list]


class QueueFullError(RuntimeError):
    """More requests are waiting than the server accepts."""


class InferenceWorker:
    def __init__(self, transcriber: Transcriber, max_pending: int = 32,
                 batch_transcriber: BatchTranscriber | None = None, max_batch: int = 8,
                 gather_seconds: float = 0.05) -> None:
        self._transcriber = transcriber
        self._batch_transcriber = batch_transcriber
        self.max_batch, self.gather_seconds = max_batch, gather_seconds
        self._held: list = []  # taken from the queue while gathering, not batchable with it
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._loop, name="mlx-bald-inference",
                                        daemon=True)
        self._busy = False
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._jobs.qsize() + len(self._held) + int(self._busy)

    def submit(self, audio: np.ndarray, target: str, options: dict, batch: bool = False,
               on_segment: Callable[[dict], None] | None = None) -> Future:
        """Queue a transcription. ``batch``: decode it with the batch transcriber, together with
        other waiting jobs of the same target and options; ``on_segment``: streamed segments
        (a streaming job is decoded alone)."""
        fut: Future = Future()
        key = None
        if (batch or on_segment) and self._batch_transcriber is not None:
            key = (target, tuple(sorted((k, repr(v)) for k, v in options.items())))
        try:
            self._jobs.put_nowait((fut, audio, target, options, key, on_segment))
        except queue.Full:
            raise QueueFullError("too many requests are waiting; try again later") from None
        return fut

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the inference thread (e.g. to preload a model); waits for a free slot."""
        fut: Future = Future()
        self._jobs.put((fut, None, fn, None, None, None))
        return fut

    def stop(self, timeout: float = 5.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _next(self):
        return self._held.pop(0) if self._held else self._jobs.get()

    def _gather(self, first) -> list:
        """``first`` plus the waiting jobs with its batch key (up to max_batch), waiting up to
        gather_seconds for requests that arrive together; others are held for later."""
        import time

        batch, key, deadline = [first], first[4], time.monotonic() + self.gather_seconds
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is not None and job[4] == key and job[5] is None:
                batch.append(job)
            else:
                self._held.append(job)
                if job is None:
                    break
        return batch

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            fut, audio, target, options, key, on_segment = job
            if key is not None:
                self._run_batch(self._gather(job) if on_segment is None else [job])
                continue
            if not fut.set_running_or_notify_cancel():
                continue  # the caller gave up before we started
            self._busy = True
            try:
                if audio is None:
                    fut.set_result(target())
                else:
                    fut.set_result(self._transcriber(audio, target, dict(options)))
            except BaseException as exc:  # handed to the waiting request thread
                fut.set_exception(exc)
            finally:
                self._busy = False

    def _run_batch(self, jobs: list) -> None:
        jobs = [j for j in jobs if j[0].set_running_or_notify_cancel()]  # callers that gave up
        if not jobs:
            return
        _, _, target, options, _, on_segment = jobs[0]
        self._busy = True
        try:
            stream = (lambda _i, seg: on_segment(seg)) if on_segment else None
            results = self._batch_transcriber(target, [j[1] for j in jobs], dict(options), stream)
            for job, result in zip(jobs, results):
                job[0].set_result(result)
        except BaseException as exc:
            for job in jobs:
                job[0].set_exception(exc)
        finally:
            self._busy = False
