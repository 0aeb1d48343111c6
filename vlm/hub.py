"""prism-vlm in the Hugging Face ecosystem: a ``PretrainedConfig``, a ``PreTrainedModel`` registered
with ``AutoConfig`` / ``AutoModel``, loading by Hub id, a model card, ``push_to_hub``.

    import vlm.hub                                   # registers "prism_vlm" with the Auto classes
    from transformers import AutoModel
    model = AutoModel.from_pretrained("user/my-glue")   # or a directory; offline from the Hub cache
    model.caption(clips=model.load_videos(["clip.mp4"]))
    model.save_pretrained("out/")                    # config.json, resampler.safetensors, README.md
    model.push_to_hub("user/my-glue")

What a glue directory holds: ``config.json`` (``PrismVlmConfig``: the encoder and LLM *by source*
-- Hub id or path, not copied -- the resampler's shape, the prompts, frames), ``resampler.safetensors``
(the only trained weights; ``llm_adapter.safetensors`` too with LoRA) and ``README.md`` (a model card
with the usage snippet and the scores of ``metrics.json`` when there is one). Directories saved
before ``config.json`` existed (``prism_vlm_config.json`` only, e.g. the shipped demo model) load the
same way; ``save_pretrained`` writes both files, so older readers keep working.

``PrismVlmForConditionalGeneration`` wraps :class:`vlm.model.VideoLanguageModel` (``.vlm``): its
``from_pretrained`` loads the glue's weights and the frozen encoder and LLM from their sources, and
every task method (``caption``, ``answer``, ``chat_stream``, ``score_answers``, ...) is the wrapped
model's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from vlm.model import CONFIG_FILE, GlueConfig, VideoLanguageModel
from vlm.processing import PrismVlmProcessor

HF_CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"  # scores a training or evaluation run left beside the glue; shown in the card
MODEL_TYPE = "prism_vlm"


class PrismVlmConfig(PretrainedConfig):
    """The glue's config (``vlm.model.GlueConfig``) as a transformers config: ``glue`` holds its
    dict (encoder_source, llm_source, num_frames, frame_size, resampler, prompts, lora)."""

    model_type = MODEL_TYPE

    def __init__(self, glue: dict | None = None, **kwargs):
        self.glue = dict(glue or {})
        super().__init__(**kwargs)

    def glue_config(self) -> GlueConfig:
        if not self.glue:
            raise ValueError("this PrismVlmConfig holds no glue config")
        return GlueConfig.from_dict(self.glue)

    @classmethod
    def from_glue_config(cls, glue: GlueConfig) -> PrismVlmConfig:
        return cls(glue=glue.to_dict())


def resolve_model_dir(source: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local glue directory for ``source``: the directory itself, or a Hub id's snapshot (downloaded,
    or taken from the Hub cache when offline, ``HF_HUB_OFFLINE=1``)."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; a prism-vlm glue is a directory")
        return path
    if str(source).count("/") != 1 or str(source).startswith((".", "/")):
        raise FileNotFoundError(f"no glue directory at {source} (and it is not a Hub id 'user/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), revision=revision, token=token))
    except Exception as error:  # huggingface_hub raises several types (offline, not found, auth)
        raise FileNotFoundError(
            f"no glue directory {source}, and the Hub id could not be fetched or found in the Hub cache "
            f"({type(error).__name__})"
        ) from error


class PrismVlmForConditionalGeneration(PreTrainedModel):
    """The glue as a ``PreTrainedModel``; see the module docstring. ``vlm``: the wrapped
    :class:`VideoLanguageModel` (encoder, resampler, LLM, tokenizer)."""

    config_class = PrismVlmConfig
    base_model_prefix = "prism_vlm"
    main_input_name = "pixel_values_videos"
    _supports_attention_backend = False

    def __init__(self, config: PrismVlmConfig, vlm: VideoLanguageModel | None = None):
        super().__init__(config)
        if vlm is None:
            raise ValueError("build PrismVlmForConditionalGeneration with from_pretrained, or wrap a VideoLanguageModel")
        self.vlm = vlm

    @classmethod
    def from_vlm(cls, vlm: VideoLanguageModel) -> PrismVlmForConditionalGeneration:
        return cls(PrismVlmConfig.from_glue_config(vlm.config), vlm)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, revision: str | None = None,
                        token: str | bool | None = None, **kwargs) -> PrismVlmForConditionalGeneration:
        """A saved glue from a directory or a Hub id (either format, see the module docstring).
        Keyword arguments go to :meth:`VideoLanguageModel.from_pretrained` (``device``, ``dtype``,
        ``encoder_source``, ``llm_source``, ``load_video_encoder`` ...); transformers' own loading
        options that do not apply here are ignored."""
        directory = resolve_model_dir(pretrained_model_name_or_path, revision=revision, token=token)
        known = {"encoder_source", "llm_source", "encoder", "llm", "tokenizer", "load_video_encoder", "device", "dtype"}
        if "torch_dtype" in kwargs and "dtype" not in kwargs:
            kwargs["dtype"] = kwargs["torch_dtype"]
        vlm = VideoLanguageModel.from_pretrained(directory, **{k: v for k, v in kwargs.items() if k in known})
        model = cls.from_vlm(vlm)
        model.name_or_path = str(pretrained_model_name_or_path)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> Path:
        """config.json (and prism_vlm_config.json), resampler.safetensors (+ LoRA adapter) and a model
        card README.md; the encoder and LLM are referenced by source, not copied."""
        return self.vlm.save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False, **kwargs) -> str:
        """Upload :meth:`save_pretrained`'s files (with this model's card) to the Hub repo ``repo_id``
        (created when missing). Returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token if isinstance(token, str) else None)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload prism-vlm glue",
                                       revision=revision, create_pr=create_pr)
        return str(getattr(commit, "commit_url", commit))

    @property
    def processor(self) -> PrismVlmProcessor:
        """The wrapped glue's :class:`vlm.processing.PrismVlmProcessor`."""
        return self.vlm.processor

    def forward(self, *args, **kwargs):
        """The wrapped model's training loss (see :meth:`VideoLanguageModel.forward`)."""
        return self.vlm(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED:
                return getattr(super().__getattr__("vlm"), name)
            raise


_DELEGATED = frozenset({
    "caption", "answer", "score_answers", "chat", "chat_stream", "chat_stream_batch", "caption_videos", "ask_video",
    "load_videos", "get_video_features", "merge_video_and_text", "qa_prompt", "tokenizer", "encoder", "llm", "resampler",
})


def write_hub_files(vlm: VideoLanguageModel, directory: str | os.PathLike) -> None:
    """Beside a saved glue's own files: ``config.json`` for the Auto classes and the model card (with
    ``metrics.json``'s scores if the directory has one). Called by :meth:`VideoLanguageModel.save_pretrained`."""
    PrismVlmConfig.from_glue_config(vlm.config).save_pretrained(directory)
    (Path(directory) / CARD_FILE).write_text(model_card(vlm, directory), encoding="utf-8")


def model_card(vlm: VideoLanguageModel, directory: str | os.PathLike) -> str:
    """A README.md for a glue directory: what it is, its parts, a usage snippet, its scores."""
    config = vlm.config
    metrics_path = Path(directory) / METRICS_FILE
    scores = ""
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            scores = "\n## Scores\n\nFrom `metrics.json`:\n\n```json\n" + json.dumps(metrics, indent=2)[:4000] + "\n```\n"
        except (OSError, ValueError):
            scores = ""
    resampler = config.resampler
    return f"""---
library_name: prism-vlm
tags: [video-text-to-text, videoprism, perceiver-resampler]
---

# prism-vlm glue

A Perceiver Resampler ({resampler.depth} layer, {resampler.num_latents} latents, {resampler.num_heads} heads) that turns
frozen VideoPrism video tokens (width {resampler.video_width}) into a soft prompt for a frozen LLM (width
{resampler.llm_width}), as in the VideoPrism paper's appendix G. Only the resampler{' and a LoRA adapter' if config.lora else ''} is stored here.

- Video encoder: `{config.encoder_source}` ({config.num_frames} frames of {config.frame_size} px)
- LLM: `{config.llm_source}`

```python
import vlm.hub  # registers prism_vlm with AutoConfig / AutoModel
from transformers import AutoModel

model = AutoModel.from_pretrained("THIS_REPO_OR_DIRECTORY")
clips = model.load_videos(["clip.mp4"])
print(model.caption(clips=clips)[0])
print(model.chat([{{"role": "user", "content": "What happens in the video?"}}], clips=clips))
```

Or `prism-vlm chat clip.mp4 --model THIS_REPO_OR_DIRECTORY` (the prism-vlm command line).
{scores}"""


def upgrade_directory(directory: str | os.PathLike) -> Path:
    """Add ``config.json`` (and the card, unless one exists) to a glue directory saved before they
    existed; nothing else changes."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a prism-vlm glue model (no {CONFIG_FILE})")
    glue = GlueConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")))
    PrismVlmConfig.from_glue_config(glue).save_pretrained(directory)
    return directory


AutoConfig.register(MODEL_TYPE, PrismVlmConfig, exist_ok=True)
AutoModel.register(PrismVlmConfig, PrismVlmForConditionalGeneration, exist_ok=True)
