"""The base class of every error a user can fix: a bad flag, file, manifest, video or model directory.

``prism-vlm`` and the app show a :class:`PrismVlmError` as one line (its message says what to change);
any other exception is a bug and keeps its traceback. Each error class of the package derives from it,
and keeps the built-in base it had (``ValueError``, ``FileNotFoundError`` ...) so ``except ValueError``
in callers still works.
"""


class PrismVlmError(Exception):
    """An error in what the user gave (input, flags, files), shown to them in one line."""
