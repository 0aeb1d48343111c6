"""Glue training: the LM loss and its labels, cached vs on-the-fly features, the data stream,
exact resume after SIGKILL, two processes vs one, bad input, HF datasets, LoRA, config and CLI.

Tiny random parts (VideoPrism 32 wide, 2 frames of 36 px; a 2-layer Llama with SmolLM2's tokenizer),
generated clips, a few steps. Torch runs single-threaded here and in the subprocesses: on a loaded
2-core machine multi-threaded tiny matmuls are ~100x slower, and equal thread counts keep the
in-process reference and the subprocess runs comparable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.launch import two_process_command
from tests.helpers.tiny_glue import (
    FRAMES,
    SIZE,
    tiny_parts_with_clips,
    write_jsonl,
)
from vlm.inference.assistant import VideoAssistant
from vlm.training import DataSource, TrainConfig, TrainingDataError, train_glue
from vlm.training.config import TrainConfigError
from vlm.training.data import ExampleStream, GlueExamples, ProcessShardSampler, VideoSettings, load_examples

REPO = Path(__file__).resolve().parents[3]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONPATH": str(REPO),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, smollm2_tokenizer):
    """Saved tiny encoder and LLM directories, clips, caption and QA manifests, a feature cache."""
    from encoder.video.clips import list_videos
    from encoder.videoprism.features import extract_features

    root = tmp_path_factory.mktemp("train")
    model = tiny_parts_with_clips(root, smollm2_tokenizer, 6)
    captions = []
    for i in range(6):
        captions.append({"video": f"clips/c{i}.mp4", "caption": [f"a clip number {i}", f"blocks of colour {i}"]})
    (root / "clips" / "bad.mp4").write_bytes(b"this is not a video")
    captions.insert(3, {"video": "clips/bad.mp4", "caption": "a broken file"})
    captions.append({"video": "clips/missing.mp4", "caption": "a file that is not there"})
    write_jsonl(root / "captions.jsonl", captions)
    write_jsonl(
        root / "qa.jsonl",
        [{"video": f"clips/c{i}.mp4", "question": "what is shown?", "answer": f"blocks {i}"} for i in range(6)],
    )
    videos = list_videos(root / "captions.jsonl")
    extract_features(model.encoder, videos, root / "cache", num_frames=FRAMES, size=SIZE, num_workers=0, progress=False)
    extract_features(
        model.encoder,
        videos,
        root / "cache_crops",
        num_frames=FRAMES,
        size=SIZE,
        num_workers=0,
        progress=False,
        crops=2,
        crop_seed=3,
    )
    return {"root": root, "model": model, "tokenizer": smollm2_tokenizer}


def _config(parts, out: Path, **overrides) -> TrainConfig:
    root = parts["root"]
    values = dict(
        output_dir=str(out),
        train_data=[str(root / "captions.jsonl"), f"{root / 'qa.jsonl'}:0.5"],
        val_data=[str(root / "qa.jsonl")],
        encoder=str(root / "encoder"),
        llm=str(root / "llm"),
        num_latents=4,
        resampler_heads=2,
        max_steps=6,
        batch_size=4,
        micro_batch_size=2,
        warmup_steps=2,
        learning_rate=1e-2,
        log_every=1,
        checkpoint_every=2,
        val_every=3,
        max_val_examples=3,
        val_samples=2,
        num_workers=0,
        progress=False,
        max_target_tokens=16,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _resampler(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "resampler.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.quick
def test_labels_are_the_target_tokens_and_eos_only(parts):
    model, tokenizer = parts["model"], parts["tokenizer"]
    prompts, targets = ["A video of", "question: what colour is the long bottle? answer:"], ["a cat on a mat", "red"]
    torch.manual_seed(0)
    tokens = torch.randn(2, FRAMES * 4, 32)
    features = model.get_video_features(video_tokens=tokens)
    texts = VideoAssistant(model).processor.training_texts(prompts, targets)
    inputs, labels = model.training_inputs(features, texts)
    expected = [tokenizer(" " + t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in targets]
    for row, ids in enumerate(expected):
        assert labels[row][labels[row] != -100].tolist() == ids  # prompt, video, pads: ignored
        assert labels[row, -1] == -100  # nothing follows the last position
    # the losses from the kept logits equal a full-sequence computation
    losses = model.example_losses(texts, video_tokens=tokens)
    with torch.no_grad():
        logits = model.llm(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, position_ids=inputs.position_ids
        ).logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    length = logits.shape[1]
    for row, ids in enumerate(expected):
        positions = range(length - len(ids) - 1, length - 1)
        manual = -torch.stack([log_probs[row, p, t] for p, t in zip(positions, ids)]).mean()
        assert float(losses[row].detach()) == pytest.approx(float(manual), abs=1e-5)
    # each row's loss does not depend on what it is batched with (left padding, position ids)
    alone = model.example_losses(texts[:1], video_tokens=tokens[:1])
    assert float(alone[0].detach()) == pytest.approx(float(losses[0].detach()), abs=1e-5)
    assert float(model(texts, video_tokens=tokens).detach()) == pytest.approx(float(losses.mean().detach()), abs=1e-6)
    # captions train after the caption prompt, answers after the QA prompt
    from vlm.training.loop import _prompts

    batch = {"task": ["caption", "qa"], "question": ["", "what is shown?"]}
    assert _prompts(model, batch) == [
        model.config.prompts.caption_prompt,
        VideoAssistant(model).qa_prompt("what is shown?"),
    ]
    assert _prompts(model, batch)[1] == "question: what is shown? answer:"
    # only the resampler gets gradients
    model.zero_grad(set_to_none=True)
    model(texts, video_tokens=tokens).backward()
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {"resampler"}
    model.zero_grad(set_to_none=True)


def test_gradient_checkpointing_gives_the_same_gradients(parts):
    from vlm.training.loop import _checkpointed_layers, enable_activation_checkpointing

    model = parts["model"]
    tokens = torch.randn(2, FRAMES * 4, 32)
    texts = VideoAssistant(model).processor.training_texts(["A video of"] * 2, ["a red ball", "two cats"])

    def gradients():
        model.zero_grad(set_to_none=True)
        model(texts, video_tokens=tokens).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    enable_activation_checkpointing(model.llm)
    try:
        calls = []
        layer = model.llm.model.layers[0]
        mlp_forward = layer.mlp.forward
        layer.mlp.forward = lambda *a, **k: calls.append(1) or mlp_forward(*a, **k)
        with _checkpointed_layers(model.llm, True):
            checkpointed = gradients()
        del layer.mlp.forward
        assert len(calls) == 2  # the layer ran again in the backward pass: it was checkpointed
        assert not layer.training
    finally:
        model.llm.activation_checkpointing_disable()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
    model.zero_grad(set_to_none=True)


@pytest.mark.quick
def test_loss_from_the_cache_equals_on_the_fly_encoding(parts):
    from encoder.video.crops import cache_crop_offsets, crop_clip, crop_source_size
    from encoder.video.decode import load_clip
    from encoder.videoprism.features import FeatureCache

    model, root = parts["model"], parts["root"]
    cache, crops = FeatureCache(root / "cache"), FeatureCache(root / "cache_crops")
    videos = [str(root / "clips" / f"c{i}.mp4") for i in (0, 2, 5)]
    prompts, targets = ["A video of"] * 3, ["a clip", "colour blocks on a screen", "something"]
    clips = torch.from_numpy(np.stack([load_clip(v, num_frames=FRAMES, size=SIZE) for v in videos]))
    texts = VideoAssistant(model).processor.training_texts(prompts, targets)
    on_the_fly = model(texts, clips=clips)
    cached = model(texts, video_tokens=torch.stack([cache.get(v) for v in videos]))
    assert abs(float(on_the_fly.detach()) - float(cached.detach())) <= 1e-5
    # a cache with training crops: crop 0 is the plain centre crop, crop k the seeded random crop k
    assert crops.num_crops == 2 and sorted(crops.videos) == sorted(cache.videos)
    source = crop_source_size(SIZE)
    offsets = {(video, crop): cache_crop_offsets(video, crop, 3, source, SIZE) for video in videos for crop in (1, 2)}
    assert len(set(offsets.values())) > 1  # crops are drawn, not fixed
    for video in videos:
        torch.testing.assert_close(crops.get(video, 0), cache.get(video), atol=0, rtol=0)
        wide = load_clip(video, num_frames=FRAMES, size=source)
        for crop in (1, 2):
            top, left = cache_crop_offsets(video, crop, 3, source, SIZE)
            view = torch.from_numpy(np.ascontiguousarray(crop_clip(wide, top, left, SIZE)))[None]
            on_the_fly = model(texts[:1], clips=view)
            cached = model(texts[:1], video_tokens=crops.get(video, crop)[None])
            assert abs(float(on_the_fly.detach()) - float(cached.detach())) <= 1e-5
        # two crops of a clip hold the same tokens exactly when they were drawn at the same offset (the
        # offsets are seeded by the video's path, here a pytest folder: 1 run in 64 draws them equal)
        assert torch.equal(crops.get(video, 1), crops.get(video, 2)) == (offsets[video, 1] == offsets[video, 2])
    with pytest.raises(KeyError, match="crops 0..2"):
        crops.get(videos[0], 3)


# ---------------------------------------------------------------------------------------------
# The data stream
# ---------------------------------------------------------------------------------------------


def test_stream_is_seeded_by_position_mixture_weights_and_shards():
    stream = ExampleStream([5, 50], [1.0, 3.0], seed=7)
    first = [item for _, item in zip(range(10000), stream.iterate(0))]
    assert [item for _, item in zip(range(100), stream.iterate(5000))] == first[5000:5100]  # resume anywhere
    sources = np.array([source for _, source, _ in first])
    assert abs((sources == 1).mean() - 0.75) < 0.02
    small = [index for _, source, index in first if source == 0]
    for epoch in range(5):  # each epoch visits every example of a source once, in a new order
        assert sorted(small[epoch * 5 : epoch * 5 + 5]) == list(range(5))
    assert small[:5] != small[5:10] or small[5:10] != small[10:15]
    assert [item for _, item in zip(range(200), ExampleStream([5, 50], [1.0, 3.0], seed=8).iterate(0))] != first[:200]
    # two processes with micro-batches of 2 share each global batch of 8 without overlap
    shards = [ProcessShardSampler(stream, 16, rank, 2, 2) for rank in (0, 1)]
    taken = [[item for _, item in zip(range(8), iter(shard))] for shard in shards]
    assert sorted(taken[0] + taken[1]) == first[16:32]
    assert [p for p, _, _ in taken[0][:4]] == [16, 17, 20, 21]


def test_hugging_face_dataset_with_column_mapping(parts, tmp_path):
    import datasets

    root = parts["root"]
    dataset = datasets.Dataset.from_dict(
        {
            "clip_path": [str(root / "clips" / f"c{i}.mp4") for i in range(3)] + [str(root / "clips" / "gone.mp4")],
            "sentences": [["one", "uno"], ["two"], ["three"], ["four"]],
        }
    )
    dataset.save_to_disk(str(tmp_path / "hf"))
    source = DataSource(str(tmp_path / "hf"), columns={"video": "clip_path", "caption": "sentences"})
    loaded = load_examples(source)
    assert loaded.task == "caption" and loaded.rows == 4 and len(loaded.examples) == 3
    assert [s.reason for s in loaded.skipped] == ["missing: no such file"]
    assert loaded.examples[0].captions == ("one", "uno")
    visits = GlueExamples([loaded], VideoSettings(FRAMES, SIZE, train_crops=True), seed=0)
    item = visits[(11, 0, 0)]
    assert item["clip"].shape == (FRAMES, SIZE, SIZE, 3) and item["target"] in ("one", "uno")
    assert visits[(11, 0, 0)]["target"] == item["target"] and np.array_equal(visits[(11, 0, 0)]["clip"], item["clip"])
    crops = {visits[(p, 0, 0)]["clip"].tobytes() for p in range(8)}
    assert len(crops) > 1  # random crops differ between visits
    evaluation = GlueExamples([loaded], VideoSettings(FRAMES, SIZE), seed=0, training=False)[(0, 0, 0)]
    assert evaluation["target"] == "one"
    with pytest.raises(TrainingDataError, match="'caption_text'"):
        load_examples(
            DataSource(str(tmp_path / "hf"), task="caption", columns={"video": "clip_path", "caption": "caption_text"})
        )


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(parts, tmp_path_factory):
    """An uninterrupted run on the fly (crops, a corrupt and a missing video), in this process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    steps = []
    model_dir = train_glue(
        _config(parts, out, report_to="tensorboard"), on_step=lambda step, values: steps.append((step, values["loss"]))
    )
    return {"out": out, "model_dir": model_dir, "steps": steps}


def test_uninterrupted_run_writes_everything(reference_run, parts):
    from vlm.model import PrismVlmForConditionalGeneration

    out, model_dir = reference_run["out"], reference_run["model_dir"]
    assert model_dir == out / "model" and [s for s, _ in reference_run["steps"]] == [1, 2, 3, 4, 5, 6]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in metrics if "val_loss" in m] == [3, 6]
    assert all(m["skipped_videos"] == 2 for m in metrics if "loss" in m)  # missing.mp4 upfront, bad.mp4 when visited
    errors = [json.loads(line) for line in (out / "data_errors.jsonl").read_text().splitlines()]
    assert sorted(e["reason"].split(":")[0] for e in errors) == ["missing", "unreadable"]
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"][0]["skipped_by_reason"] == {"missing": 1} and report["train"][0]["examples"] == 7
    assert "random" in report["crops"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3, 3, 6, 6] and all(isinstance(s["caption"], str) for s in samples)
    assert TrainConfig.from_json(out / "train_config.json") == _config(parts, out, report_to="tensorboard")
    # report_to: the same losses in TensorBoard's event files (metrics.jsonl stays the record)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "trackers").rglob("events.out.tfevents.*")).parent)).Reload()
    logged = {event.step: event.value for event in events.Scalars("loss")}
    assert logged == pytest.approx({m["step"]: m["loss"] for m in metrics if "loss" in m})
    assert [event.step for event in events.Scalars("val_loss")] == [3, 6]
    # the saved glue loads and its resampler moved away from the seeded initialisation
    loaded = PrismVlmForConditionalGeneration.from_pretrained(model_dir, load_video_encoder=False)
    torch.manual_seed(0)
    initial = PrismVlmForConditionalGeneration.build(
        loaded.llm, loaded.tokenizer, video_width=32, num_latents=4, num_heads=2
    )
    assert _max_difference(_resampler(model_dir), initial.resampler.state_dict()) > 1e-3
    assert loaded.config.encoder_source == str(parts["root"] / "encoder")
    # the names every training run has (encoder.training.run; the pretraining stages write them too)
    assert {"train_config.json", "train_log.txt", "metrics.jsonl", "loss.png", "checkpoints", "trackers", "model"} <= {
        p.name for p in out.iterdir()
    }
    # resuming is the default: a finished run is returned as it is; a new run is refused there
    written = (model_dir / "resampler.safetensors").stat().st_mtime_ns
    assert train_glue(_config(parts, out)) == model_dir
    assert (model_dir / "resampler.safetensors").stat().st_mtime_ns == written
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        train_glue(_config(parts, out), resume=False)


@pytest.mark.slow
def test_decoding_workers_give_the_same_run(reference_run, parts, tmp_path):
    """Two decoding worker processes (started from a forkserver: forking this threaded process
    could deadlock) see the same seeded examples and crops as in-process loading."""
    out = tmp_path / "run"
    model_dir = train_glue(_config(parts, out, num_workers=2))
    assert _max_difference(_resampler(model_dir), _resampler(reference_run["model_dir"])) < 1e-6
    errors = [json.loads(line) for line in (out / "data_errors.jsonl").read_text().splitlines()]
    assert sorted(e["reason"].split(":")[0] for e in errors) == ["missing", "unreadable"]


def _train_script(config_path: Path, stop_at: int) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from vlm.training import TrainConfig, train_glue
        def on_step(step, values):
            if step == {stop_at}:
                print("STOPPED AT", step, flush=True)
                time.sleep(600)
        train_glue(TrainConfig.from_json({str(config_path)!r}), on_step=on_step)
    """)


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(reference_run, parts, tmp_path):
    out = tmp_path / "run"
    config = _config(parts, out)
    config_path = config.save(tmp_path / "config.json")
    killed = subprocess.Popen(
        [sys.executable, "-c", _train_script(config_path, stop_at=3)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = killed.stdout.readline()
        assert line.startswith("STOPPED AT 3"), killed.stderr.read()[-3000:]
        # step 3 is done but its checkpoint is not due; step 2's is complete
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.stdout.close()
        killed.stderr.close()
    assert not (out / "model").exists()
    # resuming is the default, from the run's own train_config.json
    resumed = subprocess.run(
        [sys.executable, "-m", "vlm.cli.main", "train", "--output-dir", str(out), "--no-progress"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["model"] == str(out / "model")
    difference = _max_difference(_resampler(out / "model"), _resampler(reference_run["model_dir"]))
    assert difference <= 1e-6
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]  # step 3 logged once, not twice
    reference = [json.loads(line) for line in (reference_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics if "loss" in m] == pytest.approx(
        [m["loss"] for m in reference if "loss" in m], abs=1e-6
    )
    assert [m["skipped_videos"] for m in metrics if "loss" in m] == [
        m["skipped_videos"] for m in reference if "loss" in m
    ]
    assert "resumed from step-00000002" in (out / "train_log.txt").read_text()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(reference_run, parts, tmp_path):
    """The reference ran 1 process x 2 micro-batches of 2; here 2 processes x 1 micro-batch of 2.

    Same examples, same crops, same loss definition (a mean over examples), so the only difference
    is float32 summation order: the gradient g1/2 + g2/2 accumulated in one process vs all-reduced
    (g1 + g2)/2. That is ~1e-7 relative per step; Adam's update is at most ~lr = 1e-2 per step and
    stays proportional, so after 6 steps the weights agree to ~1e-6. We allow 1e-5, which is
    still 100x below how far training moved the weights (> 1e-3, checked above)."""
    out = tmp_path / "run"
    config_path = _config(parts, out).save(tmp_path / "config.json")
    launch = two_process_command("train", "--config", str(config_path), "--micro-batch-size", "2")
    result = subprocess.run(launch, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 1  # printed by process 0 only
    difference = _max_difference(_resampler(out / "model"), _resampler(reference_run["model_dir"]))
    assert difference <= 1e-5
    checkpoint = out / "checkpoints" / "step-00000006"
    assert (checkpoint / "rng-rank1.json").is_file()
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]


def test_training_from_a_cache_with_crops_and_lora(parts, tmp_path):
    from vlm.model import ADAPTER_FILE, PrismVlmForConditionalGeneration

    lora = {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    config = _config(
        parts,
        tmp_path / "run",
        features=str(parts["root"] / "cache_crops"),
        max_steps=3,
        val_every=3,
        checkpoint_every=3,
        lora=lora,
    )
    model_dir = train_glue(config)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert "2 random crops" in report["crops"]
    assert report["train"][0]["skipped_by_reason"] == {"unreadable": 2}  # the cache lists both as unreadable
    assert (model_dir / ADAPTER_FILE).is_file()
    loaded = PrismVlmForConditionalGeneration.from_pretrained(model_dir, load_video_encoder=False)
    adapter = load_file(str(model_dir / ADAPTER_FILE))
    assert any(name.endswith("lora_B.weight") and float(t.abs().max()) > 0 for name, t in adapter.items())  # it trained
    for name, tensor in loaded.lora_state_dict().items():
        torch.testing.assert_close(tensor, adapter[name], atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.llm.parameters())
    # resuming a run with different settings is refused; max_steps may grow (the run is extended)
    with pytest.raises(TrainConfigError, match=r"differ from its train_config.json: \['learning_rate'\]"):
        train_glue(
            _config(
                parts,
                tmp_path / "run",
                features=str(parts["root"] / "cache_crops"),
                max_steps=3,
                lora=lora,
                learning_rate=1.0,
            ),
            resume=True,
        )
    with pytest.raises(TrainConfigError, match="max_steps may grow on resume but not shrink"):
        train_glue(
            _config(
                parts,
                tmp_path / "run",
                features=str(parts["root"] / "cache_crops"),
                max_steps=2,
                warmup_steps=1,
                lora=lora,
            )
        )
    train_glue(
        _config(
            parts,
            tmp_path / "run",
            features=str(parts["root"] / "cache_crops"),
            max_steps=4,
            val_every=3,
            checkpoint_every=3,
            lora=lora,
        )
    )
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert "resumed from step-00000003" in (tmp_path / "run" / "train_log.txt").read_text()
    assert TrainConfig.from_json(tmp_path / "run" / "train_config.json").max_steps == 4


def test_resampler_output_norm_trains_saves_and_bounds_the_soft_prompt(parts, tmp_path):
    from vlm.cli import main as cli
    from vlm.cli.train import config_from_args
    from vlm.model import PrismVlmForConditionalGeneration

    args = cli.build_parser().parse_args(["train", "--output-dir", str(tmp_path / "x"), "--resampler-output-norm"])
    assert config_from_args(args).resampler_output_norm is True
    assert TrainConfig(output_dir="x").resampler_output_norm is False  # the paper says nothing of it: off

    config = _config(
        parts,
        tmp_path / "run",
        features=str(parts["root"] / "cache"),
        max_steps=3,
        val_every=3,
        checkpoint_every=3,
        resampler_output_norm=True,
    )
    model_dir = train_glue(config)
    loaded = PrismVlmForConditionalGeneration.from_pretrained(model_dir, load_video_encoder=False)
    assert loaded.config.resampler.output_norm is True
    assert {"output_norm.weight", "output_norm.bias"} <= set(_resampler(model_dir))
    tokens = torch.randn(3, FRAMES * 4, 32) * 50  # however large the video tokens ...
    with torch.no_grad():
        soft_prompt = loaded.get_video_features(video_tokens=tokens)
    width = soft_prompt.shape[-1]  # ... each output token is layer-normalised (gamma, beta trained a little)
    assert float(soft_prompt.norm(dim=-1).max()) < 2 * width**0.5
    with pytest.raises(ValueError, match="resampler_output_norm"):
        train_glue(_config(parts, tmp_path / "run", features=str(parts["root"] / "cache"), max_steps=3), resume=True)


# ---------------------------------------------------------------------------------------------
# Bad input, config and CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.quick
def test_bad_input_fails_before_training_with_a_clear_message(parts, tmp_path):
    root = parts["root"]
    # llm/encoder sources that do not exist: reaching model loading would raise something else
    bad_model = {"llm": str(tmp_path / "no-llm"), "encoder": str(tmp_path / "no-encoder")}
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TrainingDataError, match=r"empty\.jsonl has no usable example: it is empty"):
        train_glue(_config(parts, tmp_path / "a", train_data=[str(tmp_path / "empty.jsonl")], **bad_model))
    write_jsonl(tmp_path / "gone.jsonl", [{"video": "nowhere.mp4", "caption": "x"}])
    with pytest.raises(TrainingDataError, match=r"all skipped \({'missing': 1}\)"):
        train_glue(_config(parts, tmp_path / "b", train_data=[str(tmp_path / "gone.jsonl")], **bad_model))
    with pytest.raises(TrainingDataError, match="no caption column 'text'"):
        train_glue(
            _config(
                parts,
                tmp_path / "c",
                train_data=[{"path": str(root / "captions.jsonl"), "columns": {"caption": "text"}}],
                **bad_model,
            )
        )
    with pytest.raises(FileNotFoundError, match="training data not found"):
        train_glue(_config(parts, tmp_path / "d", train_data=[str(tmp_path / "nope.jsonl")], **bad_model))
    write_jsonl(tmp_path / "qa_only.jsonl", [{"video": "clips/c0.mp4", "question": "q?"}])
    with pytest.raises(TrainingDataError, match="no 'answer' column"):
        train_glue(_config(parts, tmp_path / "e", train_data=[str(tmp_path / "qa_only.jsonl")], **bad_model))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing started
    with pytest.raises(TrainConfigError, match="does not divide"):
        train_glue(_config(parts, tmp_path / "f", batch_size=4, micro_batch_size=3))


@pytest.mark.quick
def test_config_file_and_flags(parts, tmp_path, capsys):
    from vlm.cli import main as cli
    from vlm.cli.train import config_from_args

    config = _config(parts, tmp_path / "run")
    path = config.save(tmp_path / "config.json")
    assert TrainConfig.from_json(path) == config
    assert config.learning_rate == 1e-2 and TrainConfig(output_dir="x").learning_rate == 5e-4  # paper default
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "train",
            "--config",
            str(path),
            "--lr",
            "0.003",
            "--train",
            "a.jsonl:2",
            "hf:user/set",
            "--column",
            "caption=sentences",
            "--lora-r",
            "4",
            "--threads",
            "1",
        ]
    )
    overridden = config_from_args(args)
    assert overridden.learning_rate == 0.003 and overridden.max_steps == 6 and overridden.cpu_threads == 1
    assert [(s.path, s.weight, s.columns) for s in overridden.train_data] == [
        ("a.jsonl", 2.0, {"caption": "sentences"}),
        ("hf:user/set", 1.0, {"caption": "sentences"}),
    ]
    assert overridden.lora["r"] == 4 and overridden.lora["target_modules"] == ["q_proj", "v_proj"]
    (tmp_path / "typo.json").write_text(json.dumps({"output_dir": "x", "learning_rat": 1}))
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig.from_json(tmp_path / "typo.json")
    code = cli.main(
        ["train", "--output-dir", str(tmp_path / "cli"), "--train", str(tmp_path / "missing.jsonl"), "--no-progress"]
    )
    assert code == 2 and "training data not found" in capsys.readouterr().err


def test_features_command_stores_training_crops(parts, tmp_path, capsys):
    from encoder.videoprism.features import FeatureCache
    from vlm.cli import main as cli

    root = parts["root"]
    write_jsonl(tmp_path / "two.jsonl", [{"video": str(root / "clips" / f"c{i}.mp4")} for i in (0, 1)])
    code = cli.main(
        [
            "features",
            "--encoder",
            str(root / "encoder"),
            "--videos",
            str(tmp_path / "two.jsonl"),
            "--out",
            str(tmp_path / "cache"),
            "--frames",
            str(FRAMES),
            "--size",
            str(SIZE),
            "--crops",
            "1",
            "--crop-seed",
            "3",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["encoded"] == 2
    cache, reference = FeatureCache(tmp_path / "cache"), FeatureCache(root / "cache_crops")
    assert cache.num_crops == 1 and len(cache) == 2
    for video in cache.videos:  # the same seeded crops as the Python API's cache (crop_seed 3)
        for crop in (0, 1):
            torch.testing.assert_close(cache.get(video, crop), reference.get(video, crop), atol=1e-6, rtol=1e-6)


@pytest.mark.quick
def test_train_flags_are_generated_from_train_config(tmp_path, capsys):
    """Every TrainConfig field but the data sources, prompts and LoRA has a flag; flags lay over --config."""
    import dataclasses

    from vlm.cli import main as cli
    from vlm.cli.train import config_from_args
    from vlm.training.config import TrainConfig

    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    usage = capsys.readouterr().out
    for spec in dataclasses.fields(TrainConfig):
        if spec.name not in ("train_data", "val_data", "prompts", "lora"):
            assert "--" + spec.name.replace("_", "-") + " " in usage, spec.name
    for old_spelling in ("--lr", "--frames", "--workers", "--threads", "--no-train-crops", "--no-progress"):
        assert old_spelling + " " in usage or old_spelling + "\n" in usage or old_spelling + "," in usage, old_spelling

    config_file = tmp_path / "base.json"
    TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=9, warmup_steps=2, train_crops=True).save(
        config_file
    )
    args = parser.parse_args(
        ["train", "--config", str(config_file), "--max-steps", "7", "--lr", "1e-3", "--no-train-crops"]
    )
    config = config_from_args(args)
    assert (config.batch_size, config.max_steps, config.learning_rate, config.train_crops) == (4, 7, 1e-3, False)
    assert config.output_dir == str(tmp_path / "run")  # from the file: a flag not given does not override it
    with pytest.raises(ValueError, match="num_frames must be in"):
        config_from_args(parser.parse_args(["train", "--output-dir", str(tmp_path / "x"), "--frames", "0"]))
