"""The glue training loop: :func:`train_glue`.

Only the resampler trains (and a LoRA adapter on the LLM when ``lora`` is set); the encoder and the
LLM are frozen. One optimizer step sees ``batch_size`` examples of the stream (see
``vlm.training.data``), split over processes and micro-batches; the loss of a step is the mean over
its examples of each example's mean target-token cross-entropy, so neither the split nor padding
changes it. Runs unchanged under ``accelerate launch`` (DDP; only process 0 writes files). The
accelerator, the run directory and the resume rule come from ``encoder.training.run`` (the harness
the pretraining stages share).

Run directory (the names the pretraining stages use too, plus the glue's data and sample files)::

    train_config.json       the TrainConfig
    data_report.json        per source: rows, examples, skipped (by reason); crop mode; conversations
                            over max_target_tokens (whole turns kept, the rest dropped)
    data_errors.jsonl       every skipped video with its reason (missing, not cached, unreadable)
    train_log.txt           human-readable notes (data, crop mode, resumes)
    metrics.jsonl           {"step", "loss", "lr", "samples_per_s", "skipped_videos", ...}; {"step", "val_loss"}
    loss.png                loss and val_loss against step
    samples.jsonl           validation captions {"step", "video", "reference", "caption"}
    checkpoints/step-XXXXXXXX/   see encoder.training.checkpoints (resumed by default)
    model/                  the final glue (PrismVlmForConditionalGeneration.save_pretrained)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from encoder.common.atomic_files import write_json
from encoder.common.jsonl import append_jsonl, read_jsonl_tolerant
from encoder.training.run import TrainingRun
from encoder.training.steps import run_steps
from encoder.training.threads import torch_threads
from encoder.video.workers import decoding_worker_context
from vlm.inference.assistant import VideoAssistant
from vlm.processing import PrismVlmProcessor
from vlm.training.config import TrainConfig, TrainConfigError
from vlm.training.data import (
    CacheIndex,
    ExampleStream,
    GlueExamples,
    ProcessShardSampler,
    VideoSettings,
    collate_visits,
    load_sources,
    validation_items,
)

RunDirectoryError = TrainConfigError  # the earlier name of a run directory that cannot be used


def _batch_layout(config: TrainConfig, num_processes: int) -> tuple[int, int]:
    """(micro-batch size per process, accumulation steps) for the global batch."""
    per_process, remainder = divmod(config.batch_size, num_processes)
    if remainder:
        raise TrainConfigError(f"batch_size {config.batch_size} does not divide over {num_processes} processes")
    micro = config.micro_batch_size or per_process
    if per_process % micro:
        raise TrainConfigError(
            f"batch_size {config.batch_size} over {num_processes} processes is {per_process} per process, "
            f"which micro_batch_size {micro} does not divide"
        )
    return micro, per_process // micro


@contextlib.contextmanager
def _checkpointed_layers(llm: torch.nn.Module, active: bool):
    """transformers checkpoints a layer only when that layer is in training mode: switch just the
    checkpointing layers (not their dropouts) to training mode while computing the loss."""
    layers = [m for m in llm.modules() if getattr(m, "gradient_checkpointing", False)] if active else []
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def enable_activation_checkpointing(llm: torch.nn.Module) -> None:
    """Recompute the LLM's layer activations in the backward pass (non-reentrant checkpointing)."""
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _prompts(model, batch: dict) -> list[str]:
    """The prompt of each caption and QA example ("" for conversations, which the chat template renders)."""
    caption_prompt = model.config.prompts.caption_prompt
    return [
        caption_prompt if task == "caption" else VideoAssistant(model).qa_prompt(question) if task == "qa" else ""
        for task, question in zip(batch["task"], batch["question"])
    ]


def _training_texts(model, processor, batch: dict, max_target_tokens: int) -> list:
    """A batch's examples tokenised with their labels (the processor's ``training_texts``): prompts,
    targets and conversations."""
    conversations = batch.get("messages")
    if conversations is not None and all(c is None for c in conversations):
        conversations = None
    return processor.training_texts(_prompts(model, batch), batch["target"], max_target_tokens, conversations)


MAX_TRUNCATION_CHECK = 20000  # conversations per source whose length is checked up front


def conversation_truncation(model, sources, max_target_tokens: int) -> list[dict]:
    """Per conversation source: how many of its conversations (the first MAX_TRUNCATION_CHECK) have
    more than ``max_target_tokens`` assistant tokens, and so lose their later turns in training."""
    from vlm.chat_template import chat_training_ids
    from vlm.inference.generation import stop_token_ids

    end_of_turn = stop_token_ids(model.llm, model.tokenizer)
    reports = []
    for loaded in sources:
        if loaded.task != "chat":
            continue
        checked = loaded.examples[:MAX_TRUNCATION_CHECK]
        truncated = dropped = cut_first = 0
        for example in checked:
            ids = chat_training_ids(model.tokenizer, example.chat_messages(), end_of_turn, max_target_tokens)
            if ids.truncated:
                truncated += 1
                dropped += ids.total_turns - max(ids.kept_turns, 1)
                cut_first += ids.kept_turns == 0
        reports.append(
            {
                "path": loaded.source.path,
                "max_target_tokens": max_target_tokens,
                "checked": len(checked),
                "truncated": truncated,
                "assistant_turns_dropped": dropped,
                "first_turn_cut": cut_first,
                "rule": "whole assistant turns are kept from the start while their tokens fit; a first turn "
                "longer than the limit alone is cut to it",
            }
        )
    return reports


def _video_kwargs(batch: dict) -> dict:
    return {"video_tokens": batch["tokens"]} if "tokens" in batch else {"clips": batch["clips"]}


def _build_model(config: TrainConfig, cache, llm, tokenizer, encoder):
    """The glue to train: the LLM (and the encoder when encoding on the fly) loaded, the resampler new
    (seeded) or from ``init_from``."""
    from encoder.videoprism.loading import load_encoder
    from vlm.llm import load_llm
    from vlm.model import PrismVlmForConditionalGeneration
    from vlm.prompts import PromptConfig

    if llm is None:
        llm, loaded_tokenizer = load_llm(config.llm)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with an already loaded llm")
    encoder_source = config.encoder or (cache.meta.encoder if cache is not None else None)
    if encoder is None and cache is None:
        if config.encoder is None:
            raise TrainConfigError(
                "training without a feature cache encodes videos on the fly: set encoder (or features)"
            )
        encoder = load_encoder(config.encoder)
    if encoder is not None and cache is not None:
        from encoder.videoprism.features import encoder_identity

        if encoder_identity(encoder)[1] != cache.meta.encoder_config_sha1:
            raise TrainConfigError(
                f"the encoder {encoder_source!r} is not the one the feature cache {config.features} was written with"
            )
    num_frames = config.num_frames or (cache.meta.num_frames if cache is not None else None)
    frame_size = config.frame_size or (cache.meta.size if cache is not None else None)
    if cache is not None and (num_frames, frame_size) != (cache.meta.num_frames, cache.meta.size):
        raise TrainConfigError(
            f"num_frames/frame_size {num_frames}/{frame_size} differ from the feature cache's {cache.meta.num_frames}/{cache.meta.size}"
        )
    video_width = None
    if encoder is None:
        first = next(iter(cache.videos))
        video_width = int(cache.get(first).shape[-1])
    torch.manual_seed(config.seed)  # the resampler's initialisation
    if config.init_from is not None:
        model = PrismVlmForConditionalGeneration.from_pretrained(
            config.init_from, llm=llm, tokenizer=tokenizer, encoder=encoder, load_video_encoder=False
        )
        model.config.encoder_source = encoder_source or model.config.encoder_source
        model.config.llm_source = config.llm or model.config.llm_source
    else:
        model = PrismVlmForConditionalGeneration.build(
            llm,
            tokenizer,
            encoder,
            video_width=video_width,
            num_latents=config.num_latents,
            depth=config.resampler_depth,
            num_heads=config.resampler_heads,
            output_norm=config.resampler_output_norm,
            prompts=PromptConfig.from_dict(config.prompts),
            num_frames=num_frames,
            frame_size=frame_size,
            encoder_source=encoder_source,
            llm_source=config.llm,
        )
    if config.lora is not None:
        model.add_lora(config.lora)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.llm)
    return model


@torch.no_grad()
def evaluate_loss(model, loader, max_target_tokens: int, autocast) -> float:
    """Mean per-example validation loss over a loader of validation batches."""
    total, count = 0.0, 0
    processor = PrismVlmProcessor.from_model(model)
    for batch in loader:
        with autocast():
            losses = model.example_losses(
                _training_texts(model, processor, batch, max_target_tokens), **_video_kwargs(batch)
            )
        total += float(losses.float().sum())
        count += len(batch["target"])
    return total / max(count, 1)


def train_glue(
    config: TrainConfig,
    *,
    resume: bool = True,
    llm: torch.nn.Module | None = None,
    tokenizer=None,
    encoder: torch.nn.Module | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> Path:
    """Train the glue as ``config`` says and return the directory of the saved final model.

    resume: True (the default): continue the newest checkpoint in ``config.output_dir`` (model,
        optimizer, scheduler, RNG and data position), or start afresh when there is none; the
        settings must match the run's ``train_config.json`` but those of
        ``TrainConfig.RESUME_MAY_CHANGE``, and ``max_steps`` may grow. A finished run is returned as
        it is. False: a new run (a directory holding one is refused). See ``encoder.training.run``.
    llm, tokenizer, encoder: already loaded frozen parts (default: loaded from the config's sources).
    on_step: called on every process after each optimizer step with (step, {"loss", "lr"}).
    Data problems raise before any model is loaded (see ``vlm.training.data``).
    """
    with torch_threads(config.cpu_threads):
        return _train(config, resume, llm, tokenizer, encoder, on_step)


def _train(config: TrainConfig, resume: bool, llm, tokenizer, encoder, on_step) -> Path:
    from encoder.training.checkpoints import CheckpointError, trainable_state
    from encoder.training.run_log import MetricsLog
    from encoder.training.schedules import warmup_linear_decay
    from encoder.videoprism.features import FeatureCache

    # the resume rule, the tracker package and the precision are checked before any work
    run = TrainingRun(
        config, resume=resume, may_change=TrainConfig.RESUME_MAY_CHANGE, cpu=not torch.cuda.is_available()
    )
    if run.finished:
        return run.model_dir
    accelerator, main, run_dir = run.accelerator, run.main, run.run_dir
    micro, accumulation = _batch_layout(config, accelerator.num_processes)

    # ---- data first: bad input fails before any model is loaded
    cache = FeatureCache(config.features) if config.features is not None else None
    cache_index = CacheIndex(cache) if cache is not None else None
    train_sources = load_sources(config.train_data, cache_index, "training")
    val_sources = load_sources(config.val_data, cache_index, "validation") if config.val_data else []
    skipped = list(
        {(s.source, s.video): s for loaded in (*train_sources, *val_sources) for s in loaded.skipped}.values()
    )
    if cache is not None:
        crop_mode = (
            f"feature cache with {cache.num_crops} random crops per clip: each training visit picks one"
            if cache.num_crops and config.train_crops
            else "feature cache without random crops: training uses the centre crop (no crop augmentation)"
        )
    else:
        crop_mode = (
            "on the fly: centre crop at 346/288 of frame_size, then a random frame_size crop per visit"
            if config.train_crops
            else "on the fly: centre crop only"
        )

    run.begin()  # the run directory and its train_config.json
    if main:
        report = {
            "train": [s.report() for s in train_sources],
            "validation": [s.report() for s in val_sources],
            "skipped_videos": len(skipped),
            "crops": crop_mode,
        }
        write_json(run_dir / "data_report.json", report)
        known = {(r.get("source"), r.get("video")) for r in read_jsonl_tolerant(run_dir / "data_errors.jsonl")}
        append_jsonl(
            run_dir / "data_errors.jsonl",
            [s.to_dict() for s in skipped if (s.source, s.video) not in known],
            ensure_ascii=True,
        )
        run.note(
            f"training examples {[len(s.examples) for s in train_sources]} "
            f"from {[s.source.path for s in train_sources]}; validation {[len(s.examples) for s in val_sources]}; "
            f"skipped videos {len(skipped)} (see data_errors.jsonl)"
        )
        run.note(f"frames: {crop_mode}")
    accelerator.wait_for_everyone()
    errors_path = run_dir / "data_errors.jsonl"
    # videos already reported (up front, or found unreadable by an earlier part of a resumed run)
    seen_skips = {(r.get("source"), r.get("video")) for r in read_jsonl_tolerant(errors_path)}

    # ---- model, optimizer, schedule
    model = _build_model(config, cache, llm, tokenizer, encoder)
    model.to(accelerator.device)
    if main and any(s.task == "chat" for s in (*train_sources, *val_sources)):
        report["conversation_truncation"] = {
            "train": conversation_truncation(model, train_sources, config.max_target_tokens),
            "validation": conversation_truncation(model, val_sources, config.max_target_tokens),
        }
        write_json(run_dir / "data_report.json", report)
        for item in report["conversation_truncation"]["train"]:
            if item["truncated"]:
                run.note(
                    f"{item['path']}: {item['truncated']} of {item['checked']} conversations have more "
                    f"than {config.max_target_tokens} assistant tokens; their later turns are dropped "
                    "(data_report.json)"
                )
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    scheduler = warmup_linear_decay(optimizer, config.warmup_steps, config.max_steps, config.final_lr_ratio)
    start_step, data_state = run.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    if start_step and data_state.get("position") != start_step * config.batch_size:
        raise CheckpointError(
            f"{run.resume_from}: data position {data_state.get('position')} does not match step {start_step}"
        )
    unwrapped = model
    model, optimizer = accelerator.prepare(model, optimizer)  # the optimizer too: fp16's gradient scaling

    # ---- data loading
    settings = VideoSettings(unwrapped.config.num_frames, unwrapped.config.frame_size, config.train_crops)
    stream = ExampleStream(
        [len(s.examples) for s in train_sources], [s.source.weight for s in train_sources], config.seed
    )
    sampler = ProcessShardSampler(
        stream, start_step * config.batch_size, accelerator.process_index, accelerator.num_processes, micro
    )
    loader = torch.utils.data.DataLoader(
        GlueExamples(train_sources, settings, config.seed, cache=cache, training=True),
        batch_size=micro,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate_visits,
        persistent_workers=False,
        multiprocessing_context=decoding_worker_context(config.num_workers),
    )
    val_loader = None
    if val_sources and config.max_val_examples:
        val_loader = torch.utils.data.DataLoader(
            GlueExamples(val_sources, settings, config.seed, cache=cache, training=False),
            batch_size=micro,
            sampler=validation_items(val_sources, config.max_val_examples),
            num_workers=min(config.num_workers, 1),
            collate_fn=collate_visits,
            multiprocessing_context=decoding_worker_context(min(config.num_workers, 1)),
        )

    metrics = run.start_logging(start_step)
    samples_log = MetricsLog(run_dir / "samples.jsonl", resume_step=start_step) if main else None
    batches = iter(loader)
    processor = PrismVlmProcessor.from_model(unwrapped)  # tokenises each batch's examples
    window = {"loss": 0.0, "steps": 0, "start": time.perf_counter()}

    def validate(step: int) -> None:
        if val_loader is None or not main:
            return
        unwrapped.eval()
        val_loss = evaluate_loss(unwrapped, val_loader, config.max_target_tokens, accelerator.autocast)
        metrics.log(step, val_loss=val_loss)
        if config.val_samples:
            batch = collate_visits(
                [val_loader.dataset[item] for item in validation_items(val_sources, config.val_samples)]
            )
            with accelerator.autocast():
                captions = VideoAssistant(unwrapped).caption(**_video_kwargs(batch))
            for video, reference, caption in zip(batch["video"], batch["target"], captions):
                samples_log.log(step, video=video, reference=reference, caption=caption)

    def compute_loss(step: int) -> tuple[float, dict]:
        """One global batch: ``accumulation`` micro-batches per process, gradients synced on the last."""
        step_loss = torch.zeros((), device=accelerator.device)
        for micro_step in range(accumulation):
            batch = next(batches)
            new_skips = [s for s in batch["skipped"] if (s.source, s.video) not in seen_skips]
            if new_skips:
                seen_skips.update((s.source, s.video) for s in new_skips)
                append_jsonl(errors_path, [s.to_dict() for s in new_skips], ensure_ascii=True)
            sync = micro_step == accumulation - 1
            with (
                contextlib.nullcontext() if sync else accelerator.no_sync(model),
                _checkpointed_layers(unwrapped.llm, config.gradient_checkpointing),
            ):
                loss = model(
                    _training_texts(unwrapped, processor, batch, config.max_target_tokens), **_video_kwargs(batch)
                )
                accelerator.backward(loss / accumulation)
            step_loss += loss.detach() / accumulation
        return float(accelerator.reduce(step_loss, reduction="mean")), {}

    def after_step(step: int, step_loss: float, lr: float, values: dict) -> None:
        window["loss"], window["steps"] = window["loss"] + step_loss, window["steps"] + 1
        if step % config.log_every == 0 or step == config.max_steps:
            elapsed = time.perf_counter() - window["start"]
            if main:
                skipped_videos = len({(r.get("source"), r.get("video")) for r in read_jsonl_tolerant(errors_path)})
                metrics.log(
                    step,
                    loss=window["loss"] / window["steps"],
                    lr=lr,
                    samples_per_s=window["steps"] * config.batch_size / elapsed,
                    skipped_videos=skipped_videos,
                )
            window.update(loss=0.0, steps=0, start=time.perf_counter())
        if run.checkpoint_due(step):
            run.save_checkpoint(
                step,
                model_state=trainable_state(unwrapped),
                optimizer=optimizer,
                scheduler=scheduler,
                data_state={"position": step * config.batch_size},
                extra={"loss": step_loss},
            )
        if step % config.val_every == 0 or step == config.max_steps:
            validate(step)
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(step, {"loss": step_loss, "lr": lr})

    try:
        run_steps(
            start=start_step,
            max_steps=config.max_steps,
            compute_loss=compute_loss,
            optimizer=optimizer,
            scheduler=scheduler,
            parameters=parameters,
            accelerator=accelerator,
            max_grad_norm=config.max_grad_norm,
            after_step=after_step,
            title="train glue",
            progress=main and config.progress,
            checkpoint_dir=run_dir / "checkpoints",
        )
    finally:
        run.close()
        if samples_log is not None:
            samples_log.close()
    return run.finish(unwrapped.save_pretrained)  # model/ atomically, loss.png once at the end
