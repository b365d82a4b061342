"""Where the short context's registers go (the probe behind compress/ops/short_context.py):
appended once after the positional embedding (``--where once``), or their states set before every
encoder layer (``--where every``). whisper-base, 16 registers started from the encoder's states of
the padding, trained on the first 64 asterisk-en:train clips of at most 10 s (batches of 4; every
decoder layer's relative MSE plus the KL of the output, against the full 30 s window), scored
every 25 steps on the first 24 asterisk-en:test clips of at most 10 s: teacher-forced on the
references, % of positions where the short run's argmax equals the full window's, and the KL.
One thread, so it can run beside other jobs.

    python -m benchmarks.studies.short_context_registers --where every
    python -m benchmarks.studies.short_context_registers --where once
"""
from __future__ import annotations

import argparse
import json
import math
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.short_context_registers",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--where", choices=("once", "every"), default="every")
    p.add_argument("--registers", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args(argv)

    import torch
    from torch.nn import functional as F

    from mlx_bald.compress.train.data import IGNORE, collate_tokens, features, token_rows
    from mlx_bald.data import load_set
    from mlx_bald.torch_ref import load_torch_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = load_torch_model("whisper-base")
    enc = m.model.encoder
    for prm in m.parameters():
        prm.requires_grad_(False)

    def run_enc(mel, reg=None):
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1) + enc.embed_positions.weight[: mel.shape[-1] // 2]
        n = 0 if reg is None else reg.shape[1]
        for i, layer in enumerate(enc.layers):
            if reg is not None and (i == 0 or reg.shape[0] > 1):
                x = torch.cat([x if i == 0 else x[:, :-n], reg[i:i + 1].expand(x.shape[0], -1, -1)], 1)
            x = layer(x, None)
        return enc.layer_norm(x)

    def bucket(n_samples, frames=200):
        return min(3000, max(1, math.ceil(n_samples / 160 / frames)) * frames)

    def prep(clips):
        out = []
        for c in clips:
            mel = features(c)[None]
            ids, lab = collate_tokens(token_rows([c]))
            with torch.no_grad():
                o = m.model.decoder(input_ids=ids, encoder_hidden_states=enc(mel).last_hidden_state,
                                    output_hidden_states=True)
            out.append(dict(mel=mel[..., :bucket(len(c.audio))], ids=ids, lab=lab, hs=o.hidden_states[1:],
                            logits=m.proj_out(o.last_hidden_state)))
        return out

    short = lambda s: [c for c in load_set(s) if len(c.audio) <= 10 * 16000]  # noqa: E731
    train_clips = short("asterisk-en:train")[:64]
    tr, te = prep(train_clips), prep(short("asterisk-en:test")[:24])

    @torch.no_grad()
    def score(reg):
        hit = tot = 0
        kl = 0.0
        for d in te:
            lg = m.proj_out(m.model.decoder(input_ids=d["ids"], encoder_hidden_states=run_enc(d["mel"], reg)).last_hidden_state)
            mask = d["lab"] != IGNORE
            hit += int((lg.argmax(-1)[mask] == d["logits"].argmax(-1)[mask]).sum())
            tot += int(mask.sum())
            kl += float(F.kl_div(lg[mask].log_softmax(-1), d["logits"][mask].log_softmax(-1), log_target=True,
                                 reduction="sum"))
        return {"agreement": round(100 * hit / tot, 2), "kl": round(kl / tot, 4)}

    rows = {"plain": score(None)}
    with torch.no_grad():  # the padding's states, at spaced positions of a silent window
        silence = torch.full_like(features(train_clips[0])[None], float(features(train_clips[0]).min()))
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(silence)))).permute(0, 2, 1) + enc.embed_positions.weight
        idx = torch.linspace(500, 1499, a.registers).long()
        states = [x[0, idx]]
        if a.where == "every":
            for layer in enc.layers[:-1]:
                x = layer(x, None)
                states.append(x[0, idx])
        reg0 = torch.stack(states)
    rows["started"] = score(reg0)
    reg = torch.nn.Parameter(reg0.clone())
    opt = torch.optim.Adam([reg], lr=a.lr)
    t0 = time.time()
    for step in range(a.steps):
        loss = 0
        for d in (tr[(step * 4 + k) % len(tr)] for k in range(4)):
            o = m.model.decoder(input_ids=d["ids"], encoder_hidden_states=run_enc(d["mel"], reg), output_hidden_states=True)
            mask = d["lab"] != IGNORE
            for h, t in zip(o.hidden_states[1:], d["hs"]):
                loss = loss + ((h - t) ** 2)[mask].mean() / (t[mask] ** 2).mean()
            loss = loss + F.kl_div(m.proj_out(o.last_hidden_state)[mask].log_softmax(-1),
                                   d["logits"][mask].log_softmax(-1), log_target=True, reduction="batchmean")
        opt.zero_grad()
        (loss / 4).backward()
        opt.step()
        if (step + 1) % 25 == 0:
            rows[f"step {step + 1}"] = score(reg.detach())
            print(f"step {step + 1}: {rows[f'step {step + 1}']} ({time.time() - t0:.0f} s)", flush=True)
    print(json.dumps({"where": a.where, "registers": a.registers, **rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
