"""Errors meant for users: the CLI prints their message and exits non-zero, no traceback."""


class MlxBaldError(Exception):
    """Base class for user-facing errors (bad input, missing model, corrupt file)."""


class ModelNotFoundError(MlxBaldError):
    pass


class AudioError(MlxBaldError):
    pass


class ModelFormatError(MlxBaldError):
    """A model file or folder is truncated, edited, or disagrees with its spec."""
