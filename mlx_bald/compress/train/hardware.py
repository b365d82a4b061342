"""Where training runs: the device, the precision, and data-parallel ranks under ``torchrun``.

Data parallelism is torch.distributed with one gradient all-reduce per step (what DDP does,
done by hand for two reasons: the tied embedding's lookup gradient is added to its rows in
place after autograd (forward._lookup_with_row_grad), which DDP's per-parameter hooks would
miss; and each rank's loss is weighted by its share of the global batch's label tokens, so N
ranks take exactly the step one process takes on the same global batch).
Rank 0 alone writes caches, checkpoints and reports (``main_first``); the others wait.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from mlx_bald.errors import MlxBaldError
from mlx_bald.hardware_names import DEVICES, PRECISIONS

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# tensors of a batch whose batch axis is not the first
BATCH_AXIS = {"cross_kv": 2, "teacher_hidden": 1}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. A named device that is not there is an error."""
    if name not in DEVICES:
        raise MlxBaldError(f"--device {name!r}: one of {', '.join(DEVICES)}")
    have = {"cuda": torch.cuda.is_available(),
            "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
            "cpu": True}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if have[d])
    elif not have[name]:
        raise MlxBaldError(f"--device {name}: this machine's torch has no {name} device")
    if name == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MlxBaldError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (parameters and optimiser stay fp32)."""
    dtype = DTYPES[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


# ---- ranks ------------------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_env(device: torch.device | None = None) -> None:
    """Join the process group that torchrun describes in the environment (a no-op otherwise):
    nccl for CUDA, gloo for CPU."""
    if not launched_by_torchrun() or is_distributed():
        return
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend)


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building caches, writing files); the other ranks then run
    it, finding what rank 0 built."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# ---- a global batch on N ranks ------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (the first ranks take one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def shard_batch(batch: dict, shard: Shard) -> dict:
    """This rank's rows of a collated global batch, plus ``global_label_tokens`` (the loss
    weight's denominator)."""
    if shard.world == 1:
        return batch
    n = batch["labels"].shape[0]
    part = shard.rows(n)
    out = {k: v.narrow(BATCH_AXIS.get(k, 0), part.start, part.stop - part.start) if torch.is_tensor(v) and v.dim()
           else v for k, v in batch.items()}
    out.setdefault("global_label_tokens", (batch["labels"] != -100).sum())
    return out


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients over the ranks (one flat all-reduce; a missing gradient counts as 0)."""
    if not is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if p.grad is None else p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def broadcast_params(params: Sequence[torch.Tensor]) -> None:
    """Every rank starts from rank 0's weights."""
    if is_distributed():
        for p in params:
            torch.distributed.broadcast(p.data, 0)
