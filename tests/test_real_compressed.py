"""A real compressed Whisper-base goes torch -> converter -> MLX and transcribes real speech
through mlx-whisper's own ``transcribe`` with the same text as the PyTorch model.

The model is compressed without training so CI can build it (product-twin attention at rank 60
in every encoder layer, a rank-320 FFN, the tied embedding factored at full rank so the MLX
factored path runs on real weights); untrained low ranks break base (DATA.md), so the ranks
are gentle. Such a model has a few near-ties between its top two tokens, where fp32 rounding
in two frameworks may pick either: the test asserts equal logits everywhere (teacher-forced)
and equal text on every clip except where PyTorch itself is undecided at the first
differing token."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

NEAR_TIE = 0.05  # top-2 logit gap below which fp32 noise (~5e-3 measured) may flip greedy


@pytest.fixture(scope="module")
def compressed_base(tmp_path_factory):
    import copy

    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.compress.ops.model import apply_spec, save_compressed
    from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank
    from mlx_bald.torch_ref import load_torch_model

    spec = CompressionSpec(
        embedding_rank=512,
        attention={f"encoder.blocks.{i}.attn": AttentionRank(60, 60) for i in range(6)},
        ffn={"decoder.blocks.1.mlp": FFNRank(320, 320)}, recipe=["test-svd"])
    model = apply_spec(copy.deepcopy(load_torch_model("whisper-base")), spec).eval()
    root = tmp_path_factory.mktemp("compressed")
    ckpt = save_compressed(model, spec, root / "torch")
    return ckpt, convert_checkpoint(ckpt, root / "mlx", dtype="float32")


def _torch_greedy(model, feats, prompt):
    """(prompt + generated ids) of transformers' greedy generate."""
    with torch.no_grad():
        out = model.generate(feats, language="en", task="transcribe", max_new_tokens=200)[0].tolist()
    return out if out[:len(prompt)] == prompt else prompt + out  # v5 returns only new tokens


def test_compressed_base_same_text_in_mlx_and_torch(compressed_base):
    import mlx.core as mx
    from mlx_whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim

    from mlx_bald.data import load_set
    from mlx_bald.evaluate import normalizer_for
    from mlx_bald.load import load_model
    from mlx_bald.torch_ref import load_torch_model
    from mlx_bald.transcribe import transcribe

    ckpt, mlx_dir = compressed_base
    torch_model = load_torch_model(str(ckpt))
    mlx_model = load_model(mlx_dir, dtype=mx.float32)
    _, norm = normalizer_for("en")
    from mlx_whisper.tokenizer import get_tokenizer

    tok = get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    prompt = list(tok.sot_sequence_including_notimestamps)
    same = 0
    for clip in load_set("librivox"):
        # the very window mlx-whisper's transcribe decodes (content frames, zero-padded), for both
        full = log_mel_spectrogram(clip.audio, n_mels=80, padding=N_SAMPLES)
        mel = np.array(pad_or_trim(full[: full.shape[0] - N_FRAMES], N_FRAMES, axis=0))
        feats = torch.from_numpy(mel.T[None].copy())
        ids = _torch_greedy(torch_model, feats, prompt)
        ref_text = tok.decode([t for t in ids[len(prompt):] if t < tok.eot]).strip()
        result = transcribe(clip.audio, mlx_dir, language="en", temperature=0.0, without_timestamps=True,
                            condition_on_previous_text=False)
        # teacher-forced on PyTorch's tokens, the two frameworks' logits agree (fp32)
        with torch.no_grad():
            ref_logits = torch_model(input_features=feats, decoder_input_ids=torch.tensor([ids])).logits[0].numpy()
        got_logits = np.array(mlx_model(mx.array(feats.numpy().transpose(0, 2, 1)), mx.array([ids])))[0]
        assert np.abs(ref_logits - got_logits).max() < 0.05, clip.id
        if norm(result["text"]) == norm(ref_text):
            same += 1
            continue
        mlx_ids = [t for seg in result["segments"] for t in seg["tokens"]]
        body = ids[len(prompt):]
        k = next(i for i, (a, b) in enumerate(zip(body + [-1], mlx_ids + [-2])) if a != b)
        top2 = np.sort(ref_logits[len(prompt) - 1 + k])[-2:]
        assert top2[1] - top2[0] < NEAR_TIE, (clip.id, result["text"], ref_text)
    assert same >= 4, f"only {same}/5 clips gave identical text"

