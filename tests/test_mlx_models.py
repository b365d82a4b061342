"""The MLX Whisper of mlx_bald.models on tiny random configs: equal to mlx-whisper and to
transformers (dense), equal to the dense model it came from for every compression kind
at full rank, kv-cache decoding, and mlx-whisper's decoding / transcribe driving it."""
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_whisper.whisper import Whisper as MlxWhisper

from mlx_bald.models.quantize import quantize_model
from mlx_bald.models.whisper import Whisper
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank, MergeGroup

from mlx_helpers import (compress_params, max_diff, random_mel, random_model, random_params,
                         set_params, tiny_dims)

TOKENS = mx.array([[1, 5, 9, 13, 2, 7], [3, 3, 8, 60, 99, 0]])


def mlx_whisper_twin(model, dims):
    """mlx-whisper's own Whisper holding the same (dense) weights."""
    ref = MlxWhisper(dims, dtype=mx.float32)
    ref.update(tree_unflatten([(k, v) for k, v in tree_flatten(model.parameters())]))
    return ref


def test_dense_equals_mlx_whisper_including_cross_qk():
    dims = tiny_dims()
    ours = random_model(dims)
    ref = mlx_whisper_twin(ours, dims)
    assert {k: v.shape for k, v in tree_flatten(ours.parameters())} == \
        {k: v.shape for k, v in tree_flatten(ref.parameters())}
    mel = random_mel(dims, batch=2)
    assert max_diff(ours(mel, TOKENS), ref(mel, TOKENS)) < 1e-4
    logits, qk = ours.forward_with_cross_qk(mel, TOKENS)
    ref_logits, ref_qk = ref.forward_with_cross_qk(mel, TOKENS)
    assert max_diff(logits, ref_logits) < 1e-4
    assert len(qk) == dims.n_text_layer
    for a, b in zip(qk, ref_qk):
        assert a.shape == (2, dims.n_text_head, TOKENS.shape[1], dims.n_audio_ctx)
        assert max_diff(a, b) < 1e-4


def test_dense_equals_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from converters.whisper_names import mlx_to_hf

    dims = tiny_dims()
    ours = random_model(dims)
    config = transformers.WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_text_state,
        encoder_layers=dims.n_audio_layer, decoder_layers=dims.n_text_layer,
        encoder_attention_heads=dims.n_audio_head, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        activation_function="gelu", pad_token_id=0, decoder_start_token_id=1,
        bos_token_id=1, eos_token_id=2)
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    state = {}
    for name, value in tree_flatten(ours.parameters()):
        if name == "alignment_heads":
            continue
        arr = np.array(value)
        if name.startswith("encoder.conv") and name.endswith("weight"):
            arr = arr.transpose(0, 2, 1)  # MLX [out, kernel, in] -> torch [out, in, kernel]
        state[mlx_to_hf(name)] = torch.from_numpy(arr)
    state["model.encoder.embed_positions.weight"] = torch.from_numpy(
        np.array(ours.encoder._positional_embedding))
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    mel = random_mel(dims, batch=2)
    with torch.no_grad():
        want = hf(input_features=torch.from_numpy(np.array(mel).transpose(0, 2, 1)),
                  decoder_input_ids=torch.from_numpy(np.array(TOKENS).astype(np.int64))).logits
    assert max_diff(ours(mel, TOKENS), want.numpy()) < 1e-4


def test_merged_decoder_and_pruned_encoder_are_fewer_blocks():
    """Merging/pruning happen in the compressor; the runtime just has fewer blocks."""
    dims = tiny_dims(n_audio_layer=1, n_text_layer=1)
    spec = CompressionSpec(decoder_merge=[MergeGroup([0, 1], [0.5, 0.5])], encoder_pruned=[1])
    ours = random_model(dims, spec)
    assert len(ours.encoder.blocks) == 1 and len(ours.decoder.blocks) == 1
    mel = random_mel(dims, batch=2)
    assert max_diff(ours(mel, TOKENS), mlx_whisper_twin(ours, dims)(mel, TOKENS)) < 1e-4


def test_factored_embedding_logits_are_h_times_ab():
    dims = tiny_dims()
    spec = CompressionSpec(embedding_rank=8)
    ours = random_model(dims, spec)
    emb = ours.decoder.token_embedding
    assert emb.weight_a.shape == (dims.n_vocab, 8) and emb.weight_b.shape == (8, dims.n_text_state)
    h = mx.random.normal((2, 3, dims.n_text_state))
    a, b = np.array(emb.weight_a), np.array(emb.weight_b)
    assert max_diff(emb.as_linear(h), np.array(h) @ (a @ b).T) < 1e-4
    # the whole model equals a dense one whose embedding is A @ B
    dense = Whisper(dims)
    params = {k: np.array(v) for k, v in tree_flatten(ours.parameters()) if k != "alignment_heads"}
    params["decoder.token_embedding.weight"] = a @ b
    del params["decoder.token_embedding.weight_a"], params["decoder.token_embedding.weight_b"]
    set_params(dense, params)
    mel = random_mel(dims)
    assert max_diff(ours(mel, TOKENS[:1]), dense(mel, TOKENS[:1])) < 1e-4


def _all_attention(dims, qk, vo):
    keys = [f"encoder.blocks.{i}.attn" for i in range(dims.n_audio_layer)]
    keys += [f"decoder.blocks.{i}.{a}" for i in range(dims.n_text_layer) for a in ("attn", "cross_attn")]
    return {k: AttentionRank(qk, vo) for k in keys}


def _compressed_twin(dims, spec, seed=0):
    """(dense model, compressed model built from its weights by the spec's math)."""
    dense = random_model(dims, seed=seed)
    params = random_params(dense, seed)
    compressed = Whisper(dims, spec)
    set_params(compressed, compress_params(params, dims, spec))
    return dense, compressed


def test_low_rank_attention_at_full_rank_equals_dense():
    dims = tiny_dims()
    d_head = dims.n_text_state // dims.n_text_head
    spec = CompressionSpec(attention=_all_attention(dims, d_head, d_head))
    dense, compressed = _compressed_twin(dims, spec)
    attn = compressed.decoder.blocks[0].cross_attn
    assert attn.scale == 1.0 and "bias" not in attn.value
    mel = random_mel(dims, batch=2)
    assert max_diff(compressed(mel, TOKENS), dense(mel, TOKENS)) < 1e-4


def test_low_rank_attention_lower_ranks_run_with_their_shapes():
    dims = tiny_dims()
    spec = CompressionSpec(attention={"encoder.blocks.1.attn": AttentionRank(3, 7),
                                      "decoder.blocks.0.attn": AttentionRank(5, 2),
                                      "decoder.blocks.1.cross_attn": AttentionRank(6, 4)})
    dense, compressed = _compressed_twin(dims, spec)
    p = dict(tree_flatten(compressed.parameters()))
    assert p["encoder.blocks.1.attn.query.weight"].shape == (4 * 3, 64)
    assert p["encoder.blocks.1.attn.value.weight"].shape == (4 * 7, 64)
    assert p["decoder.blocks.1.cross_attn.out.weight"].shape == (64, 4 * 4)
    assert "decoder.blocks.0.attn.value.bias" not in p
    logits, qk = compressed.forward_with_cross_qk(random_mel(dims, batch=2), TOKENS)
    assert logits.shape == (2, 6, dims.n_vocab) and np.isfinite(np.array(logits)).all()
    assert qk[1].shape == (2, 4, 6, dims.n_audio_ctx)


def test_low_rank_ffn_at_full_rank_equals_dense():
    dims = tiny_dims()
    d = dims.n_text_state
    spec = CompressionSpec(ffn={"encoder.blocks.0.mlp": FFNRank(d, d),
                                "decoder.blocks.1.mlp": FFNRank(d, None)})
    dense, compressed = _compressed_twin(dims, spec)
    p = dict(tree_flatten(compressed.parameters()))
    assert p["encoder.blocks.0.mlp1.down.weight"].shape == (d, d)
    assert p["encoder.blocks.0.mlp2.up.weight"].shape == (d, d)
    assert "decoder.blocks.1.mlp2.weight" in p  # a None rank stays dense
    mel = random_mel(dims, batch=2)
    assert max_diff(compressed(mel, TOKENS), dense(mel, TOKENS)) < 1e-4


def full_spec(dims) -> CompressionSpec:
    d, dh = dims.n_text_state, dims.n_text_state // dims.n_text_head
    return CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.6, 0.4])], encoder_pruned=[1], embedding_rank=d,
        attention=_all_attention(dims, dh, dh),
        ffn={"encoder.blocks.0.mlp": FFNRank(d, d), "decoder.blocks.0.mlp": FFNRank(None, d)})


def test_all_compressions_together_equal_their_dense_twin():
    dims = tiny_dims(n_audio_layer=1, n_text_layer=1)
    dense, compressed = _compressed_twin(dims, full_spec(dims))
    mel = random_mel(dims, batch=2)
    assert max_diff(compressed(mel, TOKENS), dense(mel, TOKENS)) < 1e-4
    assert max_diff(compressed(mel, TOKENS), mlx_whisper_twin(dense, dims)(mel, TOKENS)) < 1e-4


def test_quantized_dense_equals_quantized_mlx_whisper():
    dims = tiny_dims()
    ours = random_model(dims)
    ref = mlx_whisper_twin(ours, dims)
    quantize_model(ours, bits=8, group_size=32)
    nn.quantize(ref, group_size=32, bits=8)
    assert isinstance(ours.decoder.blocks[0].mlp1, nn.QuantizedLinear)
    assert isinstance(ours.decoder.token_embedding, nn.QuantizedEmbedding)
    mel = random_mel(dims)
    assert max_diff(ours(mel, TOKENS[:1]), ref(mel, TOKENS[:1])) < 1e-4


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_compressed_model_stays_close(bits):
    dims = tiny_dims(n_audio_layer=1, n_text_layer=1)
    _, compressed = _compressed_twin(dims, full_spec(dims))
    mel = random_mel(dims)
    before = np.array(compressed(mel, TOKENS[:1]))
    quantize_model(compressed, bits=bits, group_size=32)
    assert isinstance(compressed.decoder.blocks[0].mlp2.up, nn.QuantizedLinear)
    after = np.array(compressed(mel, TOKENS[:1]))
    rel = np.abs(after - before).max() / np.abs(before).max()
    assert rel < (0.02 if bits == 8 else 0.3)


def decode_stepwise(model, tokens, xa, prompt: int, compiled: bool):
    """A ``prompt``-token pass, then one-token steps through the kv cache: (logits of every
    position [B, T, V], the final cache)."""
    logits, cache, _ = model.decoder(tokens[:, :prompt], xa)
    steps = [logits]
    for t in range(prompt, tokens.shape[1]):
        logits, cache, _ = model.decoder(tokens[:, t:t + 1], xa, cache, compiled=compiled)
        steps.append(logits)
    return mx.concatenate(steps, axis=1), cache


@pytest.mark.parametrize("spec_name", ["dense", "compressed"])
@pytest.mark.parametrize("compiled", [True, False])
def test_incremental_decoding_equals_full_sequence(spec_name, compiled):
    dims = tiny_dims(n_audio_layer=1, n_text_layer=1) if spec_name == "compressed" else tiny_dims()
    spec = full_spec(dims) if spec_name == "compressed" else None
    model = random_model(dims, spec)
    mel = random_mel(dims, batch=2)
    xa = model.encoder(mel)
    full = model.decoder(TOKENS, xa)[0]
    stepped, cache = decode_stepwise(model, TOKENS, xa, prompt=3, compiled=compiled)
    assert cache.offset == TOKENS.shape[1]
    assert max_diff(stepped, full) < 1e-4
    # a multi-token step on an existing cache works as well
    logits, cache2, _ = model.decoder(TOKENS[:, :2], xa)
    logits, _, _ = model.decoder(TOKENS[:, 2:], xa, cache2)
    assert max_diff(logits, full[:, 2:]) < 1e-4


def test_cache_reorder_with_tree_map_and_shared_audio():
    """mlx-whisper's rearrange_kv_cache: tree_map(lambda x: x[idx], cache); and one audio
    (batch 1 features) decoded as several sequences (best_of)."""
    dims = tiny_dims()
    model = random_model(dims)
    xa = model.encoder(random_mel(dims, batch=1))
    tokens = mx.array([[1, 5, 9], [3, 4, 8], [7, 7, 2]])
    _, cache, _ = model.decoder(tokens, xa)  # xa batch 1, three sequences
    order = [2, 0, 2]
    cache = tree_map(lambda x: x[mx.array(order)], cache)
    nxt = mx.array([[11], [12], [13]])
    logits, _, _ = model.decoder(nxt, xa, cache)
    want = model.decoder(mx.concatenate([tokens[mx.array(order)], nxt], axis=1), xa)[0][:, -1:]
    assert max_diff(logits, want) < 1e-4
    single = model.decoder(mx.array([[7, 7, 2, 13]]), xa)[0][:, -1:]
    assert max_diff(logits[2:], single) < 1e-4


def test_context_overflow_is_an_error():
    dims = tiny_dims()
    model = random_model(dims)
    xa = model.encoder(random_mel(dims))
    _, cache, _ = model.decoder(mx.zeros((1, dims.n_text_ctx), dtype=mx.int32), xa)
    with pytest.raises(ValueError, match="exceed"):
        model.decoder(mx.array([[1]]), xa, cache)


# ---- mlx-whisper's decoding and transcribe on our model ---------------------------------
@pytest.fixture(scope="module")
def vocab_model():
    """Tiny in width, but with the multilingual vocabulary and 30 s audio context that
    mlx-whisper's tokenizer and transcribe need."""
    dims = tiny_dims(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2,
                     n_audio_layer=1, n_vocab=51865, n_text_ctx=32, n_text_state=32,
                     n_text_head=2, n_text_layer=2)
    spec = CompressionSpec(embedding_rank=8,
                           attention={"decoder.blocks.1.cross_attn": AttentionRank(8, 8)})
    return random_model(dims, spec, seed=3)


def test_mlx_whisper_decode_greedy_and_best_of(vocab_model):
    from mlx_whisper.decoding import DecodingOptions

    mel = mx.random.normal((2, 3000, 80))
    greedy = vocab_model.decode(mel, DecodingOptions(language="en", fp16=False, sample_len=5))
    assert len(greedy) == 2 and all(r.language == "en" for r in greedy)
    assert all(len(r.tokens) <= 5 for r in greedy)
    sampled = vocab_model.decode(mel[:1], DecodingOptions(temperature=0.8, best_of=3,
                                                          fp16=False, sample_len=4))
    assert len(sampled) == 1 and sampled[0].language in vocab_model.detect_language(
        mel[:1])[1][0]


def test_mlx_whisper_transcribe_with_word_timestamps(vocab_model):
    import mlx_whisper
    from mlx_whisper.transcribe import ModelHolder

    audio = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.1).astype(np.float32)
    ModelHolder.model, ModelHolder.model_path = vocab_model, "mlx-bald-test-tiny"
    try:
        result = mlx_whisper.transcribe(audio, path_or_hf_repo="mlx-bald-test-tiny", fp16=False,
                                        word_timestamps=True, temperature=(0.0, 0.5),
                                        condition_on_previous_text=False)
    finally:
        ModelHolder.model = ModelHolder.model_path = None
    assert isinstance(result["text"], str) and result["language"]
    # random weights give arbitrary timestamps; word timings must still be attached
    assert all("words" in segment for segment in result["segments"])
    assert any(segment["words"] for segment in result["segments"])  # forward_with_cross_qk ran


def test_long_incremental_decoding_crosses_cache_buckets():
    """Eager one-token steps read only the filled cache slots (buckets of 64): decoding
    past several bucket edges equals the full-sequence forward."""
    dims = tiny_dims(n_text_ctx=160, n_audio_layer=1, n_text_layer=1)
    model = random_model(dims)
    xa = model.encoder(random_mel(dims))
    tokens = mx.array(np.random.default_rng(5).integers(0, dims.n_vocab, (1, 140)))
    full = model.decoder(tokens, xa)[0]
    stepped, _ = decode_stepwise(model, tokens, xa, prompt=1, compiled=False)
    assert max_diff(stepped, full) < 1e-4
