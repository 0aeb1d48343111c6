"""Parity of converted official checkpoints with the official JAX outputs (tests/fixtures/videoprism_reference)."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, VideoPrismClipModel, VideoPrismVisionModel

from encoder.videoprism.convert import CheckpointFormatError, convert_checkpoint, infer_config, read_flax_checkpoint
from encoder.videoprism.factorized import encode_tokens
from encoder.videoprism.loading import load_encoder
from encoder.videoprism.text_tokenizer import canonicalize_text, tokenize_texts
from tests.helpers.fixture_files import REFERENCE_DIR as REFERENCE
from tests.helpers.fixture_files import TEST_SPM_MODEL
from vlm.cli.main import main as cli_main

pytestmark = pytest.mark.quick

TOKEN_ATOL = 1e-4
MIN_COSINE = 0.99999


def video_input(uint8: np.ndarray) -> torch.Tensor:
    """Official [B, T, H, W, 3] uint8 -> transformers [B, T, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(uint8.astype(np.float32) / np.float32(255)).permute(0, 1, 4, 2, 3)


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy().reshape(b.shape) - b).max())


def min_cosine(a: torch.Tensor, b: np.ndarray) -> float:
    a = a.detach().numpy().reshape(b.shape)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.min())


@pytest.fixture(scope="module")
def encoder_io():
    return np.load(REFERENCE / "encoder_tiny_io.npz")


@pytest.fixture(scope="module")
def lvt_io():
    return np.load(REFERENCE / "lvt_tiny_io.npz")


@pytest.fixture(scope="module")
def converted_dirs(tmp_path_factory):
    """Both fixtures converted with the CLI, as a user would."""
    root = tmp_path_factory.mktemp("converted")
    assert cli_main(["convert", str(REFERENCE / "encoder_tiny_params.npz"), str(root / "encoder")]) == 0
    assert (
        cli_main(
            [
                "convert",
                str(REFERENCE / "lvt_tiny_params.npz"),
                str(root / "lvt"),
                "--tokenizer",
                str(TEST_SPM_MODEL),
            ]
        )
        == 0
    )
    return root


def test_config_is_inferred_from_shapes():
    config = infer_config(read_flax_checkpoint(REFERENCE / "encoder_tiny_params.npz"))
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (64, 4, 128)
    assert (config.num_spatial_layers, config.num_temporal_layers) == (2, 2)
    assert (config.image_size, config.num_frames, list(config.tubelet_size)) == (72, 4, [1, 18, 18])

    lvt = infer_config(read_flax_checkpoint(REFERENCE / "lvt_tiny_params.npz"))
    # the pooler's 4 heads x 64 force intermediate_size 256: the 128-wide FFNs are zero-padded
    assert lvt.vision_config.intermediate_size == 256
    assert lvt.vision_config.num_auxiliary_layers == 2
    assert (lvt.text_config.vocab_size, lvt.text_config.num_hidden_layers, lvt.text_config.intermediate_size) == (
        1000,
        2,
        256,
    )


@pytest.mark.parametrize("case", ["a", "b", "c", "d"])
def test_encoder_parity(converted_dirs, encoder_io, case):
    """Cases a-d: native shape, temporal and spatial pos-emb interpolation, antialiased downsampling."""
    model = VideoPrismVisionModel.from_pretrained(converted_dirs / "encoder").eval()
    with torch.no_grad():
        out = model(pixel_values_videos=video_input(encoder_io[f"{case}_video_uint8"]), interpolate_pos_encoding=True)
    assert max_abs(out.last_hidden_state, encoder_io[f"{case}_embeddings"]) <= TOKEN_ATOL
    spatial = model.layernorm1(out.last_spatial_hidden_state)  # [B*T, N, D]
    batch, frames = encoder_io[f"{case}_video_uint8"].shape[:2]
    assert max_abs(spatial.reshape(batch, -1, spatial.shape[-1]), encoder_io[f"{case}_spatial_features"]) <= TOKEN_ATOL
    if case == "a":
        assert max_abs(out.last_spatial_hidden_state, encoder_io["a_spatial_encoder"]) <= TOKEN_ATOL
        assert max_abs(out.last_temporal_hidden_state, encoder_io["a_temporal_encoder"]) <= TOKEN_ATOL


def test_encoder_parity_with_frame_paddings(encoder_io):
    """Case e: padded frames masked as keys, their FFN outputs zeroed - every token matches."""
    model = convert_checkpoint(REFERENCE / "encoder_tiny_params.npz")
    paddings = torch.from_numpy(encoder_io["e_frame_paddings"])
    with torch.no_grad():
        tokens = encode_tokens(model, video_input(encoder_io["a_video_uint8"]), paddings)
    assert max_abs(tokens, encoder_io["e_embeddings"]) <= TOKEN_ATOL
    # the padding really changes sample 1, so the check above is not the unpadded output again
    assert np.abs(encoder_io["e_embeddings"][1] - encoder_io["a_embeddings"][1]).max() > 0.1


def test_video_text_parity(converted_dirs, lvt_io):
    model = VideoPrismClipModel.from_pretrained(converted_dirs / "lvt").eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_dirs / "lvt")
    ids, mask = tokenize_texts(tokenizer, [str(c) for c in lvt_io["captions"]], max_length=16)
    assert np.array_equal(ids.numpy(), lvt_io["text_token_ids"])
    assert np.array_equal(mask.numpy(), 1 - lvt_io["text_paddings"].astype(np.int64))
    assert [canonicalize_text(str(c)) for c in lvt_io["captions"]] == [str(c) for c in lvt_io["captions_canonicalized"]]

    with torch.no_grad():
        video = model.get_video_features(pixel_values_videos=video_input(lvt_io["video_uint8"]))
        text = model.get_text_features(input_ids=ids, attention_mask=mask)
        vision_out = model.video_model.vision_model(pixel_values_videos=video_input(lvt_io["video_uint8"]))
        aux = video.last_hidden_state  # [B, T*N, D]
        batch, frames = lvt_io["video_uint8"].shape[:2]
        per_frame = aux.reshape(batch * frames, -1, aux.shape[-1])
        frame_embeddings = model.video_model.head_layernorm(model.video_model.head(per_frame)[0])
        frame_embeddings = torch.nn.functional.normalize(frame_embeddings, dim=-1)
        unnormalized_video = model.video_model.head_layernorm(model.video_model.head(aux)[0])

    assert max_abs(vision_out.last_hidden_state, lvt_io["spatiotemporal_features"]) <= TOKEN_ATOL
    assert max_abs(aux, lvt_io["auxiliary_encoder"]) <= TOKEN_ATOL
    assert max_abs(unnormalized_video, lvt_io["video_embeddings_unnormalized"]) <= TOKEN_ATOL
    for ours, name in (
        (video.pooler_output, "video_embeddings"),
        (text.pooler_output, "text_embeddings"),
        (frame_embeddings, "frame_embeddings"),
    ):
        assert max_abs(ours, lvt_io[name]) <= TOKEN_ATOL
        assert min_cosine(ours, lvt_io[name]) >= MIN_COSINE
    # text features: compare unpadded rows and the class token (last row)
    valid = np.concatenate([lvt_io["text_paddings"] == 0, np.ones((len(ids), 1), bool)], axis=1)
    assert np.abs(text.last_hidden_state.numpy()[valid] - lvt_io["text_features"][valid]).max() <= TOKEN_ATOL


@pytest.mark.parametrize("source", ["npz", "transformers_dir"])
def test_load_encoder_takes_the_vision_tower_of_a_video_text_model(converted_dirs, lvt_io, source):
    path = REFERENCE / "lvt_tiny_params.npz" if source == "npz" else converted_dirs / "lvt"
    model = load_encoder(path)
    assert isinstance(model, VideoPrismVisionModel)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        tokens = encode_tokens(model, video_input(lvt_io["video_uint8"]))
    assert max_abs(tokens, lvt_io["spatiotemporal_features"]) <= TOKEN_ATOL


def test_load_encoder_dtype_and_errors(tmp_path):
    model = load_encoder(REFERENCE / "encoder_tiny_params.npz", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path)  # a folder without config.json
    with pytest.raises(ValueError, match="dtype"):
        load_encoder(REFERENCE / "encoder_tiny_params.npz", dtype="int3")
    not_videoprism = tmp_path / "other.npz"
    np.savez(not_videoprism, **{"params/foo/bar": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointFormatError, match="not a VideoPrism checkpoint"):
        load_encoder(not_videoprism)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CheckpointFormatError):
        load_encoder(garbage)


@pytest.mark.parametrize("damage", ["truncated", "bad crc", "not a zip"])
def test_corrupt_npz_is_a_clear_error(tmp_path, capsys, damage):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, **{"params/a": np.ones((64, 64)), "params/b": np.zeros(512)})
    data = bytearray(good.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bad crc":
        data[200:260] = b"\0" * 60
    else:
        data = bytearray(b"PK\3\4" + b"garbage" * 10)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="is not a readable .npz checkpoint"):
        read_flax_checkpoint(bad)
    assert cli_main(["convert", str(bad), str(tmp_path / "out")]) == 2
    assert "is not a readable .npz checkpoint" in capsys.readouterr().err
