"""Conversation training data: LLaVA and Hugging Face layouts, bad rows, the chat-template rendering
shared by training and inference (assistant-only labels, token by token), truncation by whole
turns, the loss from a feature cache vs on the fly, and a training run with a conversation source.

The rendering tests use SmolLM2's real tokenizer and chat template; the model tests the tiny random
glue of ``tests/helpers/tiny_glue.py`` (a 2-layer Llama with that tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.tiny_glue import (
    FRAMES,
    SIZE,
    tiny_parts_with_clips,
    write_jsonl,
)
from vlm.chat_template import IGNORE_INDEX, chat_inference_ids, chat_training_ids
from vlm.convert.conversations import ConversationError, read_conversation
from vlm.inference.assistant import VideoAssistant
from vlm.prompts import ChatMessagesError
from vlm.training import DataSource, TrainConfig, train_glue
from vlm.training.data import GlueExamples, VideoSettings, collate_visits, load_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LLAVA = [
    {"from": "human", "value": "<video>\nWhat colour is the star?"},
    {"from": "gpt", "value": "The star is cyan."},
    {"from": "human", "value": "And how is it moving?"},
    {"from": "gpt", "value": "It is moving down."},
]
MESSAGES = [
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour is the star?"}]},
    {"role": "assistant", "content": "The star is cyan."},
    {"role": "user", "content": "And how is it moving?"},
    {"role": "assistant", "content": [{"type": "text", "text": "It is moving down."}]},
]
PLAIN = [
    {"role": "user", "content": "What colour is the star?"},
    {"role": "assistant", "content": "The star is cyan."},
    {"role": "user", "content": "And how is it moving?"},
    {"role": "assistant", "content": "It is moving down."},
]


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------


def test_both_layouts_read_to_the_same_messages():
    assert read_conversation(LLAVA) == PLAIN == read_conversation(MESSAGES)
    with_system = [{"from": "system", "value": "Be brief."}, *LLAVA, {"from": "human", "value": "Why?"}]
    assert read_conversation(with_system) == [
        {"role": "system", "content": "Be brief."},
        *PLAIN,
    ]  # unanswered turn dropped
    assert read_conversation([{"from": "human", "value": "Describe it. <image>"}, {"from": "gpt", "value": "A dog."}])[
        0
    ] == {"role": "user", "content": "Describe it."}


@pytest.mark.parametrize(
    "turns, reason",
    [
        ([{"from": "human", "value": "<video>\nHi"}], "no assistant turn"),
        ([{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "<video>\nHi"}], "roles out of order"),
        ([LLAVA[0], LLAVA[1], LLAVA[1]], "roles out of order"),
        (
            [LLAVA[0], LLAVA[1], {"from": "human", "value": "<video>\nAnd now?"}, LLAVA[3]],
            "video marker in a later turn",
        ),
        ([LLAVA[0], {"from": "gpt", "value": "  "}], "empty text"),
        ([{"from": "human", "value": "<video>"}, LLAVA[1]], "empty text"),
        ([{"from": "narrator", "value": "x"}, LLAVA[1]], "unknown role"),
        ([], "no turns"),
        ("not a list", "no turns"),
    ],
)
def test_bad_rows_name_their_reason(turns, reason):
    with pytest.raises(ConversationError, match=f"^{reason}"):
        read_conversation(turns)


# ---------------------------------------------------------------------------------------------
# Rendering: one function for training and inference
# ---------------------------------------------------------------------------------------------


@pytest.mark.quick
def test_labels_cover_exactly_the_assistant_turns_token_by_token(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = chat_training_ids(tokenizer, PLAIN, {end})
    # prefix + suffix is the template's own rendering (the video goes between them), up to the last <|im_end|>
    rendered = tokenizer.apply_chat_template(PLAIN, tokenize=False)
    assert (
        tokenizer.decode(ids.prefix_ids + ids.suffix_ids)
        == rendered[: rendered.rindex("<|im_end|>") + len("<|im_end|>")]
    )
    assert tokenizer.decode(ids.prefix_ids).endswith("<|im_start|>user\n")
    # walk the suffix: a position is labelled iff it lies inside an assistant reply (its text or its <|im_end|>)
    replies = [
        tokenizer(m["content"], add_special_tokens=False).input_ids + [end] for m in PLAIN if m["role"] == "assistant"
    ]
    expected = [IGNORE_INDEX] * len(ids.suffix_ids)
    cursor = 0
    for reply in replies:
        start = next(i for i in range(cursor, len(ids.suffix_ids)) if list(ids.suffix_ids[i : i + len(reply)]) == reply)
        # the reply follows the generation prompt "<|im_start|>assistant\n"
        assert tokenizer.decode(ids.suffix_ids[:start]).endswith("<|im_start|>assistant\n")
        expected[start : start + len(reply)] = reply
        cursor = start + len(reply)
    assert list(ids.labels) == expected
    assert len(ids.labels) == len(ids.suffix_ids) and ids.kept_turns == ids.total_turns == 2
    for token, label in zip(ids.suffix_ids, ids.labels):
        assert label in (IGNORE_INDEX, token)


def test_inference_renders_the_history_as_training_does(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    end = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    training = chat_training_ids(tokenizer, PLAIN, end)
    for turns in (1, 3):  # the prompt of each assistant turn is a prefix of the training rendering
        inference = chat_inference_ids(tokenizer, PLAIN[:turns])
        assert inference.prefix_ids == training.prefix_ids
        assert training.suffix_ids[: len(inference.suffix_ids)] == inference.suffix_ids
        assert training.labels[len(inference.suffix_ids) - 1] == IGNORE_INDEX  # the generation prompt is not a target
        assert training.labels[len(inference.suffix_ids)] != IGNORE_INDEX  # the reply starts right after it
    with pytest.raises(ChatMessagesError, match="assistant"):
        chat_training_ids(tokenizer, PLAIN[:3], end)
    with pytest.raises(ChatMessagesError, match="role"):
        chat_training_ids(tokenizer, [{"role": "robot", "content": "x"}], end)


@pytest.mark.quick
def test_truncation_keeps_whole_turns(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    end = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    first = len(tokenizer("The star is cyan.", add_special_tokens=False).input_ids) + 1
    whole = chat_training_ids(tokenizer, PLAIN, end)
    for limit, kept in ((first, 1), (first + 3, 1), (100, 2)):
        ids = chat_training_ids(tokenizer, PLAIN, end, max_target_tokens=limit)
        assert ids.kept_turns == kept and ids.truncated == (kept < 2)
        labelled = [label for label in ids.labels if label != IGNORE_INDEX]
        assert len(labelled) <= limit
        assert ids.suffix_ids == whole.suffix_ids[: len(ids.suffix_ids)]
        assert tokenizer.decode(labelled).count("<|im_end|>") == kept  # every kept turn ends with its end-of-turn token
    cut = chat_training_ids(tokenizer, PLAIN, end, max_target_tokens=2)  # a first reply longer than the limit is cut
    assert cut.kept_turns == 0 and sum(label != IGNORE_INDEX for label in cut.labels) == 2


# ---------------------------------------------------------------------------------------------
# Data and training with the tiny glue
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, smollm2_tokenizer):
    from encoder.video.clips import list_videos
    from encoder.videoprism.features import extract_features

    root = tmp_path_factory.mktemp("conversations")
    model = tiny_parts_with_clips(root, smollm2_tokenizer, 4)
    rows = [
        {
            "video": f"clips/c{i}.mp4",
            "conversations": [
                {"from": "human", "value": f"<video>\nWhat is clip {i}?"},
                {"from": "gpt", "value": f"It is clip number {i}."},
                {"from": "human", "value": "Anything else?"},
                {"from": "gpt", "value": "Blocks of colour."},
            ],
        }
        for i in range(4)
    ]
    bad = [
        {"video": "clips/c0.mp4", "conversations": [{"from": "human", "value": "<video>\nHi"}]},
        {"video": "clips/c1.mp4", "conversations": [LLAVA[1], LLAVA[0]]},
        {
            "video": "clips/c2.mp4",
            "conversations": [LLAVA[0], LLAVA[1], {"from": "human", "value": "<video> again?"}, LLAVA[3]],
        },
        {"video": "clips/c3.mp4", "conversations": [LLAVA[0], {"from": "gpt", "value": ""}]},
    ]
    write_jsonl(root / "llava.jsonl", rows + bad)
    write_jsonl(root / "captions.jsonl", [{"video": f"clips/c{i}.mp4", "caption": f"clip {i}"} for i in range(4)])
    extract_features(
        model.encoder,
        list_videos(root / "captions.jsonl"),
        root / "cache",
        num_frames=FRAMES,
        size=SIZE,
        num_workers=0,
        progress=False,
    )
    return {"root": root, "model": model}


def test_jsonl_and_saved_dataset_sources_with_bad_rows_reported(data, tmp_path):
    import datasets

    root = data["root"]
    loaded = load_examples(DataSource(str(root / "llava.jsonl")))
    assert loaded.task == "chat" and loaded.rows == 8 and len(loaded.examples) == 4
    reasons = loaded.report()["skipped_by_reason"]
    assert reasons == {
        "no assistant turn": 1,
        "roles out of order": 1,
        "video marker in a later turn": 1,
        "empty text": 1,
    }
    assert loaded.examples[0].messages[0] == ("user", "What is clip 0?")
    dataset = datasets.Dataset.from_list(
        [
            {
                "clip": str(root / "clips" / f"c{i}.mp4"),
                "messages": [
                    {"role": "user", "content": f"What is clip {i}?"},
                    {"role": "assistant", "content": f"It is clip number {i}."},
                ],
            }
            for i in range(3)
        ]
    )
    dataset.save_to_disk(str(tmp_path / "hf"))
    hf = load_examples(DataSource(str(tmp_path / "hf"), columns={"video": "clip"}))
    assert hf.task == "chat" and len(hf.examples) == 3
    assert hf.examples[2].messages == (("user", "What is clip 2?"), ("assistant", "It is clip number 2."))
    item = GlueExamples([hf], VideoSettings(FRAMES, SIZE), seed=0)[(0, 0, 1)]
    assert item["task"] == "chat" and item["messages"][1] == {"role": "assistant", "content": "It is clip number 1."}
    assert collate_visits([item])["messages"] == [item["messages"]]


def test_conversation_loss_from_the_cache_equals_on_the_fly_and_ignores_user_turns(data):
    from encoder.video.decode import load_clip
    from encoder.videoprism.features import FeatureCache

    model, root = data["model"], data["root"]
    videos = [str(root / "clips" / f"c{i}.mp4") for i in (0, 3)]
    conversations = [PLAIN, None]
    args = (["", "A video of"], ["", "a clip"])
    clips = torch.from_numpy(np.stack([load_clip(v, num_frames=FRAMES, size=SIZE) for v in videos]))
    cache = FeatureCache(root / "cache")
    tokens = torch.stack([cache.get(v) for v in videos])
    texts = VideoAssistant(model).processor.training_texts(*args, conversations=conversations)
    on_the_fly = model.example_losses(texts, clips=clips)
    cached = model.example_losses(texts, video_tokens=tokens)
    torch.testing.assert_close(on_the_fly, cached, atol=1e-5, rtol=0)
    # the loss is the mean over the assistant tokens, computed from a full forward by hand
    features = model.get_video_features(video_tokens=tokens)
    inputs, _ = model.training_inputs(features, texts)
    with torch.no_grad():
        log_probs = torch.log_softmax(
            model.llm(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
            ).logits.float(),
            dim=-1,
        )
    length = log_probs.shape[1]
    for row, text in enumerate(texts):
        start = length - len(text.suffix_ids)  # suffix position i is sequence position start + i
        terms = [log_probs[row, start + i - 1, label] for i, label in enumerate(text.labels) if label != IGNORE_INDEX]
        assert float(cached[row].detach()) == pytest.approx(float(-torch.stack(terms).mean()), abs=1e-5)
    # a different user question changes nothing the loss sees but the context; a different reply changes the loss
    other_reply = [dict(m) for m in PLAIN]
    other_reply[3]["content"] = "It is staying still."
    changed = model.example_losses(
        VideoAssistant(model).processor.training_texts(*args, conversations=[other_reply, None]), video_tokens=tokens
    )
    assert abs(float(changed[0].detach()) - float(cached[0].detach())) > 1e-4
    assert float(changed[1].detach()) == pytest.approx(float(cached[1].detach()), abs=1e-6)


def test_training_run_mixes_conversations_and_reports_them(data, tmp_path):
    root = data["root"]
    config = TrainConfig(
        output_dir=str(tmp_path / "run"),
        train_data=[str(root / "captions.jsonl"), f"{root / 'llava.jsonl'}:2"],
        val_data=[str(root / "llava.jsonl")],
        features=str(root / "cache"),
        encoder=str(root / "encoder"),
        llm=str(root / "llm"),
        num_latents=4,
        resampler_heads=2,
        max_steps=3,
        batch_size=4,
        micro_batch_size=2,
        warmup_steps=1,
        learning_rate=1e-2,
        log_every=1,
        checkpoint_every=3,
        val_every=3,
        max_val_examples=4,
        val_samples=1,
        num_workers=0,
        progress=False,
        max_target_tokens=8,
    )
    model_dir = train_glue(config)
    assert (model_dir / "resampler.safetensors").is_file()
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    chat = report["train"][1]
    assert chat["task"] == "chat" and chat["examples"] == 4 and chat["skipped"] == 4
    truncation = report["conversation_truncation"]["train"][0]
    # "It is clip number N.<|im_end|>" takes 7 tokens, the second reply 5 more: over 8, the second turn goes
    assert truncation["checked"] == 4 and truncation["truncated"] == 4 and truncation["assistant_turns_dropped"] == 4
    assert "later turns are dropped" in (tmp_path / "run" / "train_log.txt").read_text()
    errors = [json.loads(line) for line in (tmp_path / "run" / "data_errors.jsonl").read_text().splitlines()]
    assert len(errors) == 4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    assert any("val_loss" in m for m in metrics)
