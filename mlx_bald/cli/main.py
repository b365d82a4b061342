"""``mlx-bald``: one entry point, one module per subcommand (mlx_bald/cli/<name>.py, each
with ``register(subparsers)`` and ``run(args) -> int``)."""
from __future__ import annotations

import argparse
import importlib
import sys

import mlx_bald  # noqa: F401  (OpenBLAS before anything imports mlx.core)
from mlx_bald.errors import MlxBaldError

COMMANDS = ["transcribe", "eval", "fetch", "compress", "convert", "bench", "serve"]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage of compress is ~40 lines that hide the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlx-bald",
        description="Smaller, faster Whisper for Apple silicon: compress in PyTorch, run in MLX.",
        epilog="Models: whisper-base, whisper-tiny.en (fetched on first use), a local folder, "
               "or a Hugging Face id. Cache: $MLX_BALD_CACHE (default ~/.cache/mlx-bald).")
    parser.add_argument("--version", action="version", version=f"mlx-bald {mlx_bald.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mlx_bald.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mlx_bald.cli.{name}":
                continue  # subcommand not part of this build
            raise
        p = module.register(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MlxBaldError as e:
        print(f"mlx-bald: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlx-bald: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
