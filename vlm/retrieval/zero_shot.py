"""Zero-shot classification as text retrieval (paper section 3.2 and appendix F.1).

Each label becomes text through prompt templates ("a video of {}."); with several templates its
embedding is the normalised mean of the templates' normalised embeddings (CLIP's prompt
ensembling; the paper uses CLIP's prompts). A clip's label probabilities are the softmax of its
cosine similarities to the label embeddings at the model's temperature.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from encoder.common.errors import PrismVlmError
from vlm.retrieval.video_text_model import VideoTextModel

# The official VideoPrism video-text demo's template.
DEFAULT_TEMPLATES = ("a video of {}.",)

# CLIP's prompt templates for Kinetics-700 (openai/CLIP, data/prompts.md), which the paper's
# appendix F.1 says it used for zero-shot classification.
CLIP_KINETICS_TEMPLATES = tuple(
    f"{start} of {middle}{{}}."
    for start in ("a photo", "a video", "a example", "a demonstration")
    for middle in (
        "",
        "a person ",
        "a person using ",
        "a person doing ",
        "a person during ",
        "a person performing ",
        "a person practicing ",
    )
)

BUILTIN_TEMPLATES = {"default": DEFAULT_TEMPLATES, "clip-kinetics": CLIP_KINETICS_TEMPLATES}
MAX_LABELS = 10_000
MAX_TEMPLATES = 1_000


class TextListError(PrismVlmError, ValueError):
    """Labels, templates or texts to rank (a file or a list) that cannot be used: none, too many, empty,
    duplicated, not UTF-8, or a template without exactly one ``{}``."""


def read_lines(path: str | os.PathLike, what: str, limit: int) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (labels, templates); TextListError when none or too many."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise TextListError(f"{path}: not UTF-8 text") from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise TextListError(f"{path}: no {what} (one per line)")
    if len(lines) > limit:
        raise TextListError(f"{path}: {len(lines)} {what}, more than {limit}")
    return lines


def resolve_templates(spec: str | os.PathLike | Sequence[str] | None) -> tuple[str, ...]:
    """None / a built-in name ("default", "clip-kinetics") / a file (one template per line) / a
    list of templates -> templates, each holding one ``{}`` for the label."""
    if spec is None:
        templates: Sequence[str] = DEFAULT_TEMPLATES
    elif isinstance(spec, (str, os.PathLike)) and str(spec) in BUILTIN_TEMPLATES:
        templates = BUILTIN_TEMPLATES[str(spec)]
    elif isinstance(spec, (str, os.PathLike)):
        templates = read_lines(spec, "templates", MAX_TEMPLATES)
    else:
        templates = list(spec)
    if not templates:
        raise TextListError("no templates")
    for template in templates:
        if template.count("{}") != 1:
            raise TextListError(f"a template must hold exactly one '{{}}' for the label, got {template!r}")
    return tuple(templates)


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels as given, stripped; TextListError for none, empty, duplicated or too many."""
    labels = [str(label).strip() for label in labels]
    if not labels:
        raise TextListError("no labels")
    if len(labels) > MAX_LABELS:
        raise TextListError(f"{len(labels)} labels, more than {MAX_LABELS}")
    if any(not label for label in labels):
        raise TextListError("a label is empty")
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise TextListError(f"labels appear more than once: {duplicated[:5]}")
    return labels


def label_embeddings(
    model: VideoTextModel, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> torch.Tensor:
    """labels (L) x templates (P) -> ensembled, L2-normalised label embeddings [L, D]."""
    labels = check_labels(labels)
    texts = [template.format(label) for label in labels for template in templates]
    embeddings = model.embed_texts(texts).view(len(labels), len(templates), -1)  # [L, P, D]
    return torch.nn.functional.normalize(embeddings.mean(dim=1), dim=-1)


def classify_embeddings(
    model: VideoTextModel, video_embeddings: torch.Tensor, label_vectors: torch.Tensor
) -> torch.Tensor:
    """video embeddings [B, D] and label embeddings [L, D] -> label probabilities [B, L]."""
    return model.probabilities(video_embeddings @ label_vectors.T)
