"""Frozen-feature MAP probes: they learn what the tokens carry, and nothing when labels are noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from encoder.videoprism.features import FeatureCache, extract_features
from encoder.videoprism.probe import (
    MAPProbe,
    ProbeConfig,
    SingleQueryAttention,
    cached_tokens,
    probe_accuracy,
    probe_predictions,
    train_map_probe,
)
from vlm.shapes import ShapesConfig, make_shapes_corpus, probe_labels, read_attributes

NUM_CLASSES, TOKENS, WIDTH = 4, 16, 32
FAST = ProbeConfig(epochs=15, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread (tests/conftest.py)


def tokens_with_hidden_class(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise tokens [count, TOKENS, WIDTH]; the class shows only at ONE random token per clip (a
    fixed direction per class), so a probe has to attend to the right token. -> (tokens, labels)"""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(NUM_CLASSES, WIDTH, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    tokens = torch.randn(count, TOKENS, WIDTH, generator=generator)
    where = torch.randint(0, TOKENS, (count,), generator=generator)
    tokens[torch.arange(count), where] += 1.5 * directions[labels]
    return tokens, labels


def test_probe_learns_separable_tokens():
    train_tokens, train_labels = tokens_with_hidden_class(600, seed=0)
    test_tokens, test_labels = tokens_with_hidden_class(300, seed=1)
    accuracy = probe_accuracy(train_tokens, train_labels, test_tokens, test_labels, FAST, seed=0)
    assert accuracy > 0.9


def test_probe_stays_near_chance_on_random_labels():
    train_tokens, _ = tokens_with_hidden_class(600, seed=0)
    test_tokens, _ = tokens_with_hidden_class(400, seed=1)
    rng = np.random.default_rng(5)
    train_labels, test_labels = rng.integers(0, NUM_CLASSES, 600), rng.integers(0, NUM_CLASSES, 400)
    accuracy = probe_accuracy(train_tokens, train_labels, test_tokens, test_labels, FAST, seed=0)
    # chance is 0.25; 0.1 is about 4.6 standard errors of a 400-clip accuracy
    assert abs(accuracy - 1 / NUM_CLASSES) < 0.1


def test_probe_is_deterministic_and_leaves_the_global_rng_alone():
    tokens, labels = tokens_with_hidden_class(128, seed=2)
    config = ProbeConfig(epochs=2, batch_size=32)
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    first = probe_predictions(train_map_probe(tokens, labels, NUM_CLASSES, config, seed=3), tokens)
    assert torch.equal(torch.rand(3), expected_next)
    second = probe_predictions(train_map_probe(tokens, labels, NUM_CLASSES, config, seed=3), tokens)
    assert torch.equal(first, second)
    other = train_map_probe(tokens, labels, NUM_CLASSES, config, seed=4)
    same = train_map_probe(tokens, labels, NUM_CLASSES, config, seed=3)
    assert not torch.equal(other.attention.query, same.attention.query)
    torch.set_num_threads(2)
    probe = train_map_probe(tokens, labels, NUM_CLASSES, config, seed=3, num_threads=1)
    assert torch.get_num_threads() == 2  # restored
    torch.set_num_threads(1)
    assert isinstance(probe, MAPProbe) and not probe.training
    assert probe(tokens[:5]).shape == (5, NUM_CLASSES) and probe.pooled(tokens[:5]).shape == (5, WIDTH)


def test_torch_threads_sets_and_restores_the_count():
    from encoder.training.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=">= 1"):
        with torch_threads(0):
            pass
    assert torch.get_num_threads() == before


def test_single_query_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
    nn.init.normal_(reference.in_proj_bias)
    query, tokens = torch.randn(WIDTH), torch.randn(3, TOKENS, WIDTH)
    folded = SingleQueryAttention(WIDTH, 4)
    folded.load_from_multihead(reference, query)
    expected, _ = reference(query.expand(3, 1, WIDTH), tokens, tokens, need_weights=False)
    torch.testing.assert_close(folded(tokens), expected[:, 0], atol=1e-5, rtol=1e-5)


def test_probe_config_round_trips_as_json(tmp_path):
    config = ProbeConfig(num_heads=2, epochs=7, learning_rate=3e-4)
    config.save(tmp_path / "probe.json")
    assert ProbeConfig.load(tmp_path / "probe.json") == config
    with pytest.raises(ValueError, match="unknown ProbeConfig fields"):
        ProbeConfig.from_dict({"epochs": 3, "layers": 2})
    with pytest.raises(ValueError, match="epochs"):
        ProbeConfig(epochs=0)


def test_probe_rejects_bad_input():
    tokens, labels = tokens_with_hidden_class(8, seed=0)
    with pytest.raises(ValueError, match=r"\[B, M, D\]"):
        probe_accuracy(tokens[0], labels, tokens, labels, FAST)
    with pytest.raises(ValueError, match="train labels must have shape"):
        probe_accuracy(tokens, labels[:5], tokens, labels, FAST)
    with pytest.raises(ValueError, match="non-negative integers"):
        probe_accuracy(tokens, labels.float(), tokens, labels, FAST)
    with pytest.raises(ValueError, match="does not divide"):
        probe_accuracy(tokens, labels, tokens, labels, ProbeConfig(num_heads=5))
    with pytest.raises(ValueError, match="width"):
        probe_accuracy(tokens, labels, tokens[..., :16], labels, ProbeConfig(epochs=1))
    with pytest.raises(ValueError, match="beyond num_classes"):
        train_map_probe(tokens, torch.full((8,), 3), num_classes=2, config=FAST)


def test_probe_on_cached_tokens_of_a_shapes_corpus(tmp_path):
    """The whole path of a frozen probe: corpus -> tiny random VideoPrism -> feature cache -> labels -> probe."""
    config = ShapesConfig(num_frames=4, frame_size=36, two_object_fraction=0.5, travel=(0.2, 0.25))
    corpus = make_shapes_corpus(tmp_path / "shapes", 24, seed=0, config=config, progress=False)
    torch.manual_seed(0)
    encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            num_spatial_layers=1,
            num_temporal_layers=1,
            image_size=36,
            num_frames=4,
        )
    ).eval()
    clips = read_attributes(corpus)
    videos = [str(corpus / clip.video) for clip in clips]
    extract_features(
        encoder, videos, tmp_path / "cache", num_frames=4, size=36, batch_size=8, num_workers=0, progress=False
    )
    tokens = cached_tokens(FeatureCache(tmp_path / "cache"), videos)
    assert tokens.shape == (24, 4 * 4, 32)

    positions, labels, names = probe_labels(clips, "colour")
    assert positions == [i for i, clip in enumerate(clips) if clip.count == 1]
    assert [names[label] for label in labels] == [clips[i].objects[0].colour for i in positions]
    positions, labels, names = probe_labels(clips, "motion")
    assert len(positions) == 24 and [names[label] for label in labels] == [clip.motion for clip in clips]
    accuracy = probe_accuracy(
        tokens[:16], labels[:16], tokens[16:], labels[16:], ProbeConfig(epochs=2), seed=0, num_classes=len(names)
    )
    assert 0.0 <= accuracy <= 1.0
    with pytest.raises(KeyError, match="not in the feature cache"):
        cached_tokens(FeatureCache(tmp_path / "cache"), videos + ["missing.mp4"])
