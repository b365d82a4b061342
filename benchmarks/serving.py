"""Serving and long-audio benchmarks (issue #18), each measured side by side in one run.

``batching``: a real server (in this process, one inference thread) answers 8 requests for a
short real clip, first one after another, then all 8 at once (dynamic batching). Prints both
wall times, their ratio, whether all texts are identical, and where one request's time goes
(encoder vs decoder at batch 1 and 8).

``vad``: a long file of real LibriVox clips joined by silence and noise, transcribed (a) one by
one as `mlx-bald transcribe` does by default, (b) in batched 30 s windows, (c) with --vad;
wall time and WER (Whisper's English normaliser) of each.

``load``: a real server in its own process on 127.0.0.1 answers a bounded number of
json requests for short real clips (the LibriVox clips cut to --clip-seconds), --concurrency at a
time; p50/p95 latency, throughput, errors (non-200 answers), lost requests (no answer), whether
each clip's text was the same every time, and the server's RSS after 10 and after all requests.
--baseline REV runs the same load against the apps/ package of git revision REV (e.g. the old
http.server stack) in the same run. Each server is warmed with one request, then one full batch
(--concurrency at once), before anything is measured.

    python -m benchmarks.serving batching --model whisper-base
    python -m benchmarks.serving vad --model whisper-base
    python -m benchmarks.serving load --model whisper-tiny.en --requests 200 --concurrency 16 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
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


# The server process of the load test: make_server/serve_forever exist in the old and new apps.
_SERVE = """
import sys
import mlx_bald  # OpenBLAS before mlx.core, as `mlx-bald serve` (else MLX's slow reference BLAS)
from apps.server import make_server
srv = make_server({"whisper-1-served": sys.argv[1]}, port=0, quiet=True)
print(srv.url, flush=True)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    pass
finally:
    srv.server_close()
"""


def _rss_mib(pid: int) -> float:
    import subprocess

    return round(int(subprocess.check_output(["ps", "-o", "rss=", "-p", str(pid)])) / 1024, 1)


def _load_clips(seconds: float) -> list[tuple[str, bytes]]:
    """The LibriVox clips cut to ``seconds``, as 16-bit WAV files."""
    import io

    import soundfile as sf

    from mlx_bald.data.librivox import load_librivox

    out = []
    for c in load_librivox():
        buf = io.BytesIO()
        sf.write(buf, c.audio[: int(seconds * 16_000)].astype(np.float32), 16_000, format="WAV",
                 subtype="PCM_16")
        out.append((c.id, buf.getvalue()))
    return out


def _load_one(folder: str, cwd: Path, clips: list, n: int, concurrency: int) -> dict:
    """Start the server of ``cwd``'s apps/ package, warm it, send ``n`` requests, stop it."""
    import http.client
    import os
    import signal
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(cwd)}  # `python -c` puts cwd first: its apps/ wins
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, folder], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the server did not start (got {url!r})")
        _post(url, clips[0][1])  # warm: the model loads
        # ... and a full batch: MLX keeps the buffers of the largest batch seen so far (the
        # encoder's attention at batch 8 alone is ~0.4 GB), which is not a leak
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: _post(url, clips[i % len(clips)][1]), range(concurrency)))
        rss = {"after_warmup": _rss_mib(proc.pid)}
        done, texts, latencies, errors, lost = [0], {}, [], 0, 0

        def one(i: int) -> tuple[float, str | None]:
            cid, data = clips[i % len(clips)]
            try:
                seconds, text = _post(url, data)
            except (KeyError, ValueError):
                return 0.0, None  # answered, not with a transcription: an error
            except (OSError, http.client.HTTPException):
                return -1.0, None  # no answer: lost
            texts.setdefault(cid, set()).add(text)
            return seconds, text

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for fut in as_completed([pool.submit(one, i) for i in range(n)]):
                seconds, text = fut.result()
                done[0] += 1
                if text is not None:
                    latencies.append(seconds)
                elif seconds < 0:
                    lost += 1
                else:
                    errors += 1
                if done[0] == 10:
                    rss["after_10"] = _rss_mib(proc.pid)
                if done[0] % 50 == 0:
                    print(f"{cwd}: {done[0]}/{n} answered", file=sys.stderr, flush=True)
        wall = time.perf_counter() - t0
        rss[f"after_{n}"] = _rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {"requests": n, "answered": len(latencies), "errors": errors, "lost": lost,
            "wall_s": round(wall, 2), "throughput_rps": round(n / wall, 3),
            "p50_s": round(float(np.percentile(lat, 50)), 2), "p95_s": round(float(np.percentile(lat, 95)), 2),
            "same_text_per_clip": all(len(v) == 1 for v in texts.values()), "rss_mib": rss,
            "rss_ratio_end_vs_10": round(rss[f"after_{n}"] / rss["after_10"], 3)}


def load(model: str, n: int, concurrency: int, clip_seconds: float, baseline: str | None) -> dict:
    """The load test on 127.0.0.1 (see the module doc); the baseline first, then this tree."""
    import subprocess
    import tempfile

    from mlx_bald.hub import resolve_model

    folder, root = str(resolve_model(model)), Path(__file__).resolve().parents[1]
    clips = _load_clips(clip_seconds)
    out = {"model": model, "requests": n, "concurrency": concurrency, "clip_seconds": clip_seconds,
           "clips": len(clips), "host": "127.0.0.1", "format": "json"}
    if baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(root), "archive", baseline, "apps"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            out[f"baseline {baseline}"] = _load_one(folder, Path(tmp), clips, n, concurrency)
            print(f"baseline {baseline}: {out[f'baseline {baseline}']}", file=sys.stderr, flush=True)
    out["this tree"] = _load_one(folder, root, clips, n, concurrency)
    return out


def summary(out: dict) -> str:
    lines = [f"{out['requests']} json requests, {out['concurrency']} at a time, {out['clips']} real "
             f"clips of {out['clip_seconds']:g} s, {out['model']} on {out['host']}"]
    for name, r in out.items():
        if isinstance(r, dict):
            lines.append(f"{name}: {r['throughput_rps']} req/s, p50 {r['p50_s']} s, p95 {r['p95_s']} s, "
                         f"errors {r['errors']}, lost {r['lost']}, RSS {r['rss_mib']} MiB "
                         f"(end/10: {r['rss_ratio_end_vs_10']}), same texts: {r['same_text_per_clip']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["batching", "vad", "load"])
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--clip", default=None, help="LibriVox clip id (default: the shortest)")
    p.add_argument("--requests", type=int, default=None, help="requests (default: 8; load: 200)")
    p.add_argument("--json", action="store_true", help="load: print the JSON, not a summary")
    p.add_argument("--concurrency", type=int, default=16, help="load: requests in flight")
    p.add_argument("--clip-seconds", type=float, default=3.0, help="load: clips cut to this length")
    p.add_argument("--baseline", metavar="REV", help="load: also measure apps/ of git revision REV")
    args = p.parse_args(argv)
    if args.what == "batching":
        out = batching(args.model, args.clip, args.requests or 8)
    elif args.what == "vad":
        out = vad(args.model)
    else:
        out = load(args.model, args.requests or 200, args.concurrency, args.clip_seconds, args.baseline)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serving_{args.what}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2) if args.what != "load" or args.json else summary(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
