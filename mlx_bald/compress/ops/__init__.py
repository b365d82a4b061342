"""The maths of compression, as torch modules: decoder layer merging, the low-rank tied
embedding, product twins and low-rank FFN with LoRA, encoder pruning, data-aware whitening,
and the CompressionSpec <-> transformers model mapping (model.py)."""
