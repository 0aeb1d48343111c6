"""Stage 1: video-text contrastive training of a VideoPrism video-text model (paper 2.3.1, C.1).

The model IS a transformers ``VideoPrismClipModel``: its video tower is the factorised encoder,
auxiliary layers and a multi-head attention pooling (MAP) head; its text tower appends a class
token at the end and takes its output as the text embedding. Training:

* 50% of the video tokens are dropped by tube masking (the same random spatial positions in every
  frame); only the visible tokens run through the encoder (``encode_visible_tokens``) and the MAP
  head pools them;
* symmetric cross-entropy over the in-batch video-text similarity matrix, scaled by a learnable
  temperature (``LogitScale``: transformers' model has none, so it is saved beside the model as
  ``contrastive_temperature.safetensors``);
* optionally (``hard_negatives`` > 0, not in the paper) each video also meets that many of its
  manifest row's ``negative_captions`` among its video->text candidates (NegCLIP-style hard
  negatives: captions that differ from the true one in a single attribute);
* alternating gradient descent: each batch from one dataset, the datasets taking turns; images
  (image manifests) are one-frame videos whose temporal position embedding is cropped;
* Adafactor, linear warm-up then linear decay.

``run_stage1(Stage1Config(...))`` writes ``output_dir/model/``, loadable by
``VideoPrismClipModel.from_pretrained``, ``AutoTokenizer.from_pretrained`` and
``encoder.load_encoder``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer,
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismTextConfig,
    VideoPrismVisionConfig,
)

from encoder.common.configs import config_to_dict
from encoder.training.schedules import warmup_linear_decay
from encoder.videoprism.convert import official_text_position_table
from encoder.videoprism.factorized import encode_visible_tokens
from encoder.videoprism.masking import MASK_KINDS, make_mask, visible_indices
from encoder.videoprism.pretrain.data import AlternatingBatches, ClipDataset, ManifestError
from encoder.videoprism.pretrain.heads import pool_video_tokens
from encoder.videoprism.pretrain.loop import (
    TrainConfigError,
    TrainingSettings,
    process_rows,
    run_training,
    step_seed,
)
from encoder.videoprism.pretrain.losses import LogitScale, contrastive_loss
from encoder.videoprism.text_tokenizer import tokenize_texts

TEMPERATURE_FILE = "contrastive_temperature.safetensors"
PRETRAINING_FILE = "pretraining.json"


@dataclass
class ModelSize:
    """Architecture of a from-scratch VideoPrism video-text model.

    Vision: width, heads, FFN width (also the MAP head's width: transformers ties the pooler head
    size to ``intermediate_size / heads``), spatial / temporal / auxiliary depths, the native frame
    count and image size (position-embedding tables), patch size. Text: depth, heads (None: the
    vision heads), FFN width (None: the vision one) and token length. The text width is the vision
    width, as in the official model (the two embeddings are compared by a dot product).
    """

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_spatial_layers: int = 12
    num_temporal_layers: int = 4
    num_auxiliary_layers: int = 2
    num_frames: int = 8
    image_size: int = 288
    patch_size: int = 18
    text_layers: int = 12
    text_heads: int | None = None
    text_intermediate_size: int | None = None
    max_text_length: int = 64

    @classmethod
    def base(cls) -> ModelSize:
        """VideoPrism-B: 768 wide, 12 spatial + 4 temporal layers, 12 heads, 288 px, patch 18, 8 frames
        (the paper pretrains on 8 frames and interpolates to 16 for evaluation), 12 text layers."""
        return cls()

    @classmethod
    def tiny(cls) -> ModelSize:
        """A CPU-sized model for tests and demos: 64 wide, 2+1 layers, 64 px clips of 8 frames, patch 16."""
        return cls(
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            num_spatial_layers=2,
            num_temporal_layers=1,
            num_auxiliary_layers=1,
            num_frames=8,
            image_size=64,
            patch_size=16,
            text_layers=2,
            max_text_length=16,
        )

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise TrainConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name, value in (("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size)):
            if value % self.num_attention_heads:
                raise TrainConfigError(f"{name} {value} is not divisible by {self.num_attention_heads} heads")
        if self.hidden_size % (self.text_heads or self.num_attention_heads):
            raise TrainConfigError("hidden_size is not divisible by the text heads")

    def vision_config(self) -> VideoPrismVisionConfig:
        self.check()
        return VideoPrismVisionConfig(
            image_size=self.image_size,
            num_frames=self.num_frames,
            tubelet_size=[1, self.patch_size, self.patch_size],
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_spatial_layers=self.num_spatial_layers,
            num_temporal_layers=self.num_temporal_layers,
            num_auxiliary_layers=self.num_auxiliary_layers,
            hidden_act="gelu_python",
            attn_logit_softcapping=50.0,
            layer_norm_eps=1e-6,
        )

    def text_config(self, vocab_size: int) -> VideoPrismTextConfig:
        return VideoPrismTextConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.text_intermediate_size or self.intermediate_size,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads or self.num_attention_heads,
            max_position_embeddings=self.max_text_length,
            hidden_act="relu",
            layer_norm_eps=1e-6,
            attn_logit_softcapping=50.0,
            pad_token_id=0,
        )


@dataclass(kw_only=True)
class Stage1Config(TrainingSettings):
    """Stage 1 settings (see ``TrainingSettings`` for the shared ones).

    model: architecture when training from scratch.
    init_from: a ``VideoPrismClipModel`` directory to continue training (its architecture and, when
        ``tokenizer`` is None, its tokenizer are used; ``model`` is ignored).
    init_encoder_from: initialise the vision encoder from anything ``encoder.load_encoder`` takes
        (the paper initialises from an image model); its architecture replaces the vision part of
        ``model``.
    tokenizer: a directory holding a VideoPrism tokenizer, or a SentencePiece ``.model`` file; None:
        train one on the training captions (``vocab_size`` pieces at most) into ``output_dir/tokenizer``.
    drop_ratio / mask_kind: fraction of video tokens dropped and how ('tube' in the paper).
    initial_temperature: starting softmax temperature (learned).
    hard_negatives: per video and step, this many of its manifest row's ``negative_captions``
        (drawn without replacement, seeded by the step) join its video->text candidates; 0 (the
        paper): none. Every row of every manifest must then have at least that many.
    """

    model: ModelSize = field(default_factory=ModelSize)
    init_from: str | None = field(default=None, metadata={"help": "continue from a VideoPrismClipModel directory"})
    init_encoder_from: str | None = field(
        default=None, metadata={"help": "initialise the video encoder (directory, Hub id or official .npz)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "VideoPrism tokenizer directory or SentencePiece .model (default: train one)"}
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "pieces of the tokenizer trained when --tokenizer is not given"}
    )
    drop_ratio: float = field(default=0.5, metadata={"help": "fraction of video tokens dropped"})
    mask_kind: str = field(default="tube", metadata={"choices": ("tube", "block"), "help": "how tokens are dropped"})
    initial_temperature: float = field(default=0.07, metadata={"help": "initial softmax temperature (learned)"})
    hard_negatives: int = field(
        default=0,
        metadata={
            "help": "per video and step, this many of its manifest row's negative_captions join its video->text candidates (NegCLIP-style; 0 in the paper)"
        },
    )

    def check(self) -> None:
        super().check()
        self.model.check()
        if self.hard_negatives < 0:
            raise TrainConfigError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.mask_kind not in MASK_KINDS:
            raise TrainConfigError(f"mask_kind must be one of {MASK_KINDS}, got {self.mask_kind!r}")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise TrainConfigError(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.init_from and self.init_encoder_from:
            raise TrainConfigError("give init_from or init_encoder_from, not both")


class ContrastiveModel(nn.Module):
    """A ``VideoPrismClipModel`` and its learnable temperature, trained with token dropping.

    With ``freeze_encoder`` (LiT) the vision encoder runs without gradients and only the
    auxiliary layers, the MAP head and the text tower learn.
    """

    def __init__(self, clip: VideoPrismClipModel, logit_scale: LogitScale, freeze_encoder: bool = False):
        super().__init__()
        self.clip = clip
        self.logit_scale = logit_scale
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            clip.video_model.vision_model.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.clip.video_model.vision_model.eval()
        return self

    def forward(
        self,
        pixel_values_videos: torch.Tensor | None,
        visible_positions: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        crop_temporal_positions: bool = False,
        encoder_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pixels [B, T, 3, H, W] and visible_positions [B, K] (or precomputed ``encoder_tokens``
        [B, L, D] of the frozen encoder), input_ids / attention_mask [B + N, L_text] (rows past B,
        if any, are hard-negative captions) -> (video embeddings [B, D], text embeddings [B + N, D],
        both L2-normalised; logit scale [])."""
        video_model = self.clip.video_model
        if encoder_tokens is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
                encoder_tokens = encode_visible_tokens(
                    video_model.vision_model, pixel_values_videos, visible_positions, crop_temporal_positions
                )
        video = pool_video_tokens(video_model, encoder_tokens)
        text = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return video, text, self.logit_scale()


def load_tokenizer(source: str | os.PathLike, out_dir: Path, max_length: int):
    """A VideoPrism tokenizer from a directory, or converted from a SentencePiece ``.model`` into ``out_dir``."""
    from encoder.videoprism.text_tokenizer import save_videoprism_tokenizer

    source = Path(source)
    if source.is_file():
        return save_videoprism_tokenizer(source, out_dir, max_length=max_length)
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer not found: {source}")
    return AutoTokenizer.from_pretrained(str(source))


def caption_tokenizer(tokenizer: str | None, out_dir: Path, manifests: list[str], vocab_size: int, max_length: int):
    """The tokenizer of a from-scratch text tower: ``tokenizer`` (a directory or SentencePiece file) when
    given, else the one an earlier (resumed) run trained into ``out_dir/tokenizer``, else one trained on
    the manifests' captions (``vocab_size`` pieces at most)."""
    if tokenizer:
        return load_tokenizer(tokenizer, out_dir / "tokenizer", max_length)
    if (out_dir / "tokenizer" / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(out_dir / "tokenizer"))
    from encoder.videoprism.pretrain.tokenizer import train_caption_tokenizer

    return train_caption_tokenizer(manifests, out_dir / "tokenizer", vocab_size, max_length)


def encoder_vision_config(encoder, num_auxiliary_layers: int) -> VideoPrismVisionConfig:
    """A video-text model's vision config around ``encoder``'s architecture: its config with
    ``num_auxiliary_layers`` auxiliary layers and L2-normalised embeddings."""
    return VideoPrismVisionConfig(
        **{
            **encoder.config.to_dict(),
            "num_auxiliary_layers": num_auxiliary_layers,
            "apply_l2norm": True,
        }
    )


def save_logit_scale(logit_scale: LogitScale, out_dir: Path) -> None:
    save_file({"log_scale": logit_scale.log_scale.detach().cpu().reshape(1)}, str(Path(out_dir) / TEMPERATURE_FILE))


def load_logit_scale(model_dir: str | os.PathLike, default_temperature: float = 0.07) -> LogitScale:
    """The learned temperature saved beside a stage-1 / LiT model (a fresh one if the file is absent)."""
    scale = LogitScale(default_temperature)
    path = Path(model_dir) / TEMPERATURE_FILE
    if path.is_file():
        with torch.no_grad():
            scale.log_scale.copy_(load_file(str(path))["log_scale"].reshape(()))
    return scale


def new_clip_model(
    size: ModelSize, vocab_size: int, seed: int, vision_config: VideoPrismVisionConfig | None = None
) -> VideoPrismClipModel:
    """A randomly initialised ``VideoPrismClipModel`` (seeded), with the official text position sinusoid."""
    vision = vision_config or size.vision_config()
    config = VideoPrismConfig(vision_config=vision.to_dict(), text_config=size.text_config(vocab_size).to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoPrismClipModel(config)
    text = config.text_config
    with torch.no_grad():
        model.text_model.embeddings.position_embedding.copy_(
            official_text_position_table(text.max_position_embeddings, text.hidden_size)
        )
    return model


class ContrastiveTask:
    """Stage 1 / LiT as a task for ``run_training``: batches, masks and the contrastive loss."""

    def __init__(
        self,
        settings: TrainingSettings,
        model: ContrastiveModel,
        tokenizer,
        drop_ratio: float,
        mask_kind: str,
        stage: str,
        extra_export: dict | None = None,
        hard_negatives: int = 0,
    ):
        self.settings = settings
        self.hard_negatives = int(hard_negatives)
        self.model = model
        self.tokenizer = tokenizer
        self.drop_ratio = drop_ratio
        self.mask_kind = mask_kind
        self.stage = stage
        self.extra_export = extra_export or {}
        vision = model.clip.config.vision_config
        frames = settings.num_frames or vision.num_frames
        self.image_size = settings.image_size or vision.image_size
        self.patch_size = vision.tubelet_size[1]
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {self.patch_size}")
        self.grid = (self.image_size // self.patch_size,) * 2
        self.max_text_length = model.clip.config.text_config.max_position_embeddings
        self.datasets = [
            ClipDataset(m, frames, self.image_size, require_captions=True, cache_clips=settings.cache_clips)
            for m in settings.train_manifests
        ]
        self.batches = AlternatingBatches(
            [len(d) for d in self.datasets],
            settings.batch_size,
            settings.seed,
            names=[str(d.manifest) for d in self.datasets],
        )
        if self.hard_negatives:
            for dataset in self.datasets:
                for row, example in enumerate(dataset.examples):
                    if len(example.negative_captions) < self.hard_negatives:
                        raise ManifestError(
                            f"{dataset.manifest}: example {row} ({example.path.name}) has "
                            f"{len(example.negative_captions)} negative_captions, fewer than hard_negatives={self.hard_negatives}"
                        )

    def scheduler(self, optimizer):
        return warmup_linear_decay(optimizer, self.settings.warmup_steps, self.settings.max_steps)

    def data_state(self, step: int) -> dict:
        return {"next_step": step, "epochs": self.batches.epochs_done(step)}

    def batch(self, step: int, accelerator=None) -> dict:
        """The inputs of ``step``: pixels [B, T, 3, S, S], visible_positions [B, K], input_ids and
        attention_mask [B + B * hard_negatives, L] (the captions, then each video's hard negatives in
        row order), plus the dataset it came from."""
        dataset_index, rows = self.batches.batch(step)
        rows = process_rows(rows, accelerator)
        dataset = self.datasets[dataset_index]
        process = accelerator.process_index if accelerator is not None else 0
        mask = make_mask(
            self.mask_kind,
            len(rows),
            self.grid,
            self.drop_ratio,
            rng=np.random.default_rng(step_seed(self.settings.seed, 1, step, process)),
        )
        texts = [dataset.caption(r) for r in rows]
        if self.hard_negatives:
            rng = np.random.default_rng(step_seed(self.settings.seed, 4, step, process))
            for r in rows:
                negatives = dataset.negative_captions(r)
                texts += [negatives[i] for i in rng.choice(len(negatives), self.hard_negatives, replace=False)]
        input_ids, attention_mask = tokenize_texts(self.tokenizer, texts, max_length=self.max_text_length)
        return {
            "pixel_values_videos": dataset.pixels(rows),
            "visible_positions": visible_indices(mask),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "crop_temporal_positions": dataset.is_image,
            "dataset": dataset.name,
        }

    def loss(self, model: nn.Module, step: int, accelerator) -> tuple[torch.Tensor, dict]:
        batch = self.batch(step, accelerator)
        device = accelerator.device
        with accelerator.autocast():
            video, text, scale = model(
                batch["pixel_values_videos"].to(device),
                batch["visible_positions"].to(device),
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["crop_temporal_positions"],
            )
        size = len(video)
        text, negatives = text[:size], text[size:]
        loss = contrastive_loss(video, text, scale, negatives)
        with torch.no_grad():
            similarity = video.float() @ text.float().T
            top1 = (similarity.argmax(dim=1) == torch.arange(size, device=similarity.device)).float().mean()
            metrics = {
                "dataset": batch["dataset"],
                "temperature": float(1.0 / scale.detach()),
                "video_to_text_top1": float(top1),
            }
            if len(negatives):
                # does each video prefer its caption to every one of its own hard negatives?
                own = (video.float()[:, None] * negatives.float().view(size, -1, video.shape[1])).sum(-1)  # [B, k]
                metrics["hard_negative_top1"] = float((similarity.diagonal()[:, None] > own).all(dim=1).float().mean())
        return loss, metrics

    def export(self, model: ContrastiveModel, out_dir: Path) -> None:
        model.clip.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        save_logit_scale(model.logit_scale, out_dir)
        info = {
            "stage": self.stage,
            "temperature": model.logit_scale.temperature,
            **self.extra_export,
            "config": config_to_dict(self.settings),
        }
        (out_dir / PRETRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def build_stage1(config: Stage1Config) -> ContrastiveTask:
    """The stage-1 task: tokenizer (given, from ``init_from`` or trained), model, data."""
    config.check()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_length = config.model.max_text_length
    if config.init_from:
        clip = VideoPrismClipModel.from_pretrained(config.init_from, use_safetensors=True)
        max_length = clip.config.text_config.max_position_embeddings
        source = config.tokenizer or config.init_from
        tokenizer = load_tokenizer(source, out / "tokenizer", max_length)
        logit_scale = load_logit_scale(config.init_from, config.initial_temperature)
    else:
        tokenizer = caption_tokenizer(config.tokenizer, out, config.train_manifests, config.vocab_size, max_length)
        vision_config = None
        encoder = None
        if config.init_encoder_from:
            from encoder.videoprism.loading import load_encoder

            encoder = load_encoder(config.init_encoder_from)
            vision_config = encoder_vision_config(encoder, config.model.num_auxiliary_layers)
        clip = new_clip_model(config.model, len(tokenizer), config.seed, vision_config)
        if encoder is not None:
            clip.video_model.vision_model.load_state_dict(encoder.state_dict())
        logit_scale = LogitScale(config.initial_temperature)
    if clip.config.text_config.vocab_size < len(tokenizer):
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} pieces but the text model only {clip.config.text_config.vocab_size} embeddings"
        )
    if clip.config.vision_config.hidden_size != clip.config.text_config.hidden_size:
        raise ValueError("video and text widths differ; the contrastive loss compares them by dot product")
    model = ContrastiveModel(clip, logit_scale)
    return ContrastiveTask(
        config,
        model,
        tokenizer,
        config.drop_ratio,
        config.mask_kind,
        stage="stage1",
        hard_negatives=config.hard_negatives,
    )


def run_stage1(config: Stage1Config) -> Path:
    """Train stage 1 (resuming if ``output_dir`` has checkpoints); returns ``output_dir/model``."""
    return run_training(config, lambda: build_stage1(config), "stage 1 (video-text contrastive)", plot_keys=("loss",))
