"""Two-stage VideoPrism pretraining on a tiny generated corpus: data, tokenizer, heads, losses,
stage 1 / stage 2 / LiT training, exact resume, exported checkpoints, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer, VideoPrismClipModel, VideoPrismVisionConfig, VideoPrismVisionModel
from transformers.models.videoprism.modeling_videoprism import VideoPrismVideoModel

from encoder.videoprism.factorized import encode_visible_tokens
from encoder.videoprism.loading import load_encoder
from encoder.videoprism.masking import masked_indices, visible_indices
from encoder.videoprism.pretrain.data import AlternatingBatches, ClipDataset, ManifestError, read_manifest
from encoder.videoprism.pretrain.heads import (
    DecoderConfig,
    GlobalDistillationHead,
    TokenDistillationHead,
    pool_video_tokens,
    shuffle_permutations,
    token_positions,
)
from encoder.videoprism.pretrain.lit import LitConfig, run_lit
from encoder.videoprism.pretrain.loop import make_accelerator, make_optimizer
from encoder.videoprism.pretrain.losses import LogitScale, contrastive_loss, cosine_distance
from encoder.videoprism.pretrain.stage1 import (
    ModelSize,
    Stage1Config,
    build_stage1,
    load_logit_scale,
    new_clip_model,
    run_stage1,
)
from encoder.videoprism.pretrain.stage2 import Stage2Config, build_stage2, run_stage2
from encoder.videoprism.pretrain.tokenizer import train_caption_tokenizer
from encoder.videoprism.text_tokenizer import tokenize_texts
from tests.helpers.video_factory import write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 220), "yellow": (230, 220, 40)}
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SIZE, FRAMES, PATCH = 48, 4, 12  # a 4 x 4 patch grid
TINY = ModelSize(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    num_spatial_layers=1,
    num_temporal_layers=1,
    num_auxiliary_layers=1,
    num_frames=FRAMES,
    image_size=SIZE,
    patch_size=PATCH,
    text_layers=1,
    max_text_length=12,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (tests/conftest.py)


def _square_frames(colour: str, move: str, rng: np.random.Generator) -> list[np.ndarray]:
    top, left = rng.integers(12, SIZE - 24, size=2)
    frames = []
    for t in range(FRAMES):
        frame = np.full((SIZE, SIZE, 3), 30, np.uint8)
        r, c = top + MOVES[move][0] * 3 * t, left + MOVES[move][1] * 3 * t
        frame[r : r + 12, c : c + 12] = COLOURS[colour]
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 clips of a coloured square moving (caption: colour + direction) and 16 still images."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    with open(root / "videos.jsonl", "w") as manifest:
        for i in range(24):
            colour, move = list(COLOURS)[i % 4], list(MOVES)[(i // 4) % 4]
            write_video(root / f"v{i}.mp4", _square_frames(colour, move, rng))
            manifest.write(json.dumps({"video": f"v{i}.mp4", "caption": f"A {colour} square moves {move}!"}) + "\n")
    with open(root / "images.jsonl", "w") as manifest:
        for i in range(16):
            colour = list(COLOURS)[i % 4]
            Image.fromarray(_square_frames(colour, "left", rng)[0]).save(root / f"i{i}.png")
            manifest.write(json.dumps({"image": f"i{i}.png", "caption": f"a {colour} square"}) + "\n")
    return root


def _stage1_config(corpus: Path, out: Path, **overrides) -> Stage1Config:
    values = dict(
        output_dir=str(out),
        train_manifests=[str(corpus / "videos.jsonl"), str(corpus / "images.jsonl")],
        model=TINY,
        batch_size=8,
        max_steps=40,
        warmup_steps=3,
        learning_rate=3e-2,
        vocab_size=60,
        checkpoint_every=20,
        log_every=1,
        cache_clips=True,
        progress=False,
    )
    values.update(overrides)
    return Stage1Config(**values)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _early_late(rows: list[dict], key: str, span: int = 6) -> tuple[float, float]:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values[:span])), float(np.mean(values[-span:]))


@pytest.fixture(scope="module")
def stage1_run(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    run_stage1(_stage1_config(corpus, out))
    return out


@pytest.fixture(scope="module")
def stage2_run(corpus, stage1_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage2")
    config = Stage2Config(
        output_dir=str(out),
        teacher=str(stage1_run / "model"),
        train_manifests=[str(corpus / "videos.jsonl")],
        batch_size=8,
        max_steps=30,
        warmup_steps=3,
        learning_rate=3e-2,
        checkpoint_every=30,
        log_every=1,
        cache_clips=True,
        cache_teacher_outputs=True,
        progress=False,
        decoder=DecoderConfig(width=16, num_layers=2),
    )
    run_stage2(config)
    return out


# --------------------------------------------------------------------------------------------------
# Data and tokenizer
# --------------------------------------------------------------------------------------------------


def test_manifests_clips_and_images(corpus):
    videos = ClipDataset(corpus / "videos.jsonl", num_frames=FRAMES, image_size=SIZE)
    images = ClipDataset(corpus / "images.jsonl", num_frames=FRAMES, image_size=SIZE, cache_clips=True)
    assert len(videos) == 24 and not videos.is_image and videos.caption(5) == "A green square moves right!"
    assert images.is_image and images.num_frames == 1
    assert videos.pixels([0, 3]).shape == (2, FRAMES, 3, SIZE, SIZE)
    first = images.pixels([1, 2])
    assert first.shape == (2, 1, 3, SIZE, SIZE)  # an image is a one-frame video
    again = images.pixels([1, 2])  # from the uint8 cache
    assert (first - again).abs().max() <= 1 / 255 + 1e-6
    # the square's colour is where the decoder put it
    assert first[0, 0, :, :, :].amax(dim=(1, 2)).tolist()[1] > 0.7  # green channel of "green" image 1


def test_cached_clips_are_decoded_once_per_process(corpus, monkeypatch):
    import encoder.videoprism.pretrain.data as data

    data.clear_clip_cache()
    calls = []
    real = data.load_clip
    monkeypatch.setattr(data, "load_clip", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = ClipDataset(corpus / "videos.jsonl", num_frames=FRAMES, image_size=SIZE, cache_clips=True).pixels([0, 1])
    second = ClipDataset(corpus / "videos.jsonl", num_frames=FRAMES, image_size=SIZE, cache_clips=True).pixels([1, 0])
    assert len(calls) == 2 and torch.equal(first, second.flip(0))  # the second dataset decoded nothing
    ClipDataset(corpus / "videos.jsonl", num_frames=2, image_size=SIZE, cache_clips=True).pixels([0])
    ClipDataset(corpus / "videos.jsonl", num_frames=FRAMES, image_size=SIZE).pixels([0])
    assert len(calls) == 4  # another frame count is another clip; without cache_clips nothing is cached
    data.clear_clip_cache()
    ClipDataset(corpus / "videos.jsonl", num_frames=FRAMES, image_size=SIZE, cache_clips=True).pixels([0])
    assert len(calls) == 5


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        ('{"video": "a.mp4", "image": "b.png", "caption": "x"}', "exactly one of"),
        ('{"video": "a.mp4"}', "no caption"),
        ('{"image": "a.png", "caption": "x", "start": 1.0}', "no 'start'"),
        ('{"video": 3, "caption": "x"}', "non-empty string"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, line, message):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"video": "ok.mp4", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message) as error:
        read_manifest(manifest)
    assert f"{manifest}:2" in str(error.value)


def test_manifest_rejects_mixed_kinds_and_accepts_captionless_for_stage2(tmp_path):
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text('{"video": "a.mp4", "caption": "x"}\n{"image": "b.png", "caption": "y"}\n')
    with pytest.raises(ManifestError, match="mixes videos and images"):
        read_manifest(manifest)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"video": "a.mp4", "start": 1.5, "end": 2.0}\n')
    (example,) = read_manifest(plain, require_captions=False)
    assert example.path == tmp_path / "a.mp4" and example.caption is None and example.start == 1.5
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.jsonl")


def test_alternating_batches_are_deterministic_and_cover_each_epoch():
    plan = AlternatingBatches([10, 7], batch_size=3, seed=4)
    datasets = [plan.batch(step)[0] for step in range(8)]
    assert datasets == [0, 1, 0, 1, 0, 1, 0, 1]  # one dataset per batch, taking turns
    epoch = np.concatenate([plan.batch(step)[1] for step in (0, 2, 4)])  # dataset 0: 3 batches per epoch
    assert len(set(epoch.tolist())) == 9 and epoch.max() < 10  # no repeats within an epoch
    assert not np.array_equal(plan.batch(0)[1], plan.batch(6)[1])  # a new permutation next epoch
    again = AlternatingBatches([10, 7], batch_size=3, seed=4)
    assert all(np.array_equal(plan.batch(s)[1], again.batch(s)[1]) for s in (0, 5, 17, 101))
    other = AlternatingBatches([10, 7], batch_size=3, seed=5)
    assert not all(np.array_equal(plan.batch(s)[1], other.batch(s)[1]) for s in range(6))
    with pytest.raises(ValueError, match="fewer than the batch size"):
        AlternatingBatches([10, 2], batch_size=3)


@pytest.mark.quick
def test_caption_tokenizer(corpus, tmp_path):
    tokenizer = train_caption_tokenizer([corpus / "videos.jsonl"], tmp_path / "tok", vocab_size=60, max_length=12)
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id is None and len(tokenizer) <= 60
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids, mask = tokenize_texts(reloaded, ["A red square moves left!", "blue"], max_length=12)
    expected, _ = tokenize_texts(tokenizer, ["a red square moves left", "blue"], max_length=12)
    assert torch.equal(ids, expected)  # canonicalised the same way
    assert mask[1].sum() < mask[0].sum() and ids[1, mask[1].sum() :].eq(0).all()
    assert (tmp_path / "tok" / "spiece.model").is_file()


# --------------------------------------------------------------------------------------------------
# Heads and losses
# --------------------------------------------------------------------------------------------------


def test_contrastive_loss_is_symmetric_cross_entropy():
    torch.manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(7.0)
    logits = scale * video @ text.T
    manual = 0.5 * (
        -torch.log_softmax(logits, dim=1).diagonal().mean() - torch.log_softmax(logits, dim=0).diagonal().mean()
    )
    assert torch.allclose(contrastive_loss(video, text, scale), manual, atol=1e-6)
    assert contrastive_loss(video, video, torch.tensor(100.0)) < 1e-3  # matched pairs, sharp temperature
    assert LogitScale(0.07)().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert LogitScale(0.001)().item() == pytest.approx(100.0)  # clamped as in CLIP


def test_contrastive_loss_with_hard_negatives_adds_them_to_the_video_to_text_term_only():
    torch.manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    negatives = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(5.0)
    logits = scale * video @ text.T
    extended = torch.cat([logits, scale * video @ negatives.T], dim=1)  # [4, 4 + 6]
    manual = 0.5 * (
        -torch.log_softmax(extended, dim=1).diagonal().mean() - torch.log_softmax(logits, dim=0).diagonal().mean()
    )
    assert torch.allclose(contrastive_loss(video, text, scale, negatives), manual, atol=1e-6)
    assert contrastive_loss(video, text, scale, negatives) > contrastive_loss(video, text, scale)
    assert torch.equal(contrastive_loss(video, text, scale, negatives[:0]), contrastive_loss(video, text, scale))
    # a negative identical to a video's own caption costs that video half its probability
    matched = torch.tensor(100.0)
    assert contrastive_loss(video, video, matched, video[:1]) == pytest.approx(0.5 * np.log(2) / 4, abs=1e-3)
    with pytest.raises(ValueError, match="negative text embeddings"):
        contrastive_loss(video, text, scale, torch.randn(3, 5))


def test_cosine_distance():
    a = torch.randn(3, 4, 6)
    assert cosine_distance(a, a).abs() < 1e-6
    assert cosine_distance(a, -a) == pytest.approx(2.0, abs=1e-6)
    assert cosine_distance(a, 3 * a).abs() < 1e-6  # scale-free


def _tiny_vision_config() -> VideoPrismVisionConfig:
    return TINY.vision_config()


@pytest.mark.quick
def test_pool_video_tokens_is_the_video_towers_pooler():
    torch.manual_seed(0)
    video_model = VideoPrismVideoModel(_tiny_vision_config()).eval()
    pixels = torch.rand(2, FRAMES, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = video_model(pixel_values_videos=pixels).pooler_output[:, 0]
        tokens = encode_visible_tokens(video_model.vision_model, pixels, torch.arange(16).expand(2, -1))
        pooled = pool_video_tokens(video_model, tokens)
    assert (pooled - expected).abs().max() < 1e-5
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.quick
def test_shuffle_permutations():
    generator = torch.Generator().manual_seed(0)
    shuffled = shuffle_permutations(4, 64, True, generator)
    identity = torch.arange(64).expand(4, 64)
    assert all(torch.equal(torch.sort(row).values, torch.arange(64)) for row in shuffled)
    assert (shuffled != identity).float().mean() > 0.9  # almost every slot gets another position's token
    assert not torch.equal(shuffled[0], shuffled[1])
    assert torch.equal(shuffle_permutations(4, 64, False, generator), identity)


@pytest.mark.quick
def test_token_head_places_visible_tokens_and_mask_tokens():
    torch.manual_seed(0)
    config = _tiny_vision_config()
    head = TokenDistillationHead(config, DecoderConfig(width=16, num_layers=1), teacher_width=32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [1, 2, 5, 11, 12, 13, 15]] = True
    visible = visible_indices(mask)  # [2, 9]
    tokens = torch.randn(2, FRAMES * 9, 32)
    identity = shuffle_permutations(2, FRAMES * 16, False)
    arranged = head.arrange(tokens, visible, FRAMES, identity)  # [2, T*N, 16]
    projected = head.decoder.projector(tokens).reshape(2, FRAMES, 9, 16)
    for t in range(FRAMES):
        for k, position in enumerate(visible[0].tolist()):
            assert torch.allclose(arranged[0, t * 16 + position], projected[0, t, k])
        for position in masked_indices(mask)[0].tolist():
            assert torch.equal(arranged[0, t * 16 + position], head.mask_token)
    permutation = shuffle_permutations(2, FRAMES * 16, True, torch.Generator().manual_seed(1))
    shuffled = head.arrange(tokens, visible, FRAMES, permutation)
    assert torch.equal(shuffled, arranged.gather(1, permutation[..., None].expand(-1, -1, 16)))
    assert not torch.allclose(shuffled, arranged)
    # position embeddings are added after shuffling, at the slot: the output at slot i is the
    # decoder applied to (token of position permutation[i]) + position embedding i
    out = head(tokens, visible, FRAMES, permutation)
    expected = head.decoder.decode(shuffled + head.position_embeddings(FRAMES))
    assert out.shape == (2, FRAMES * 16, 32) and torch.allclose(out, expected, atol=1e-6)
    assert token_positions(visible[:1, :2], 2, 16).tolist() == [[0, 3, 16, 19]]


def test_global_head_pools_visible_tokens_without_positions():
    torch.manual_seed(0)
    config = _tiny_vision_config()
    head = GlobalDistillationHead(config, DecoderConfig(width=16, num_layers=2), config)
    tokens = torch.randn(2, 12, 32)
    pooled = head(tokens)
    assert pooled.shape == (2, 32)
    # no position embedding and attention pooling: the order of the visible tokens does not matter
    assert torch.allclose(head(tokens[:, torch.randperm(12)]), pooled, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------------


def test_stage1_loss_decreases(stage1_run):
    rows = _metrics(stage1_run)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {r["dataset"] for r in rows} == {"videos", "images"}  # alternating datasets
    early, late = _early_late(rows, "loss")
    assert early == pytest.approx(np.log(8), abs=0.15)  # chance level at the start
    assert late < early - 0.2
    # the names every training run has (encoder.training.run; glue training writes them too)
    assert {"train_config.json", "train_log.txt", "metrics.jsonl", "loss.png", "checkpoints", "model"} <= {
        p.name for p in stage1_run.iterdir()
    }
    assert not (stage1_run / "config.json").exists()


@pytest.mark.quick
def test_stage1_batches_drop_half_the_tokens_and_crop_for_images(corpus, tmp_path):
    task = build_stage1(_stage1_config(corpus, tmp_path / "run"))
    video_batch, image_batch = task.batch(0), task.batch(1)
    assert video_batch["visible_positions"].shape == (8, 8)  # 50% of 16 positions, tube masking
    assert not video_batch["crop_temporal_positions"] and image_batch["crop_temporal_positions"]
    assert image_batch["pixel_values_videos"].shape == (8, 1, 3, SIZE, SIZE)
    again = build_stage1(_stage1_config(corpus, tmp_path / "run")).batch(0)
    assert torch.equal(again["visible_positions"], video_batch["visible_positions"])  # seeded per step
    assert not torch.equal(task.batch(2)["visible_positions"], video_batch["visible_positions"])


def _with_negatives(corpus: Path, out: Path, count: int) -> Path:
    """videos.jsonl with ``count`` hard-negative captions per row (the other directions)."""
    rows = [json.loads(line) for line in (corpus / "videos.jsonl").read_text().splitlines()]
    for row in rows:
        move = row["caption"].split()[-1].rstrip("!")
        row["negative_captions"] = [row["caption"].replace(move, other) for other in MOVES if other != move][:count]
    manifest = out / "videos_with_negatives.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps({**row, "video": str(corpus / row["video"])}) + "\n" for row in rows))
    return manifest


def test_stage1_hard_negatives_join_the_batch_and_the_loss(corpus, tmp_path):
    manifest = _with_negatives(corpus, tmp_path / "data", count=3)
    config = _stage1_config(
        corpus,
        tmp_path / "run",
        train_manifests=[str(manifest)],
        hard_negatives=2,
        max_steps=6,
        model=dataclasses.replace(TINY, max_text_length=32),
    )
    task = build_stage1(config)
    batch = task.batch(0)
    _, rows = task.batches.batch(0)
    assert batch["input_ids"].shape == (8 + 8 * 2, 32)  # captions, then two negatives per video in row order
    dataset = task.datasets[0]
    for position, row in enumerate(rows):
        own = [
            tuple(ids) for ids in tokenize_texts(task.tokenizer, list(dataset.negative_captions(row)), 32)[0].tolist()
        ]
        assert len(set(own)) == 3
        drawn = [tuple(ids) for ids in batch["input_ids"][8 + 2 * position : 10 + 2 * position].tolist()]
        assert len(set(drawn)) == 2 and set(drawn) <= set(own)
    again = build_stage1(config).batch(0)
    assert torch.equal(again["input_ids"], batch["input_ids"])  # seeded per step
    run_stage1(config)
    rows = _metrics(tmp_path / "run")
    assert all(0.0 <= r["hard_negative_top1"] <= 1.0 for r in rows) and len(rows) == 6
    info = json.loads((tmp_path / "run" / "model" / "pretraining.json").read_text())
    assert info["config"]["hard_negatives"] == 2


def test_stage1_hard_negatives_need_enough_per_row(corpus, tmp_path):
    manifest = _with_negatives(corpus, tmp_path / "data", count=1)
    with pytest.raises(ManifestError, match="fewer than hard_negatives=2"):
        build_stage1(_stage1_config(corpus, tmp_path / "run", train_manifests=[str(manifest)], hard_negatives=2))
    with pytest.raises(ValueError, match="hard_negatives must be >= 0"):
        build_stage1(_stage1_config(corpus, tmp_path / "run", hard_negatives=-1))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "caption": "x", "negative_captions": ["y", ""]}\n')
    with pytest.raises(ManifestError, match="negative_captions"):
        read_manifest(bad)


def test_stage1_output_loads_in_transformers_and_load_encoder(stage1_run, corpus):
    model_dir = stage1_run / "model"
    clip = VideoPrismClipModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = load_encoder(model_dir)
    assert isinstance(encoder, VideoPrismVisionModel)
    pixels = ClipDataset(corpus / "videos.jsonl", FRAMES, SIZE).pixels([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(
            encoder(pixel_values_videos=pixels).last_hidden_state,
            clip.video_model.vision_model(pixel_values_videos=pixels).last_hidden_state,
        )
        ids, mask = tokenize_texts(tokenizer, [f"a {c} square moves left" for c in COLOURS], max_length=12)
        out = clip(pixel_values_videos=pixels, input_ids=ids, attention_mask=mask)
    assert out.video_embeds.shape == out.text_embeds.shape == (4, 32)
    # trained weights differ from a fresh model's, and the learned temperature is stored beside them
    saved = load_file(str(model_dir / "model.safetensors"))
    fresh = build_stage1(_stage1_config(corpus, stage1_run.parent / "fresh")).model.clip.state_dict()
    assert not torch.allclose(saved["text_model.layers.0.mlp.fc1.weight"], fresh["text_model.layers.0.mlp.fc1.weight"])
    info = json.loads((model_dir / "pretraining.json").read_text())
    assert load_logit_scale(model_dir).temperature == pytest.approx(info["temperature"], rel=1e-5)
    assert info["temperature"] != pytest.approx(0.07, rel=1e-3)


def test_stage1_resume_is_exact(corpus, tmp_path):
    from encoder.training.run import TrainConfigError

    straight = tmp_path / "straight"
    run_stage1(_stage1_config(corpus, straight, max_steps=6, checkpoint_every=3, warmup_steps=2))
    resumed = tmp_path / "resumed"
    run_stage1(_stage1_config(corpus, resumed, max_steps=6, checkpoint_every=3, warmup_steps=2))
    # simulate a run killed after its step-3 checkpoint: drop what came later, then run again
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "model")
    run_stage1(_stage1_config(corpus, resumed, max_steps=6, checkpoint_every=3, warmup_steps=2))
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _metrics(resumed)] == [r["loss"] for r in _metrics(straight)]
    assert "resumed from step-00000003 (step 3)" in (resumed / "train_log.txt").read_text()
    # the glue's resume rule: a finished run is left as it is, max_steps may grow, other settings must match
    written = (resumed / "model" / "model.safetensors").stat().st_mtime_ns
    run_stage1(_stage1_config(corpus, resumed, max_steps=6, checkpoint_every=3, warmup_steps=2))
    assert (resumed / "model" / "model.safetensors").stat().st_mtime_ns == written
    with pytest.raises(TrainConfigError, match=r"differ from its train_config.json: \['drop_ratio'\]"):
        run_stage1(_stage1_config(corpus, resumed, max_steps=6, checkpoint_every=3, warmup_steps=2, drop_ratio=0.25))
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        run_stage1(_stage1_config(corpus, resumed, max_steps=6, checkpoint_every=3, warmup_steps=2, resume=False))
    run_stage1(_stage1_config(corpus, resumed, max_steps=8, checkpoint_every=3, warmup_steps=2))
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((resumed / "train_config.json").read_text())["max_steps"] == 8
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    with pytest.raises(TrainConfigError, match="max_steps may grow on resume but not shrink"):
        run_stage1(_stage1_config(corpus, resumed, max_steps=7, checkpoint_every=3, warmup_steps=2))


# --------------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------------


def test_stage2_token_and_global_losses_decrease(stage2_run):
    rows = _metrics(stage2_run)
    for key in ("token_loss", "global_loss", "loss"):
        early, late = _early_late(rows, key)
        assert late < 0.7 * early, key
    assert all(r["loss"] == pytest.approx(r["token_loss"] + r["global_loss"], rel=1e-4) for r in rows)  # equal weights


def test_stage2_output_is_a_transformers_encoder(stage2_run, stage1_run, corpus):
    model_dir = stage2_run / "model"
    student = VideoPrismVisionModel.from_pretrained(model_dir).eval()
    assert isinstance(load_encoder(model_dir), VideoPrismVisionModel)
    teacher = VideoPrismClipModel.from_pretrained(stage1_run / "model").video_model.vision_model.eval()
    assert student.config.hidden_size == teacher.config.hidden_size
    pixels = ClipDataset(corpus / "videos.jsonl", FRAMES, SIZE).pixels([0, 1])
    with torch.no_grad():
        a = student(pixel_values_videos=pixels).last_hidden_state
        b = teacher(pixel_values_videos=pixels).last_hidden_state
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)  # initialised from, then trained away


def test_stage2_masks_and_shuffle_switches(stage1_run, corpus, tmp_path):
    base = dict(
        output_dir=str(tmp_path / "s2"),
        teacher=str(stage1_run / "model"),
        train_manifests=[str(corpus / "videos.jsonl")],
        batch_size=8,
        max_steps=5,
        warmup_steps=1,
        decoder=DecoderConfig(width=16, num_layers=1),
    )
    task = build_stage2(Stage2Config(**base))
    batch = task.batch(0)
    assert batch["mask"].sum(dim=1).tolist() == [10] * 8  # BEVT block masking at 0.65 of 16 positions
    assert batch["visible_positions"].shape == (8, 6)
    identity = torch.arange(FRAMES * 16).expand(8, -1)
    assert (batch["permutation"] != identity).float().mean() > 0.9  # shuffling permutes
    assert torch.equal(task.batch(0)["permutation"], batch["permutation"])  # seeded per step
    unshuffled = build_stage2(
        Stage2Config(**base, shuffle_tokens=False, global_distillation=False, mask_kind="tube", mask_ratio=0.5)
    )
    batch = unshuffled.batch(0)
    assert torch.equal(batch["permutation"], identity)  # the no-shuffle switch does not permute
    assert unshuffled.model.global_head is None and batch["visible_positions"].shape == (8, 8)
    with pytest.raises(ValueError, match="image_size"):
        build_stage2(Stage2Config(**base, image_size=SIZE + PATCH))


def _train_visible_and_masked_loss(task, steps: int = 30) -> tuple[float, float]:
    accelerator = make_accelerator(task.settings)
    optimizer = make_optimizer(task.model, task.settings)
    scheduler = task.scheduler(optimizer)
    visible, masked = [], []
    for step in range(steps):
        loss, values = task.loss(task.model, step, accelerator)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        visible.append(values["visible_token_loss"])
        masked.append(values["masked_token_loss"])
    return float(np.mean(visible[-6:])), float(np.mean(masked[-6:]))


@pytest.fixture(scope="module")
def noise_corpus_and_random_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """Clips of random patch colours (every token differs from clip to clip) and an untrained teacher."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    with open(root / "videos.jsonl", "w") as manifest:
        for i in range(16):
            base = rng.integers(0, 256, size=(4, 4, 3))
            frames = [
                np.kron(
                    np.clip(base + rng.integers(-30, 30, size=(4, 4, 3)), 0, 255), np.ones((PATCH, PATCH, 1))
                ).astype(np.uint8)
                for _ in range(FRAMES)
            ]
            write_video(root / f"n{i}.mp4", frames)
            manifest.write(json.dumps({"video": f"n{i}.mp4"}) + "\n")
    new_clip_model(TINY, vocab_size=10, seed=0).save_pretrained(root / "teacher")
    return root / "videos.jsonl", root / "teacher"


def test_token_shuffling_removes_the_copy_shortcut(noise_corpus_and_random_teacher, tmp_path):
    """With a decoder that cannot attend (0 layers), the output at slot i only sees the token placed
    there. Unshuffled, that is the visible token of position i, which the student (a copy of the
    teacher) already encodes: visible positions become much easier than masked ones. Shuffled, the
    token at slot i comes from another position, so visible positions are no easier than masked ones."""
    manifest, teacher = noise_corpus_and_random_teacher
    ratios = {}
    for shuffle in (False, True):
        config = Stage2Config(
            output_dir=str(tmp_path / f"s{shuffle}"),
            teacher=str(teacher),
            train_manifests=[str(manifest)],
            batch_size=8,
            max_steps=24,
            warmup_steps=1,
            learning_rate=3e-2,
            decoder=DecoderConfig(width=32, num_layers=0),
            global_distillation=False,
            shuffle_tokens=shuffle,
            cache_clips=True,
            cache_teacher_outputs=True,
        )
        visible, masked = _train_visible_and_masked_loss(build_stage2(config), steps=24)
        ratios[shuffle] = visible / masked
    assert ratios[False] < 0.6, ratios
    assert ratios[True] > 0.85, ratios


# --------------------------------------------------------------------------------------------------
# LiT and CLI
# --------------------------------------------------------------------------------------------------


def test_lit_tunes_text_and_head_on_the_frozen_stage2_encoder(stage1_run, stage2_run, corpus, tmp_path):
    config = LitConfig(
        output_dir=str(tmp_path / "lit"),
        encoder=str(stage2_run / "model"),
        init_from=str(stage1_run / "model"),
        train_manifests=[str(corpus / "videos.jsonl"), str(corpus / "images.jsonl")],
        batch_size=8,
        max_steps=24,
        warmup_steps=2,
        learning_rate=3e-2,
        checkpoint_every=24,
        log_every=1,
        cache_clips=True,
        cache_encoder_tokens=True,
        progress=False,
    )
    out = run_lit(config)
    early, late = _early_late(_metrics(tmp_path / "lit"), "loss")
    assert late < early - 0.1
    lit = load_file(str(out / "model.safetensors"))
    stage2 = load_file(str(stage2_run / "model" / "model.safetensors"))
    stage1 = load_file(str(stage1_run / "model" / "model.safetensors"))
    assert all(torch.equal(lit[f"video_model.vision_model.{k}"], v) for k, v in stage2.items())  # frozen encoder
    assert not torch.equal(lit["text_model.layers.0.mlp.fc1.weight"], stage1["text_model.layers.0.mlp.fc1.weight"])
    assert not torch.equal(lit["video_model.head.q_proj.weight"], stage1["video_model.head.q_proj.weight"])
    clip = VideoPrismClipModel.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(str(out)) is not None and clip.config.text_config.vocab_size > 0
    # the checkpoint stores only what LiT trains
    checkpoint = load_file(str(tmp_path / "lit" / "checkpoints" / "step-00000024" / "model.safetensors"))
    assert checkpoint and not any(".vision_model." in name for name in checkpoint)


def test_lit_from_scratch_learns_a_new_text_tower_on_the_locked_encoder(stage2_run, corpus, tmp_path):
    from vlm.cli.main import main
    from vlm.retrieval.video_text_model import load_video_text_model

    code = main(
        [
            "pretrain",
            "lit",
            "--out",
            str(tmp_path / "lit"),
            "--encoder",
            str(stage2_run / "model"),
            "--train",
            str(corpus / "videos.jsonl"),
            "--text-layers",
            "1",
            "--auxiliary-layers",
            "1",
            "--max-text-length",
            "12",
            "--vocab-size",
            "60",
            "--steps",
            "40",
            "--batch-size",
            "8",
            "--warmup-steps",
            "3",
            "--lr",
            "3e-2",
            "--cache-clips",
            "--cache-encoder-tokens",
            "--log-every",
            "1",
            "--save-every",
            "40",
            "--no-progress",
            "--report-to",
            "tensorboard",
        ]
    )
    assert code == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "lit" / "trackers").rglob("events.out.tfevents.*")).parent)).Reload()
    assert len(events.Scalars("loss")) == len([r for r in _metrics(tmp_path / "lit") if "loss" in r]) == 40
    early, late = _early_late(_metrics(tmp_path / "lit"), "loss")
    assert late < early - 0.1
    lit = load_file(str(tmp_path / "lit" / "model" / "model.safetensors"))
    stage2 = load_file(str(stage2_run / "model" / "model.safetensors"))
    assert all(torch.equal(lit[f"video_model.vision_model.{k}"], v) for k, v in stage2.items())  # locked encoder
    model = load_video_text_model(tmp_path / "lit" / "model")
    assert model.text_length == 12 and model.clip.config.text_config.num_hidden_layers == 1
    assert model.temperature != 0.07  # the learned temperature, saved beside the model, is used


def test_cli_train_tokenizer_and_stage1(corpus, tmp_path, capsys):
    from vlm.cli.main import main

    assert (
        main(
            [
                "train-tokenizer",
                "--captions",
                str(corpus / "videos.jsonl"),
                "--out",
                str(tmp_path / "tok"),
                "--vocab-size",
                "50",
                "--max-length",
                "12",
            ]
        )
        == 0
    )
    with_negatives = _with_negatives(corpus, tmp_path / "data", count=1)
    code = main(
        [
            "pretrain",
            "stage1",
            "--out",
            str(tmp_path / "run"),
            "--train",
            str(with_negatives),
            "--hard-negatives",
            "1",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--size",
            "tiny",
            "--hidden-size",
            "32",
            "--heads",
            "2",
            "--mlp-size",
            "64",
            "--model-image-size",
            str(SIZE),
            "--patch-size",
            str(PATCH),
            "--model-frames",
            str(FRAMES),
            "--max-text-length",
            "12",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--warmup-steps",
            "1",
            "--drop-ratio",
            "0.25",
            "--no-progress",
        ]
    )
    assert code == 0 and "wrote" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["drop_ratio"] == 0.25 and saved["model"]["hidden_size"] == 32 and saved["model"]["text_layers"] == 2
    assert saved["hard_negatives"] == 1 and "hard_negative_top1" in _metrics(tmp_path / "run")[-1]
    assert VideoPrismClipModel.from_pretrained(tmp_path / "run" / "model").config.vision_config.hidden_size == 32
    assert main(["pretrain", "stage2", "--out", str(tmp_path / "s2"), "--train", str(corpus / "videos.jsonl")]) == 2
    assert "needs teacher" in capsys.readouterr().err


@pytest.mark.quick
def test_stage1_config_round_trips_through_json(tmp_path):
    from encoder.common.configs import load_config, save_config

    config = Stage1Config(output_dir="x", train_manifests=["a.jsonl"], model=TINY, drop_ratio=0.3)
    save_config(config, tmp_path / "c.json")
    assert load_config(Stage1Config, tmp_path / "c.json") == config
    assert (
        dataclasses.asdict(Stage2Config(output_dir="x", teacher="t", train_manifests=["a"]))["decoder"]["num_layers"]
        == 4
    )


def test_unreadable_clip_is_reported_by_name(tmp_path):
    from encoder.video.decode import VideoDecodeError

    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "m.jsonl").write_text(
        '{"video": "broken.mp4", "caption": "x"}\n{"video": "missing.mp4", "caption": "y"}\n'
    )
    dataset = ClipDataset(tmp_path / "m.jsonl", FRAMES, SIZE)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        dataset.pixels([0])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        dataset.pixels([1])


def test_pretrain_flags_are_generated_from_the_stage_configs(tmp_path):
    """Every field of a stage's config (and of its nested architecture / decoder config) is a flag; the
    short spellings stay; flags lay over --config; --size presets the architecture."""
    from encoder.common.configs import save_config
    from encoder.videoprism.pretrain.stage1 import ModelSize, Stage1Config
    from encoder.videoprism.pretrain.stage2 import Stage2Config
    from vlm.cli import main as cli
    from vlm.cli.pretrain import config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "pretrain",
            "stage2",
            "--out",
            str(tmp_path / "s2"),
            "--train",
            "a.jsonl",
            "b.jsonl",
            "--teacher",
            "t",
            "--no-shuffle-tokens",
            "--decoder-layers",
            "2",
            "--decoder-width",
            "64",
            "--steps",
            "5",
            "--warmup-steps",
            "1",
            "--mask",
            "tube",
            "--cache-teacher",
        ]
    )
    config = config_from_args(Stage2Config, args)
    assert (config.train_manifests, config.max_steps, config.shuffle_tokens, config.global_distillation) == (
        ["a.jsonl", "b.jsonl"],
        5,
        False,
        True,
    )
    assert (config.decoder.num_layers, config.decoder.width, config.mask_kind, config.cache_teacher_outputs) == (
        2,
        64,
        "tube",
        True,
    )

    base = Stage1Config(
        output_dir=str(tmp_path / "s1"),
        train_manifests=["m.jsonl"],
        max_steps=9,
        warmup_steps=2,
        model=ModelSize.tiny(),
        vocab_size=77,
    )
    save_config(base, tmp_path / "config.json")
    args = parser.parse_args(
        ["pretrain", "stage1", "--config", str(tmp_path / "config.json"), "--steps", "7", "--heads", "4"]
    )
    config = config_from_args(Stage1Config, args)
    assert (config.max_steps, config.vocab_size, config.train_manifests) == (
        7,
        77,
        ["m.jsonl"],
    )  # from the file unless given
    assert config.model == dataclasses.replace(ModelSize.tiny(), num_attention_heads=4)
    args = parser.parse_args(["pretrain", "stage1", "--config", str(tmp_path / "config.json"), "--size", "base"])
    assert config_from_args(Stage1Config, args).model == ModelSize.base()


def test_train_and_pretrain_share_their_flags(tmp_path, capsys):
    """A setting both trainings have has one flag in `prism-vlm train` and `prism-vlm pretrain`; the old
    spellings stay as aliases; a bad precision is refused alike; resuming from the run's own config."""
    from encoder.common.configs import save_config
    from vlm.cli import main as cli
    from vlm.cli.pretrain import config_from_args as pretrain_config
    from vlm.cli.train import config_from_args as train_config

    parser = cli.build_parser()
    shared = [
        "--checkpoint-every",
        "7",
        "--keep-checkpoints",
        "3",
        "--log-every",
        "2",
        "--mixed-precision",
        "bf16",
        "--threads",
        "1",
        "--no-progress",
        "--report-to",
        "none",
        "--max-steps",
        "9",
        "--warmup-steps",
        "1",
    ]
    glue_args = parser.parse_args(["train", "--output-dir", str(tmp_path / "g"), *shared, "--no-resume"])
    glue = train_config(glue_args)
    stage = pretrain_config(
        Stage1Config,
        parser.parse_args(
            ["pretrain", "stage1", "--out", str(tmp_path / "s"), "--train", "a.jsonl", *shared, "--no-resume"]
        ),
    )
    names = (
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "mixed_precision",
        "cpu_threads",
        "progress",
        "report_to",
        "max_steps",
        "warmup_steps",
    )
    expected = [7, 3, 2, "bf16", 1, False, "none", 9, 1]
    assert [getattr(glue, n) for n in names] == [getattr(stage, n) for n in names] == expected
    assert glue_args.resume is False and stage.resume is False
    assert parser.parse_args(["train", "--output-dir", "x"]).resume is True  # resuming is the default of both
    assert parser.parse_args(["train", "--output-dir", "x", "--restart"]).resume is False
    old = ["pretrain", "stage1", "--out", str(tmp_path / "s"), "--train", "a.jsonl", "--save-every", "5", "--restart"]
    old_spelling = pretrain_config(Stage1Config, parser.parse_args(old))
    assert (old_spelling.checkpoint_every, old_spelling.resume) == (5, False)
    for command in (["train", "--output-dir", "x"], ["pretrain", "stage1", "--out", "x", "--train", "a.jsonl"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--mixed-precision", "fp32"])
        assert "invalid choice: 'fp32'" in capsys.readouterr().err
    # without --config, a run directory's own train_config.json (or a legacy config.json) is the base
    save_config(
        Stage1Config(
            output_dir=str(tmp_path / "s"),
            train_manifests=["m.jsonl"],
            max_steps=9,
            warmup_steps=2,
            model=ModelSize.tiny(),
            vocab_size=77,
        ),
        tmp_path / "s" / "train_config.json",
    )
    resumed = pretrain_config(
        Stage1Config, parser.parse_args(["pretrain", "stage1", "--out", str(tmp_path / "s"), "--steps", "12"])
    )
    assert (resumed.train_manifests, resumed.vocab_size, resumed.max_steps) == (["m.jsonl"], 77, 12)
    assert resumed.model == ModelSize.tiny()
