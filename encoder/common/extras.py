"""Optional dependencies: the package's extras and a one-line message when one is missing.

The base install (``pip install prism-vlm``) is the library and the command line: loading
VideoPrism and the glue, decoding, features, captioning, QA, chat, retrieval and pretraining.
Everything else comes with an extra:

| extra | packages | for |
| --- | --- | --- |
| ``app`` | gradio | ``prism-vlm app`` |
| ``serve`` | fastapi, uvicorn | ``prism-vlm serve`` (the OpenAI-compatible API) |
| ``train`` | peft, datasets, matplotlib | LoRA, Hugging Face dataset sources, loss plots |
| ``eval`` | evaluate, datasets, nltk | caption metrics, dataset sources, WUPS |
| ``faiss`` | faiss-cpu | ``prism-vlm search --backend faiss`` |
| ``all`` | all of the above | |
| ``lmms`` | lmms-eval, filelock<4 | the lmms-eval models ``prism_vlm`` and ``prism_vlm_chat`` (not in ``all``: lmms-eval pins av<16) |
"""

from __future__ import annotations

import importlib
from types import ModuleType

from encoder.common.errors import PrismVlmError

EXTRAS: dict[str, tuple[str, ...]] = {
    "app": ("gradio",),
    "serve": ("fastapi", "uvicorn"),
    "train": ("peft", "datasets", "matplotlib"),
    "eval": ("evaluate", "datasets", "nltk"),
    "faiss": ("faiss-cpu",),
    "lmms": ("lmms-eval", "filelock"),  # filelock<4: lmms-eval 0.7.3 imports filelock._api
}


class MissingExtraError(PrismVlmError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError: "FEATURE needs MODULE: pip install 'prism-vlm[EXTRA]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise MissingExtraError(
            f"{feature} needs {package}, which is not installed: pip install 'prism-vlm[{extra}]'"
        ) from error


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or the module blocked in sys.modules
        return False
