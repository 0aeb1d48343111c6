"""LiT step: tune the text tower and the MAP head against the frozen stage-2 encoder.

Stage 2 trains the video encoder alone, so its tokens drift away from the stage-1 MAP head and
text tower. Locked-image tuning (LiT) aligns them again: the stage-1 video-text model is loaded,
its vision encoder replaced by the stage-2 encoder and frozen, and the rest (auxiliary layers, MAP
head, text tower, temperature) trained with the stage-1 contrastive loss. The result is a
``VideoPrismClipModel`` for zero-shot retrieval and classification whose vision encoder is exactly
the stage-2 encoder.

With the encoder frozen, no token dropping (``drop_ratio=0``, the default) and no augmentation,
an encoder's tokens for a clip never change, so ``cache_encoder_tokens`` keeps them in memory
after the first epoch and later epochs skip the encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import VideoPrismClipModel

from encoder.videoprism.factorized import encode_visible_tokens
from encoder.videoprism.loading import load_encoder
from encoder.videoprism.masking import MASK_KINDS
from encoder.videoprism.pretrain.loop import TrainConfigError, TrainingSettings, process_rows, run_training
from encoder.videoprism.pretrain.losses import LogitScale, contrastive_loss
from encoder.videoprism.pretrain.stage1 import (
    ContrastiveModel,
    ContrastiveTask,
    ModelSize,
    caption_tokenizer,
    encoder_vision_config,
    load_logit_scale,
    load_tokenizer,
    new_clip_model,
)
from encoder.videoprism.text_tokenizer import tokenize_texts


@dataclass(kw_only=True)
class LitConfig(TrainingSettings):
    """LiT settings (see ``TrainingSettings`` for the shared ones).

    encoder: the stage-2 encoder (``run_stage2``'s output, or anything ``encoder.load_encoder`` takes).
    init_from: the stage-1 video-text model whose text tower, auxiliary layers, MAP head, temperature
        and tokenizer are tuned (the paper). None: locked-image tuning from scratch (LiT proper):
        a new text tower, auxiliary layers and MAP head of ``model``'s text and auxiliary settings
        (its vision width, heads and FFN width are the encoder's), and a tokenizer from ``tokenizer``
        or trained on the captions (``vocab_size`` pieces at most).
    drop_ratio / mask_kind: optional token dropping (off by default: the encoder is frozen).
    cache_encoder_tokens: keep the frozen encoder's tokens per clip in memory (needs drop_ratio 0).
    """

    encoder: str = field(
        metadata={"help": "the frozen encoder: stage-2 directory, Hub id or .npz (required unless in --config)"}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "stage-1 model directory (the paper); without it the text tower, auxiliary layers and MAP head start from scratch and a tokenizer is trained on the captions"
        },
    )
    model: ModelSize = field(default_factory=ModelSize)
    tokenizer: str | None = field(
        default=None, metadata={"help": "without --init-from: VideoPrism tokenizer directory or SentencePiece .model"}
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "without --init-from and --tokenizer: pieces of the trained tokenizer"}
    )
    initial_temperature: float = 0.07
    drop_ratio: float = 0.0
    mask_kind: str = field(default="tube", metadata={"choices": ("tube", "block")})
    cache_encoder_tokens: bool = field(
        default=False, metadata={"help": "keep the frozen encoder's tokens per clip in memory"}
    )

    # caching the frozen encoder's tokens changes nothing computed (clips are not augmented)
    RESUME_MAY_CHANGE = (*TrainingSettings.RESUME_MAY_CHANGE, "cache_encoder_tokens")

    def check(self) -> None:
        super().check()
        if not self.encoder:
            raise TrainConfigError("LiT needs encoder (the frozen video encoder, e.g. the stage-2 model)")
        if self.mask_kind not in MASK_KINDS:
            raise TrainConfigError(f"mask_kind must be one of {MASK_KINDS}, got {self.mask_kind!r}")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise TrainConfigError(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.cache_encoder_tokens and self.drop_ratio:
            raise TrainConfigError("cache_encoder_tokens needs drop_ratio 0 (dropped tokens change every step)")


class LitTask(ContrastiveTask):
    """The contrastive task with the encoder frozen, optionally reusing cached encoder tokens."""

    def __init__(self, config: LitConfig, model: ContrastiveModel, tokenizer):
        super().__init__(
            config,
            model,
            tokenizer,
            config.drop_ratio,
            config.mask_kind,
            stage="lit",
            extra_export={"encoder": config.encoder, "init_from": config.init_from},
        )
        self._tokens: dict[tuple[int, int], torch.Tensor] | None = {} if config.cache_encoder_tokens else None

    def loss(self, model, step: int, accelerator):
        if self._tokens is None:
            return super().loss(model, step, accelerator)
        dataset_index, rows = self.batches.batch(step)
        rows = process_rows(rows, accelerator)
        dataset = self.datasets[dataset_index]
        device = accelerator.device
        missing = [r for r in rows if (dataset_index, r) not in self._tokens]
        if missing:
            encoder = self.model.clip.video_model.vision_model
            positions = torch.arange(self.grid[0] * self.grid[1]).expand(len(missing), -1).to(device)
            with torch.no_grad(), accelerator.autocast():
                tokens = encode_visible_tokens(encoder, dataset.pixels(missing).to(device), positions, dataset.is_image)
            for row, row_tokens in zip(missing, tokens):
                self._tokens[(dataset_index, row)] = row_tokens.float().cpu()
        encoder_tokens = torch.stack([self._tokens[(dataset_index, r)] for r in rows]).to(device)
        input_ids, attention_mask = tokenize_texts(
            self.tokenizer, [dataset.caption(r) for r in rows], max_length=self.max_text_length
        )
        with accelerator.autocast():
            video, text, scale = model(
                None,
                None,
                input_ids.to(device),
                attention_mask.to(device),
                dataset.is_image,
                encoder_tokens=encoder_tokens,
            )
        loss = contrastive_loss(video, text, scale)
        with torch.no_grad():
            similarity = video.float() @ text.float().T
            top1 = (similarity.argmax(dim=1) == torch.arange(len(similarity), device=device)).float().mean()
        return loss, {
            "dataset": dataset.name,
            "temperature": float(1.0 / scale.detach()),
            "video_to_text_top1": float(top1),
        }


def build_lit(config: LitConfig) -> LitTask:
    config.check()
    encoder = load_encoder(config.encoder)
    if config.init_from:
        clip = VideoPrismClipModel.from_pretrained(config.init_from, use_safetensors=True)
        max_length = clip.config.text_config.max_position_embeddings
        tokenizer = load_tokenizer(
            config.tokenizer or config.init_from, Path(config.output_dir) / "tokenizer", max_length
        )
        logit_scale = load_logit_scale(config.init_from)
    else:
        clip, tokenizer = _new_towers(config, encoder)
        logit_scale = LogitScale(config.initial_temperature)
    target = clip.video_model.vision_model
    mismatched = [
        name
        for name, tensor in encoder.state_dict().items()
        if name not in target.state_dict() or target.state_dict()[name].shape != tensor.shape
    ]
    if mismatched or set(target.state_dict()) - set(encoder.state_dict()):
        raise ValueError(
            f"the encoder {config.encoder} does not have the architecture of {config.init_from}'s vision tower "
            f"(first differences: {mismatched[:3]})"
        )
    target.load_state_dict(encoder.state_dict())
    model = ContrastiveModel(clip, logit_scale, freeze_encoder=True)
    return LitTask(config, model, tokenizer)


def _new_towers(config: LitConfig, encoder) -> tuple[VideoPrismClipModel, object]:
    """A new video-text model around ``encoder``'s architecture (text tower, auxiliary layers and MAP
    head freshly initialised from ``config.seed``) and its tokenizer."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = caption_tokenizer(
        config.tokenizer, out, config.train_manifests, config.vocab_size, config.model.max_text_length
    )
    vision = encoder.config
    size = dataclasses.replace(
        config.model,
        hidden_size=vision.hidden_size,
        num_attention_heads=vision.num_attention_heads,
        intermediate_size=vision.intermediate_size,
    )
    vision_config = encoder_vision_config(encoder, config.model.num_auxiliary_layers)
    return new_clip_model(size, len(tokenizer), config.seed, vision_config), tokenizer


def run_lit(config: LitConfig) -> Path:
    """Run the LiT step (resuming if ``output_dir`` has checkpoints); returns ``output_dir/model``."""
    return run_training(
        config, lambda: build_lit(config), "LiT (text tower + MAP head on the frozen encoder)", plot_keys=("loss",)
    )
