"""The demo run's settings: every size and budget (DemoProfile), the named profiles, the stages and
the stage-2 ablations, and the profile a run in WORK was started with."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vlm.demo_pipeline.workdir import RunError, read_json

STAGES = ("corpus", "stage1", "stage2", "features", "glue", "export", "evaluate", "probes", "ablations", "report")
ABLATIONS = {  # stage-2 variants of the paper's Table 21 / Figure 6, name -> Stage2Config overrides
    "no_shuffle": {"shuffle_tokens": False},
    "no_global": {"global_distillation": False},
    "tube": {"mask_kind": "tube"},
}


@dataclass
class DemoProfile:
    """Every size and budget of a demo run (saved in WORK/profile.json and the demo README)."""

    name: str
    # corpus
    num_clips: int = 2000
    corpus_frames: int = 16
    frame_size: int = 64
    small_radius: float = 0.13  # object circumradius, x frame_size (ShapesConfig)
    large_radius: float = 0.19
    pretrain_clips: int = 0  # extra all-train clips for stages 1 and 2 only (WORK/pretrain_corpus; 0: none)
    # encoder (VideoPrism, from scratch)
    num_frames: int = 8
    patch_size: int = 16
    hidden_size: int = 96
    heads: int = 4
    mlp_size: int = 384
    spatial_layers: int = 2
    temporal_layers: int = 2
    auxiliary_layers: int = 1
    text_layers: int = 2
    max_text_length: int = 24
    vocab_size: int = 256
    # stage 1
    stage1_steps: int = 400
    stage1_batch: int = 32
    stage1_lr: float = 1e-2
    stage1_hard_negatives: int = (
        0  # per clip and step, captions differing in shape or motion (Stage1Config.hard_negatives)
    )
    stage1_drop_ratio: float = (
        0.5  # video tokens dropped per step, tube masking (the paper's 0.5; Stage1Config.drop_ratio)
    )
    # stage 2
    stage2_steps: int = 200
    stage2_batch: int = 32
    stage2_lr: float = 5e-3
    decoder_width: int = 64
    decoder_layers: int = 2
    ablations: tuple[str, ...] = ()
    # probes
    probe_epochs: int = 30
    probe_seeds: tuple[int, ...] = (0, 1, 2)
    # glue
    num_latents: int = 16
    resampler_heads: int = 8
    resampler_output_norm: bool = False  # a final LayerNorm on the soft prompt (TrainConfig.resampler_output_norm)
    glue_steps: int = 300
    glue_batch: int = 8
    glue_lr: float = 1e-3
    glue_warmup: int = 20
    qa_weight: float = 3.0
    caption_weight: float = 1.0
    max_target_tokens: int = 24
    # evaluation
    eval_batch: int = 16
    eval_clips: int = 0  # test clips whose questions are scored (0: all), spread over the split
    open_questions: int = 200  # test questions answered open-vocabulary (0: all)
    caption_clips: int = 60  # test clips captioned (0: all)
    compositional_clips: int = 60  # test_compositional clips for closed QA (0: all)
    max_caption_tokens: int = 20


PROFILES = {
    "smoke": DemoProfile(
        name="smoke",
        num_clips=80,
        stage1_steps=6,
        stage1_batch=8,
        stage2_steps=4,
        stage2_batch=8,
        probe_epochs=2,
        probe_seeds=(0,),
        glue_steps=3,
        glue_batch=4,
        glue_warmup=1,
        ablations=("no_shuffle",),
        open_questions=8,
        caption_clips=4,
        compositional_clips=4,
        max_caption_tokens=6,
    ),
    "quick": DemoProfile(
        name="quick",
        num_clips=1200,
        hidden_size=64,
        mlp_size=256,
        stage1_steps=300,
        stage2_steps=120,
        probe_epochs=10,
        probe_seeds=(0, 1),
        glue_steps=80,
        glue_lr=3e-3,
        glue_warmup=5,
        eval_clips=40,
        open_questions=60,
        caption_clips=20,
        compositional_clips=20,
    ),
    # the shipped demo model's profile (its run time and the stage-1 step count tried against it: docs/REPRODUCTION.md)
    "full": DemoProfile(
        name="full",
        num_clips=3000,
        pretrain_clips=15000,
        stage1_steps=2000,
        stage1_batch=64,
        stage1_hard_negatives=3,
        stage2_steps=1000,
        probe_epochs=10,
        glue_steps=1200,
        glue_warmup=50,
        ablations=tuple(ABLATIONS),
        open_questions=300,
        caption_clips=100,
        compositional_clips=100,
    ),
}


def saved_profile(path: Path, profile: DemoProfile) -> dict | None:
    """The profile a run in WORK was started with (None: a new run), as ``profile`` would save it:
    a field added to DemoProfile after the run started counts as the run's when ``profile`` has it at
    its default (each new field's default is what the pipeline did before the field existed)."""
    saved = read_json(path)
    if saved is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(DemoProfile)}
        saved.update(
            {k: v for k, v in json.loads(json.dumps(asdict(profile))).items() if k not in saved and v == defaults[k]}
        )
    return saved


def profile_with_overrides(name: str, settings: list[str]) -> DemoProfile:
    """``PROFILES[name]`` with ``FIELD=VALUE`` settings applied (VALUE is JSON; a list becomes a tuple).
    Raises ValueError naming the known fields when a FIELD is not one."""
    overrides = {}
    names = {f.name: f for f in dataclasses.fields(DemoProfile)}
    for item in settings:
        key, _, value = item.partition("=")
        if key not in names:
            raise ValueError(f"--set: unknown profile field {key!r}; known: {sorted(names)}")
        parsed = json.loads(value)
        overrides[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return dataclasses.replace(PROFILES[name], **overrides)


def record_profile(work: Path, profile: DemoProfile, allow_change: bool) -> None:
    """Save ``profile`` as WORK/profile.json. A run in WORK started with another profile raises RunError,
    unless ``allow_change`` (``--change-profile``): then the changes (field -> [before, after]) are
    appended to WORK/profile_changes.jsonl, which the report discloses."""
    from encoder.common.atomic_files import write_json
    from encoder.common.jsonl import append_jsonl

    current = json.loads(json.dumps(asdict(profile)))
    saved = saved_profile(work / "profile.json", profile)
    if saved is not None and saved != current:
        if not allow_change:
            raise RunError(
                f"{work} was started with another profile ({work / 'profile.json'}); use another --work, "
                "or --change-profile to continue it with the new settings (stages already done are kept)"
            )
        changed = {k: [saved.get(k), v] for k, v in current.items() if saved.get(k) != v}
        change = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed}
        append_jsonl(work / "profile_changes.jsonl", [change], ensure_ascii=True)
    write_json(work / "profile.json", asdict(profile))


def add_profile_arguments(parser) -> None:
    """``--profile NAME`` and ``--set FIELD=VALUE`` (repeatable) on an argparse parser; read them back
    with :func:`parsed_profile`."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a profile field, e.g. --set glue_steps=500 (JSON values)",
    )


def parsed_profile(parser, args) -> DemoProfile:
    """The profile of :func:`add_profile_arguments`' flags; an unknown field is the parser's usage error."""
    try:
        return profile_with_overrides(args.profile, args.set)
    except ValueError as error:
        parser.error(str(error))
