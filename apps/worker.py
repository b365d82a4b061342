"""One inference thread fed by a bounded queue.

MLX inference (and mlx_whisper's global model holder) is not meant to be driven from several
threads at once, so HTTP threads only decode and validate; every transcription runs here, one
after another, and each caller waits on its own Future.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

# (audio 16 kHz mono float32, model target chosen by the operator, mlx_whisper options) -> result
Transcriber = Callable[[np.ndarray, str, dict], dict]


class QueueFullError(RuntimeError):
    """More requests are waiting than the server accepts."""


class InferenceWorker:
    def __init__(self, transcriber: Transcriber, max_pending: int = 32) -> None:
        self._transcriber = transcriber
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._loop, name="mlx-bald-inference",
                                        daemon=True)
        self._busy = False
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._jobs.qsize() + int(self._busy)

    def submit(self, audio: np.ndarray, target: str, options: dict) -> Future:
        fut: Future = Future()
        try:
            self._jobs.put_nowait((fut, audio, target, options))
        except queue.Full:
            raise QueueFullError("too many requests are waiting; try again later") from None
        return fut

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the inference thread (e.g. to preload a model); waits for a free slot."""
        fut: Future = Future()
        self._jobs.put((fut, None, fn, None))
        return fut

    def stop(self, timeout: float = 5.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, audio, target, options = job
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
