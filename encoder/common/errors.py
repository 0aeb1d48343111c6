"""The base class of every error a user can fix: a bad flag, file, manifest, video or model directory.

``prism-vlm`` and the app show a :class:`PrismVlmError` as one line (its message says what to change);
``prism-vlm`` does the same for a path the user named that is missing, a folder or unreadable
(``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``, ``PermissionError``); any other
exception is a bug and keeps its traceback. Each error class of the package derives from
:class:`PrismVlmError` and keeps the built-in base it had (``ValueError``, ``FileNotFoundError`` ...),
so ``except ValueError`` in callers still works.
"""


class PrismVlmError(Exception):
    """An error in what the user gave (input, flags, files), shown to them in one line."""


class UsageError(PrismVlmError, ValueError):
    """Flags or arguments that do not fit together, or do not fit the files they name (``--json``
    without ``--message``, an output folder written with other settings ...): the message names the flag
    or setting to change."""


class ConfigError(PrismVlmError, ValueError):
    """A config file or dict (``--config FILE.json``, a saved run's config) that is not valid JSON, or
    has unknown or missing fields (the message names them)."""
