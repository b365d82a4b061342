"""The one training loop every compression stage uses: the bald stages (distill.train_decoder)
and the AdaPTwin encoder stages (layer_cache.train_layer: layer-wise twins, pruning bridges,
end-to-end recovery).

It owns what they share: device and precision (autocast; a gradient scaler for fp16), data
parallelism under torchrun (hardware.py: each rank's loss weighted by its share of the global
batch, one gradient all-reduce per step), gradient accumulation, clipping, the learning-rate
schedule, a checkpoint that rank 0 writes every ``checkpoint_every`` steps and a rerun resumes
from, the tqdm bar, and optional TensorBoard scalars (``log_dir``). A stage gives it a loss
function and a stream of batches.
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlx_bald.errors import MlxBaldError
from mlx_bald.compress.train.hardware import all_reduce_grads, autocast, barrier, broadcast_params, grad_scaler, is_main


@dataclass
class TrainConfig:
    """What every stage's training shares (the stages' configs extend it)."""
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0
    precision: str = "fp32"  # fp32, or autocast to bf16 / fp16 (a gradient scaler for fp16)
    accumulate: int = 1  # micro-batches per optimiser step (gradient accumulation)
    schedule: str = "constant"  # or "linear": decays to 0 over the run
    log_dir: str | None = None  # TensorBoard event files (needs the tensorboard package)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class _Log:
    """TensorBoard scalars from rank 0, when asked for and installed."""

    def __init__(self, log_dir: str | None, tag: str):
        self.writer, self.tag = None, tag
        if log_dir and is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise MlxBaldError(f"--log-dir needs TensorBoard: pip install tensorboard ({e})") from e
            self.writer = SummaryWriter(os.path.join(log_dir, tag))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(modules: Mapping[str, nn.Module], param_groups: list[dict], loss_fn: Callable[[Any], dict[str, torch.Tensor]],
          stream: Callable[[int], Iterator[Any]], total: int, cfg: TrainConfig, ckpt: str | os.PathLike | None = None,
          desc: str = "train", progress: bool = True, weight: Callable[[Any], float] | None = None,
          meta: Mapping[str, object] | None = None, state: dict | None = None) -> dict[str, float]:
    """Take ``total`` optimiser steps (of ``cfg.accumulate`` micro-batches each) on the
    parameters of ``param_groups`` (AdamW, fused). ``stream(skip)`` yields this rank's
    micro-batches in order, starting after ``skip`` of them (a resumed run gets the same data
    as an uninterrupted one); ``loss_fn(batch)`` returns {"loss", ...logged scalars};
    ``weight(batch)`` scales a rank's loss (its share of the global batch; 1 in one process).
    ``modules`` (and ``state``, a dict of picklable extras the caller updates, e.g. in ``loss_fn``)
    are saved in the checkpoint and restored from it; a checkpoint saved with another ``meta``
    is refused. Returns the mean logged values of the last 50 steps."""
    from tqdm.auto import tqdm

    if cfg.accumulate < 1:
        raise MlxBaldError(f"gradient accumulation needs >= 1 micro-batch per step, not {cfg.accumulate}")
    params = [p for g in param_groups for p in g["params"]]
    device = params[0].device
    broadcast_params(params)
    opt = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda"))  # one kernel for all parameters
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: max(0.0, 1.0 - s / max(total, 1))) if cfg.schedule == "linear" else (lambda s: 1.0))
    scaler = grad_scaler(device, cfg.precision)
    state = state if state is not None else {}
    path = Path(ckpt) if ckpt is not None else None
    step, recent = 0, []
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device, weights_only=False)
        if meta is not None and saved.get("meta", dict(meta)) != dict(meta):
            raise MlxBaldError(f"checkpoint {path} was saved by a run with {saved['meta']}, not {dict(meta)}: "
                               "use another --out folder, or delete the checkpoint to start over")
        for name, module in modules.items():
            module.load_state_dict(saved[name])
        opt.load_state_dict(saved["optimizer"])
        if "scheduler" in saved:
            sched.load_state_dict(saved["scheduler"])
        state.update(saved.get("state", {k: saved[k] for k in state if k in saved}))  # older: top level
        step = saved["step"]
        recent = saved.get("recent", [])  # the returned means then match an uninterrupted run's
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"].cpu())
            random.setstate(saved["py_rng"])

    def save() -> None:
        if path is None or not is_main():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({**{n: m.state_dict() for n, m in modules.items()}, "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "step": step, "config": asdict(cfg), "meta": dict(meta or {}),
                    "state": state, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                    "recent": recent}, tmp)
        tmp.replace(path)

    log = _Log(cfg.log_dir, desc)
    batches = stream(step * cfg.accumulate)
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress or not is_main(), leave=False)
    for module in modules.values():
        module.train()
    while step < total:
        opt.zero_grad(set_to_none=True)
        logged: dict[str, float] = {}
        for _ in range(cfg.accumulate):
            batch = next(batches)
            with autocast(device, cfg.precision):
                losses = loss_fn(batch)
            loss = losses["loss"] * ((weight(batch) if weight else 1.0) / cfg.accumulate)
            (scaler.scale(loss) if scaler else loss).backward()
            for k, v in losses.items():
                logged[k] = logged.get(k, 0.0) + float(v) / cfg.accumulate
        all_reduce_grads(params)
        if scaler:
            scaler.unscale_(opt)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        step += 1
        recent = (recent + [logged])[-50:]
        log.scalars(logged | {"lr": sched.get_last_lr()[0]}, step)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in list(logged.items())[:2]})
        if path is not None and step % cfg.checkpoint_every == 0:
            save()
    bar.close()
    save()
    log.close()
    barrier()  # the other ranks go on once rank 0's checkpoint is written
    for module in modules.values():
        module.eval()
    return {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}


def shares(n_local: int, n_global: int, world: int) -> float:
    """A rank's loss weight when the loss is a mean over ``n_local`` of ``n_global`` items."""
    return n_local * world / max(n_global, 1)
