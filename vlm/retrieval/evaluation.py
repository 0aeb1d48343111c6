"""Zero-shot retrieval and classification evaluation over manifests (paper section 3.2).

Inputs (JSONL; video paths relative to the file's folder; optional "id", "start", "end" seconds):

* retrieval: ``{"video", "caption": text | [texts]}`` (or ``"captions"``) -- one row per clip,
  every caption a query (MSRVTT 1k-A has one per clip, VATEX ten);
* classification: ``{"video", "label"}`` with the label set given separately (or taken from the rows);
* multi-choice (NExT-QA ATP-Hard, Charades-STA as in appendix F.2): ``{"video", "candidates":
  [texts], "answer": index | text}``; the clip picks the candidate text it is most similar to.

Clips that cannot be decoded are left out (with their captions or items) and listed in the
results' ``errors``; nothing else about them changes the scores of the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from encoder.common.errors import PrismVlmError
from encoder.common.jsonl import iter_jsonl_strict
from encoder.video.clips import Clip, iter_decoded_batches
from vlm.retrieval.metrics import retrieval_metrics, top_k_accuracy
from vlm.retrieval.video_text_model import VideoTextModel
from vlm.retrieval.zero_shot import (
    DEFAULT_TEMPLATES,
    TextListError,
    check_labels,
    classify_embeddings,
    label_embeddings,
)


class RetrievalManifestError(PrismVlmError, ValueError):
    """A retrieval or zero-shot evaluation manifest that cannot be used: a bad row (names the file and
    line), no rows, or no clip that decodes."""


@dataclass
class CaptionedClip:
    clip: Clip
    captions: list[str]


@dataclass
class LabelledClip:
    """A classification item (``label``) or a multi-choice item (``candidates`` and ``answer`` index)."""

    clip: Clip
    label: str | None = None
    candidates: list[str] = field(default_factory=list)
    answer: int | None = None


def _rows(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such manifest: {path}")
    for number, row in iter_jsonl_strict(path, RetrievalManifestError):
        if not isinstance(row.get("video"), str) or not row["video"].strip():
            raise RetrievalManifestError(f"{path}:{number}: expected a JSON object with a non-empty string 'video'")
        yield number, row, _clip(path, number, row)


def _clip(path: Path, number: int, row: dict) -> Clip:
    for key in ("start", "end"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RetrievalManifestError(f"{path}:{number}: '{key}' must be a number of seconds, got {value!r}")
    video = Path(row["video"])
    source = video if video.is_absolute() else path.parent / video
    return Clip(str(row.get("id", f"{row['video']}#{number}")), str(source), row.get("start"), row.get("end"))


def _texts(value, path, number: int, key: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise RetrievalManifestError(f"{path}:{number}: '{key}' must be a non-empty text or list of non-empty texts")
    return [t.strip() for t in texts]


def read_captioned_clips(path: str | os.PathLike) -> list[CaptionedClip]:
    """Rows ``{"video", "caption" | "captions"}`` -> clips with their captions."""
    items = []
    for number, row, clip in _rows(path):
        key = "caption" if "caption" in row else "captions"
        items.append(CaptionedClip(clip, _texts(row.get(key), path, number, key)))
    if not items:
        raise RetrievalManifestError(f"{path}: no rows")
    return items


def read_labelled_clips(path: str | os.PathLike) -> list[LabelledClip]:
    """Rows ``{"video", "label"}`` or ``{"video", "candidates", "answer"}`` -> items."""
    items = []
    for number, row, clip in _rows(path):
        if "candidates" in row:
            candidates = _texts(row["candidates"], path, number, "candidates")
            answer = row.get("answer")
            if isinstance(answer, str) and answer.strip() in candidates:
                answer = candidates.index(answer.strip())
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(candidates):
                raise RetrievalManifestError(
                    f"{path}:{number}: 'answer' must be a candidate's index or text, got {answer!r}"
                )
            items.append(LabelledClip(clip, candidates=candidates, answer=answer))
        elif isinstance(row.get("label"), str) and row["label"].strip():
            items.append(LabelledClip(clip, label=row["label"].strip()))
        else:
            raise RetrievalManifestError(
                f"{path}:{number}: expected a non-empty string 'label', or 'candidates' and 'answer'"
            )
    if not items:
        raise RetrievalManifestError(f"{path}: no rows")
    return items


def embed_clip_list(
    model: VideoTextModel, clips: Sequence[Clip], batch_size: int = 8, num_workers: int = 2, progress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Video embeddings of ``clips``: ({clip id: [D]}, {clip id: error} for clips that failed)."""
    from tqdm.auto import tqdm

    embeddings, errors = {}, {}
    unique = list({clip.id: clip for clip in clips}.values())
    with tqdm(total=len(unique), unit="clip", desc="embed", disable=not progress) as bar:
        for items in iter_decoded_batches(unique, model.num_frames, model.frame_size, batch_size, num_workers):
            good = [(clip, frames) for clip, frames, error in items if error is None]
            errors.update({clip.id: error for clip, _, error in items if error is not None})
            if good:
                vectors = model.embed_clips(np.stack([frames for _, frames in good]))
                embeddings.update({clip.id: vector for (clip, _), vector in zip(good, vectors)})
            bar.update(len(items))
    return embeddings, errors


def evaluate_retrieval(
    model: VideoTextModel,
    items: Sequence[CaptionedClip],
    batch_size: int = 8,
    num_workers: int = 2,
    progress: bool = True,
) -> dict:
    """R@1/5/10, median and mean rank, text->video and video->text, over the decodable clips."""
    videos, errors = embed_clip_list(model, [item.clip for item in items], batch_size, num_workers, progress)
    kept = [item for item in items if item.clip.id in videos]
    if not kept:
        raise RetrievalManifestError("no clip could be decoded; see the errors")
    texts = [caption for item in kept for caption in item.captions]
    owner = [number for number, item in enumerate(kept) for _ in item.captions]
    video_matrix = torch.stack([videos[item.clip.id] for item in kept])  # [V, D]
    similarity = model.embed_texts(texts) @ video_matrix.T  # [T, V]
    return {
        "clips": len(kept),
        "captions": len(texts),
        **retrieval_metrics(similarity, owner),
        "chance_R@1": 100.0 / len(kept),
        "errors": [
            {"video": item.clip.source, "error": errors[item.clip.id]} for item in items if item.clip.id in errors
        ],
    }


def evaluate_zero_shot(
    model: VideoTextModel,
    items: Sequence[LabelledClip],
    labels: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 8,
    num_workers: int = 2,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Top-1 / top-5 over the label set (``labels``, or every label the rows use) for
    classification items, accuracy for multi-choice items. Returns (results, one record per item)."""
    videos, errors = embed_clip_list(model, [item.clip for item in items], batch_size, num_workers, progress)
    classified = [item for item in items if item.label is not None]
    choices = [item for item in items if item.label is None]
    results: dict = {"clips": len(videos), "templates": list(templates)}
    records = []
    if classified:
        label_set = check_labels(labels) if labels else sorted({item.label for item in classified})
        unknown = sorted({item.label for item in classified} - set(label_set))
        if unknown:
            raise TextListError(f"labels used by the data but not in the label set: {unknown[:5]}")
        kept = [item for item in classified if item.clip.id in videos]
        if kept:
            label_vectors = label_embeddings(model, label_set, templates)
            probabilities = classify_embeddings(model, torch.stack([videos[i.clip.id] for i in kept]), label_vectors)
            targets = [label_set.index(item.label) for item in kept]
            results["classification"] = {
                "items": len(kept),
                "labels": len(label_set),
                **top_k_accuracy(probabilities, targets),
                "chance_top1": 100.0 / len(label_set),
            }
            for item, row in zip(kept, probabilities):
                predicted = label_set[int(row.argmax())]
                records.append(
                    {
                        "video": item.clip.source,
                        "label": item.label,
                        "prediction": predicted,
                        "probability": float(row.max()),
                        "correct": predicted == item.label,
                    }
                )
    if choices:
        kept = [item for item in choices if item.clip.id in videos]
        correct = 0
        for item in kept:
            scores = model.embed_texts(item.candidates) @ videos[item.clip.id]
            predicted = int(scores.argmax())
            correct += predicted == item.answer
            records.append(
                {
                    "video": item.clip.source,
                    "candidates": item.candidates,
                    "answer": item.answer,
                    "prediction": predicted,
                    "correct": predicted == item.answer,
                }
            )
        if kept:
            results["multi_choice"] = {
                "items": len(kept),
                "accuracy": 100.0 * correct / len(kept),
                "chance": 100.0 * sum(1 / len(item.candidates) for item in kept) / len(kept),
            }
    results["errors"] = [
        {"video": item.clip.source, "error": errors[item.clip.id]} for item in items if item.clip.id in errors
    ]
    return results, records


def retrieval_markdown(results: dict) -> str:
    title = (
        f"Retrieval over {results['clips']} clips and {results['captions']} captions "
        f"(chance R@1 {results['chance_R@1']:.2f}%)"
    )
    lines = [title, "", "| direction | R@1 | R@5 | R@10 | median rank | mean rank |", "|---|---:|---:|---:|---:|---:|"]
    for direction in ("text_to_video", "video_to_text"):
        m = results[direction]
        lines.append(
            f"| {direction.replace('_', ' ')} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | "
            f"{m['median_rank']:g} | {m['mean_rank']:.1f} |"
        )
    if results["errors"]:
        lines += ["", f"{len(results['errors'])} clips could not be decoded and were left out."]
    return "\n".join(lines) + "\n"


def zero_shot_markdown(results: dict) -> str:
    lines = []
    if "classification" in results:
        c = results["classification"]
        lines.append(
            f"Classification: {c['items']} clips, {c['labels']} labels: top-1 {c['top1']:.1f}%, "
            f"top-5 {c['top5']:.1f}% (chance top-1 {c['chance_top1']:.1f}%)"
        )
    if "multi_choice" in results:
        m = results["multi_choice"]
        lines.append(f"Multi-choice: {m['items']} items: accuracy {m['accuracy']:.1f}% (chance {m['chance']:.1f}%)")
    if results["errors"]:
        lines.append(f"{len(results['errors'])} clips could not be decoded and were left out.")
    return "\n".join(lines) + "\n"
