"""Names of the training devices and precisions, torch-free so that the CLI can list them
without importing torch (compress/train/hardware.py gives them meaning)."""
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")
