"""The lowest layer of prism-vlm: video decoding (``video``), the VideoPrism encoder with its features and
two-stage pretraining (``videoprism``), the machinery every layer shares (``common``) and the one
training harness (``training``).

The public names below are imported on first use (PEP 562), so importing a light submodule such
as ``vlm.cli.pretrain`` (for the ``prism-vlm`` command line) does not load torch.
"""

import importlib

_EXPORTS = {
    "FeatureCache": "encoder.videoprism.features",
    "encode_clips": "encoder.videoprism.features",
    "extract_features": "encoder.videoprism.features",
    "load_encoder": "encoder.videoprism.loading",
    "VideoDecodeError": "encoder.video.decode",
    "load_clip": "encoder.video.decode",
}

__all__ = ["FeatureCache", "VideoDecodeError", "encode_clips", "extract_features", "load_clip", "load_encoder"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")  # e.g. ``encoder.video.decode`` after ``import encoder``
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
