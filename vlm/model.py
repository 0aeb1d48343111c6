"""The glue model: frozen VideoPrism encoder + Perceiver Resampler + frozen causal LLM, as one
transformers ``PreTrainedModel`` (like ``LlavaForConditionalGeneration``).

:meth:`PrismVlmForConditionalGeneration.get_video_features` turns pixels (or cached encoder tokens)
into the soft prompt; :meth:`~PrismVlmForConditionalGeneration.get_prompt_embeddings` places it among
the embedded text tokens of a batch (left-padded by :func:`vlm.inference.generation.left_pad`);
``forward`` is the autoregressive LM loss that trains the resampler. Tasks (captions, answers,
candidate scores, chat) live in :mod:`vlm.inference.assistant`.

Only the resampler is owned and saved; the encoder and LLM are referenced by their sources::

    DIR/config.json               PrismVlmConfig (vlm.configuration): sources, resampler, prompts, frames, LoRA
    DIR/resampler.safetensors     resampler weights
    DIR/llm_adapter.safetensors   only with a LoRA adapter on the LLM (config key "lora")
    DIR/README.md                 a model card (vlm.hub)

Directories saved before ``config.json`` held everything (``prism_vlm_config.json``) load the same way.
Importing this module registers ``prism_vlm`` with ``AutoConfig`` / ``AutoModel``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from encoder.common.errors import PrismVlmError
from encoder.common.extras import require
from vlm.chat_template import IGNORE_INDEX, ChatIds
from vlm.configuration import (  # noqa: F401  (re-exported: the glue's config and file names)
    CONFIG_FILE,
    LEGACY_CONFIG_FILE,
    MODEL_TYPE,
    GlueConfig,
    PrismVlmConfig,
    read_config,
)
from vlm.hub import DEFAULT_MODEL_ENV, default_model_dir, resolve_relative_source, write_model_card  # noqa: F401
from vlm.inference.generation import MergedInputs, accepts_logits_to_keep, left_pad
from vlm.llm import check_llm_accepts_embeddings, llm_hidden_size, load_llm
from vlm.prompts import PromptConfig
from vlm.resampler import PerceiverResampler, ResamplerConfig

WEIGHTS_FILE = "resampler.safetensors"
ADAPTER_FILE = "llm_adapter.safetensors"


class ResamplerWidthMismatchError(PrismVlmError, ValueError):
    """The resampler's widths do not match the encoder (keys/values) or the LLM (output)."""


class MissingVideoInputError(PrismVlmError, ValueError):
    """Neither (or both) of clips / video_tokens given, or pixels given to a model without an encoder."""


class NoDefaultModelError(PrismVlmError, FileNotFoundError):
    """No --model given and no default glue model is installed."""


class PrismVlmForConditionalGeneration(PreTrainedModel):
    """Frozen encoder -> trainable resampler -> frozen LLM, with the LLM's tokenizer.

    encoder: a ``VideoPrismVisionModel`` or None (then only cached encoder tokens can be used).
    """

    config_class = PrismVlmConfig
    base_model_prefix = "prism_vlm"
    main_input_name = "pixel_values_videos"
    _supports_attention_backend = False

    def __init__(
        self,
        config: PrismVlmConfig,
        llm: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        encoder: nn.Module | None = None,
        resampler: PerceiverResampler | None = None,
    ):
        if llm is None or tokenizer is None:
            raise ValueError(
                "a glue needs its LLM and tokenizer: use from_pretrained(DIR) or build(llm, tokenizer, ...)"
            )
        super().__init__(config)
        check_llm_accepts_embeddings(llm)
        if config.resampler.llm_width != llm_hidden_size(llm):
            raise ResamplerWidthMismatchError(
                f"the resampler outputs width {config.resampler.llm_width} but the LLM "
                f"({config.llm_source or type(llm).__name__}) has hidden size {llm_hidden_size(llm)}"
            )
        if encoder is not None and config.resampler.video_width != encoder.config.hidden_size:
            raise ResamplerWidthMismatchError(
                f"the resampler reads video tokens of width {config.resampler.video_width} but the encoder "
                f"({config.encoder_source or type(encoder).__name__}) has width {encoder.config.hidden_size}"
            )
        if resampler is not None and resampler.config != config.resampler:
            raise ValueError("the resampler's config differs from config.resampler")
        self.encoder, self.llm, self.tokenizer = encoder, llm, tokenizer
        self.resampler = resampler if resampler is not None else PerceiverResampler(config.resampler)
        self.resampler.to(device=self.device)
        for frozen in (self.llm, self.encoder):
            if frozen is not None:
                frozen.requires_grad_(False)
                frozen.eval()

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
    ) -> PrismVlmForConditionalGeneration:
        """A new glue with a freshly initialised resampler sized from the encoder and the LLM. Sources default
        to the ``prism_source`` attributes set by the loaders; ``video_width`` is needed only without an encoder."""
        if encoder is None and video_width is None:
            raise ValueError("give an encoder or video_width")
        encoder_config = getattr(encoder, "config", None)
        config = PrismVlmConfig(
            resampler=ResamplerConfig(
                video_width=video_width or encoder_config.hidden_size,
                llm_width=llm_hidden_size(llm),
                num_latents=num_latents,
                depth=depth,
                num_heads=num_heads,
                output_norm=output_norm,
            ),
            encoder_source=encoder_source or getattr(encoder, "prism_source", None),
            llm_source=llm_source or getattr(llm, "prism_source", None),
            num_frames=num_frames or int(getattr(encoder_config, "num_frames", 16)),
            frame_size=frame_size or int(getattr(encoder_config, "image_size", 288)),
            prompts=prompts or PromptConfig(),
        )
        return cls(config, llm, tokenizer, encoder=encoder)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        encoder_source: str | None = None,
        llm_source: str | None = None,
        encoder: nn.Module | None = None,
        llm: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        load_video_encoder: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        **unused,
    ) -> PrismVlmForConditionalGeneration:
        """A saved glue from a directory or a Hub id: its resampler (and LoRA adapter) from the directory, the
        frozen encoder and LLM from their sources (``encoder_source`` / ``llm_source`` override them; already
        loaded ``encoder`` / ``llm`` + ``tokenizer`` are used as given). ``load_video_encoder=False``: cached
        tokens only. ``dtype`` applies to the encoder and LLM; the resampler stays float32. transformers'
        own loading options that do not apply here are ignored."""
        from safetensors.torch import load_file

        from encoder.videoprism.loading import load_encoder
        from vlm.hub import resolve_model_dir

        directory = resolve_model_dir(pretrained_model_name_or_path, revision=revision, token=token)
        dtype = dtype if dtype is not None else unused.get("torch_dtype")
        config = read_config(directory)
        config.encoder_source = (
            os.fspath(encoder_source) if encoder_source else resolve_relative_source(directory, config.encoder_source)
        )
        config.llm_source = (
            os.fspath(llm_source) if llm_source else resolve_relative_source(directory, config.llm_source)
        )
        if llm is None:
            if config.llm_source is None:
                raise PrismVlmError(f"{directory}/{CONFIG_FILE} names no LLM source; pass llm_source=")
            llm, loaded_tokenizer = load_llm(config.llm_source, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with an already loaded llm")
        if encoder is None and load_video_encoder and config.encoder_source is not None:
            encoder = load_encoder(config.encoder_source, dtype=dtype, device=device)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise PrismVlmError(f"no resampler weights at {weights_path}")
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
        lora, config.lora = config.lora, None
        model = cls(config, llm, tokenizer, encoder=encoder, resampler=resampler)
        if lora is not None:
            adapter_path = directory / ADAPTER_FILE
            if not adapter_path.is_file():
                raise PrismVlmError(f"{CONFIG_FILE} names a LoRA adapter but {adapter_path} is missing")
            model.add_lora(lora)
            model.load_lora_state_dict(load_file(str(adapter_path)), source=str(adapter_path))
            model.llm.requires_grad_(False)
            model.llm.eval()
        model.name_or_path = str(pretrained_model_name_or_path)
        return model.to(device) if device is not None else model

    def save_pretrained(self, save_directory: str | os.PathLike, **unused) -> Path:
        """Write only what the glue owns: config.json, resampler.safetensors (llm_adapter.safetensors with
        LoRA) and a README.md model card; the encoder and LLM are referenced by source, not copied."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        (directory / LEGACY_CONFIG_FILE).unlink(missing_ok=True)  # an older save's would be read first
        state = {name: t.detach().contiguous().cpu() for name, t in self.resampler.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        if self.config.lora is not None:
            save_file(self.lora_state_dict(), str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        else:
            (directory / ADAPTER_FILE).unlink(missing_ok=True)  # a stale adapter would be loaded otherwise
        write_model_card(self.config, directory)
        return directory

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload :meth:`save_pretrained`'s files to the Hub repo ``repo_id`` (:func:`vlm.hub.push_directory`)."""
        import tempfile

        from vlm.hub import push_directory

        with tempfile.TemporaryDirectory() as folder:
            return push_directory(self.save_pretrained(folder), repo_id, **kwargs)

    def add_lora(self, lora: dict) -> None:
        """Inject a LoRA adapter (``peft.LoraConfig`` arguments, e.g. ``{"r": 8, "target_modules": ["q_proj"]}``)
        into the LLM in place; only the adapter's weights require grad."""
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

        return {name: t.detach().contiguous().cpu() for name, t in get_peft_model_state_dict(self.llm).items()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Load LoRA adapter tensors saved by :meth:`lora_state_dict`; every tensor must match."""
        require("peft", "train", "LoRA adapters")
        from peft import set_peft_model_state_dict

        expected = {n: tuple(t.shape) for n, t in self.lora_state_dict().items()}
        found = {n: tuple(t.shape) for n, t in state.items()}
        if expected != found:
            bad = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
            raise PrismVlmError(f"{source} does not match the LoRA config: tensors {bad[:4]} differ")
        unexpected = getattr(set_peft_model_state_dict(self.llm, state), "unexpected_keys", [])
        if unexpected:
            raise PrismVlmError(f"{source}: tensors {unexpected[:4]} were not loaded into the LLM")

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_video_features(
        self, clips: torch.Tensor | np.ndarray | None = None, video_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Soft prompt of a batch of videos: clips [B, T, H, W, 3] float RGB in [0, 1] (encoded by the frozen
        encoder) or cached encoder tokens video_tokens [B, M, D] -> [B, L, H_llm] in the LLM's embedding dtype."""
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
        if video_tokens.ndim != 3:
            raise ValueError(f"video_tokens must be batched [B, M, D], got {tuple(video_tokens.shape)}")
        return self.resampler(video_tokens).to(self.get_input_embeddings().weight.dtype)

    def get_prompt_embeddings(
        self, video_features: torch.Tensor, prefix_ids: Sequence[Sequence[int]], suffix_ids: Sequence[Sequence[int]]
    ) -> MergedInputs:
        """The LLM input of B requests: row b = [pads] [prefix_ids[b]] [video_features[b]] [suffix_ids[b]].

        video_features: [B, L, H]; prefix_ids (e.g. BOS, a chat header) and suffix_ids (the prompt text): B
        token-id lists each. Returns inputs_embeds [B, S, H] with its mask and positions, left-padded."""
        batch = video_features.shape[0]
        if len(prefix_ids) != batch or len(suffix_ids) != batch:
            raise ValueError(f"need {batch} prefix and suffix id lists, got {len(prefix_ids)} and {len(suffix_ids)}")
        embedding, dtype, device = self.get_input_embeddings(), video_features.dtype, video_features.device
        rows = []
        for features, prefix, suffix in zip(video_features, prefix_ids, suffix_ids):
            pieces = [
                embedding(torch.tensor(list(ids), device=device, dtype=torch.long)).to(dtype)
                for ids in (prefix, suffix)
            ]
            rows.append(torch.cat([pieces[0], features, pieces[1]], dim=0))
        return left_pad(rows)

    def training_inputs(
        self, video_features: torch.Tensor, texts: Sequence[ChatIds]
    ) -> tuple[MergedInputs, torch.Tensor]:
        """LLM inputs and labels for the LM loss: video_features [B, L, H]; texts: B tokenised examples
        (``processor.training_texts``). Returns (inputs [B, S, ...], labels [B, S]): at position p the id of the
        token at p + 1 where that token is labelled (a target, EOS or assistant token), else IGNORE_INDEX."""
        if len(texts) != video_features.shape[0]:
            raise ValueError(
                f"need one training example per video: {video_features.shape[0]} videos, {len(texts)} examples"
            )
        if any(all(label == IGNORE_INDEX for label in text.labels) for text in texts):
            raise ValueError("a training example has no labelled token")
        inputs = self.get_prompt_embeddings(
            video_features, [t.prefix_ids for t in texts], [t.suffix_ids for t in texts]
        )
        length = inputs.inputs_embeds.shape[1]
        labels = torch.full((len(texts), length), IGNORE_INDEX, dtype=torch.long)
        for row, text in enumerate(texts):
            start = length - len(text.suffix_ids) - 1  # suffix token i is predicted by the logit before it
            labels[row, start : length - 1] = torch.tensor(text.labels)
        return inputs, labels.to(video_features.device)

    def example_losses(
        self,
        texts: Sequence[ChatIds],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over each example's labelled tokens: [B] float32. Logits are computed
        only at the positions some row has a label for (prompts and user turns need none)."""
        inputs, labels = self.training_inputs(self.get_video_features(clips, video_tokens), texts)
        columns = (labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # [C]
        labels = labels[:, columns]  # [B, C]
        kwargs = {"logits_to_keep": columns} if accepts_logits_to_keep(self.llm) else {}
        logits = self.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            **kwargs,
        ).logits
        logits = logits if kwargs else logits[:, columns]  # [B, C, V]
        token_losses = nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(labels.shape)
        return token_losses.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """The training loss, a scalar: the mean over examples of :meth:`example_losses` (same arguments), so
        a batch split into micro-batches or processes gives the same loss."""
        return self.example_losses(*args, **kwargs).mean()


VideoLanguageModel = PrismVlmForConditionalGeneration  # the name older callers use


def load_model(
    directory: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs
) -> PrismVlmForConditionalGeneration:
    """A saved glue (a directory, or a Hub id such as "user/glue", fetched or taken from the Hub cache), or the
    default one (:func:`default_model_dir`) when ``directory`` is None."""
    if directory is None:
        directory = default_model_dir()
        if not any((directory / name).is_file() for name in (CONFIG_FILE, LEGACY_CONFIG_FILE)):
            raise NoDefaultModelError(
                f"no default model is installed (looked for {directory / CONFIG_FILE}; set ${DEFAULT_MODEL_ENV} "
                "to override); pass --model DIR with a saved prism-vlm glue model"
            )
    return PrismVlmForConditionalGeneration.from_pretrained(directory, device=device, **kwargs)


AutoConfig.register(MODEL_TYPE, PrismVlmConfig, exist_ok=True)
AutoModel.register(PrismVlmConfig, PrismVlmForConditionalGeneration, exist_ok=True)
