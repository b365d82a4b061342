"""Issue #31: the server under faults, against fake transcribers (no model). A client that
leaves while queued, mid-batch or mid-stream; a client that dribbles its upload; stopping with
work queued, from another thread and by SIGTERM/SIGINT to `mlx-bald serve`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_server import Fake, error_of, multipart, request, transcribe_req, wav_bytes
from apps.server import make_server, start_in_thread

ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition, what: str, seconds: float = 20.0) -> None:
    """Poll until ``condition()`` holds (a state to reach, not a timing to assert)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def raw_upload(srv, fields: dict, audio: bytes, send_all: bool = True) -> socket.socket:
    """A transcription request on a raw socket (to leave or stall at will)."""
    body, ctype = multipart(fields, {"file": ("clip.wav", audio)})
    s = socket.create_connection(srv.server_address[:2], timeout=30)
    s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + (body if send_all else body[:len(body) // 2]))
    return s


@pytest.fixture
def server_factory():
    made = []

    def make(**kwargs):
        srv = make_server({"tiny": "T"}, port=0, **{"transcriber": Fake(), "quiet": True, **kwargs})
        start_in_thread(srv)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_while_queued_frees_its_place(server_factory, stream):
    fake = Fake()
    fake.gate = threading.Event()
    srv = server_factory(transcriber=fake, max_pending=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(transcribe_req, srv, {"model": "tiny"})
            assert fake.started.wait(10)
            leaver = raw_upload(srv, {"model": "tiny", **({"stream": "true"} if stream else {})},
                                wav_bytes(0.5))
            wait_for(lambda: srv.worker.pending == 2, "the second request queued")
            assert transcribe_req(srv, {"model": "tiny"})[0] == 503  # the queue is full
            leaver.close()
            wait_for(lambda: srv.worker.pending == 1, "the leaver's job dropped")
            third = pool.submit(transcribe_req, srv, {"model": "tiny"})  # its place is free
            wait_for(lambda: srv.worker.pending == 2, "the third request queued")
            fake.gate.set()
            assert first.result(30)[0] == 200 and third.result(30)[0] == 200
    finally:
        fake.gate.set()
    assert [n for n, _, _ in fake.calls] == [16_000, 16_000]  # the leaver's 8,000 never decoded


class GatedBatch:
    """A batch transcriber whose first two calls wait for their gates; streams a segment per
    audio, then (for streams) a second one after ``gate``."""

    def __init__(self) -> None:
        self.gates = [threading.Event(), threading.Event()]
        self.sizes: list[int] = []
        self.calls = threading.Semaphore(0)
        self.stopped: list[BaseException] = []

    def __call__(self, target, audios, options, on_segment=None):
        self.sizes.append(len(audios))
        self.calls.release()
        n = len(self.sizes)
        try:
            if on_segment:
                on_segment(0, {"id": 0, "start": 0.0, "end": 0.5, "text": " first"})
            if n <= 2:
                assert self.gates[n - 1].wait(30)
            if on_segment:
                on_segment(0, {"id": 1, "start": 0.5, "end": 1.0, "text": " second"})
        except Exception as exc:  # what the server raised into the decoder
            self.stopped.append(exc)
            raise
        return [{"text": f" audio of {len(a)}", "segments": [], "language": "en"} for a in audios]


def test_a_client_that_leaves_a_running_batch_does_not_poison_it(server_factory, capsys):
    batch = GatedBatch()
    srv = server_factory(batch_transcriber=batch, quiet=False)  # logs who left
    blocker = raw_upload(srv, {"model": "tiny"}, wav_bytes(0.1))  # a batch of one, held
    assert batch.calls.acquire(timeout=10)
    socks = [raw_upload(srv, {"model": "tiny"}, wav_bytes(s)) for s in (0.5, 0.6, 0.7)]
    wait_for(lambda: srv.worker.pending == 4, "three requests queued behind the first")
    batch.gates[0].set()
    assert batch.calls.acquire(timeout=10) and batch.sizes == [1, 3]  # they run as one batch
    socks[1].close()
    wait_for(lambda: "result is dropped when its batch ends" in capsys.readouterr().err,
             "the server saw the client leave")
    batch.gates[1].set()
    for s, samples in ((socks[0], 8_000), (socks[2], 11_200), (blocker, 1_600)):
        reply = _reply(s)
        assert reply.startswith(b"HTTP/1.1 200") and f"audio of {samples}".encode() in reply
        s.close()
    wait_for(lambda: srv.worker.pending == 0, "the worker idle")
    assert transcribe_req(srv, {"model": "tiny"})[0] == 200 and batch.stopped == []


def _reply(s: socket.socket) -> bytes:
    """One whole HTTP response from a raw socket (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_client_that_leaves_mid_stream_stops_its_decoding(server_factory, capsys):
    batch = GatedBatch()
    batch.gates[0].set()  # a first, normal stream: both segments and done
    srv = server_factory(batch_transcriber=batch, quiet=False)  # logs who left
    status, _, body = transcribe_req(srv, {"model": "tiny", "stream": "true"})
    assert status == 200 and body.count(b"transcript.text.delta") == 2
    s = raw_upload(srv, {"model": "tiny", "stream": "true"}, wav_bytes(0.5))
    got = b""
    while b"transcript.text.delta" not in got:  # the first event arrived
        got += s.recv(4096)
    s.close()
    wait_for(lambda: "left the stream" in capsys.readouterr().err, "the server saw it leave")
    batch.gates[1].set()
    wait_for(lambda: srv.worker.pending == 0, "the worker idle")
    assert [type(e).__name__ for e in batch.stopped] == ["ClientGone"]  # no second segment
    assert transcribe_req(srv, {"model": "tiny"})[0] == 200


def test_a_slow_upload_does_not_block_others_and_is_cut_off(server_factory):
    srv = server_factory(client_timeout=1.0)
    slow = raw_upload(srv, {"model": "tiny"}, wav_bytes(1.0), send_all=False)  # then silence
    for _ in range(3):  # others are served meanwhile
        assert transcribe_req(srv, {"model": "tiny"})[0] == 200
        assert request(srv, "GET", "/health")[0] == 200
    reply = _reply(slow)
    assert reply.startswith(b"HTTP/1.1 408") and b'"code":"timeout"' in reply.replace(b" ", b"")
    assert slow.recv(1) == b""  # and disconnected
    slow.close()


def test_stopping_refuses_queued_work_and_finishes_the_running_one(capsys):
    fake = Fake()
    fake.gate = threading.Event()
    srv = make_server({"tiny": "T"}, port=0, transcriber=fake, quiet=True)
    start_in_thread(srv)
    try:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(transcribe_req, srv, {"model": "tiny"})
            assert fake.started.wait(10)
            queued = pool.submit(transcribe_req, srv, {"model": "tiny"})
            wait_for(lambda: srv.worker.pending == 2, "the second request queued")
            stopping = pool.submit(srv.shutdown)
            refused = queued.result(30)
            assert refused[0] == 503 and error_of(refused)["code"] == "shutting_down"
            fake.gate.set()
            assert running.result(30)[0] == 200
            stopping.result(30)
    finally:
        fake.gate.set()
        srv.server_close()
    err = capsys.readouterr().err
    assert "1 queued request(s) refused" in err and "1 running finishing" in err
    assert "mlx-bald: stopped" in err and len(fake.calls) == 1
    with pytest.raises(OSError):
        socket.create_connection(srv.server_address[:2], timeout=5)


SERVE_GATED = """
import sys, time
from pathlib import Path
from apps.server import make_server
gate = Path(sys.argv[1])
def slow(audio, target, options):
    (gate.parent / "started").touch()
    while not gate.exists():
        time.sleep(0.02)
    return {"text": " done", "segments": [], "language": "en"}
srv = make_server({"tiny": "T"}, port=0, transcriber=slow, quiet=True)
print(srv.url, flush=True)
srv.serve_forever()
srv.server_close()
print("exited cleanly", flush=True)
"""


def test_sigterm_refuses_queued_work_and_finishes_the_running_one(tmp_path):
    """uvicorn handles the signal in the main thread, as under `mlx-bald serve`."""
    gate = tmp_path / "gate"
    proc = subprocess.Popen([sys.executable, "-c", SERVE_GATED, str(gate)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        host, port = url.removeprefix("http://").split(":")

        class Srv:
            server_address = (host, int(port))

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(transcribe_req, Srv, {"model": "tiny"})
            wait_for((tmp_path / "started").exists, "the first request running")
            queued = pool.submit(transcribe_req, Srv, {"model": "tiny"})
            wait_for(lambda: json.loads(request(Srv, "GET", "/health")[2])["queued"] == 2,
                     "the second request queued")
            proc.send_signal(signal.SIGTERM)
            refused = queued.result(30)
            assert refused[0] == 503 and error_of(refused)["code"] == "shutting_down"
            gate.touch()
            assert json.loads(running.result(30)[2]) == {"text": "done"}
        out, err = proc.communicate(timeout=30)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    assert "1 queued request(s) refused" in err and "mlx-bald: stopped" in err, err
    assert proc.returncode == -signal.SIGTERM or "exited cleanly" in out  # uvicorn re-raises it


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_cli_stops_cleanly_on_a_signal(tmp_path, sig):
    from test_cli_transcribe import _tiny_mlx_folder

    folder = _tiny_mlx_folder(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "mlx_bald.cli.main", "serve", "--model",
                             f"t={folder}", "--port", "0", "--no-preload"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        while not any("serving on" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = next(ln for ln in lines if "serving on" in ln).split("serving on ")[1].split(" ")[0]
        host, port = url.removeprefix("http://").split(":")

        class Srv:
            server_address = (host, int(port))

        assert request(Srv, "GET", "/health")[0] == 200
        proc.send_signal(sig)
        err = "".join(lines) + proc.stderr.read()
        assert proc.wait(30) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "0 queued request(s) refused" in err and "mlx-bald: stopped" in err
    assert "Traceback" not in err
