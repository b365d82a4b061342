"""Short-context tuning on tiny random Whispers (compress/ops/short_context.py,
compress/train/short_context.py): the registers, what training them does, and that a tuned model
converts and encodes a short clip in MLX as in torch, while its full window is unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_bald.compress.ops.model import load_compressed, record_spec, save_compressed  # noqa: E402
from mlx_bald.compress.ops.short_context import (encode_short, install_registers,  # noqa: E402
                                                 padding_registers, registers_of)
from mlx_bald.compress.train.short_context import (ShortContextConfig, short_agreement, short_losses,  # noqa: E402
                                                   train_registers, _decoder)
from mlx_bald.spec import CompressionSpec  # noqa: E402
from tests.test_compress_ops import N_MELS, SRC, V  # noqa: E402
from tests.test_convert import _stock_tiny  # noqa: E402

N_REG = 3


class _Batch:
    """A LazyBatch stand-in: random short mels and the full window they are the start of."""

    def __init__(self, seed: int, frames: int = 6, batch: int = 3, length: int = 7):
        g = torch.Generator().manual_seed(seed)
        full_mel = torch.randn(batch, N_MELS, 2 * SRC, generator=g)
        full_mel[:, :, frames:] = -1.0  # padding after the speech
        ids = torch.randint(0, V - 4, (batch, length), generator=g)
        labels = ids.roll(-1, 1)
        labels[:, 0] = -100
        self.full_mel, self.frames = full_mel, frames
        self.batch = {"mel": full_mel[:, :, :frames], "decoder_input_ids": ids, "labels": labels}

    def with_model(self, model):
        with torch.no_grad():
            self.batch["full"] = model.model.encoder(self.full_mel).last_hidden_state
        return self

    def get(self) -> dict:
        return self.batch


def _tuned(seed=0):
    model = _stock_tiny(seed)
    silence = torch.full((N_MELS, 2 * SRC), -1.0)
    install_registers(model.model.encoder, padding_registers(model.model.encoder, N_REG, silence, first_position=4))
    return model


def test_short_encoder_equals_the_full_one_on_a_full_window_and_appends_registers():
    model = _tuned()
    enc = model.model.encoder
    mel = torch.randn(2, N_MELS, 2 * SRC)
    with torch.no_grad():
        ref = enc(mel).last_hidden_state
        plain = encode_short(enc, mel, torch.zeros(len(enc.layers), 0, enc.config.d_model))
        short = encode_short(enc, mel[:, :, :6])
    torch.testing.assert_close(plain, ref)  # no registers, full frames: transformers' encoder
    assert short.shape == (2, 3 + N_REG, enc.config.d_model)
    assert registers_of(enc).shape == (len(enc.layers), N_REG, enc.config.d_model)


def test_training_the_registers_lowers_the_gap_and_changes_nothing_else():
    model = _tuned()
    before = {k: v.clone() for k, v in model.state_dict().items() if "short_registers" not in k}
    batches = [_Batch(s).with_model(model) for s in range(3)]
    with torch.no_grad():
        start = [sum(float(v) for v in short_losses(model, b.get(), _decoder(model, b.get()["decoder_input_ids"],
                                                                                b.get()["full"])).values())
                 for b in batches]
    first = short_agreement(model, batches)
    train_registers(model, batches, ShortContextConfig(steps=40, lr=3e-2), progress=False)
    with torch.no_grad():
        end = [sum(float(v) for v in short_losses(model, b.get(), _decoder(model, b.get()["decoder_input_ids"],
                                                                              b.get()["full"])).values())
               for b in batches]
    assert sum(end) < 0.7 * sum(start)
    assert short_agreement(model, batches)["kl"] < first["kl"]
    after = {k: v for k, v in model.state_dict().items() if "short_registers" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # only the registers trained


def test_training_resumes_from_its_checkpoint(tmp_path):
    batches_of = lambda m: [_Batch(s).with_model(m) for s in range(2)]  # noqa: E731
    one = _tuned()
    train_registers(one, batches_of(one), ShortContextConfig(steps=6, lr=1e-2, checkpoint_every=3), progress=False)
    two = _tuned()
    ckpt = tmp_path / "registers.pt"
    train_registers(two, batches_of(two), ShortContextConfig(steps=3, lr=1e-2, checkpoint_every=3), ckpt, progress=False)
    three = _tuned()
    train_registers(three, batches_of(three), ShortContextConfig(steps=6, lr=1e-2, checkpoint_every=3), ckpt,
                    progress=False)
    torch.testing.assert_close(registers_of(three.model.encoder), registers_of(one.model.encoder))


def test_tuned_model_saves_converts_and_encodes_short_clips_in_mlx_as_in_torch(tmp_path):
    mx = pytest.importorskip("mlx.core")
    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.load import load_model

    model = _tuned()
    with torch.no_grad():
        registers_of(model.model.encoder).add_(0.1 * torch.randn_like(registers_of(model.model.encoder)))
    spec = CompressionSpec(short_context_s=10.0, short_context_registers=N_REG)
    record_spec(model, spec)
    ckpt = save_compressed(model, spec, tmp_path / "torch")
    again, got_spec = load_compressed(ckpt)
    assert got_spec == spec
    torch.testing.assert_close(registers_of(again.model.encoder), registers_of(model.model.encoder))
    out = convert_checkpoint(ckpt, tmp_path / "mlx", dtype="float32")
    assert CompressionSpec.from_dict(json.loads((out / "config.json").read_text())["compression"]) == spec
    mlx_model = load_model(out, dtype=mx.float32)
    mel = torch.randn(2, N_MELS, 2 * SRC)
    with torch.no_grad():
        short_ref = encode_short(again.model.encoder, mel[:, :, :6]).numpy()
        full_ref = again.model.encoder(mel).last_hidden_state.numpy()
    short = np.array(mlx_model.encoder(mx.array(mel[:, :, :6].numpy().transpose(0, 2, 1)), short=True))
    full = np.array(mlx_model.encoder(mx.array(mel.numpy().transpose(0, 2, 1))))
    np.testing.assert_allclose(short, short_ref, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(full, full_ref, atol=2e-4, rtol=1e-4)  # the full window ignores the registers


def test_a_spec_and_model_that_disagree_on_registers_are_refused():
    from mlx_bald.errors import ModelFormatError
    from mlx_bald.spec import SpecError

    model = _tuned()
    with pytest.raises(ModelFormatError, match="registers"):
        record_spec(model, CompressionSpec(short_context_s=10.0, short_context_registers=N_REG + 1))
    with pytest.raises(SpecError, match="short_context_registers"):
        CompressionSpec(short_context_registers=4).validate()
