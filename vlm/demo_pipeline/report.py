"""The demo run's report: tables and plots of its results, and the Markdown of the run summary
(WORK/summary.md), the demo model's README and docs/REPRODUCTION.md. The prose is in
``vlm/demo_pipeline/templates/*.md`` (``string.Template``, ``$name`` placeholders); this module computes
the values and tables that fill it."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from string import Template

from encoder.common.atomic_files import write_json
from encoder.common.jsonl import read_jsonl_tolerant
from encoder.training.run_log import read_metrics
from vlm.demo_pipeline.evaluation import TYPES, targets_check
from vlm.demo_pipeline.profiles import ABLATIONS, PROFILES, DemoProfile
from vlm.demo_pipeline.workdir import read_json

ENCODER_LABELS = {
    "stage1": "stage 1 (video-text contrastive)",
    "stage2": "stage 2 (full: BEVT block mask, shuffle, global)",
    "stage2_no_shuffle": "stage 2 without token shuffling",
    "stage2_no_global": "stage 2 without global distillation",
    "stage2_tube": "stage 2 with tube masking (instead of BEVT block)",
}
VARIANT_LABELS = {
    "assistant": "assistant (stage-2 encoder, 8 frames)",
    "single_frame": "single-frame baseline (middle frame x8)",
    "blind": "blind baseline (no video tokens)",
}


def render(template: str, **values) -> str:
    """``templates/<template>`` with its ``$name`` placeholders filled from ``values`` (every one
    required), less the file's final newline."""
    text = resources.files("vlm.demo_pipeline").joinpath("templates", template).read_text(encoding="utf-8")
    return Template(text.removesuffix("\n")).substitute(values)


def blocks(*texts: str) -> str:
    """Each non-empty text followed by a blank line: an optional Markdown section, or ''."""
    return "".join(text + "\n\n" for text in texts if text)


def machine_description() -> str:
    """'N CPU cores (model), torch V, OS': where the run was measured."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{os.cpu_count()} CPU cores ({model}), torch {torch.__version__}, {platform.system()}"


# ------------------------------------------------------------------------------------------ tables


def qa_table(evaluation: dict, key: str, names: dict[str, str]) -> str:
    """Accuracy (%) per question type and overall of each variant in ``names`` (variant -> row label)
    that ``evaluation`` has, for the QA protocol ``key`` (closed_per_type, closed_all_answers, open)."""
    header = "| model | " + " | ".join(TYPES) + " | all |"
    lines = [header, "|---|" + "---:|" * (len(TYPES) + 1)]
    for variant, label in names.items():
        if variant not in evaluation:
            continue
        values = evaluation[variant][key]
        cells = [f"{values['per_type'][t]['accuracy']:.1f}" if t in values["per_type"] else "-" for t in TYPES]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {values['accuracy']:.1f} |")
    return "\n".join(lines)


def probe_table(probes: dict) -> str:
    """Probe accuracy (%, mean ± std over probe seeds) per encoder and attribute, with chance."""
    lines = ["| encoder | colour | shape | motion |", "|---|---:|---:|---:|"]
    for name, entry in probes.items():
        cells = [f"{100 * entry[a]['mean']:.1f} ± {100 * entry[a]['std']:.1f}" for a in ("colour", "shape", "motion")]
        lines.append(f"| {ENCODER_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    first = next(iter(probes.values()))
    lines.append(
        f"| chance | {100 * first['colour']['chance']:.1f} | {100 * first['shape']['chance']:.1f} | "
        f"{100 * first['motion']['chance']:.1f} |"
    )
    return "\n".join(lines)


def timings_table(timings: dict) -> str:
    """Minutes per stage, and their total."""
    lines = ["| stage | wall-clock |", "|---|---:|"]
    for stage, seconds in timings.items():
        lines.append(f"| {stage} | {seconds / 60:.1f} min |")
    lines.append(f"| **total** | {sum(timings.values()) / 60:.1f} min |")
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    """The rows of ``evaluation.targets_check``."""
    lines = ["| target | measured | met |", "|---|---:|:---:|"]
    for row in targets:
        lines.append(f"| {row['target']} | {row['value']} | {'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines)


def captions_table(evaluation: dict) -> str:
    """CIDEr-D, BLEU-4, ROUGE-L (x100) of the assistant and its baselines."""
    lines = ["| model | CIDEr-D | BLEU-4 | ROUGE-L | clips |", "|---|---:|---:|---:|---:|"]
    for variant, label in VARIANT_LABELS.items():
        c = evaluation[variant]["captions"]
        lines.append(
            f"| {label} | {100 * c['cider_d']:.1f} | {100 * c['bleu_4']:.1f} | {100 * c['rouge_l']:.1f} | {c['num_clips']} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ Markdown


def summary_markdown(summary: dict) -> str:
    """WORK/summary.md: the targets and every table of the run."""
    evaluation, profile = summary["evaluation"], summary["profile"]
    probes = render("summary_probes.md", probe_table=probe_table(summary["probes"])) if summary["probes"] else ""
    return render(
        "summary.md",
        profile_name=profile["name"],
        seed=summary["seed"],
        command=summary["command"],
        machine=summary["machine"],
        targets_table=targets_table(summary["targets"]),
        closed_per_type_table=qa_table(evaluation, "closed_per_type", VARIANT_LABELS),
        closed_all_answers_table=qa_table(evaluation, "closed_all_answers", VARIANT_LABELS),
        open_questions=evaluation["protocol"]["open_questions"],
        open_table=qa_table(evaluation, "open", VARIANT_LABELS),
        captions_table=captions_table(evaluation),
        probes_section=blocks(probes),
        timings_table=timings_table(summary["timings_s"]),
    )


def stage1_dropping(ratio: float, patches_per_side: int) -> str:
    """How stage 1 drops video tokens, against the paper's 50% tube masking."""
    if ratio == 0.5:
        return render("recipe_dropping_as_paper.md")
    return render(
        "recipe_dropping_other.md",
        dropped="no" if not ratio else f"{ratio:g} of the",
        patches_per_side=patches_per_side,
    )


def recipe_choices(profile: dict) -> str:
    """The Markdown list of the run's choices (``profile``: a saved DemoProfile) against the paper's."""
    p = profile
    patches_per_side = p["frame_size"] // p["patch_size"]
    pretraining = (
        render("recipe_pretraining_clips.md", pretrain_clips=p["pretrain_clips"], num_clips=p["num_clips"])
        if p.get("pretrain_clips")
        else ""
    )
    hard_negatives = (
        render("recipe_hard_negatives.md", stage1_hard_negatives=p["stage1_hard_negatives"])
        if p.get("stage1_hard_negatives")
        else ""
    )
    evaluated_clips = (
        "every test clip" if not p["eval_clips"] else f"{p['eval_clips']} test clips spread evenly over the split"
    )
    return render(
        "recipe_choices.md",
        **{
            key: p[key]
            for key in (
                "num_clips",
                "corpus_frames",
                "frame_size",
                "num_frames",
                "hidden_size",
                "heads",
                "mlp_size",
                "spatial_layers",
                "temporal_layers",
                "auxiliary_layers",
                "patch_size",
                "stage1_steps",
                "stage1_batch",
                "stage1_lr",
                "text_layers",
                "vocab_size",
                "max_text_length",
                "stage2_steps",
                "stage2_batch",
                "decoder_layers",
                "decoder_width",
                "num_latents",
                "resampler_heads",
                "glue_steps",
                "glue_batch",
                "glue_lr",
                "glue_warmup",
            )
        },
        small_radius=f"{p['small_radius']:g}",
        large_radius=f"{p['large_radius']:g}",
        pretraining_clips_sentence=pretraining,
        tokens_per_frame=patches_per_side**2,
        tokens_per_clip=p["num_frames"] * patches_per_side**2,
        stage1_dropping=stage1_dropping(p.get("stage1_drop_ratio", 0.5), patches_per_side),
        hard_negatives_sentence=hard_negatives,
        qa_weight=f"{p['qa_weight']:g}",
        caption_weight=f"{p['caption_weight']:g}",
        evaluated_clips=evaluated_clips,
        open_questions=p["open_questions"] or "all",
        caption_clips=p["caption_clips"] or "all",
        compositional_clips=p["compositional_clips"] or "all",
        middle_frame=p["corpus_frames"] // 2,
    )


def run_disclosures(summary: dict) -> list[str]:
    """Markdown lines on budget changes made while the run was under way (``--change-profile``,
    ``--glue-stop-early``) and stage outputs reused from another run (WORK/<stage>/REUSED.txt), if any."""
    lines = []
    for stage, text in summary.get("reused_stages", {}).items():
        lines += [render("disclosure_reused_stage.md", stage=stage, reason=" ".join(text.split())), ""]
    if summary["profile_changes"]:
        lines += [render("disclosure_profile_changes.md"), ""]
        lines += [
            render(
                "disclosure_profile_change.md",
                time=change["time"],
                changes=", ".join(f"`{k}` {v[0]} -> {v[1]}" for k, v in change["changed"].items()),
            )
            for change in summary["profile_changes"]
        ]
        lines.append("")
    stopped = summary.get("glue_stopped_early")
    if stopped:
        lines += [render("disclosure_glue_stopped_early.md", step=stopped["step"], max_steps=stopped["max_steps"]), ""]
    return lines


def disclosures_block(summary: dict) -> str:
    """``run_disclosures`` as a block of Markdown ending in a newline, or ''."""
    lines = run_disclosures(summary)
    return "\n".join(lines) + "\n" if lines else ""


def demo_readme(summary: dict) -> str:
    """The demo model's README.md: what it is, how it was made, its scores."""
    evaluation, profile = summary["evaluation"], summary["profile"]
    return render(
        "demo_readme.md",
        command=summary["command"],
        seed=summary["seed"],
        profile_name=profile["name"],
        machine=summary["machine"],
        total_minutes=f"{summary['total_s'] / 60:.1f}",
        glue_samples_per_s=summary["glue_samples_per_s"],
        run_disclosures=disclosures_block(summary),
        timings_table=timings_table(summary["timings_s"]),
        recipe_choices=recipe_choices(profile),
        closed_per_type_table=qa_table(evaluation, "closed_per_type", VARIANT_LABELS),
        targets_table=targets_table(summary["targets"]),
        assistant_cider_d=f"{100 * evaluation['assistant']['captions']['cider_d']:.1f}",
        assistant_caption_clips=evaluation["assistant"]["captions"]["num_clips"],
    )


def reproduction_markdown(summary: dict) -> str:
    """docs/REPRODUCTION.md: the run, its targets, every table and plot, the choices, and WORK/notes.md."""
    evaluation, profile, probes = summary["evaluation"], summary["profile"], summary["probes"]
    compositional = evaluation.get("compositional", {}).get("closed_per_type")
    full = PROFILES["full"]
    examples = evaluation["assistant"]["captions"]["examples"]
    compositional_section = (
        render(
            "reproduction_compositional.md",
            num_questions=compositional["num_questions"],
            accuracy=f"{compositional['accuracy']:.1f}",
            per_type_accuracies=", ".join(f"{t} {v['accuracy']:.1f}%" for t, v in compositional["per_type"].items()),
        )
        if compositional
        else ""
    )
    probes_section = (
        render("reproduction_probes.md", num_probe_seeds=len(profile["probe_seeds"]), probe_table=probe_table(probes))
        if probes
        else ""
    )
    missing = [name for name in ABLATIONS if f"stage2_{name}" not in probes]
    unmeasured_section = (
        render("reproduction_unmeasured.md", missing_ablations=", ".join(f"`{m}`" for m in missing)) if missing else ""
    )
    notes = summary.get("notes")
    return render(
        "reproduction.md",
        command=summary["command"],
        profile_name=profile["name"],
        seed=summary["seed"],
        machine=summary["machine"],
        total_minutes=f"{summary['total_s'] / 60:.1f}",
        test_clips=evaluation["protocol"]["clips"],
        test_questions=evaluation["protocol"]["questions"],
        **{
            f"full_{key}": getattr(full, key)
            for key in (
                "num_clips",
                "pretrain_clips",
                "stage1_steps",
                "stage1_batch",
                "stage1_hard_negatives",
                "stage2_steps",
                "stage2_batch",
                "glue_steps",
                "glue_batch",
            )
        },
        run_disclosures=disclosures_block(summary),
        targets_table=targets_table(summary["targets"]),
        closed_per_type_table=qa_table(evaluation, "closed_per_type", VARIANT_LABELS),
        closed_all_answers_table=qa_table(evaluation, "closed_all_answers", VARIANT_LABELS),
        open_questions=evaluation["protocol"]["open_questions"],
        open_table=qa_table(evaluation, "open", VARIANT_LABELS),
        captions_table=captions_table(evaluation),
        caption_examples="".join(
            f'- `{e["video"]}`: "{e["caption"]}" (reference: "{e["reference"]}")\n' for e in examples
        ),
        compositional_section=blocks(compositional_section),
        probes_section=blocks(probes_section),
        unmeasured_section=blocks(unmeasured_section),
        recipe_choices=recipe_choices(profile),
        timings_table=timings_table(summary["timings_s"]),
        glue_samples_per_s=summary["glue_samples_per_s"],
        demo_model_megabytes=f"{summary['demo_model_bytes'] / 1e6:.1f}",
        notes_section=f"\n{notes.strip()}\n" if notes else "",
    )


# ------------------------------------------------------------------------------------------ plots and files


def _grouped_bars(
    out: Path,
    groups: tuple[str, ...],
    bars: list[tuple[str, list[float], list[float] | None]],
    ylabel: str,
    title: str,
    legend_loc: str,
    chance: list[float] | None = None,
) -> None:
    """A grouped bar chart (PNG at ``out``): per group on the x axis one bar per (label, values[G],
    errors[G] or None), percentages on a 0-105 axis; ``chance`` [G]: a black mark per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for i, (label, values, errors) in enumerate(bars):
        extra = {"yerr": errors, "capsize": 2} if errors is not None else {}
        axis.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label, **extra)
    if chance is not None:
        axis.scatter(x, chance, marker="_", s=900, color="black", label="chance", zorder=3)
    axis.set_xticks(x, groups)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 105)
    axis.set_title(title)
    axis.legend(fontsize=7, loc=legend_loc)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_qa(evaluation: dict, out: Path) -> None:
    """Bar chart (PNG at ``out``) of closed per-type accuracy: the assistant, its baselines, chance."""
    from vlm.shapes import ANSWER_VOCABULARY

    bars = [
        (label, [evaluation[variant]["closed_per_type"]["per_type"][t]["accuracy"] for t in TYPES], None)
        for variant, label in VARIANT_LABELS.items()
    ]
    _grouped_bars(
        out,
        TYPES,
        bars,
        "closed-vocabulary accuracy (%)",
        "Moving-shapes test split: the assistant vs. baselines",
        "upper right",
        chance=[100 / len(ANSWER_VOCABULARY[t]) for t in TYPES],
    )


def plot_probes(probes: dict, out: Path) -> None:
    """Bar chart (PNG at ``out``) of the probe accuracies per encoder, with their std over probe seeds."""
    attributes = ("colour", "shape", "motion")
    bars = [
        (
            ENCODER_LABELS.get(name, name),
            [100 * probes[name][a]["mean"] for a in attributes],
            [100 * probes[name][a]["std"] for a in attributes],
        )
        for name in probes
    ]
    _grouped_bars(
        out,
        attributes,
        bars,
        "frozen MAP-probe accuracy (%)",
        "Frozen-encoder probes on the test split (mean ± std over probe seeds)",
        "lower left",
    )


def write_report(
    work: Path,
    profile: DemoProfile,
    seed: int,
    command: str,
    model_out: Path,
    probes: dict,
    evaluation: dict,
    docs_dir: Path | None = None,
) -> dict:
    """The run's summary (WORK/summary.json and summary.md) and the demo model's README (MODEL_OUT/README.md);
    with ``docs_dir``, also REPRODUCTION.md and its two plots there. Returns the summary."""
    timings = read_json(work / "timings.json", {})
    glue_metrics = read_metrics(work / "glue" / "metrics.jsonl")
    throughput = [m["samples_per_s"] for m in glue_metrics if "samples_per_s" in m]
    size = sum(p.stat().st_size for p in model_out.rglob("*") if p.is_file())
    summary = {
        "command": command,
        "profile": asdict(profile),
        "seed": seed,
        "machine": machine_description(),
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 1),
        "demo_model_bytes": size,
        "glue_samples_per_s": round(sum(throughput) / len(throughput), 3) if throughput else None,
        "probes": probes,
        "evaluation": evaluation,
        "targets": targets_check(evaluation, probes),
        "glue_stopped_early": read_json(work / "glue" / "stopped_early.json"),
        "profile_changes": read_jsonl_tolerant(work / "profile_changes.jsonl"),
        # WORK/notes.md: what a person wrote about the run (analysis, experiments before it), appended to REPRODUCTION.md
        "notes": (work / "notes.md").read_text(encoding="utf-8") if (work / "notes.md").is_file() else None,
        # WORK/<stage>/REUSED.txt: a stage output copied from another run instead of trained by this one (disclosed)
        "reused_stages": {
            path.parent.name: path.read_text(encoding="utf-8").strip() for path in sorted(work.glob("*/REUSED.txt"))
        },
    }
    write_json(work / "summary.json", summary)
    (work / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    (model_out / "README.md").write_text(demo_readme(summary), encoding="utf-8")
    if docs_dir is not None:
        docs_dir.mkdir(exist_ok=True)
        plot_qa(evaluation, docs_dir / "reproduction_qa.png")
        if probes:
            plot_probes(probes, docs_dir / "reproduction_probes.png")
        (docs_dir / "REPRODUCTION.md").write_text(reproduction_markdown(summary), encoding="utf-8")
    return summary
