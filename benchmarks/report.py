"""bench.json -> Markdown: the paper's table, the two kinds of speed-up kept apart, WER of
real-weight models, the analytic cost model beside the measurements, and where time goes."""
from __future__ import annotations

from benchmarks.paper import PAPER, PAPER_OF


def _f(x, fmt: str = ".1f", none: str = "–") -> str:
    return none if x is None else format(x, fmt)


def _x(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _wer(m: dict, set_name: str | None = None) -> str:
    if m["weights"] == "untrained":
        return "n/a (untrained)"
    tr = m.get("transcribe") or {}
    row = tr.get(set_name) if set_name else next(iter(tr.values()), None)
    return _f(row["wer"], ".2f") if row else "–"


def headlines(r: dict) -> list[str]:
    """The run's findings as bullets, every number computed from ``r``."""
    rec = {m["key"]: m for m in r["models"]}
    bs = r["protocol"]["batches"]
    b1, bn = f"b{min(bs)}", f"b{max(bs)}"
    out = []

    def sp(key, ref, b):
        return rec[key]["speedup"].get(f"vs {ref}", {}).get(b)

    comp = [k for k in ("merged3", "bald", "bald+twins32") if k in rec]
    if comp:
        out.append("Compression alone (same mlx-bald modules, decoder tokens/s over base): " + "; ".join(
            f"{k} {_x(sp(k, 'base', bn))} at batch {max(bs)}, {_x(sp(k, 'base', b1))} at batch {min(bs)}"
            for k in comp) + (f"; tiny.en {_x(sp('tiny.en', 'base', bn))} / {_x(sp('tiny.en', 'base', b1))}"
                              if "tiny.en" in rec else "") + ".")
    for key, t in r.get("targets", {}).items():
        out.append(f"Target {key} ≥ {t['target_speedup']}× at batch {t['batch']}: "
                   f"{'met' if t['met'] else 'missed'} ({t['speedup']:.2f}×, by median step "
                   f"{_x(t.get('speedup_median_step'))}; batch 1 {_x(t['speedup_b1'])})"
                   + ("" if t["faster_than_tiny"] is None else
                      f", {'faster' if t['faster_than_tiny'] else 'not faster'} than tiny.en") + ".")
    for peer in ("mlx-whisper base", "faster-whisper base"):
        if peer in rec:
            best = [k for k in ("bald", "bald+twins32") if k in rec]
            out.append(f"Against {peer} (what a user gains): " + "; ".join(
                f"{k} decoder {_x(sp(k, peer, b1))} (batch {min(bs)}) / {_x(sp(k, peer, bn))} (batch {max(bs)}), "
                f"end-to-end {_x(sp(k, peer, 'e2e'))}" for k in best) + ".")
    if "bald" in rec:
        m = rec["bald"]
        prof = (m.get("profile") or {}).get(bn)
        if prof:
            top = max(prof, key=prof.get)
            out.append(f"Where bald's time goes: the encoder is {100 * m['e2e']['encoder_share']:.0f}% of "
                       f"end-to-end time on these clips; in a batch-{max(bs)} decode step the largest part "
                       f"is {top} ({100 * prof[top] / sum(prof.values()):.0f}%).")
        base_c = rec.get("base", m)["cost"]
        pred = base_c[f"decode_floor_ms_{bn}"] / m["cost"][f"decode_floor_ms_{bn}"]
        out.append(f"Cost model: on {m['cost']['chip']} ({m['cost']['bandwidth_gbs']} GB/s) the bandwidth "
                   f"floor predicts bald at {pred:.2f}× base at batch {max(bs)} "
                   f"({base_c[f'decode_floor_ms_{b1}'] / m['cost'][f'decode_floor_ms_{b1}']:.2f}× at batch "
                   f"{min(bs)}); measured here {_x(sp('bald', 'base', bn))} / {_x(sp('bald', 'base', b1))}.")
    return out


def markdown(r: dict, png_name: str = "pareto.png") -> str:
    m_all = r["models"]
    mi, pr = r["machine"], r["protocol"]
    bmax = f"b{max(pr['batches'])}"
    bmin = f"b{min(pr['batches'])}"
    first_set = pr["sets"][0]
    L = []
    title = "mlx-bald benchmark" + (" (QUICK MODE: random tiny models, checks the harness runs; not results)"
                                    if r["quick"] else "")
    L += [f"# {title}", ""]
    L += [f"Machine: {mi['cpu']}, {mi['cores']} cores, {mi['platform']}; MLX {mi['mlx']} on "
          f"`{mi['mlx_device']}` (GPU backend: {mi['mlx_gpu_backend'] or 'none'}), BLAS: {mi['blas']}; "
          f"mlx-whisper {mi['mlx_whisper']}, faster-whisper {mi['faster_whisper'] or 'not installed'}. "
          f"Load average at start/end: {_load(mi.get('loadavg_start'))} / {_load(mi.get('loadavg_end'))}. "
          f"Run {r['created']}, {r['wall_s']:.0f} s.", ""]
    L += [f"Protocol: decoder = greedy generation of exactly {pr['tokens']} tokens per sequence "
          f"(end-of-text suppressed) at batch {', '.join(map(str, pr['batches']))} on the encoder output "
          f"of real clip `{pr['decode_clip']}`, through the model's kv cache; tokens/s = batch × tokens "
          f"/ wall time; medians of {pr['repeats']} rounds "
          f"({pr.get('mlx_whisper_repeats', pr['repeats'])} for stock mlx-whisper, the slowest), models alternating, "
          f"order rotated each round, after a warm-up. Encoder ms = median over the end-to-end windows. "
          f"End-to-end RTF = wall / audio over {pr['e2e_clips']} real clips ({pr['e2e_audio_s']:.1f} s): "
          f"mel + encoder + as many greedy tokens as stock base produced per clip "
          f"({pr['e2e_tokens_source']}). MLX dtype {pr['dtype']}. Speed-ups are computed within this run.", ""]
    L += [f"**{pr['note']}**", ""]
    L += ["Headlines:", ""] + [f"- {h}" for h in headlines(r)] + [""]
    L += ["Models:", ""] + [f"- **{m['label']}**: {m.get('about', '')}." for m in m_all] + [""]

    if r.get("speculative"):
        from benchmarks.speculative import markdown as speculative_markdown
        L += speculative_markdown(r["speculative"])

    L += [f"## The paper's table, measured here (batch {max(pr['batches'])}, {pr['tokens']} tokens)", ""]
    L += [f"| Model | weights | params (M) | on disk (MB) | decoder tok/s | speed-up vs base | paper tok/s (M1 Air) "
          f"| paper speed-up | WER % ({first_set}) | paper WER % (Bambara) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in m_all:
        p = PAPER.get(PAPER_OF.get(m["key"], ""), {})
        L.append(f"| {m['label']} | {m['weights']} | {m['params'] / 1e6:.1f} | {m['disk_bytes'] / 1e6:.0f} | "
                 f"{m['decode'][bmax]['tok_s']:.1f} | {_x(m['speedup'].get('vs base', {}).get(bmax))} | "
                 f"{_f(p.get('tok_s'))} | {_x(p.get('speedup'))} | {_wer(m, first_set)} | {_f(p.get('wer'), '.2f')} |")
    L += ["", "Stock tiny here is whisper-tiny.en (English-only, vocab 51864): the only tiny weights "
          "available offline; the paper's tiny is multilingual.", ""]

    L += ["## (a) Compression alone: the same mlx-bald modules, compressed vs uncompressed base", ""]
    L += ["× = speed-up over base from wall time (the protocol); × step = from the median one-token "
          "step, which bursts of load on a shared machine move less; runs = the wall seconds of each round.", ""]
    L += [f"| Model | encoder ms / 30 s | tok/s {bmin} | × | × step | tok/s {bmax} | × | × step | runs {bmax} (s) "
          f"| e2e RTF | × | peak MB ({bmax} / e2e) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in m_all:
        if m["engine"] != "mlx-bald":
            continue
        sp = m["speedup"].get("vs base", {})
        pk = m["peak_mb"]
        runs = ", ".join(f"{x:.3g}" for x in m["decode"][bmax]["runs_s"])
        L.append(f"| {m['label']} | {m['encoder_ms']:.0f} | {m['decode'][bmin]['tok_s']:.1f} | {_x(sp.get(bmin))} | "
                 f"{_x(sp.get(bmin + '_median_step'))} | {m['decode'][bmax]['tok_s']:.1f} | {_x(sp.get(bmax))} | "
                 f"{_x(sp.get(bmax + '_median_step'))} | {runs} | {m['e2e']['rtf']:.3f} | {_x(sp.get('e2e'))} | "
                 f"{_f(pk.get(bmax), '.0f')} / {_f(pk.get('e2e'), '.0f')} |")
    L.append("")
    for key, t in r.get("targets", {}).items():
        tiny = {True: "faster than tiny.en", False: "NOT faster than tiny.en", None: "tiny.en not run"}[t["faster_than_tiny"]]
        L.append(f"- Target {key}: ≥ {t['target_speedup']}× decoder tokens/s at batch {t['batch']}: measured "
                 f"{t['speedup']:.2f}× (by median step {_x(t.get('speedup_median_step'))}; batch 1: "
                 f"{_x(t['speedup_b1'])}) → **{'met' if t['met'] else 'MISSED'}**; {tiny}.")
    L.append("")

    peers = [k for k in ("mlx-whisper base", "faster-whisper base") if any(m["key"] == k for m in m_all)]
    if peers:
        L += ["## (b) What a user gains: mlx-bald models vs stock mlx-whisper base and faster-whisper base", ""]
        head = " | ".join(f"vs {p}: {c}" for p in peers for c in (f"dec {bmin}", f"dec {bmax}", "e2e"))
        L += [f"| Model | {head} |", "|---|" + "---:|" * (3 * len(peers))]
        for m in m_all:
            if m["engine"] != "mlx-bald":
                continue
            cells = [_x(m["speedup"].get(f"vs {p}", {}).get(c)) for p in peers for c in (bmin, bmax, "e2e")]
            L.append(f"| {m['label']} | " + " | ".join(cells) + " |")
        L += ["", "| Peer | encoder ms / 30 s | tok/s " + bmin + " | tok/s " + bmax + " | e2e RTF | peak MB (e2e) |",
              "|---|---:|---:|---:|---:|---:|"]
        for m in m_all:
            if m["key"] in peers:
                L.append(f"| {m['label']} | {m['encoder_ms']:.0f} | {m['decode'][bmin]['tok_s']:.1f} | "
                         f"{m['decode'][bmax]['tok_s']:.1f} | {m['e2e']['rtf']:.3f} | {_f(m['peak_mb'].get('e2e'), '.0f')} |")
        L.append("")

    L += ["## Transcription with real weights (greedy, temperature 0)", "",
          "| Model | set | clips | WER % | normaliser | transcribe RTF |", "|---|---|---:|---:|---|---:|"]
    for m in m_all:
        for s, t in (m.get("transcribe") or {}).items():
            L.append(f"| {m['label']} | {s} | {t['n_clips']} | {t['wer']:.2f} | {t['normalizer']} | {t['rtf']:.3f} |")
    L.append("")

    c0 = m_all[0]["cost"]
    L += [f"## Analytic cost model beside the measurements ({c0['chip']}: {c0['bandwidth_gbs']} GB/s, "
          f"{c0['tflops']} TFLOP/s; weights fp16, faster-whisper int8; caches fp16)", "",
          "Floor = max(bytes / bandwidth, FLOPs / peak); decode at small batch is bandwidth-bound, so the "
          "ratio of floors is the best speed-up that chip can show. Cache = self K/V at the mean position "
          "+ cross K/V of 1500 audio positions, per sequence.", "",
          f"| Model | weights read / step (MB) | cache / seq (MB) | GFLOP / token | floor ms {bmin} | floor ms {bmax} "
          f"| predicted × {bmax} | measured × {bmax} here | encoder GFLOP | encoder floor ms | encoder ms here |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_c = next((m["cost"] for m in m_all if m["key"] == "base"), c0)
    for m in m_all:
        c = m["cost"]
        pred = base_c[f"decode_floor_ms_{bmax}"] / c[f"decode_floor_ms_{bmax}"]
        L.append(f"| {m['label']} | {c['decoder_weight_bytes'] / 1e6:.1f} | {c['kv_bytes_per_seq'] / 1e6:.1f} | "
                 f"{c['decoder_flops_per_token'] / 1e9:.3f} | {c[f'decode_floor_ms_{bmin}']:.2f} | "
                 f"{c[f'decode_floor_ms_{bmax}']:.2f} | {pred:.2f}× | {_x(m['speedup'].get('vs base', {}).get(bmax))} | "
                 f"{c['encoder_flops'] / 1e9:.1f} | {c['encoder_floor_ms']:.1f} | {m['encoder_ms']:.0f} |")
    L.append("")

    L += ["## Where the time goes", "",
          "Encoder share = encoder time / end-to-end time over the clips. Decode-step parts: each part of "
          "one step run eagerly on its own (real cross-attention cache, self-attention at the mean "
          "position), median ms and share of their sum; 'step' is the measured compiled step.", ""]
    parts = ["self-attention", "cross-attention", "MLP", "logits (tied embedding)"]
    head = " | ".join(f"{b}: step ms | " + " | ".join(parts) for b in (bmin, bmax))
    L += [f"| Model | encoder share of e2e | {head} |", "|---|---:|" + "---:|" * (2 * (len(parts) + 1))]
    for m in m_all:
        share = m["e2e"].get("encoder_share")
        cells = []
        for b in (bmin, bmax):
            prof = (m.get("profile") or {}).get(b)
            cells.append(f"{m['decode'][b]['ms_per_step']:.1f}")
            total = sum(prof.values()) if prof else None
            cells += [f"{prof[p]:.1f} ({100 * prof[p] / total:.0f}%)" if prof else "–" for p in parts]
        L.append(f"| {m['label']} | {_f(None if share is None else 100 * share, '.0f')}% | " + " | ".join(cells) + " |")
    if r.get("skipped"):
        L += ["", "Skipped / notes: " + "; ".join(f"{s['model']}: {s['reason']}" for s in r["skipped"])]
    L += ["", f"![speed vs WER]({png_name})", ""]
    return "\n".join(L)


def _load(x) -> str:
    return "–" if not x else "/".join(f"{v:.1f}" for v in x)
