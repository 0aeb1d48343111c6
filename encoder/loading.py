"""Load a frozen VideoPrism video encoder from any source users have.

Sources:
* a Hugging Face Hub id or a local directory in transformers format holding a VideoPrism vision
  model (``VideoPrismVisionModel``, ``VideoPrismForVideoClassification``) or a video-text model
  (``VideoPrismClipModel``), whose vision tower is used;
* a path to an official Flax checkpoint ``.npz``, converted in memory (``encoder.convert``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, VideoPrismVisionConfig, VideoPrismVisionModel
from transformers.utils import logging as transformers_logging

from encoder.convert import convert_checkpoint

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'fp32' / torch dtype / None -> torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


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
) -> VideoPrismVisionModel:
    """A frozen VideoPrism video encoder (eval mode, no gradients).

    source: Hub id, transformers-format directory, or official ``.npz`` checkpoint.
    dtype: weights dtype ('fp32', 'bf16', a torch dtype); None keeps fp32.
    The returned model's ``prism_source`` attribute records where it came from.
    """
    torch_dtype = resolve_dtype(dtype)
    source_str = os.fspath(source)
    if source_str.endswith(".npz"):
        if not Path(source_str).is_file():
            raise FileNotFoundError(f"VideoPrism checkpoint not found: {source_str}")
        model = convert_checkpoint(source_str)
        if not isinstance(model, VideoPrismVisionModel):
            model = model.video_model.vision_model
    else:
        local = Path(source_str)
        if local.exists() and not (local / "config.json").is_file():
            raise FileNotFoundError(f"{source_str} is not a transformers model directory (no config.json)")
        config = AutoConfig.from_pretrained(source_str)
        kwargs = {"use_safetensors": True}
        if config.model_type == "videoprism":
            model = _vision_tower_from_clip(source_str, config, **kwargs)
        elif config.model_type == "videoprism_vision_model":
            model = VideoPrismVisionModel.from_pretrained(source_str, **kwargs)
        else:
            raise ValueError(
                f"{source_str} holds a '{config.model_type}' model, not a VideoPrism vision or video-text model"
            )
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if device is not None:
        model = model.to(device)
    model.requires_grad_(False)
    model.eval()
    model.prism_source = source_str
    return model
