"""A VideoPrism video-text model for zero-shot retrieval and classification (paper section 3.2).

``load_video_text_model`` takes any VideoPrism video-text (LvT) source:

* an official Flax checkpoint ``.npz`` (e.g. ``flax_lvt_base_f16r288_repeated.npz``), converted in
  memory by ``encoder.videoprism.convert``; it holds no tokenizer, so ``tokenizer`` must name the official
  SentencePiece model (or a saved VideoPrism tokenizer directory);
* a transformers directory or Hub id holding a ``VideoPrismClipModel`` and its tokenizer (what
  ``prism-vlm convert ... --tokenizer`` writes);
* our own ``prism-vlm pretrain stage1`` / ``lit`` output (``RUN_DIR/model``), whose learned
  temperature (``contrastive_temperature.safetensors``) is then used for probabilities.

Embeddings are the model's own, L2-normalised: a video is its frames through the encoder, the
auxiliary layers and the MAP head; a text is canonicalised and tokenised as the official code does
(``encoder.videoprism.text_tokenizer.tokenize_texts``) and taken at the text tower's class token. Scores are
cosine similarities; probabilities are ``softmax(similarity / temperature)``, the official demo's
``compute_similarity_matrix`` with its temperature 0.01 when the model carries no learned one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, VideoPrismClipModel

from encoder.common.errors import PrismVlmError
from encoder.videoprism.features import clips_to_model_input
from encoder.videoprism.loading import frozen
from encoder.videoprism.text_tokenizer import tokenize_texts

OFFICIAL_TEMPERATURE = 0.01  # the official video-text demo's compute_similarity_matrix


DEMO_VIDEO_TEXT_MODEL = Path(__file__).resolve().parents[1] / "demo_model" / "video_text"
MODEL_ENVIRONMENT_VARIABLE = "PRISM_VLM_VIDEO_TEXT_MODEL"


def default_video_text_model() -> str:
    """``$PRISM_VLM_VIDEO_TEXT_MODEL`` if set, else the shipped demo video-text model (shapes corpus only)."""
    return os.environ.get(MODEL_ENVIRONMENT_VARIABLE) or str(DEMO_VIDEO_TEXT_MODEL)


class VideoTextModelError(PrismVlmError, ValueError):
    """The source is not a VideoPrism video-text model, or it lacks what embedding needs."""


@dataclass
class VideoTextModel:
    """A frozen ``VideoPrismClipModel`` with its tokenizer and input settings.

    num_frames / frame_size: frames sampled per clip and their square size (the model's native
        ones by default: its position-embedding tables).
    text_length: tokens per text, padded (the model's text position table by default; the official
        tokenizer pads to 64).
    temperature: softmax temperature of :meth:`probabilities`.
    source: where the model came from (recorded in indexes).
    """

    clip: VideoPrismClipModel
    tokenizer: object
    source: str
    tokenizer_source: str | None
    num_frames: int
    frame_size: int
    text_length: int
    temperature: float

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return int(self.clip.config.vision_config.hidden_size)

    def identity(self) -> str:
        """sha1 of what the video embeddings depend on (the model config and the frame settings)."""
        config = json.dumps(self.clip.config.to_diff_dict(), sort_keys=True, default=str)
        return hashlib.sha1(f"{config}|{self.num_frames}|{self.frame_size}".encode()).hexdigest()

    @torch.inference_mode()
    def embed_clips(self, clips: torch.Tensor | np.ndarray) -> torch.Tensor:
        """clips [B, T, H, W, 3] float RGB in [0, 1] -> L2-normalised video embeddings [B, D] float32 (CPU)."""
        pixels = clips_to_model_input(clips).to(self.device, next(self.clip.parameters()).dtype)
        # position tables interpolated to the clip's frames and size (the same tables at the native ones)
        pooled = self.clip.get_video_features(pixel_values_videos=pixels, interpolate_pos_encoding=True).pooler_output
        pooled = pooled.reshape(len(pixels), -1).float()
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """texts (N strings) -> L2-normalised text embeddings [N, D] float32 (CPU), ``batch_size`` at a time."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no texts to embed")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = []
        for start in range(0, len(texts), batch_size):
            ids, mask = tokenize_texts(
                self.tokenizer, list(texts[start : start + batch_size]), max_length=self.text_length
            )
            pooled = self.clip.get_text_features(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).pooler_output
            rows.append(torch.nn.functional.normalize(pooled.reshape(len(ids), -1).float(), dim=-1).cpu())
        return torch.cat(rows)

    def probabilities(self, similarity: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [..., C] -> softmax over the last axis at the model's temperature."""
        return torch.softmax(similarity.float() / self.temperature, dim=-1)


def _learned_temperature(directory: Path) -> float | None:
    """The temperature stage-1 / LiT training saved beside the model, or None."""
    from encoder.videoprism.pretrain.stage1 import TEMPERATURE_FILE, load_logit_scale

    return load_logit_scale(directory).temperature if (directory / TEMPERATURE_FILE).is_file() else None


def load_video_text_model(
    source: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    num_frames: int | None = None,
    frame_size: int | None = None,
    text_length: int | None = None,
    temperature: float | None = None,
) -> VideoTextModel:
    """A frozen video-text model from an official ``.npz``, a transformers directory or a Hub id.

    tokenizer: a SentencePiece ``.model`` file or a tokenizer directory / Hub id; None takes the
        model directory's own (an ``.npz`` has none: then this is required).
    num_frames, frame_size, text_length: None -> the model's native values.
    temperature: None -> the learned one saved beside our own stage-1 / LiT models, else 0.01.
    Raises FileNotFoundError for a missing file and VideoTextModelError for a source that is not a
    video-text model (a video encoder alone has no text tower).
    """
    from encoder.videoprism.convert import convert_checkpoint

    source_str = os.fspath(source)
    path = Path(source_str)
    learned = None
    if source_str.endswith(".npz"):
        if not path.is_file():
            raise FileNotFoundError(f"video-text checkpoint not found: {source_str}")
        clip = convert_checkpoint(source_str)
        if not isinstance(clip, VideoPrismClipModel):
            raise VideoTextModelError(f"{source_str} is a video encoder checkpoint, not a video-text (LvT) one")
        if tokenizer is None:
            raise VideoTextModelError(
                f"{source_str} holds no tokenizer: pass the official SentencePiece model (tokenizer=..., --tokenizer)"
            )
    else:
        if path.exists() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{source_str} is not a transformers model directory (no config.json)")
        if not path.exists() and (
            path.is_absolute() or source_str.startswith((".", "~")) or source_str.count("/") != 1
        ):
            raise FileNotFoundError(
                f"no video-text model at {source_str} (not a directory, an .npz or a Hub id 'user/name')"
            )
        config = AutoConfig.from_pretrained(source_str)
        if config.model_type != "videoprism":
            raise VideoTextModelError(
                f"{source_str} holds a '{config.model_type}' model, not a VideoPrism video-text model "
                "(VideoPrismClipModel: a video encoder alone cannot embed text)"
            )
        clip = _quietly(VideoPrismClipModel.from_pretrained, source_str, use_safetensors=True)
        if path.is_dir():
            learned = _learned_temperature(path)
    tokenizer_source = os.fspath(tokenizer) if tokenizer is not None else source_str
    text_tokenizer = _load_tokenizer(tokenizer_source, clip)
    clip = frozen(clip, dtype, device)
    vision, text = clip.config.vision_config, clip.config.text_config
    model = VideoTextModel(
        clip=clip,
        tokenizer=text_tokenizer,
        source=source_str,
        tokenizer_source=os.fspath(tokenizer) if tokenizer is not None else None,
        num_frames=int(num_frames or vision.num_frames),
        frame_size=int(frame_size or vision.image_size),
        text_length=int(text_length or text.max_position_embeddings),
        temperature=float(temperature if temperature is not None else (learned or OFFICIAL_TEMPERATURE)),
    )
    if model.temperature <= 0:
        raise VideoTextModelError(f"temperature must be > 0, got {model.temperature}")
    if not 1 <= model.text_length <= text.max_position_embeddings:
        raise VideoTextModelError(f"text_length must be in 1..{text.max_position_embeddings} (the text position table)")
    from encoder.video.decode import check_num_frames, check_size

    check_num_frames(model.num_frames)
    check_size(model.frame_size)
    patch = vision.tubelet_size[1]
    if model.frame_size % patch:
        raise VideoTextModelError(f"frame_size {model.frame_size} is not a multiple of the model's patch size {patch}")
    return model


def _quietly(load, *args, **kwargs):
    """Call a transformers loader without its per-load progress bar (library code prints nothing)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _load_tokenizer(source: str, clip: VideoPrismClipModel):
    """A tokenizer directory / Hub id, or an official SentencePiece ``.model`` converted in memory."""
    path = Path(source)
    if path.is_file():
        import tempfile

        from encoder.videoprism.text_tokenizer import save_videoprism_tokenizer

        with tempfile.TemporaryDirectory() as folder:
            save_videoprism_tokenizer(path, folder, max_length=clip.config.text_config.max_position_embeddings)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise VideoTextModelError(f"no tokenizer in {source} (pass --tokenizer): {error}") from error
    if len(tokenizer) > clip.config.text_config.vocab_size:
        raise VideoTextModelError(
            f"the tokenizer has {len(tokenizer)} pieces but the text tower only {clip.config.text_config.vocab_size} embeddings"
        )
    return tokenizer
