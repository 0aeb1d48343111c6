"""The assistant's tasks over a glue model: captions, open answers, ranked candidate answers and chat, on
clips, cached encoder tokens or video files.

:class:`VideoAssistant` holds a :class:`vlm.model.PrismVlmForConditionalGeneration` and adds no state of
its own: each task builds its prompt (``*_inputs``: the model's :meth:`get_prompt_embeddings` of the video
features and the task's token ids) and runs ``generate()`` (:mod:`vlm.inference.generation`) or the
candidate scorer (:mod:`vlm.inference.scoring`). The serving code builds the same inputs and decodes the
same way, so a request gives the same text alone or batched.

    from vlm.inference.assistant import load_assistant
    assistant = load_assistant()                                   # the shipped demo model
    clips = assistant.load_videos(["clip.mp4"])                    # [1, T, S, S, 3]
    assistant.caption(clips=clips)                                 # ["a cyan star moving down"]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vlm.chat_template import chat_inference_ids
from vlm.inference.generation import (
    GenerationSettings,
    IncrementalText,
    MergedInputs,
    StopWhenSet,
    TokenStreamer,
    accepts_logits_to_keep,
    generate_ids,
    stop_token_ids,
)
from vlm.inference.scoring import (
    ScoredAnswer,
    candidate_log_likelihoods,
    candidate_token_ids,
    check_candidates,
    rank_candidates,
)
from vlm.model import PrismVlmForConditionalGeneration, load_model
from vlm.prompts import Shot, clean_open_answer, clean_question, leading_special_ids, qa_prompt, text_ids


def _settings(generation: GenerationSettings | None, max_new_tokens: int) -> GenerationSettings:
    """The generation settings of a call: ``generation`` (greedy when None) with its max_new_tokens."""
    return (generation or GenerationSettings()).replace(max_new_tokens=max_new_tokens)


class VideoAssistant:
    """Captions, answers, candidate scores and chat over one glue model (``model``)."""

    def __init__(self, model: PrismVlmForConditionalGeneration):
        self.model = model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def config(self):
        return self.model.config

    @property
    def processor(self):
        """The :class:`vlm.processing.PrismVlmProcessor` of the model (its tokenizer, frames and frame size)."""
        from vlm.processing import PrismVlmProcessor

        return PrismVlmProcessor.from_model(self.model)

    # ------------------------------------------------------------------ prompts (the inputs of each task)

    def prompt_inputs(self, video_features: torch.Tensor, prompts: Sequence[str]) -> MergedInputs:
        """Row b = [leading special tokens] [video_features[b]] [prompts[b] as text], left-padded.
        video_features: [B, L, H] (the model's ``get_video_features``); prompts: B strings."""
        leading = leading_special_ids(self.tokenizer)
        return self.model.get_prompt_embeddings(
            video_features, [leading] * len(prompts), [text_ids(self.tokenizer, prompt) for prompt in prompts]
        )

    def caption_inputs(self, video_features: torch.Tensor, prompt: str | None = None) -> MergedInputs:
        """The captioning input of B videos (video_features [B, L, H]): the caption prompt (the config's when
        None) after the video; generation stops at a newline."""
        prompt = self.config.prompts.caption_prompt if prompt is None else prompt
        return self.prompt_inputs(video_features, [prompt] * video_features.shape[0])

    def qa_prompt(self, question: str, shots: Sequence[Shot] = ()) -> str:
        """The QA prompt text (after the video tokens) for a question, with few-shot examples."""
        prompts = self.config.prompts
        return qa_prompt(prompts, clean_question(self.tokenizer, question, prompts.max_question_tokens), shots)

    def answer_inputs(
        self, video_features: torch.Tensor, questions: Sequence[str], shots: Sequence[Shot] = ()
    ) -> MergedInputs:
        """The open-answer input of B videos (video_features [B, L, H]), one question per video."""
        if isinstance(questions, str):
            raise TypeError("questions must be a list with one question per video")
        if len(questions) != video_features.shape[0]:
            raise ValueError(f"{len(questions)} questions for {video_features.shape[0]} videos")
        return self.prompt_inputs(video_features, [self.qa_prompt(question, shots) for question in questions])

    def chat_inputs(self, video_features: torch.Tensor, conversations: Sequence[Sequence[dict]]) -> MergedInputs:
        """The chat input of B videos: each conversation rendered by the LLM's chat template with the video
        (video_features [B, L, H]) at the start of its first user turn, ending with the assistant's header."""
        rendered = [chat_inference_ids(self.tokenizer, messages) for messages in conversations]
        if video_features.shape[0] != len(rendered):
            raise ValueError(f"{len(rendered)} chats for {video_features.shape[0]} videos")
        return self.model.get_prompt_embeddings(
            video_features, [r.prefix_ids for r in rendered], [r.suffix_ids for r in rendered]
        )

    def caption_text(self, ids: Sequence[int]) -> str:
        """A caption from its generated token ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def answer_text(self, ids: Sequence[int]) -> str:
        """An open answer from its generated token ids (cleaned as the evaluation expects)."""
        return clean_open_answer(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # ------------------------------------------------------------------ tasks on tensors

    def _features(self, clips, video_tokens, one_video: str | None = None, video_features=None) -> torch.Tensor:
        """The soft prompt [B, L, H] of clips or video_tokens, or ``video_features`` as given (e.g. read
        back from the window cache of a long video)."""
        if video_features is not None:
            if clips is not None or video_tokens is not None:
                raise ValueError("give clips, video_tokens or video_features, not several")
            features = video_features
        else:
            with torch.inference_mode():
                features = self.model.get_video_features(clips, video_tokens)
        if one_video is not None and features.shape[0] != 1:
            raise ValueError(f"{one_video} takes one video, got a batch of {features.shape[0]}")
        return features

    def _generate(self, inputs: MergedInputs, settings: GenerationSettings, **kwargs) -> list[list[int]]:
        with torch.inference_mode():
            return generate_ids(
                self.model.llm, self.tokenizer, inputs.inputs_embeds, inputs.attention_mask, settings, **kwargs
            )

    def caption(
        self,
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        prompt: str | None = None,
        generation: GenerationSettings | None = None,
        *,
        video_features: torch.Tensor | None = None,
    ) -> list[str]:
        """Captions of a batch of videos (clips [B, T, H, W, 3], video_tokens [B, M, D] or their soft prompts
        video_features [B, L, H]): B strings, greedy unless ``generation`` says otherwise. A caption is one
        line: a row stops at EOS or a newline."""
        inputs = self.caption_inputs(self._features(clips, video_tokens, video_features=video_features), prompt)
        generated = self._generate(inputs, _settings(generation, max_new_tokens), stop_at_newline=True)
        return [self.caption_text(ids) for ids in generated]

    def answer(
        self,
        questions: Sequence[str],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        shots: Sequence[Shot] = (),
        max_new_tokens: int = 32,
        generation: GenerationSettings | None = None,
        *,
        video_features: torch.Tensor | None = None,
    ) -> list[str]:
        """Open-vocabulary answers, one question per video (B of each; clips, video_tokens or video_features
        as :meth:`caption` takes), stopping at EOS or newline."""
        if isinstance(questions, str):
            raise TypeError("questions must be a list with one question per video")
        inputs = self.answer_inputs(
            self._features(clips, video_tokens, video_features=video_features), questions, shots
        )
        generated = self._generate(inputs, _settings(generation, max_new_tokens), stop_at_newline=True)
        return [self.answer_text(ids) for ids in generated]

    def score_answers(
        self,
        question: str,
        candidates: Sequence[str],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        shots: Sequence[Shot] = (),
        batch_size: int = 64,
        *,
        video_features: torch.Tensor | None = None,
    ) -> list[ScoredAnswer]:
        """Closed-vocabulary QA for ONE video ([1, ...] clips or tokens): every candidate ranked by
        log-likelihood, best first, with softmax probabilities over the candidates."""
        candidates = check_candidates(candidates)
        candidate_ids = candidate_token_ids(self.tokenizer, candidates)
        inputs = self.prompt_inputs(
            self._features(clips, video_tokens, "score_answers", video_features), [self.qa_prompt(question, shots)]
        )
        with torch.inference_mode():
            scores = candidate_log_likelihoods(
                self.model.llm, inputs.inputs_embeds, candidate_ids, batch_size=batch_size
            )
        return rank_candidates(candidates, scores, candidate_ids)

    def one_token_log_likelihoods(
        self,
        questions: Sequence[str],
        video_tokens: torch.Tensor,
        candidate_ids: Sequence[int],
        shots: Sequence[Shot] = (),
    ) -> torch.Tensor:
        """Log-probabilities of one-token candidates for a batch of questions, one forward pass.

        video_tokens: [B, M, D] (one video per question); candidate_ids: C token ids. The prompt is exactly
        :meth:`score_answers`'s, so the scores equal its log-likelihoods. Returns float32 [B, C] on the CPU."""
        inputs = self.prompt_inputs(self._features(None, video_tokens), [self.qa_prompt(q, shots) for q in questions])
        log_probs = self.next_token_log_probs(inputs)
        return log_probs[:, torch.as_tensor(list(candidate_ids), device=log_probs.device)].cpu()

    def next_token_log_probs(self, inputs: MergedInputs) -> torch.Tensor:
        """float32 [B, V]: the LLM's next-token log-probabilities after each (left-padded) row of ``inputs``,
        one forward pass."""
        llm = self.model.llm
        kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(llm) else {}
        with torch.inference_mode():
            logits = llm(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
                **kwargs,
            ).logits[:, -1]
            return torch.log_softmax(logits.float(), dim=-1)

    def chat_stream(
        self,
        messages: Sequence[dict],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        generation: GenerationSettings | None = None,
        *,
        video_features: torch.Tensor | None = None,
    ) -> Iterator[str]:
        """Stream the assistant's reply to a multi-turn chat about ONE video (clips, video_tokens or
        video_features [1, L, H]), text piece by piece.

        messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] ending with a user turn; the
        video goes at the start of the first user turn, rendered exactly as conversations are in training."""
        features = self._features(clips, video_tokens, "chat", video_features)
        for pieces in self.chat_stream_batch(
            [messages], video_features=features, max_new_tokens=max_new_tokens, generation=generation
        ):
            if pieces[0] is None:
                return
            if pieces[0]:
                yield pieces[0]

    def chat_stream_batch(
        self,
        conversations: Sequence[Sequence[dict]],
        clips: torch.Tensor | np.ndarray | None = None,
        video_tokens: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        generation: GenerationSettings | None = None,
        *,
        video_features: torch.Tensor | None = None,
    ) -> Iterator[list[str | None]]:
        """Replies to B chats, one per video, generated together (one forward per step, left padding).

        clips [B, T, H, W, 3], video_tokens [B, M, D] or their ``video_features`` [B, L, H]. Yields per step B
        items: row b's new text piece (``""`` when a step adds no visible text) while its reply goes on, then
        ``None`` once it has ended. Closing the generator stops the generation after the current step."""
        features = self._features(clips, video_tokens) if video_features is None else video_features
        inputs = self.chat_inputs(features, conversations)
        stop_ids = stop_token_ids(self.model.llm, self.tokenizer)
        settings = _settings(generation, max_new_tokens)
        texts = [IncrementalText(self.tokenizer) for _ in conversations]
        if settings.num_beams > 1:  # beam search cannot stream: the whole replies at once
            rows = self._generate(inputs, settings)
            yield ["".join(text.add(token) for token in row) + text.flush() for text, row in zip(texts, rows)]
            yield [None] * len(texts)
            return
        streamer, stop = TokenStreamer(), threading.Event()

        def run() -> None:
            try:
                self._generate(inputs, settings, streamer=streamer, stopping=[StopWhenSet(stop)])
            except Exception as error:  # raised by the iteration below, in the caller's thread
                streamer.fail(error)

        worker = threading.Thread(target=run, name="prism-vlm-generate", daemon=True)
        worker.start()
        ended = [False] * len(texts)
        try:
            for tokens in streamer:
                pieces: list[str | None] = []
                for row, token in enumerate(tokens):
                    if ended[row]:
                        pieces.append(None)
                    elif token not in stop_ids:
                        pieces.append(texts[row].add(token))
                    else:  # its stop token: what is held back, then the end
                        pieces.append(texts[row].flush())
                        ended[row] = True
                yield pieces
            if not all(ended):  # max_new_tokens reached
                yield [None if done else text.flush() for done, text in zip(ended, texts)]
            yield [None] * len(texts)
        finally:
            stop.set()  # a caller that stops early stops the generation after the current step
            worker.join()

    def chat(self, messages: Sequence[dict], **kwargs) -> str:
        """The whole streamed reply of :meth:`chat_stream`."""
        return "".join(self.chat_stream(messages, **kwargs))

    # ------------------------------------------------------------------ tasks on video files

    def load_videos(self, videos: Sequence[str | os.PathLike], num_frames: int | None = None) -> torch.Tensor:
        """Video files as clips [B, T, S, S, 3] (T = num_frames or the config's, S = frame_size), decoded by
        :attr:`processor`; UnreadableVideoError for a file the decoder rejects."""
        return self.processor(videos=list(videos), num_frames=num_frames)["pixel_values_videos"]

    def caption_videos(
        self,
        videos: Sequence[str | os.PathLike],
        num_frames: int | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        progress: bool = False,
        generation: GenerationSettings | None = None,
    ) -> list[str]:
        """Captions of video files, decoded and captioned ``batch_size`` at a time (``progress``: a tqdm bar)."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        captions = []
        for start in tqdm(range(0, len(videos), batch_size), desc="captioning", unit="batch", disable=not progress):
            clips = self.load_videos(videos[start : start + batch_size], num_frames)
            captions.extend(self.caption(clips=clips, max_new_tokens=max_new_tokens, generation=generation))
        return captions

    def ask_video(
        self,
        video: str | os.PathLike,
        question: str,
        candidates: Sequence[str] | None = None,
        shots: Sequence[Shot] = (),
        num_frames: int | None = None,
        max_new_tokens: int = 32,
        generation: GenerationSettings | None = None,
    ) -> str | list[ScoredAnswer]:
        """Answer a question about a video file: open-vocabulary (a string) without candidates,
        closed-vocabulary (ranked candidates) with them."""
        if candidates is not None:
            candidates = check_candidates(candidates)
        question = clean_question(self.tokenizer, question, self.config.prompts.max_question_tokens)
        clips = self.load_videos([video], num_frames)
        if candidates is None:
            return self.answer(
                [question], clips=clips, shots=shots, max_new_tokens=max_new_tokens, generation=generation
            )[0]
        return self.score_answers(question, candidates, clips=clips, shots=shots)


def load_assistant(
    directory: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs
) -> VideoAssistant:
    """:func:`vlm.model.load_model` (a directory, a Hub id, or the default model when None) as an assistant."""
    return VideoAssistant(load_model(directory, device=device, **kwargs))
