"""Serving and long-audio benchmarks (issue #18), each measured side by side in one run.

``batching``: a real server (in this process, one inference thread) answers 8 requests for a
short real clip, first one after another, then all 8 at once (dynamic batching). Prints both
wall times, their ratio, whether all texts are identical, and where one request's time goes
(encoder vs decoder at batch 1 and 8).

``vad``: a long file of real LibriVox clips joined by silence and noise, transcribed (a) one by
one as `mlx-bald transcribe` does by default, (b) in batched 30 s windows, (c) with --vad;
wall time and WER (Whisper's English normaliser) of each.

    python -m benchmarks.serving batching --model whisper-base
    python -m benchmarks.serving vad --model whisper-base
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _post(url: str, data: bytes) -> tuple[float, str]:
    """POST one clip as json; (seconds until answered, text)."""
    import http.client
    import uuid
    from urllib.parse import urlsplit

    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    u = urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    conn.request("POST", "/v1/audio/transcriptions", body,
                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    reply = conn.getresponse()
    text = json.loads(reply.read())["text"]
    conn.close()
    return time.perf_counter() - t0, text


def _split(model: str, audio: np.ndarray) -> dict:
    """Encoder and greedy decoder seconds for one 30 s window at batch 1 and 8."""
    import mlx.core as mx
    from mlx_whisper.decoding import DecodingOptions

    from mlx_bald.batched import Span, _mel
    from mlx_bald.load import load_model
    from mlx_bald.transcribe import default_dtype

    m = load_model(model, dtype=default_dtype())
    mel = _mel(audio, Span(0, 0.0, len(audio) / 16_000), m.dims.n_mels, default_dtype())
    out = {}
    for b in (1, 8):
        batch = mx.stack([mel] * b)
        mx.eval(m.encoder(batch))  # warm
        t0 = time.perf_counter()
        mx.eval(m.encoder(batch))
        enc = time.perf_counter() - t0
        options = DecodingOptions(language="en" if not m.is_multilingual else None, fp16=False,
                                  without_timestamps=True)
        t0 = time.perf_counter()
        results = m.decode(batch, options)
        total = time.perf_counter() - t0
        out[f"batch{b}"] = {"encoder_s": round(enc, 3), "decoder_s": round(total - enc, 3),
                            "tokens": len(results[0].tokens)}
    return out


def batching(model: str, clip_id: str | None, n: int) -> dict:
    from apps.server import make_server, start_in_thread
    from mlx_bald.data.librivox import load_librivox
    from mlx_bald.hub import resolve_model

    clips = load_librivox()
    clip = next(c for c in clips if c.id == clip_id) if clip_id else min(clips, key=lambda c: c.seconds)
    folder = str(resolve_model(model))  # loaded on the server's inference thread (MLX streams are per thread)
    srv = make_server({model: folder}, port=0, quiet=True)
    start_in_thread(srv)
    data = clip.path.read_bytes()
    try:
        _post(srv.url, data)  # warm: first-call costs out of both timings
        t0 = time.perf_counter()
        sequential = [_post(srv.url, data) for _ in range(n)]
        seq_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            concurrent = list(pool.map(lambda _: _post(srv.url, data), range(n)))
        conc_wall = time.perf_counter() - t0
    finally:
        srv.shutdown()
        srv.server_close()
    texts = {t for _, t in sequential} | {t for _, t in concurrent}
    return {"model": model, "clip": clip.id, "clip_seconds": round(clip.seconds, 2), "requests": n,
            "sequential_s": round(seq_wall, 2), "concurrent_s": round(conc_wall, 2),
            "ratio": round(conc_wall / seq_wall, 3), "identical_texts": len(texts) == 1,
            "finish_times_concurrent_s": sorted(round(s, 2) for s, _ in concurrent),
            "text": sequential[0][1], "split": _split(folder, clip.audio)}


def long_file(n_clips: int = 5, seed: int = 0):
    """LibriVox clips, each after 8 s of silence and before 6 s of low noise; references joined."""
    from mlx_bald.data.librivox import load_librivox

    rng = np.random.default_rng(seed)
    clips = load_librivox()[:n_clips]
    parts = []
    for c in clips:
        parts += [np.zeros(8 * 16_000, np.float32), c.audio.astype(np.float32),
                  (0.01 * rng.standard_normal(6 * 16_000)).astype(np.float32)]
    return np.concatenate(parts), " ".join(c.text for c in clips), sum(c.seconds for c in clips)


def vad(model: str) -> dict:
    from mlx_bald.batched import transcribe_many
    from mlx_bald.evaluate import corpus_wer
    from mlx_bald.transcribe import get_model, transcribe
    from mlx_bald.vad import vad_spans

    audio, reference, speech = long_file()
    get_model(model)
    rows = {}

    def row(name: str, fn) -> None:
        t0 = time.perf_counter()
        text = fn()
        wall = time.perf_counter() - t0
        rows[name] = {"wall_s": round(wall, 2), "wer": round(corpus_wer([reference], [text], "en")[0], 2)}
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)

    row("one by one (transcribe default)", lambda: transcribe(audio, model, language="en")["text"])
    row("batched 30 s windows (--batch-size 8)",
        lambda: transcribe_many([audio], model, batch_size=8, language="en")[0]["text"])
    row("VAD chunks (--vad)",
        lambda: transcribe_many([audio], model, batch_size=8, spans=vad_spans([audio]), language="en")[0]["text"])
    return {"model": model, "audio_seconds": round(len(audio) / 16_000, 1), "speech_seconds": round(speech, 1),
            "normaliser": "whisper-english", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["batching", "vad"])
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--clip", default=None, help="LibriVox clip id (default: the shortest)")
    p.add_argument("--requests", type=int, default=8)
    args = p.parse_args(argv)
    out = batching(args.model, args.clip, args.requests) if args.what == "batching" else vad(args.model)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serving_{args.what}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
