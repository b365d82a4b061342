"""The training machinery every recipe shares: the one loop (trainer.py), device, precision
and torchrun ranks (hardware.py), decoder distillation (distill.py, logit_losses.py), encoder
layers on cached hidden states (layer_cache.py, bridges.py, recovery.py), the per-clip caches
(clip_store.py, targets.py) and batches (data.py), greedy decoding for pseudo-labels and dev
WER (greedy.py)."""
