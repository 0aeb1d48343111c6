"""The protocol card written beside every evaluation result: everything that decided the numbers.

Reproduction disputes in video evaluation come from settings nobody wrote down (frames, resolution,
decoder, prompt). :func:`protocol_card` records them with the result:

- ``package``: prism-vlm's version and, in a git checkout, its commit (with ``dirty`` when the checkout
  has uncommitted changes);
- ``software``: Python, torch, transformers, and the decoder (PyAV and the FFmpeg it wraps);
- ``decoding``: the frame sampling rule and the resize/crop, with frames and frame size;
- ``model``: for a glue, its directory and the sha256 of its weight files, the encoder's and LLM's
  sources, a fingerprint of the resampler's weights (the part that trains), the prompt templates; for a
  video-text model, its source, tokenizer, frames, size, text length and identity;
- ``data``: each input file with its sha256;
- ``settings``: the command's own settings (mode, shots, generation, ...), as given.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["DECODING_RULE", "protocol_card"]

DECODING_RULE = (
    "num_frames times uniformly over the clip (the centres of num_frames equal segments); at each, the frame "
    "displayed then (presentation timestamps); rotation metadata applied; shorter side resized to frame_size "
    "(bilinear, antialiased), centre square crop; RGB in [0, 1]"
)
_REPO = Path(__file__).resolve().parents[2]


def protocol_card(
    *,
    glue=None,
    glue_dir: str | os.PathLike | None = None,
    video_text_model=None,
    data: dict[str, str | os.PathLike | None] | None = None,
    settings: dict | None = None,
) -> dict:
    """The protocol card (see the module docstring) of an evaluation by ``glue`` (a
    :class:`vlm.model.PrismVlmForConditionalGeneration`, loaded from ``glue_dir``) or ``video_text_model``
    (:class:`vlm.retrieval.video_text_model.VideoTextModel`) on the ``data`` files, with ``settings``."""
    card = {
        "package": _package(),
        "software": _software(),
        "decoding": {"rule": DECODING_RULE},
        "data": {name: _file(path) for name, path in (data or {}).items() if path is not None},
        "settings": dict(settings or {}),
    }
    if glue is not None:
        card["model"] = _glue(glue, glue_dir)
        card["decoding"].update(frames=glue.config.num_frames, frame_size=glue.config.frame_size)
    if video_text_model is not None:
        card["model"] = _video_text(video_text_model)
        card["decoding"].update(frames=video_text_model.num_frames, frame_size=video_text_model.frame_size)
    return card


def _package() -> dict:
    from vlm import __version__

    commit = dirty = None
    if (_REPO / ".git").exists():
        try:
            commit = _git("rev-parse", "HEAD")
            dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            commit = dirty = None
    return {"name": "prism-vlm", "version": __version__, "commit": commit, "dirty": dirty}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def _software() -> dict:
    import av
    import torch
    import transformers

    codec = av.library_versions.get("libavcodec")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "decoder": f"PyAV {av.__version__}" + (f" (libavcodec {'.'.join(map(str, codec))})" if codec else ""),
    }


def _file(path: str | os.PathLike) -> dict:
    from vlm.long_video.cache import file_digest

    path = Path(path)
    return {"path": str(path), "sha256": file_digest(path) if path.is_file() else None}


def _glue(glue, glue_dir) -> dict:
    from vlm.long_video.cache import module_fingerprint

    config = glue.config
    weights = {}
    if glue_dir is not None and Path(glue_dir).is_dir():
        weights = {p.name: _file(p)["sha256"] for p in sorted(Path(glue_dir).glob("*.safetensors"))}
    return {
        "kind": "glue",
        "directory": None if glue_dir is None else str(glue_dir),
        "weights_sha256": weights,
        "resampler_fingerprint": module_fingerprint(glue.resampler),
        "encoder_source": config.encoder_source,
        "llm_source": config.llm_source,
        "prompts": dataclasses.asdict(config.prompts),
    }


def _video_text(model) -> dict:
    return {
        "kind": "video_text",
        "source": str(model.source),
        "tokenizer": None if model.tokenizer_source is None else str(model.tokenizer_source),
        "text_length": model.text_length,
        "temperature": model.temperature,
        "identity": model.identity(),
    }
