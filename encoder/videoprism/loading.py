"""Load a frozen VideoPrism video encoder from any source users have.

Sources:
* a Hugging Face Hub id or a local directory in transformers format holding a VideoPrism vision
  model (``VideoPrismVisionModel``, ``VideoPrismForVideoClassification``) or a video-text model
  (``VideoPrismClipModel``), whose vision tower is used;
* a path to an official Flax checkpoint ``.npz``, converted in memory (``encoder.videoprism.convert``).

The attention kernel is chosen with ``attn_implementation`` (``ATTN_IMPLEMENTATIONS``): VideoPrism
caps its attention logits (``attn_logit_softcapping``, 50), so only kernels that apply the cap are
offered: transformers' eager attention, PyTorch flex attention, and FlashAttention-2 (its
``softcap`` argument; needs the ``flash_attn`` package and a CUDA GPU). transformers' SDPA path is
not among them: VideoPrism does not support it (SDPA has no logit cap).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, VideoPrismVisionConfig, VideoPrismVisionModel
from transformers.utils import logging as transformers_logging

from encoder.videoprism.convert import CheckpointFormatError, convert_checkpoint

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

# Attention kernels that apply VideoPrism's attention logit softcap, by their transformers names.
ATTN_IMPLEMENTATIONS = ("eager", "flex_attention", "flash_attention_2")


def default_device() -> str:
    """ "cuda" when a GPU is visible, else "cpu" (every command's default for --device)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'fp32' / torch dtype / None -> torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def check_attn_implementation(attn_implementation: str | None) -> str | None:
    """None or one of ``ATTN_IMPLEMENTATIONS``, else ValueError."""
    if attn_implementation is None or attn_implementation in ATTN_IMPLEMENTATIONS:
        return attn_implementation
    raise ValueError(
        f"unknown attn_implementation {attn_implementation!r}; use one of {list(ATTN_IMPLEMENTATIONS)} "
        "(or None for transformers' default, which is eager for VideoPrism)"
    )


def _vision_tower_from_clip(source: str, config, **kwargs) -> VideoPrismVisionModel:
    """Load only the vision tower of a video-text checkpoint (its keys under video_model.vision_model.)."""
    vision_config = config.vision_config
    if isinstance(vision_config, dict):
        vision_config = VideoPrismVisionConfig(**vision_config)
    # The text tower, auxiliary layers and pooler are deliberately left out: silence transformers'
    # report of those unused keys.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return VideoPrismVisionModel.from_pretrained(
            source,
            config=vision_config,
            key_mapping={r"^video_model\.vision_model\.": ""},
            **kwargs,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)


def load_encoder(
    source: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> VideoPrismVisionModel:
    """A frozen VideoPrism video encoder (eval mode, no gradients).

    source: Hub id, transformers-format directory, or official ``.npz`` checkpoint.
    dtype: weights dtype ('fp32', 'bf16', a torch dtype); None keeps fp32.
    attn_implementation: the attention kernel, one of ``ATTN_IMPLEMENTATIONS``: 'eager'
        (transformers' reference attention), 'flex_attention' (PyTorch flex attention, compiled on
        first use, the cap applied in its ``score_mod``) or 'flash_attention_2' (needs ``flash_attn``,
        a CUDA GPU and fp16/bf16 weights); all apply the attention logit softcap. None leaves
        transformers' default (eager for VideoPrism). Passed to ``from_pretrained`` for transformers
        sources, set with ``set_attn_implementation`` after an ``.npz`` conversion; the choice is in
        ``model.config._attn_implementation``. Unknown names raise ValueError; a known kernel that
        cannot run here (e.g. ``flash_attn`` not installed) raises transformers' error.
        Encoding with frame paddings (``encoder.videoprism.factorized.encode_tokens``) needs 'eager'.
    The returned model's ``prism_source`` attribute records where it came from.
    """
    torch_dtype = resolve_dtype(dtype)
    attn_implementation = check_attn_implementation(attn_implementation)
    source_str = os.fspath(source)
    if source_str.endswith(".npz"):
        if not Path(source_str).is_file():
            raise FileNotFoundError(f"VideoPrism checkpoint not found: {source_str}")
        model = convert_checkpoint(source_str)
        if not isinstance(model, VideoPrismVisionModel):
            model = model.video_model.vision_model
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    else:
        local = Path(source_str)
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{source_str} is not a transformers model directory (no config.json)")
        config = AutoConfig.from_pretrained(source_str)
        kwargs = {"use_safetensors": True}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if config.model_type == "videoprism":
            model = _vision_tower_from_clip(source_str, config, **kwargs)
        elif config.model_type == "videoprism_vision_model":
            model = VideoPrismVisionModel.from_pretrained(source_str, **kwargs)
        else:
            raise CheckpointFormatError(
                f"{source_str} holds a '{config.model_type}' model, not a VideoPrism vision or video-text model"
            )
    model = frozen(model, torch_dtype, device)
    model.prism_source = source_str
    return model


def frozen(
    model: torch.nn.Module, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None
) -> torch.nn.Module:
    """``model`` cast to ``dtype`` (None: unchanged), moved to ``device``, in eval mode, without gradients."""
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if device is not None:
        model = model.to(device)
    model.requires_grad_(False)
    return model.eval()
