"""Continuous batching (vlm.serving.continuous_batching): requests join and leave a running batch, and each
request's tokens equal what generate() gives it alone."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from tests.helpers.tiny_glue import FRAMES, SIZE, build_tiny_glue
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import GenerationSettings, generate_ids
from vlm.serving.continuous_batching import (
    ContinuousBatcher,
    ContinuousBatchingConfig,
    supports_continuous_batching,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [
    "what?",
    "what is the man in the red shirt holding in his hands?",
    "who is talking here?",
    "why is the dog so happy today, do you think?",
]


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return build_tiny_glue(smollm2_tokenizer, seed=3)


@pytest.fixture(scope="module")
def prompts(model) -> list[torch.Tensor]:
    """Four prompts [S_i, H] of different lengths (different clips and questions)."""
    torch.manual_seed(0)
    clips = torch.rand(len(QUESTIONS), FRAMES, SIZE, SIZE, 3)
    with torch.inference_mode():
        inputs = VideoAssistant(model).answer_inputs(model.get_video_features(clips), QUESTIONS)
    rows = [inputs.row(i) for i in range(len(QUESTIONS))]
    assert len({row.shape[0] for row in rows}) == len(rows)  # really padded differently when batched
    return rows


def alone(model, prompt: torch.Tensor, max_new_tokens: int, stop_at_newline: bool = False) -> list[int]:
    with torch.inference_mode():
        return generate_ids(
            model.llm,
            model.tokenizer,
            prompt[None],
            torch.ones(1, prompt.shape[0], dtype=torch.long),
            GenerationSettings(max_new_tokens=max_new_tokens),
            stop_at_newline=stop_at_newline,
        )[0]


def test_requests_joining_and_leaving_get_their_tokens_alone(model, prompts):
    """Requests arrive while another runs and have different budgets: rows join mid-generation and
    leave when done, and each gets exactly its unbatched tokens."""
    budgets = [3, 9, 14, 6, 11, 2, 8]
    expected_first = alone(model, prompts[0], 300)
    expected = [alone(model, prompts[(i + 1) % 4], budget) for i, budget in enumerate(budgets)]
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=3)) as batcher:
        first = batcher.submit(lambda: prompts[0], 300, streaming=True)
        next(iter(first))  # the first request is generating
        streams = [batcher.submit(lambda i=i: prompts[(i + 1) % 4], budget) for i, budget in enumerate(budgets)]
        results = [stream.result(timeout=60) for stream in streams]
        assert first.result(timeout=60) == expected_first
        sizes = list(batcher.step_sizes)
    # read once the worker has stopped (a result is handed out just before its row is removed)
    assert batcher._rows == [] and batcher._cache is None  # everything left, nothing held
    assert results == expected
    assert [len(r) for r in results] == budgets  # the random LLM does not stop early: the budget ends each
    assert sizes[0] == 1 and max(sizes) == 3  # others joined the running row, never more than max_batch


def test_one_at_a_time_with_max_batch_one(model, prompts):
    expected = [alone(model, prompt, 5) for prompt in prompts]
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=1)) as batcher:
        streams = [batcher.submit(lambda p=p: p, 5) for p in prompts]
        assert [s.result(timeout=60) for s in streams] == expected
        assert set(batcher.step_sizes) == {1}


@pytest.mark.quick
def test_stop_at_newline_and_streamed_tokens(model, prompts):
    newline = model.tokenizer.convert_tokens_to_ids("Ċ")  # SmolLM2's "\n"
    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        streams = [batcher.submit(lambda p=p: p, 12, stop_at_newline=True, streaming=True) for p in prompts]
        streamed = [list(stream) for stream in streams]
    expected = [alone(model, prompt, 12, stop_at_newline=True) for prompt in prompts]
    assert streamed == expected
    assert all(newline not in ids[:-1] for ids in streamed)


@pytest.mark.quick
def test_a_cancelled_request_leaves_and_the_others_go_on(model, prompts):
    expected = alone(model, prompts[1], 20)
    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        leaving = batcher.submit(lambda: prompts[0], 200, streaming=True)
        staying = batcher.submit(lambda: prompts[1], 20)
        first = next(iter(leaving))
        leaving.cancel()
        assert staying.result(timeout=60) == expected
        assert leaving.done and len(leaving.result()) < 200 and leaving.result()[0] == first
        waiting = batcher.submit(lambda: prompts[2], 5)
        waiting.cancel()
        got = waiting.result(timeout=60)  # dropped before it started, or left the batch after a step
        assert got == alone(model, prompts[2], 5)[: len(got)]


@pytest.mark.quick
def test_a_request_whose_prompt_fails_fails_alone(model, prompts):
    def broken():
        raise ValueError("no such clip")

    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        good = batcher.submit(lambda: prompts[0], 6)
        bad = batcher.submit(broken, 6)
        wrong_shape = batcher.submit(lambda: prompts[1][None], 6)
        with pytest.raises(ValueError, match="no such clip"):
            bad.result(timeout=60)
        with pytest.raises(ValueError, match=r"\[S, H\]"):
            wrong_shape.result(timeout=60)
        assert good.result(timeout=60) == alone(model, prompts[0], 6)


def test_a_failed_round_reruns_its_requests_alone(model, prompts, monkeypatch):
    """A forward that fails on a batch (out of memory, say): every request still gets its own tokens
    (run again alone), except a streamed one that already showed text, which gets the error."""
    expected = [alone(model, prompt, 6) for prompt in prompts]
    forward = model.llm.forward
    failures = []

    def fails_on_batches(*args, **kwargs):
        batch = (kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]).shape[
            0
        ]
        if batch > 1 and len(failures) < 1:
            failures.append(batch)
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=4)) as batcher:
        gate = threading.Event()
        blocker = batcher.call(gate.wait)  # hold the worker until all four are queued
        streams = [batcher.submit(lambda p=p: p, 6) for p in prompts]
        monkeypatch.setattr(model.llm, "forward", fails_on_batches)
        gate.set()
        blocker.result(timeout=60)
        assert [s.result(timeout=60) for s in streams] == expected
    assert failures == [4]

    monkeypatch.setattr(model.llm, "forward", forward)
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=4)) as batcher:
        shown = batcher.submit(lambda: prompts[0], 400, streaming=True)
        first = next(iter(shown))
        failures.clear()
        monkeypatch.setattr(model.llm, "forward", fails_on_batches)
        later = batcher.submit(lambda: prompts[1], 6)  # its prefill joins; the next round fails
        assert later.result(timeout=60) == expected[1]
        with pytest.raises(RuntimeError, match="out of memory"):
            shown.result(timeout=60)
        assert shown._tokens[0] == first


@pytest.mark.quick
def test_calls_run_between_steps_in_arrival_order(model, prompts):
    order = []
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=1)) as batcher:
        first = batcher.submit(lambda: (order.append("first"), prompts[0])[1], 4)
        call = batcher.call(lambda: order.append("call") or 42)
        second = batcher.submit(lambda: (order.append("second"), prompts[1])[1], 4)
        failing = batcher.call(lambda: 1 / 0)
        assert call.result(timeout=60) == 42
        second.result(timeout=60)
        first.result(timeout=60)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=60)
    assert order == ["first", "call", "second"]


def test_bad_settings_and_unsupported_llms_are_refused(model):
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousBatchingConfig(max_batch=0)
    assert supports_continuous_batching(model.llm)
    sliding = MistralForCausalLM(
        MistralConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
            sliding_window=8,
        )
    )
    assert not supports_continuous_batching(sliding)
    with pytest.raises(ValueError, match="sliding-window"):
        ContinuousBatcher(sliding, model.tokenizer)
    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        with pytest.raises(ValueError, match="max_new_tokens"):
            batcher.submit(lambda: None, 0)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(lambda: None, 3)


# ----------------------------------------------------------------------------- per-row settings

SAMPLED = GenerationSettings(do_sample=True, temperature=1.5, top_p=0.95, top_k=40, seed=7)


def _submitted_alone(model, prompt: torch.Tensor, settings: GenerationSettings, max_new_tokens: int) -> list[int]:
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=1)) as batcher:
        return batcher.submit(lambda: prompt, max_new_tokens, settings=settings).result(timeout=60)


def test_the_same_seed_gives_the_same_reply_alone_and_in_a_busy_batch(model, prompts):
    """A sampled row draws from its own generator: its reply depends on its seed, not on its neighbours
    (greedy rows, other sampled rows, rows joining and leaving)."""
    reference = _submitted_alone(model, prompts[1], SAMPLED, 16)
    assert reference == _submitted_alone(model, prompts[1], SAMPLED, 16)
    other_seed = _submitted_alone(model, prompts[1], SAMPLED.replace(seed=8), 16)
    assert other_seed != reference  # the seed matters: this is sampling
    assert reference != alone(model, prompts[1], 16)  # and not greedy decoding
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=4)) as batcher:
        running = batcher.submit(lambda: prompts[0], 40, streaming=True, settings=SAMPLED.replace(seed=1))
        next(iter(running))  # a sampled neighbour is already generating
        greedy = batcher.submit(lambda: prompts[2], 6)
        ours = batcher.submit(lambda: prompts[1], 16, settings=SAMPLED)
        other = batcher.submit(lambda: prompts[3], 10, settings=SAMPLED.replace(seed=99, temperature=0.7))
        results = [stream.result(timeout=60) for stream in (ours, greedy, other, running)]
        assert max(batcher.step_sizes) >= 3  # they really ran together
    assert results[0] == reference


def test_greedy_rows_are_unaffected_by_a_sampled_neighbour(model, prompts):
    expected = [alone(model, prompt, 12) for prompt in prompts[1:]]
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=4)) as batcher:
        sampled = batcher.submit(lambda: prompts[0], 30, streaming=True, settings=SAMPLED)
        next(iter(sampled))
        greedy = [batcher.submit(lambda p=p: p, 12) for p in prompts[1:]]
        assert [stream.result(timeout=60) for stream in greedy] == expected
        sampled.result(timeout=60)


@pytest.mark.quick
def test_a_repetition_penalty_row_equals_generate_with_it(model, prompts):
    """Greedy with a repetition penalty (transformers' processor over the generated tokens) gives what
    generate() gives with the same setting."""
    settings = GenerationSettings(max_new_tokens=14, repetition_penalty=0.05)  # < 1: repeats favoured
    with torch.inference_mode():
        expected = generate_ids(
            model.llm, model.tokenizer, prompts[2][None], torch.ones(1, prompts[2].shape[0], dtype=torch.long), settings
        )[0]
    assert expected != alone(model, prompts[2], 14)  # the penalty changes this reply
    with ContinuousBatcher(model.llm, model.tokenizer, ContinuousBatchingConfig(max_batch=2)) as batcher:
        neighbour = batcher.submit(lambda: prompts[0], 14)
        penalised = batcher.submit(lambda: prompts[2], 14, settings=settings)
        assert penalised.result(timeout=60) == expected
        neighbour.result(timeout=60)


@pytest.mark.quick
def test_beam_search_is_refused_with_a_pointer(model, prompts):
    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        with pytest.raises(ValueError, match="beam search is not batched"):
            batcher.submit(lambda: prompts[0], 4, settings=GenerationSettings(num_beams=2))


@pytest.mark.quick
def test_ignore_eos_goes_on_past_a_stop_token(model, prompts):
    expected = alone(model, prompts[1], 8)
    with ContinuousBatcher(model.llm, model.tokenizer) as batcher:
        batcher._stop_ids = set(batcher._stop_ids) | {expected[2]}  # the third token now ends the reply
        assert batcher.submit(lambda: prompts[1], 8).result(timeout=60) == expected[:2]
        assert batcher.submit(lambda: prompts[1], 8, ignore_eos=True).result(timeout=60) == expected
