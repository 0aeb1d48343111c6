"""Stage 2: masked video modelling with token shuffling and global-local distillation (paper 2.3.2, C.2).

The student is initialised from the stage-1 encoder; the teacher is the frozen stage-1 video tower
(encoder + auxiliary layers + MAP head) on the intact clip. Each step:

1. BEVT block masking at ratio 0.65 (the same block mask in every frame); the student encodes only
   the visible tokens (``encode_visible_tokens``).
2. Token-wise distillation (``TokenDistillationHead``): the visible outputs, projected to the
   decoder width, plus a learned MASK token at every masked position, randomly shuffled, then
   position embeddings added (slot i gets position i's embedding), through a 4-layer decoder and a
   linear layer to the teacher width; the output at slot i is compared with the teacher's token at
   position i by cosine distance, over all T*N positions. See ``encoder.videoprism.pretrain.heads`` for why
   this is what "shuffle, then add position embeddings" means.
3. Global distillation (``GlobalDistillationHead``): the visible outputs through a separate 4-layer
   decoder (no shuffle, no position embedding) and a MAP head; cosine distance to the teacher's
   global embedding (its stage-1 MAP head's output on the intact clip).
4. Equal weights; Adafactor, warm-up then cosine decay to ``min_learning_rate``.

Switches for the paper's ablations: ``shuffle_tokens``, ``global_distillation``, ``mask_kind``
('block' | 'tube'), ``mask_ratio``. ``run_stage2(Stage2Config(...))`` writes ``output_dir/model/``,
a transformers ``VideoPrismVisionModel`` that ``encoder.load_encoder`` loads.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import VideoPrismClipModel, VideoPrismVisionModel
from transformers.models.videoprism.modeling_videoprism import VideoPrismVideoModel

from encoder.common.configs import config_to_dict
from encoder.training.schedules import warmup_cosine_decay
from encoder.videoprism.factorized import encode_visible_tokens
from encoder.videoprism.masking import MASK_KINDS, make_mask, visible_indices
from encoder.videoprism.pretrain.data import AlternatingBatches, ClipDataset
from encoder.videoprism.pretrain.heads import (
    DecoderConfig,
    GlobalDistillationHead,
    TokenDistillationHead,
    pool_video_tokens,
    shuffle_permutations,
)
from encoder.videoprism.pretrain.loop import (
    TrainConfigError,
    TrainingSettings,
    process_rows,
    run_training,
    step_seed,
    torch_generator,
)
from encoder.videoprism.pretrain.losses import cosine_distance

PRETRAINING_FILE = "pretraining.json"


@dataclass(kw_only=True)
class Stage2Config(TrainingSettings):
    """Stage 2 settings (see ``TrainingSettings`` for the shared ones).

    teacher: the stage-1 model directory (a ``VideoPrismClipModel``, e.g. ``run_stage1``'s output).
    mask_kind / mask_ratio: 'block' (BEVT) at 0.65 in the paper; 'tube' for the ablation.
    shuffle_tokens: shuffle the decoder input before adding position embeddings (paper: on).
    global_distillation: add the global branch (paper: on).
    token_loss_weight / global_loss_weight: loss weights (equal in the paper).
    decoder: shape of both decoders (4 layers at a narrower width in the paper).
    min_learning_rate: the cosine schedule's final learning rate (1e-5 in the paper).
    cache_teacher_outputs: keep the teacher's outputs per clip in memory (valid because clips are
        not augmented: the teacher sees the same intact clip every epoch).
    """

    teacher: str = field(metadata={"help": "stage-1 model directory (required unless in --config)"})
    mask_kind: str = field(
        default="block", metadata={"choices": ("block", "tube"), "help": "BEVT block or tube masking"}
    )
    mask_ratio: float = 0.65
    shuffle_tokens: bool = field(
        default=True, metadata={"help": "shuffle the visible tokens (--no-shuffle-tokens: the ablation)"}
    )
    global_distillation: bool = field(
        default=True, metadata={"help": "distil the global embedding too (--no-global-distillation: the ablation)"}
    )
    token_loss_weight: float = 1.0
    global_loss_weight: float = 1.0
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    min_learning_rate: float = field(default=1e-5, metadata={"help": "final learning rate of the cosine decay"})
    weight_decay: float = 0.05
    cache_teacher_outputs: bool = field(default=False, metadata={"help": "keep teacher outputs per clip in memory"})

    # caching the teacher's outputs changes nothing computed (clips are not augmented)
    RESUME_MAY_CHANGE = (*TrainingSettings.RESUME_MAY_CHANGE, "cache_teacher_outputs")

    def check(self) -> None:
        super().check()
        if not self.teacher:
            raise TrainConfigError("teacher (the stage-1 model directory) is required")
        if self.mask_kind not in MASK_KINDS:
            raise TrainConfigError(f"mask_kind must be one of {MASK_KINDS}, got {self.mask_kind!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise TrainConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.min_learning_rate <= self.learning_rate:
            raise TrainConfigError(f"min_learning_rate must be in [0, learning_rate], got {self.min_learning_rate}")
        if self.token_loss_weight < 0 or self.global_loss_weight < 0:
            raise TrainConfigError("loss weights must be >= 0")


class DistillationModel(nn.Module):
    """What stage 2 trains: the student encoder and the two distillation heads."""

    def __init__(
        self,
        student: VideoPrismVisionModel,
        token_head: TokenDistillationHead,
        global_head: GlobalDistillationHead | None,
    ):
        super().__init__()
        self.student = student
        self.token_head = token_head
        self.global_head = global_head

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        visible_positions: torch.Tensor,
        permutation: torch.Tensor,
        crop_temporal_positions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels [B, T, 3, H, W], visible_positions [B, K], permutation [B, T*N] ->
        (token predictions [B, T*N, D] in position order, global prediction [B, D] or None)."""
        frames = pixel_values_videos.shape[1]
        visible = encode_visible_tokens(self.student, pixel_values_videos, visible_positions, crop_temporal_positions)
        tokens = self.token_head(visible, visible_positions, frames, permutation)
        pooled = self.global_head(visible) if self.global_head is not None else None
        return tokens, pooled


def load_teacher(source: str) -> VideoPrismVideoModel:
    """The frozen stage-1 video tower (encoder, auxiliary layers, MAP head) of a video-text model."""
    path = Path(source)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a transformers model directory (no config.json)")
    clip = VideoPrismClipModel.from_pretrained(source, use_safetensors=True)
    teacher = clip.video_model
    teacher.requires_grad_(False)
    return teacher.eval()


class DistillationTask:
    """Stage 2 as a task for ``run_training``."""

    def __init__(self, config: Stage2Config, teacher: VideoPrismVideoModel):
        self.settings = config
        self.teacher = teacher
        vision_config = teacher.config
        student = copy.deepcopy(teacher.vision_model)
        student.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            token_head = TokenDistillationHead(vision_config, config.decoder, vision_config.hidden_size)
            global_head = (
                GlobalDistillationHead(vision_config, config.decoder, vision_config)
                if config.global_distillation
                else None
            )
        self.model = DistillationModel(student, token_head, global_head)
        frames = config.num_frames or vision_config.num_frames
        if frames > vision_config.num_frames:
            raise ValueError(
                f"num_frames {frames} exceeds the {vision_config.num_frames} frames the stage-1 model was built for "
                "(the decoder's temporal position table has that many rows)"
            )
        self.image_size = config.image_size or vision_config.image_size
        patch = vision_config.tubelet_size[1]
        if self.image_size != vision_config.image_size:
            raise ValueError(
                f"image_size {self.image_size} differs from the stage-1 model's {vision_config.image_size}; "
                "the decoder's spatial position table is built for the model's patch grid"
            )
        self.grid = (self.image_size // patch,) * 2
        self.datasets = [
            ClipDataset(m, frames, self.image_size, require_captions=False, cache_clips=config.cache_clips)
            for m in config.train_manifests
        ]
        self.batches = AlternatingBatches(
            [len(d) for d in self.datasets],
            config.batch_size,
            config.seed,
            names=[str(d.manifest) for d in self.datasets],
        )
        self._teacher_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def to(self, device) -> DistillationTask:
        self.teacher.to(device)
        return self

    def scheduler(self, optimizer):
        return warmup_cosine_decay(
            optimizer, self.settings.warmup_steps, self.settings.max_steps, self.settings.min_learning_rate
        )

    def data_state(self, step: int) -> dict:
        return {"next_step": step, "epochs": self.batches.epochs_done(step)}

    @torch.no_grad()
    def teacher_outputs(self, pixels: torch.Tensor, crop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Intact clip -> (teacher tokens [B, T*N, D], teacher global embedding [B, D])."""
        all_positions = torch.arange(self.grid[0] * self.grid[1], device=pixels.device).expand(pixels.shape[0], -1)
        tokens = encode_visible_tokens(self.teacher.vision_model, pixels, all_positions, crop)
        return tokens, pool_video_tokens(self.teacher, tokens)

    def _teacher_batch(self, dataset_index: int, rows: list[int], pixels: torch.Tensor, crop: bool):
        if not self.settings.cache_teacher_outputs:
            return self.teacher_outputs(pixels, crop)
        missing = [i for i, r in enumerate(rows) if (dataset_index, r) not in self._teacher_cache]
        if missing:
            tokens, pooled = self.teacher_outputs(pixels[missing], crop)
            for j, i in enumerate(missing):
                self._teacher_cache[(dataset_index, rows[i])] = (tokens[j].cpu(), pooled[j].cpu())
        cached = [self._teacher_cache[(dataset_index, r)] for r in rows]
        return (
            torch.stack([c[0] for c in cached]).to(pixels.device),
            torch.stack([c[1] for c in cached]).to(pixels.device),
        )

    def batch(self, step: int, accelerator=None) -> dict:
        """Pixels [B, T, 3, S, S], the mask [B, N], visible positions [B, K] and the decoder
        permutation [B, T*N] of ``step`` (all pure functions of the seed and the step)."""
        dataset_index, rows = self.batches.batch(step)
        rows = process_rows(rows, accelerator)
        dataset = self.datasets[dataset_index]
        process = accelerator.process_index if accelerator is not None else 0
        mask = make_mask(
            self.settings.mask_kind,
            len(rows),
            self.grid,
            self.settings.mask_ratio,
            rng=np.random.default_rng(step_seed(self.settings.seed, 2, step, process)),
        )
        length = dataset.num_frames * self.grid[0] * self.grid[1]
        permutation = shuffle_permutations(
            len(rows), length, self.settings.shuffle_tokens, torch_generator(self.settings.seed, 3, step, process)
        )
        return {
            "dataset_index": dataset_index,
            "rows": rows,
            "pixel_values_videos": dataset.pixels(rows),
            "mask": mask,
            "visible_positions": visible_indices(mask),
            "permutation": permutation,
            "crop_temporal_positions": dataset.is_image,
            "dataset": dataset.name,
        }

    def loss(self, model: nn.Module, step: int, accelerator) -> tuple[torch.Tensor, dict]:
        batch = self.batch(step, accelerator)
        device = accelerator.device
        pixels = batch["pixel_values_videos"].to(device)
        crop = batch["crop_temporal_positions"]
        teacher_tokens, teacher_global = self._teacher_batch(batch["dataset_index"], batch["rows"], pixels, crop)
        with accelerator.autocast():
            predicted_tokens, predicted_global = model(
                pixels, batch["visible_positions"].to(device), batch["permutation"].to(device), crop
            )
        token_loss = cosine_distance(predicted_tokens, teacher_tokens)
        loss = self.settings.token_loss_weight * token_loss
        values = {"dataset": batch["dataset"], "token_loss": float(token_loss.detach())}
        if predicted_global is not None:
            global_loss = cosine_distance(predicted_global, teacher_global)
            loss = loss + self.settings.global_loss_weight * global_loss
            values["global_loss"] = float(global_loss.detach())
        with torch.no_grad():
            distance = 1.0 - torch.nn.functional.cosine_similarity(
                predicted_tokens.float(), teacher_tokens.float(), dim=-1
            )
            frames = pixels.shape[1]
            masked = batch["mask"].to(device).repeat(1, frames)  # [B, T*N], position t*N + n
            values["masked_token_loss"] = float(distance[masked].mean()) if masked.any() else 0.0
            values["visible_token_loss"] = float(distance[~masked].mean())
        return loss, values

    def export(self, model: DistillationModel, out_dir: Path) -> None:
        model.student.save_pretrained(out_dir, safe_serialization=True)
        info = {"stage": "stage2", "teacher": self.settings.teacher, "config": config_to_dict(self.settings)}
        (out_dir / PRETRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def build_stage2(config: Stage2Config) -> DistillationTask:
    config.check()
    return DistillationTask(config, load_teacher(config.teacher))


def run_stage2(config: Stage2Config) -> Path:
    """Train stage 2 (resuming if ``output_dir`` has checkpoints); returns ``output_dir/model``."""
    keys = ("loss", "token_loss", "global_loss", "masked_token_loss")
    return run_training(config, lambda: build_stage2(config), "stage 2 (masked video modelling)", plot_keys=keys)
