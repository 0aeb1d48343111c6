"""Converters from public annotation formats to prism-vlm's JSONL manifests.

``convert_annotations(FORMAT, SRC, OUT)`` reads a dataset folder in the layout its release uses
(below) and writes, per split found:

* QA formats: ``OUT/{split}.jsonl`` with ``{"video", "question", "answer", "type",
  "question_id"}`` (plus ``"answers"`` where a dataset has extra accepted answers), the input of
  ``prism-vlm eval-qa``; and ``OUT/{split}_videos.jsonl`` listing the split's videos once;
* conversation formats (instruction tuning): ``OUT/train_conversations.jsonl`` with ``{"video", "id",
  "conversations": [{"from": "human"|"gpt", "value"}, ...]}`` (LLaVA's layout, ``"<video>\n"`` opening
  the first human turn), the input of ``prism-vlm train``;
* retrieval and classification formats: ``msrvtt-1k`` writes ``OUT/test_1k_retrieval.jsonl`` with
  ``{"video", "id", "caption"}`` (``prism-vlm eval-retrieval``); ``kinetics400`` writes
  ``OUT/{split}_labelled.jsonl`` with ``{"video", "id", "label"}`` and ``OUT/labels.txt``
  (``prism-vlm eval-zeroshot --labels OUT/labels.txt``);
* caption formats: ``OUT/{split}_videos.jsonl`` with ``{"video", "id"}`` (plus ``"start"``,
  ``"end"`` for clips cut from longer videos), the input of ``prism-vlm caption --videos``; and
  ``OUT/{split}_refs.jsonl`` with ``{"video": id, "captions": [...]}``, the references of
  ``prism-vlm eval-caption``.

Video paths are written relative to OUT (so OUT can move with the data). Annotation files are
required; videos need not be downloaded yet (a missing video shows up later, as an unreadable clip).

Expected layouts (SRC/...):

| format | annotations | videos |
| --- | --- | --- |
| ``msrvtt-qa`` | ``{train,val,test}_qa.json`` (Xu et al. 2017 release) | ``video/video{N}.mp4`` |
| ``msvd-qa`` | ``{train,val,test}_qa.json`` | ``video/vid{N}.avi``, or ``YouTubeClips/{name}.avi`` named by ``youtube_mapping.txt`` |
| ``nextqa`` | ``{train,val,test}.csv`` (open-ended, NExT-OE), ``map_vid_vidorID.json``, optional ``add_reference_answer_{val,test}.json`` | ``NExTVideo/{dir}/{id}.mp4`` as mapped |
| ``msrvtt`` | ``train_val_videodatainfo.json``, ``test_videodatainfo.json`` (MSR-VTT 2016) | ``TrainValVideo/video{N}.mp4``, ``TestVideo/video{N}.mp4`` (or all in ``videos/all/``) |
| ``vatex`` | ``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``, ``vatex_public_test_english_v1.1.json`` | ``videos/{videoID}.mp4`` (the 10 s clips) |
| ``videochatgpt`` | ``VideoInstruct100K.json`` (or ``VideoInstruct_Dataset.json``): a list of ``{"video_id", "q", "a"}`` (VideoChatGPT-100K); one conversation per question | ``videos/{video_id}.{mp4,mkv,webm}`` (ActivityNet) |
| ``llava-video`` | ``*.json`` files in SRC and its subset folders (LLaVA-Video-178K: ``0_30_s_academic_v0_1/0_30_s_academic_v0_1_cap_processed.json``, ``..._oe_qa_processed.json``, ...): lists of ``{"id", "video", "conversations", "data_source"}`` | ``video`` relative to the JSON file's folder (the subset's extracted tarballs) |
| ``msrvtt-1k`` | ``MSRVTT_JSFUSION_test.csv`` (the 1k-A retrieval test split: key, vid_key, video_id, sentence) | ``videos/all/video{N}.mp4`` (or ``TestVideo/``, ``TrainValVideo/``) |
| ``kinetics400`` | ``{train,validate,test}.csv`` (label, youtube_id, time_start, time_end, split) | ``{split}/[{label}/]{youtube_id}_{start:06d}_{end:06d}.mp4`` (or under ``videos/``; mkv, webm too) |
| ``youcook2`` | ``youcookii_annotations_trainval.json`` | ``raw_videos/{training,validation}/{recipe}/{youtube_id}.{mp4,mkv,webm}``; one clip per annotated segment |

Question types: MSRVTT-QA and MSVD-QA get the question's wh-word (what/who/how/when/where, the
breakdown those papers report); NExT-QA keeps its codes (CW, CH, TN, TC, DL, DB, DC, DO; TP is
merged into TN as its official evaluation does).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

from encoder.common.atomic_files import write_text_atomically
from encoder.common.errors import PrismVlmError
from encoder.common.jsonl import write_jsonl_atomically

QA_SPLITS = ("train", "val", "test")


class AnnotationFormatError(PrismVlmError, ValueError):
    """Annotation files that are missing or not in the expected format (names the file)."""


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationFormatError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _relative(video: Path, out: Path) -> str:
    return Path(os.path.relpath(video.resolve(), out.resolve())).as_posix()


def _require(path: Path, what: str) -> dict | list:
    if not path.is_file():
        raise AnnotationFormatError(f"{what} not found: {path}")
    return _load_json(path)


def _downloaded_video(folder: Path, name: str) -> Path:
    """FOLDER/NAME.{mp4,mkv,webm}, whichever was downloaded (YouTube-sourced sets mix them); .mp4 when none is."""
    return next(
        (folder / f"{name}{ext}" for ext in (".mp4", ".mkv", ".webm") if (folder / f"{name}{ext}").exists()),
        folder / f"{name}.mp4",
    )


def _field(row: dict, key: str, path: Path, index: int):
    if not isinstance(row, dict) or key not in row:
        raise AnnotationFormatError(f"{path}: entry {index} has no '{key}' field")
    return row[key]


def _write_qa_split(out: Path, split: str, rows: list[dict]) -> dict[str, int]:
    videos = list(dict.fromkeys(row["video"] for row in rows))
    return {
        str(out / f"{split}.jsonl"): write_jsonl_atomically(out / f"{split}.jsonl", rows),
        str(out / f"{split}_videos.jsonl"): write_jsonl_atomically(
            out / f"{split}_videos.jsonl", ({"video": v} for v in videos)
        ),
    }


def _convert_xu_qa(src: Path, out: Path, video_of: Callable[[int], Path]) -> dict[str, int]:
    """MSRVTT-QA / MSVD-QA: lists of {"answer", "id", "question", "video_id"} per split."""
    from vlm.evaluation.data import question_type_of

    written: dict[str, int] = {}
    for split in QA_SPLITS:
        path = src / f"{split}_qa.json"
        if not path.is_file():
            continue
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise AnnotationFormatError(f"{path}: expected a JSON list of QA entries")
        rows = []
        for index, entry in enumerate(entries):
            question = str(_field(entry, "question", path, index))
            rows.append(
                {
                    "video": _relative(video_of(int(_field(entry, "video_id", path, index))), out),
                    "question": question,
                    "answer": str(_field(entry, "answer", path, index)),
                    "type": question_type_of(question),
                    "question_id": str(entry.get("id", index)),
                }
            )
        written.update(_write_qa_split(out, split, rows))
    if not written:
        raise AnnotationFormatError(f"no {', '.join(f'{s}_qa.json' for s in QA_SPLITS)} in {src}")
    return written


def convert_msrvtt_qa(src: Path, out: Path) -> dict[str, int]:
    return _convert_xu_qa(src, out, lambda number: src / "video" / f"video{number}.mp4")


def convert_msvd_qa(src: Path, out: Path) -> dict[str, int]:
    mapping_file = src / "youtube_mapping.txt"
    if not (src / "video").is_dir() and mapping_file.is_file() and (src / "YouTubeClips").is_dir():
        names = {}
        for line_number, line in enumerate(mapping_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].startswith("vid"):
                raise AnnotationFormatError(f"{mapping_file}:{line_number}: expected 'youtube_name vidN'")
            names[int(parts[1][3:])] = parts[0]
        return _convert_xu_qa(src, out, lambda number: src / "YouTubeClips" / f"{names[number]}.avi")
    return _convert_xu_qa(src, out, lambda number: src / "video" / f"vid{number}.avi")


def convert_nextqa(src: Path, out: Path) -> dict[str, int]:
    """NExT-QA open-ended: CSV rows video,frame_count,width,height,question,answer,qid,type."""
    mapping = _require(src / "map_vid_vidorID.json", "NExT-QA video map")
    written: dict[str, int] = {}
    for split in QA_SPLITS:
        path = src / f"{split}.csv"
        if not path.is_file():
            continue
        extra_path = src / f"add_reference_answer_{split}.json"
        extra = _load_json(extra_path) if extra_path.is_file() else {}
        rows = []
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"video", "question", "answer", "qid", "type"} - set(reader.fieldnames or ())
            if missing:
                raise AnnotationFormatError(f"{path}: missing columns {sorted(missing)}")
            for line_number, entry in enumerate(reader, 2):
                video_id = entry["video"]
                if video_id not in mapping:
                    raise AnnotationFormatError(
                        f"{path}:{line_number}: video {video_id} is not in map_vid_vidorID.json"
                    )
                question_type = "TN" if entry["type"] == "TP" else entry["type"]
                row = {
                    "video": _relative(src / "NExTVideo" / f"{mapping[video_id]}.mp4", out),
                    "question": entry["question"],
                    "answer": entry["answer"],
                    "type": question_type,
                    "question_id": f"{video_id}_{entry['qid']}",
                }
                alternative = extra.get(video_id, {}).get(str(entry["qid"]))
                if alternative and alternative != entry["answer"]:
                    row["answers"] = [alternative]
                rows.append(row)
        written.update(_write_qa_split(out, split, rows))
    if not written:
        raise AnnotationFormatError(f"no {', '.join(f'{s}.csv' for s in QA_SPLITS)} in {src}")
    return written


def _write_caption_split(out: Path, split: str, clips: list[dict], captions: dict[str, list[str]]) -> dict[str, int]:
    clips = [clip for clip in clips if captions.get(clip["id"])]
    return {
        str(out / f"{split}_videos.jsonl"): write_jsonl_atomically(out / f"{split}_videos.jsonl", clips),
        str(out / f"{split}_refs.jsonl"): write_jsonl_atomically(
            out / f"{split}_refs.jsonl", ({"video": clip["id"], "captions": captions[clip["id"]]} for clip in clips)
        ),
    }


def convert_msrvtt(src: Path, out: Path) -> dict[str, int]:
    """MSR-VTT: {"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}."""
    files = [src / "train_val_videodatainfo.json", src / "test_videodatainfo.json"]
    if not any(path.is_file() for path in files):
        raise AnnotationFormatError(f"no {files[0].name} or {files[1].name} in {src}")
    split_names = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    clips: dict[str, list[dict]] = {}
    captions: dict[str, list[str]] = {}
    for path in files:
        if not path.is_file():
            continue
        data = _load_json(path)
        if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
            raise AnnotationFormatError(f"{path}: expected an object with 'videos' and 'sentences'")
        folder = "TestVideo" if path.name.startswith("test") else "TrainValVideo"
        for index, video in enumerate(data["videos"]):
            video_id = str(_field(video, "video_id", path, index))
            split = split_names.get(str(_field(video, "split", path, index)))
            if split is None:
                raise AnnotationFormatError(f"{path}: video {video_id} has unknown split {video['split']!r}")
            location = src / folder / f"{video_id}.mp4"
            if not location.exists() and (src / "videos" / "all").is_dir():
                location = src / "videos" / "all" / f"{video_id}.mp4"
            clips.setdefault(split, []).append({"video": _relative(location, out), "id": video_id})
        for index, sentence in enumerate(data["sentences"]):
            captions.setdefault(str(_field(sentence, "video_id", path, index)), []).append(
                str(_field(sentence, "caption", path, index))
            )
    written: dict[str, int] = {}
    for split, split_clips in clips.items():
        written.update(_write_caption_split(out, split, split_clips, captions))
    return written


def convert_vatex(src: Path, out: Path) -> dict[str, int]:
    """VATEX: lists of {"videoID", "enCap": [10 English captions], "chCap": [...]}."""
    files = {
        "train": src / "vatex_training_v1.0.json",
        "val": src / "vatex_validation_v1.0.json",
        "test": src / "vatex_public_test_english_v1.1.json",
    }
    written: dict[str, int] = {}
    for split, path in files.items():
        if not path.is_file():
            continue
        entries = _load_json(path)
        if not isinstance(entries, list):
            raise AnnotationFormatError(f"{path}: expected a JSON list")
        clips, captions = [], {}
        for index, entry in enumerate(entries):
            video_id = str(_field(entry, "videoID", path, index))
            english = entry.get("enCap") or []
            if not isinstance(english, list):
                raise AnnotationFormatError(f"{path}: entry {index} 'enCap' must be a list of captions")
            clips.append({"video": _relative(src / "videos" / f"{video_id}.mp4", out), "id": video_id})
            captions[video_id] = [str(caption) for caption in english]
        written.update(_write_caption_split(out, split, clips, captions))
    if not written:
        raise AnnotationFormatError(f"no VATEX annotation files ({', '.join(p.name for p in files.values())}) in {src}")
    return written


def convert_youcook2(src: Path, out: Path) -> dict[str, int]:
    """YouCook2: {"database": {youtube_id: {"subset", "recipe_type", "annotations": [{"segment", "id", "sentence"}]}}}."""
    path = src / "youcookii_annotations_trainval.json"
    data = _require(path, "YouCook2 annotations")
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise AnnotationFormatError(f"{path}: expected an object with a 'database' mapping")
    split_names = {"training": "train", "validation": "val", "testing": "test"}
    clips: dict[str, list[dict]] = {}
    captions: dict[str, list[str]] = {}
    for youtube_id, video in data["database"].items():
        subset = str(_field(video, "subset", path, youtube_id))
        folder = src / "raw_videos" / subset / str(video.get("recipe_type", ""))
        location = _downloaded_video(folder, youtube_id)
        for segment in _field(video, "annotations", path, youtube_id):
            start, end = segment["segment"]
            clip_id = f"{youtube_id}_{segment['id']}"
            clips.setdefault(split_names.get(subset, subset), []).append(
                {"video": _relative(location, out), "id": clip_id, "start": float(start), "end": float(end)}
            )
            captions[clip_id] = [str(segment["sentence"])]
    written: dict[str, int] = {}
    for split, split_clips in clips.items():
        written.update(_write_caption_split(out, split, split_clips, captions))
    return written


def _conversation_row(video: Path, out: Path, identifier: str, turns: list, extra: dict) -> dict:
    return {"video": _relative(video, out), "id": identifier, "conversations": turns, **extra}


def convert_videochatgpt(src: Path, out: Path) -> dict[str, int]:
    """VideoChatGPT-100K (VideoInstruct100K.json) -> one single-exchange conversation per question."""
    path = next(
        (src / name for name in ("VideoInstruct100K.json", "VideoInstruct_Dataset.json") if (src / name).is_file()),
        src / "VideoInstruct100K.json",
    )
    entries = _require(path, "VideoChatGPT-100K annotations")
    if not isinstance(entries, list):
        raise AnnotationFormatError(f"{path}: expected a JSON list of {{'video_id', 'q', 'a'}} objects")
    rows = []
    for index, entry in enumerate(entries):
        video_id = str(_field(entry, "video_id", path, index))
        question, answer = _field(entry, "q", path, index), _field(entry, "a", path, index)
        video = _downloaded_video(src / "videos", video_id)
        turns = [
            {"from": "human", "value": "<video>\n" + str(question).strip()},
            {"from": "gpt", "value": str(answer).strip()},
        ]
        rows.append(_conversation_row(video, out, f"{video_id}_{index}", turns, {}))
    return {str(out / "train_conversations.jsonl"): write_jsonl_atomically(out / "train_conversations.jsonl", rows)}


def convert_llava_video(src: Path, out: Path) -> dict[str, int]:
    """LLaVA-Video-178K (and other LLaVA-layout JSON lists with "conversations") -> one manifest."""
    files = sorted({*src.glob("*.json"), *src.glob("*/*.json")})
    rows = []
    for path in files:
        entries = _load_json(path)
        if (
            not isinstance(entries, list)
            or not entries
            or not isinstance(entries[0], dict)
            or "conversations" not in entries[0]
        ):
            continue  # not a conversation file (e.g. a metadata JSON beside them)
        for index, entry in enumerate(entries):
            video = _field(entry, "video", path, index)
            turns = _field(entry, "conversations", path, index)
            extra = {"source_file": path.relative_to(src).as_posix()}
            if isinstance(entry.get("data_source"), str):
                extra["data_source"] = entry["data_source"]
            rows.append(
                _conversation_row(
                    path.parent / str(video), out, str(entry.get("id", f"{path.stem}_{index}")), turns, extra
                )
            )
    if not rows:
        raise AnnotationFormatError(
            f"no JSON list of conversations (objects with 'video' and 'conversations') in {src} or its subset folders"
        )
    return {str(out / "train_conversations.jsonl"): write_jsonl_atomically(out / "train_conversations.jsonl", rows)}


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise AnnotationFormatError(f"{path}: not a readable CSV file ({error})") from None
    header = set(rows[0]) if rows else set()
    missing = [column for column in required if column not in header]
    if missing:
        raise AnnotationFormatError(f"{path}: no column {missing[0]!r} (expected {', '.join(required)})")
    return rows


def convert_msrvtt_retrieval(src: Path, out: Path) -> dict[str, int]:
    """MSR-VTT 1k-A retrieval test (JSFusion split, ``MSRVTT_JSFUSION_test.csv``: key, vid_key,
    video_id, sentence): one caption per clip -> ``test_1k_retrieval.jsonl`` ``{"video", "id",
    "caption"}``, the input of ``prism-vlm eval-retrieval``."""
    path = src / "MSRVTT_JSFUSION_test.csv"
    if not path.is_file():
        raise AnnotationFormatError(f"MSRVTT_JSFUSION_test.csv not found in {src}")
    rows = []
    for row in _read_csv(path, ("video_id", "sentence")):
        video_id = row["video_id"].strip()
        location = next(
            (
                folder / f"{video_id}.mp4"
                for folder in (src / "videos" / "all", src / "TestVideo", src / "TrainValVideo")
                if (folder / f"{video_id}.mp4").exists()
            ),
            src / "videos" / "all" / f"{video_id}.mp4",
        )
        rows.append({"video": _relative(location, out), "id": video_id, "caption": row["sentence"].strip()})
    return {str(out / "test_1k_retrieval.jsonl"): write_jsonl_atomically(out / "test_1k_retrieval.jsonl", rows)}


def convert_kinetics400(src: Path, out: Path) -> dict[str, int]:
    """Kinetics-400 label CSVs (``{train,validate,test}.csv``: label, youtube_id, time_start,
    time_end, split) -> ``{split}_labelled.jsonl`` ``{"video", "id", "label"}`` (the input of
    ``prism-vlm eval-zeroshot``) and ``labels.txt`` (the 400 class names, sorted)."""
    splits = {"train": "train", "validate": "val", "val": "val", "test": "test"}
    written: dict[str, int] = {}
    labels: set[str] = set()
    for name, split in splits.items():
        path = src / f"{name}.csv"
        if not path.is_file() or (name == "val" and (src / "validate.csv").is_file()):
            continue
        rows = []
        for row in _read_csv(path, ("label", "youtube_id", "time_start", "time_end")):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise AnnotationFormatError(
                    f"{path}: time_start / time_end must be seconds, got {row['time_start']!r}"
                ) from None
            clip = f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"
            label = row["label"].strip()
            candidates = [
                src / folder / sub
                for folder in (name, split, f"videos/{name}", f"videos/{split}")
                for sub in (".", label)
            ]
            folder = next(
                (c for c in candidates if any((c / f"{clip}{e}").exists() for e in (".mp4", ".mkv", ".webm"))),
                candidates[0],
            )
            rows.append({"video": _relative(_downloaded_video(folder, clip), out), "id": clip, "label": label})
            labels.add(label)
        written[str(out / f"{split}_labelled.jsonl")] = write_jsonl_atomically(out / f"{split}_labelled.jsonl", rows)
    if not written:
        raise AnnotationFormatError(f"no Kinetics-400 label file (train.csv, validate.csv, test.csv) in {src}")
    write_text_atomically(out / "labels.txt", "".join(label + "\n" for label in sorted(labels)))
    written[str(out / "labels.txt")] = len(labels)
    return written


FORMATS: dict[str, Callable[[Path, Path], dict[str, int]]] = {
    "msrvtt-qa": convert_msrvtt_qa,
    "msvd-qa": convert_msvd_qa,
    "nextqa": convert_nextqa,
    "msrvtt": convert_msrvtt,
    "vatex": convert_vatex,
    "youcook2": convert_youcook2,
    "videochatgpt": convert_videochatgpt,
    "llava-video": convert_llava_video,
    "msrvtt-1k": convert_msrvtt_retrieval,
    "kinetics400": convert_kinetics400,
}


def convert_annotations(fmt: str, src: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """Convert the annotations of ``src`` (layout in the module docstring) into ``out``.

    Returns {written file: number of lines}.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose from {sorted(FORMATS)}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"no such dataset folder: {src}")
    out.mkdir(parents=True, exist_ok=True)
    return FORMATS[fmt](src, out)
