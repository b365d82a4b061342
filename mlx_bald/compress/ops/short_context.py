"""Short audio context (the maths, torch): a clip encoded on its own frames plus a few learned
"register" positions that stand in for the padding a 30 s window would hold.

An encoder run on fewer than 1,500 positions changes what every decoder cross-attention reads:
the padding that Whisper was trained with is gone, and the softmax spreads its mass over the
speech instead. The registers give that mass somewhere to go. They are used only on a short
context, so the full-window model is unchanged, bit for bit, on long audio.

``registers`` [layers, n, d]: before each encoder layer, the state of the n register positions
(as prefix tuning sets keys and values). Measured on whisper-base (24 asterisk-en:test clips, teacher-forced
agreement of the short run's argmax with the full window's, no training): plain short context
75.2%, registers appended once at the input 76.8%, set before every layer 84.0%; after 25 steps
their KL to the full window was 0.28 (once) against 0.20 (every layer)
(``python -m benchmarks.studies.short_context_registers``).
The MLX runtime (``mlx_bald.models.whisper.AudioEncoder``) computes the same.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

REGISTERS_ATTR = "short_registers"  # on transformers' WhisperEncoder; MLX: encoder.short_registers


def registers_of(encoder: nn.Module) -> torch.Tensor | None:
    return getattr(encoder, REGISTERS_ATTR, None)


def install_registers(encoder: nn.Module, registers: torch.Tensor) -> nn.Parameter:
    """Make ``registers`` [layers, n, d] a parameter of ``encoder`` (saved in its state dict)."""
    param = nn.Parameter(registers.detach().clone().float())
    setattr(encoder, REGISTERS_ATTR, param)
    return param


def encode_short(encoder: nn.Module, mel: torch.Tensor, registers: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' WhisperEncoder on a mel of any even number of frames ≤ the full window:
    [B, n_mels, frames] -> [B, frames / 2 (+ n registers), d]. ``registers`` defaults to the
    encoder's own (none: the plain short context an untuned model gets)."""
    registers = registers_of(encoder) if registers is None else registers
    if registers is not None and registers.shape[1] == 0:
        registers = None  # an empty set: the plain short context
    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    n = 0 if registers is None else registers.shape[1]
    for i, layer in enumerate(encoder.layers):
        if registers is not None:
            r = registers[i].to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x if i == 0 else x[:, :-n], r], dim=1)
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    return encoder.layer_norm(x)


@torch.no_grad()
def padding_registers(encoder: nn.Module, n: int, silence_mel: torch.Tensor,
                      first_position: int = 500) -> torch.Tensor:
    """Registers started as the padding of a 30 s window: the encoder's states at ``n`` evenly
    spaced positions from ``first_position`` to the last, on a window of pure ``silence_mel``
    [n_mels, frames] (Whisper's padding), before each layer."""
    x = F.gelu(encoder.conv1(silence_mel[None]))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1) + encoder.embed_positions.weight
    idx = torch.linspace(first_position, x.shape[1] - 1, n).round().long()
    states = []
    for layer in encoder.layers:
        states.append(x[0, idx])
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    return torch.stack(states)
