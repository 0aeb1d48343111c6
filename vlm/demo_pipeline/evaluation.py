"""Scoring a demo model on the corpus' test split: the assistant, its blind (no video tokens) and
single-frame baselines, closed / open QA and captions, and the run's targets."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from encoder.common.atomic_files import write_json
from encoder.common.jsonl import iter_jsonl_strict
from vlm.demo_pipeline.profiles import DemoProfile
from vlm.demo_pipeline.stages import split_videos
from vlm.demo_pipeline.workdir import read_json

logger = logging.getLogger(__name__)


class TokenTable:
    """In-memory stand-in for a FeatureCache: ``video in table`` and ``table.get(video)`` -> [M, D]."""

    def __init__(self, tokens: dict):
        self.tokens = tokens

    def __contains__(self, video: str) -> bool:
        return video in self.tokens

    def get(self, video: str):
        return self.tokens[video]


def single_frame_tokens(
    encoder, videos: list[str], num_frames: int, corpus_frames: int, size: int, batch: int = 32
) -> TokenTable:
    """Encoder tokens of each clip's middle frame (frame ``corpus_frames // 2`` of the file) repeated
    ``num_frames`` times: the single-frame baseline's input."""
    import numpy as np

    from encoder.video.decode import load_clip
    from encoder.videoprism.features import encode_clips

    table = {}
    for start in range(0, len(videos), batch):
        chunk = videos[start : start + batch]
        clips = []
        for video in chunk:
            frames = load_clip(video, num_frames=corpus_frames, size=size)
            clips.append(np.repeat(frames[corpus_frames // 2][None], num_frames, axis=0))
        for video, tokens in zip(chunk, encode_clips(encoder, np.stack(clips))):
            table[video] = tokens
    return TokenTable(table)


@contextlib.contextmanager
def no_video_tokens(model):
    """The blind baseline: inside the block, ``model``'s resampler yields ZERO video tokens
    ([B, M, D] encoder tokens -> [B, 0, H]), so the LLM sees only the text prompt. A forward hook on
    the resampler, removed on leaving the block (the resampler is the model's own: the model is
    blind only inside it)."""

    def drop_every_token(module, inputs, output):
        """[B, L, H] soft prompt -> [B, 0, H]."""
        return output.new_zeros(output.shape[0], 0, output.shape[-1])

    handle = model.resampler.register_forward_hook(drop_every_token)
    try:
        yield model
    finally:
        handle.remove()


def evaluate_model(
    assistant,
    test,
    candidates,
    tokens,
    profile: DemoProfile,
    refs: dict,
    caption_videos: list[str],
    open_subset: list,
    dedupe_by_question: bool = False,
) -> dict:
    """Closed-vocabulary (per-type candidates and all answers pooled), open-vocabulary QA and captions.

    ``tokens``: a FeatureCache or TokenTable (video -> [M, D] encoder tokens); ``refs``: clip id -> reference
    captions; ``open_subset``: the questions of ``test`` answered open-vocabulary.
    ``dedupe_by_question``: the model ignores the video (blind), so each distinct question is run once.
    """
    import numpy as np

    from vlm.evaluation.answers import closed_predictions
    from vlm.evaluation.metrics.captions import evaluate_captions
    from vlm.evaluation.qa import qa_report
    from vlm.evaluation.qa_inference import predict_open, score_candidates
    from vlm.shapes import ANSWER_VOCABULARY

    common = dict(batch_size=profile.eval_batch, features=tokens, num_workers=0, progress=False)
    if dedupe_by_question:
        unique = {}
        for example in test:
            unique.setdefault(example.question, example)
        firsts = list(unique.values())
        unique_scores = score_candidates(assistant, firsts, candidates, (), **common)
        row = {example.question: i for i, example in enumerate(firsts)}
        scores = unique_scores[[row[e.question] for e in test]]
    else:
        scores = score_candidates(assistant, test, candidates, (), **common)
    result: dict = {}
    pooled, _ = qa_report(test, closed_predictions(scores, candidates, len(candidates)))
    result["closed_all_answers"] = pooled
    per_type_predictions = []
    column = {c: i for i, c in enumerate(candidates)}
    for example, row_scores in zip(test, scores):
        words = ANSWER_VOCABULARY[example.question_type]
        best = max(words, key=lambda w: row_scores[column[w]])
        per_type_predictions.append(best if not np.isnan(row_scores).all() else None)
    result["closed_per_type"], _ = qa_report(test, per_type_predictions)

    if dedupe_by_question:
        firsts = list({e.question: e for e in open_subset}.values())
        answers = dict(
            zip([e.question for e in firsts], predict_open(assistant, firsts, (), max_new_tokens=4, **common))
        )
        open_predictions = [answers[e.question] for e in open_subset]
    else:
        open_predictions = predict_open(assistant, open_subset, (), max_new_tokens=4, **common)
    result["open"], _ = qa_report(open_subset, open_predictions)

    import torch

    captions = {}
    names = {video: Path(video).stem for video in caption_videos}
    if dedupe_by_question:
        first = caption_videos[0]
        text = assistant.caption(
            video_tokens=tokens.get(first)[None].float(), max_new_tokens=profile.max_caption_tokens
        )[0]
        captions = {names[v]: text for v in caption_videos}
    else:
        for start in range(0, len(caption_videos), profile.eval_batch):
            chunk = caption_videos[start : start + profile.eval_batch]
            batch = torch.stack([tokens.get(v).float() for v in chunk])
            for video, text in zip(
                chunk, assistant.caption(video_tokens=batch, max_new_tokens=profile.max_caption_tokens)
            ):
                captions[names[video]] = text
    scores_caption = evaluate_captions(captions, {names[v]: refs[names[v]] for v in caption_videos})
    result["captions"] = {
        "cider_d": scores_caption["cider_d"],
        "bleu_4": scores_caption["bleu_4"],
        "rouge_l": scores_caption["rouge_l"],
        "num_clips": len(caption_videos),
        "examples": [
            {"video": names[v], "caption": captions[names[v]], "reference": refs[names[v]][0]}
            for v in caption_videos[:5]
        ],
    }
    return result


def caption_refs(corpus: Path, splits) -> dict[str, list[str]]:
    """clip id -> its reference captions, from ``corpus/SPLIT/refs.jsonl`` of each split."""
    rows = (row for split in splits for _, row in iter_jsonl_strict(corpus / split / "refs.jsonl"))
    return {row["video"]: row["captions"] for row in rows}


def run_evaluation(
    work: Path, profile: DemoProfile, corpus: Path, model_dir: Path, cache_dir: Path, llm, tokenizer
) -> dict:
    """The demo model in ``model_dir`` (``cache_dir``: its encoder's features) on the corpus' test split,
    against the blind and the single-frame baselines, and closed QA on test_compositional: WORK/evaluation.json
    (each part kept once written, so a resumed run goes on from the next)."""
    from encoder.videoprism.features import FeatureCache
    from encoder.videoprism.loading import load_encoder
    from vlm.evaluation.data import read_qa
    from vlm.inference.assistant import VideoAssistant
    from vlm.model import PrismVlmForConditionalGeneration
    from vlm.shapes import ALL_ANSWERS, ANSWER_VOCABULARY

    path = work / "evaluation.json"
    results = read_json(path, {})
    assistant = VideoAssistant(
        PrismVlmForConditionalGeneration.from_pretrained(
            model_dir, llm=llm, tokenizer=tokenizer, load_video_encoder=False
        )
    )
    cache = FeatureCache(cache_dir)
    test_videos = spread(split_videos(corpus, "test"), profile.eval_clips)
    chosen = set(test_videos)
    test = [example for example in read_qa(corpus / "test" / "qa.jsonl") if example.video in chosen]
    candidates = list(ALL_ANSWERS)
    refs = caption_refs(corpus, ("test", "test_compositional"))
    caption_videos = test_videos[: profile.caption_clips or None]
    open_subset = spread(test, profile.open_questions)
    results["protocol"] = {
        "split": "test",
        "questions": len(test),
        "clips": len(test_videos),
        "open_questions": len(open_subset),
        "caption_clips": len(caption_videos),
        "shots": 0,
        "candidates_all": candidates,
        "candidates_per_type": {k: list(v) for k, v in ANSWER_VOCABULARY.items()},
    }
    if "assistant" not in results:
        logger.info("evaluating the assistant")
        results["assistant"] = evaluate_model(
            assistant, test, candidates, cache, profile, refs, caption_videos, open_subset
        )
        write_json(path, results)
    if "blind" not in results:
        logger.info("evaluating the blind baseline (no video tokens)")
        with no_video_tokens(assistant.model):
            results["blind"] = evaluate_model(
                assistant, test, candidates, cache, profile, refs, caption_videos, open_subset, dedupe_by_question=True
            )
        write_json(path, results)
    if "single_frame" not in results:
        logger.info("evaluating the single-frame baseline (middle frame repeated)")
        encoder = load_encoder(model_dir / "encoder")
        table = single_frame_tokens(encoder, test_videos, profile.num_frames, profile.corpus_frames, profile.frame_size)
        results["single_frame"] = evaluate_model(
            assistant, test, candidates, table, profile, refs, caption_videos, open_subset
        )
        write_json(path, results)
    if "compositional" not in results:
        logger.info("evaluating test_compositional (held-out colour-shape pairs)")
        from vlm.evaluation.answers import closed_predictions
        from vlm.evaluation.qa import qa_report
        from vlm.evaluation.qa_inference import score_candidates

        held = read_qa(corpus / "test_compositional" / "qa.jsonl")
        videos = list(dict.fromkeys(e.video for e in held))[: profile.compositional_clips or None]
        keep = set(videos)
        held = [e for e in held if e.video in keep]
        scores = score_candidates(
            assistant,
            held,
            candidates,
            (),
            batch_size=profile.eval_batch,
            features=cache,
            num_workers=0,
            progress=False,
        )
        column = {c: i for i, c in enumerate(candidates)}
        predictions = [
            max(ANSWER_VOCABULARY[e.question_type], key=lambda w: row[column[w]]) for e, row in zip(held, scores)
        ]
        results["compositional"] = {
            "closed_per_type": qa_report(held, predictions)[0],
            "closed_all_answers": qa_report(held, closed_predictions(scores, candidates, len(candidates)))[0],
        }
        write_json(path, results)
    return results


def spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all when count is 0 or too large)."""
    if not count or count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


TYPES = ("colour", "shape", "motion", "count")  # the question types, in the order of every table
TARGETS = {"colour": 0.90, "shape": 0.90, "motion": 0.80}


def targets_check(evaluation: dict, probes: dict) -> list[dict]:
    """The run's targets (``TARGETS``, the baselines near chance, stage 2 >= stage 1 on the motion probe):
    one {"target", "value", "met"} row each."""
    from vlm.shapes import ANSWER_VOCABULARY

    rows = []
    per_type = evaluation["assistant"]["closed_per_type"]["per_type"]
    for kind, target in TARGETS.items():
        value = per_type[kind]["accuracy"] / 100
        rows.append(
            {
                "target": f"closed-vocabulary {kind} accuracy >= {target:.2f}",
                "value": round(value, 4),
                "met": value >= target,
            }
        )
    chance = {kind: 1 / len(ANSWER_VOCABULARY[kind]) for kind in TYPES}
    blind = evaluation["blind"]["closed_per_type"]["per_type"]
    worst = max(blind[k]["accuracy"] / 100 - chance[k] for k in TYPES)
    rows.append(
        {
            "target": "blind baseline near chance (per type, within +0.15 of 1/#answers)",
            "value": round(worst, 4),
            "met": worst <= 0.15,
        }
    )
    single = evaluation["single_frame"]["closed_per_type"]["per_type"]["motion"]["accuracy"] / 100
    rows.append(
        {
            "target": f"single-frame motion accuracy <= chance + 0.15 = {chance['motion'] + 0.15:.3f}",
            "value": round(single, 4),
            "met": single <= chance["motion"] + 0.15,
        }
    )
    if "stage1" in probes and "stage2" in probes:
        s1, s2 = probes["stage1"]["motion"]["mean"], probes["stage2"]["motion"]["mean"]
        rows.append(
            {
                "target": "stage-2 motion probe >= stage-1 motion probe",
                "value": f"{s2:.4f} vs {s1:.4f}",
                "met": s2 >= s1,
            }
        )
    return rows
