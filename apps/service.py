"""The app's one shared model: caption, question answering, chat and the frames the model sees,
each a few lines over :class:`vlm.inference.assistant.VideoAssistant`.

Captions, open answers and chat replies, greedy or sampled, are generated with continuous batching
(:mod:`vlm.serving.continuous_batching`), each row with its own settings: a request joins the running
batch at the next step and leaves it when its text is done, so it never waits for a whole batch, and a
chat reply streams while other requests come and go. All other model work (beam search, which runs
alone through ``generate()``, ranking candidate answers, and the search side's,
:meth:`ModelService.run_model_work`) runs one piece at a time in the continuous batcher's worker,
between steps -- on CPU torch is faster in the only thread that runs it (:mod:`apps.compute_thread`).
An LLM whose KV cache rows cannot join and leave has no batcher: each request runs alone through
``generate()``, one piece of model work at a time, in one model thread.

Every request checks its clip with :func:`apps.limits.check_video` and decodes it before any model
work (decoding overlaps). Bad input raises :class:`AppInputError` with a message for the page; the
Gradio layer (``apps.video_chat``) shows it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from apps.limits import AppLimits, VideoInfo, VideoRejectedError, check_video, decode_slot
from encoder.common.errors import PrismVlmError
from encoder.video.decode import VideoDecodeError, load_clip, sample_times
from vlm.chat_template import recent_turns
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import GenerationSettings, IncrementalText, MergedInputs, generate_ids
from vlm.inference.scoring import (
    ScoredAnswer,
    candidate_log_likelihoods,
    candidate_token_ids,
    check_candidates,
    rank_candidates,
)
from vlm.model import PrismVlmForConditionalGeneration
from vlm.serving.continuous_batching import (
    ContinuousBatcher,
    ContinuousBatchingConfig,
    GenerationStream,
    supports_continuous_batching,
)

CLIP_CACHE_SIZE = 4
RANKING_SLICE = 32  # candidate answers scored per piece of model work (other requests run between slices)
T = TypeVar("T")


class AppInputError(PrismVlmError, ValueError):
    """Input the app cannot use (no video, bad file, empty question, no candidates ...); the
    message is meant for the person using the page."""


@dataclass(frozen=True)
class FrameStrip:
    """The frames the model sees: frames uint8 [T, S, S, 3] (S = the model's frame size),
    times_s float [T] (approximate sample times, seconds from the clip start), info (header facts)."""

    frames: np.ndarray
    times_s: np.ndarray
    info: VideoInfo


@dataclass(frozen=True)
class ChatPrompt:
    """messages: the {"role", "content"} messages a chat reply is generated from (kept history, then
    the new user message); dropped_turns: history turns left out to stay within the limits."""

    messages: list[dict]
    dropped_turns: int = 0


@dataclass(frozen=True)
class AnswerResult:
    """answer: the answer text; ranked: every candidate, best first (empty for open vocabulary)."""

    answer: str
    ranked: list[ScoredAnswer] = field(default_factory=list)

    def probabilities(self) -> list[dict]:
        """[{"answer", "probability", "log_likelihood"}, ...] best first (JSON-ready)."""
        return [
            {"answer": s.answer, "probability": s.probability, "log_likelihood": s.log_likelihood} for s in self.ranked
        ]


def parse_candidates(text: str | None, max_candidates: int) -> list[str] | None:
    """Candidate answers typed in a box: one per line, or comma-separated on one line.
    None for a blank box (open vocabulary). Duplicates are dropped (first kept)."""
    if text is None or not text.strip():
        return None
    pieces = text.splitlines() if "\n" in text.strip() else text.split(",")
    candidates = list(dict.fromkeys(piece.strip() for piece in pieces if piece.strip()))
    if not candidates:
        raise AppInputError(
            "No candidate answers: type them comma-separated or one per line, "
            "or leave the box empty for an open-vocabulary answer."
        )
    if len(candidates) > max_candidates:
        raise AppInputError(f"{len(candidates)} candidate answers; this app ranks at most {max_candidates}.")
    return candidates


def checked_text(text: str | None, what: str, limits: AppLimits) -> str:
    """A typed text (question, message, search text, label) with its whitespace collapsed; AppInputError
    when it is empty or longer than ``limits.max_message_chars``."""
    text = " ".join((text or "").split())
    if not text:
        raise AppInputError(f"The {what} is empty: type one first.")
    if len(text) > limits.max_message_chars:
        raise AppInputError(f"The {what} has {len(text)} characters; the limit is {limits.max_message_chars}.")
    return text


def checked_video(video: str | os.PathLike | None, limits: AppLimits) -> VideoInfo:
    """The clip gate of ``apps.limits.check_video``, its refusal as an AppInputError."""
    try:
        return check_video(video, limits)
    except VideoRejectedError as error:
        raise AppInputError(str(error)) from error


def decode_within_limits(
    path: Path, limits: AppLimits, num_frames: int, size: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """A checked clip (or its ``[start, end]`` seconds) decoded with the app's bounds (frame side, decode
    time, a decoding slot): [T, size, size, 3] float32 in [0, 1]; a clip that cannot be decoded is an
    AppInputError naming the file."""
    try:
        with decode_slot(limits):
            return load_clip(
                path, num_frames, size, start, end, max_side=limits.max_side_px, time_limit_s=limits.max_decode_s
            )
    except (VideoDecodeError, FileNotFoundError, ValueError) as error:
        reason = error.reason if isinstance(error, VideoDecodeError) else str(error)
        raise AppInputError(f"Could not decode '{path.name}': {reason}.") from error


def _shown_path(source: str | os.PathLike | None) -> str | None:
    """A source as the model card shows it: an existing path inside the working directory relative
    to it, anything else (Hub ids, symbolic names, paths elsewhere) as given."""
    if source is None:
        return None
    path = Path(source)
    if path.exists():
        try:
            return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            pass
    return str(source)


def chat_text(content: object) -> str:
    """The text of a chat message's content: a string, or Gradio's list of parts
    ([{"type": "text", "text": ...}, ...]; files and components are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", "")) if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(chat_text(part) for part in content)
    return ""


class ModelService:
    """One glue model shared by all requests (its tasks through ``assistant``).

    model: the loaded glue model (:class:`vlm.model.PrismVlmForConditionalGeneration`); limits: what a request may ask for; model_dir: where the glue
    was loaded from (shown on the page).
    """

    def __init__(
        self,
        model: PrismVlmForConditionalGeneration,
        limits: AppLimits | None = None,
        model_dir: str | os.PathLike | None = None,
        batching: ContinuousBatchingConfig | None = None,
    ):
        if model.encoder is None:
            raise ValueError("the app needs a model with its video encoder (load it with load_video_encoder=True)")
        self.model = model
        self.assistant = VideoAssistant(model)
        self.limits = limits or AppLimits()
        self.model_dir = None if model_dir is None else Path(model_dir)
        self.batching = batching or ContinuousBatchingConfig()
        # Every request that can: continuous batching, each row with its own settings (a greedy answer
        # equals its unbatched one, tested); the batcher's worker also runs all other model work, one
        # piece at a time.
        self._arriving = 0  # batchable requests between arrival and submission (checking, decoding)
        self._arriving_lock = threading.Lock()
        more_coming = lambda: self._arriving > 0  # noqa: E731
        self._generator = (
            ContinuousBatcher(
                model.llm,
                model.tokenizer,
                self.batching,
                more_coming=more_coming,
            )
            if supports_continuous_batching(model.llm)
            else None
        )
        # An LLM whose cache rows cannot join and leave: one worker thread runs every piece of model work.
        self._solo = ThreadPoolExecutor(1, thread_name_prefix="prism-vlm-model") if self._generator is None else None
        self._cache_lock = threading.Lock()
        self._clips: OrderedDict[tuple, tuple[np.ndarray, VideoInfo]] = OrderedDict()

    # ------------------------------------------------------------------ settings

    @property
    def default_frames(self) -> int:
        return min(self.model.config.num_frames, self.limits.max_frames)

    @property
    def frame_size(self) -> int:
        return self.model.config.frame_size

    def model_card(self) -> dict:
        """What is loaded: encoder, LLM, glue (resampler shape and directory), frames, device. Paths
        inside the directory the app was started from are shown relative to it."""
        config = self.model.config
        resampler = config.resampler
        return {
            "encoder": _shown_path(config.encoder_source) or type(self.model.encoder).__name__,
            "encoder_width": resampler.video_width,
            "llm": config.llm_source or type(self.model.llm).__name__,
            "llm_width": resampler.llm_width,
            "llm_parameters": sum(p.numel() for p in self.model.llm.parameters()),
            "glue": _shown_path(self.model_dir) if self.model_dir is not None else "(in memory)",
            "resampler": f"{resampler.depth} layer(s), {resampler.num_latents} latents, {resampler.num_heads} heads",
            "frames": config.num_frames,
            "frame_size": config.frame_size,
            "device": str(self.model.device),
            "dtype": str(self.model.llm.get_input_embeddings().weight.dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------------ checks

    def _frames(self, num_frames: int | float | None) -> int:
        if num_frames is None:
            return self.default_frames
        if float(num_frames) != int(num_frames) or not 1 <= int(num_frames) <= self.limits.max_frames:
            raise AppInputError(f"Frames must be a whole number from 1 to {self.limits.max_frames}, got {num_frames}.")
        return int(num_frames)

    def generation_settings(
        self, max_new_tokens: int | float | None, generation: GenerationSettings | None, default: int = 256
    ) -> GenerationSettings:
        """The request's generation settings (greedy when None) with its checked max_new_tokens (``default``
        when None, within the limit)."""
        return (generation or GenerationSettings()).replace(max_new_tokens=self._tokens(max_new_tokens, default))

    def _tokens(self, max_new_tokens: int | float | None, default: int) -> int:
        if max_new_tokens is None:
            return min(default, self.limits.max_new_tokens)
        if float(max_new_tokens) != int(max_new_tokens) or not 1 <= int(max_new_tokens) <= self.limits.max_new_tokens:
            raise AppInputError(
                f"Max new tokens must be a whole number from 1 to {self.limits.max_new_tokens}, got {max_new_tokens}."
            )
        return int(max_new_tokens)

    def _text(self, text: str | None, what: str) -> str:
        text = checked_text(text, what, self.limits)
        tokens = self._token_count(text)
        if tokens > self.limits.max_prompt_tokens:
            raise AppInputError(f"The {what} has {tokens} tokens; the limit is {self.limits.max_prompt_tokens}.")
        return text

    def _token_count(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _candidates(self, candidates: Sequence[str]) -> list[str]:
        """Closed-vocabulary candidates within the count, character and token limits."""
        candidates = list(candidates)
        if not candidates:
            raise AppInputError("No candidate answers given for a closed-vocabulary question.")
        if len(candidates) > self.limits.max_candidates:
            raise AppInputError(
                f"{len(candidates)} candidate answers; this app ranks at most {self.limits.max_candidates}."
            )
        for candidate in candidates:
            if not isinstance(candidate, str) or not candidate.strip():
                raise AppInputError("A candidate answer is empty.")
            shown = candidate if len(candidate) <= 40 else candidate[:37] + "..."
            if (
                len(candidate) > self.limits.max_message_chars
                or self._token_count(candidate) > self.limits.max_candidate_tokens
            ):
                raise AppInputError(
                    f"The candidate answer '{shown}' is too long; the limit is {self.limits.max_candidate_tokens} tokens."
                )
        return candidates

    # ------------------------------------------------------------------ clips

    def load(
        self, video: str | os.PathLike | np.ndarray | None, num_frames: int | None = None
    ) -> tuple[np.ndarray, VideoInfo]:
        """Check and decode a clip: float32 [T, S, S, 3] in [0, 1] and its VideoInfo (cached for the
        last few clips, so the frame strip, captions and chat turns decode a clip once). A clip already
        in memory (float32 [T, S, S, 3] in [0, 1], e.g. frames sent as images) is taken as it is, its
        duration counted as one second per frame."""
        num_frames = self._frames(num_frames)
        if isinstance(video, np.ndarray):
            size = self.frame_size
            if video.dtype != np.float32 or video.ndim != 4 or video.shape[1:] != (size, size, 3):
                raise AppInputError(f"An in-memory clip must be float32 [T, {size}, {size}, 3], got {video.shape}.")
            if len(video) != num_frames:
                raise AppInputError(f"The clip has {len(video)} frames; this request samples {num_frames}.")
            return video, VideoInfo(duration_s=float(len(video)), width=size, height=size)
        info = checked_video(video, self.limits)
        path = Path(video)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, num_frames)
        with self._cache_lock:
            if key in self._clips:
                self._clips.move_to_end(key)
                return self._clips[key]
        clip = decode_within_limits(path, self.limits, num_frames, self.frame_size)
        with self._cache_lock:
            self._clips[key] = (clip, info)
            while len(self._clips) > CLIP_CACHE_SIZE:
                self._clips.popitem(last=False)
        return clip, info

    def frame_strip(self, video: str | os.PathLike | None, num_frames: int | None = None) -> FrameStrip:
        """The T frames the model samples from the clip, as uint8 images with their times."""
        clip, info = self.load(video, num_frames)
        frames = np.clip(np.rint(clip * 255.0), 0, 255).astype(np.uint8)
        return FrameStrip(frames=frames, times_s=sample_times(0.0, info.duration_s, len(frames)), info=info)

    # ------------------------------------------------------------------ tasks

    def caption(
        self,
        video: str | os.PathLike | None,
        num_frames: int | None = None,
        max_new_tokens: int | None = None,
        generation: GenerationSettings | None = None,
    ) -> str:
        """A caption of the clip (greedy unless ``generation`` says otherwise)."""
        settings = self.generation_settings(max_new_tokens, generation, 32)
        ids = self._token_ids(video, num_frames, self.assistant.caption_inputs, settings)
        return self.assistant.caption_text(self._all(ids))

    def _continuous(self, settings: GenerationSettings) -> bool:
        """Whether a request with these settings is generated with continuous batching (anything but beam
        search, with an LLM whose cache rows can join and leave)."""
        return self._generator is not None and settings.num_beams == 1

    def _token_ids(
        self,
        video: str | os.PathLike | None,
        num_frames: int | None,
        inputs_of: Callable[[torch.Tensor], MergedInputs],
        settings: GenerationSettings,
        *,
        stop_at_newline: bool = True,
        streaming: bool = False,
        top_logprobs: int | None = None,
        ignore_eos: bool = False,
    ) -> GenerationStream:
        """One request's generated token ids, its prompt ``inputs_of(video features [1, L, H])`` (built in
        the model's thread): a stream of the continuous batcher (iterate it as tokens come; cancel it when
        done), or for beam search and LLMs whose cache rows cannot join and leave, generated alone through
        ``generate()`` as model work and returned complete (without log-probabilities, stopping at EOS)."""
        model = self.model
        with self._arrival():
            clip, _ = self.load(video, num_frames)

            def prompt() -> torch.Tensor:
                return inputs_of(model.get_video_features(clip[None])).row(0)

            if self._continuous(settings):
                return self._generator.submit(
                    prompt,
                    settings.max_new_tokens,
                    stop_at_newline=stop_at_newline,
                    streaming=streaming,
                    settings=settings,
                    top_logprobs=top_logprobs,
                    ignore_eos=ignore_eos,
                )

        def alone() -> GenerationStream:
            with torch.inference_mode():
                embeds = prompt()
                mask = torch.ones(1, embeds.shape[0], dtype=torch.long, device=embeds.device)
                ids = generate_ids(
                    model.llm, model.tokenizer, embeds[None], mask, settings, stop_at_newline=stop_at_newline
                )[0]
            return GenerationStream.finished(ids, prompt_tokens=embeds.shape[0])

        return self.run_model_work(alone)

    @staticmethod
    def _all(ids: GenerationStream) -> list[int]:
        """Every token id of :meth:`_token_ids` (a caller that gives up while waiting frees its slot)."""
        try:
            return ids.result()
        finally:
            ids.cancel()

    def run_model_work(self, work: Callable[[], T]) -> T:
        """``work()`` with the model to itself: in the continuous batcher's worker between steps, or in
        the one model thread (an LLM whose cache rows cannot join and leave). The app's other model
        work (search, zero-shot labels) runs here too, so that one thread runs torch
        (:mod:`apps.compute_thread`)."""
        if self._generator is not None:
            return self._generator.call(work).result()
        return self._solo.submit(work).result()

    @contextlib.contextmanager
    def _arrival(self):
        """Counts a batchable request from its arrival to its submission, so that a batch waits for
        it (up to the batching window) rather than leaving without it."""
        with self._arriving_lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._arriving_lock:
                self._arriving -= 1

    def close(self) -> None:
        """Stop the model's worker thread (requests already queued are served first)."""
        if self._solo is not None:
            self._solo.shutdown(wait=True)
        if self._generator is not None:
            self._generator.close()

    def ask(
        self,
        video: str | os.PathLike | None,
        question: str | None,
        candidates: Sequence[str] | None = None,
        num_frames: int | None = None,
        max_new_tokens: int | None = None,
        generation: GenerationSettings | None = None,
    ) -> AnswerResult:
        """Open-vocabulary answer (candidates None; greedy unless ``generation`` says otherwise) or
        candidates ranked by log-likelihood."""
        question = self._text(question, "question")
        settings = self.generation_settings(max_new_tokens, generation, 32)
        if candidates is not None:
            candidates = self._candidates(candidates)
        if candidates is None:
            assistant = self.assistant
            ids = self._token_ids(
                video, num_frames, lambda features: assistant.answer_inputs(features, [question]), settings
            )
            return AnswerResult(assistant.answer_text(self._all(ids)))
        clip, _ = self.load(video, num_frames)
        ranked = self._rank(question, list(candidates), clip)
        return AnswerResult(ranked[0].answer, ranked)

    def _rank(self, question: str, candidates: list[str], clip: np.ndarray) -> list[ScoredAnswer]:
        """``VideoAssistant.score_answers`` in slices of :data:`RANKING_SLICE` candidates, each its own piece of
        model work, so that a long ranking does not hold the other requests: the video/prompt prefix once,
        then every slice's candidates scored against it (the same log-likelihoods, ranked over them all)."""
        candidates = check_candidates(candidates)
        ids = candidate_token_ids(self.assistant.tokenizer, candidates)

        def prefix() -> torch.Tensor:
            with torch.inference_mode():
                features = self.model.get_video_features(clips=torch.from_numpy(clip[None]))
                return self.assistant.prompt_inputs(features, [self.assistant.qa_prompt(question)]).inputs_embeds

        def scores(part: list[list[int]]) -> torch.Tensor:
            with torch.inference_mode():
                return candidate_log_likelihoods(self.model.llm, prompt, part)

        prompt = self.run_model_work(prefix)
        parts = [ids[start : start + RANKING_SLICE] for start in range(0, len(ids), RANKING_SLICE)]
        log_likelihoods = torch.cat([self.run_model_work(lambda part=part: scores(part)) for part in parts])
        return rank_candidates(candidates, log_likelihoods, ids)

    def chat_prompt(self, history: Sequence[dict], message: str | None) -> ChatPrompt:
        """The checked message after the history's user/assistant turns with text, of which at most
        the last ``max_chat_turns`` exchanges and ``max_history_tokens`` tokens are kept (the oldest
        turns dropped first, whole exchanges at a time)."""
        message = self._text(message, "message")
        turns = [
            {"role": turn["role"], "content": chat_text(turn.get("content"))}
            for turn in history or ()
            if isinstance(turn, dict) and turn.get("role") in ("user", "assistant")
        ]
        turns = [turn for turn in turns if turn["content"].strip()]
        kept = self._kept_history(turns)
        return ChatPrompt(kept + [{"role": "user", "content": message}], dropped_turns=len(turns) - len(kept))

    def _kept_history(self, turns: list[dict]) -> list[dict]:
        turns = recent_turns(turns, self.limits.max_chat_turns)
        budget = self.limits.max_history_tokens
        # A turn of more than 16 characters per allowed token cannot fit: it is not even tokenized.
        longest = 16 * budget
        start = len(turns)
        for index in range(len(turns) - 1, -1, -1):
            text = turns[index]["content"]
            cost = budget + 1 if len(text) > longest else self._token_count(text)
            if cost > budget:
                break
            budget -= cost
            start = index
        kept = turns[start:]
        while kept and kept[0]["role"] != "user":  # begin on a whole exchange
            kept = kept[1:]
        return kept

    def chat_stream(
        self,
        video: str | os.PathLike | None,
        history: Sequence[dict] = (),
        message: str | None = None,
        num_frames: int | None = None,
        max_new_tokens: int | None = None,
        generation: GenerationSettings | None = None,
        *,
        prompt: ChatPrompt | None = None,
    ) -> Iterator[str]:
        """The assistant's reply to ``message`` about the clip, in text pieces as they are generated
        (``prompt``: a :meth:`chat_prompt` already made, instead of ``history`` and ``message``).

        Replies of chats being processed at the same time are generated with continuous batching (up
        to ``batching.max_batch`` rows, each with its own settings; greedy by default, then the same text
        as alone), each streamed to its own client. Closing this generator early (a client that goes away)
        takes its row out of the batch at the next step."""
        messages = (prompt or self.chat_prompt(history, message)).messages
        settings = self.generation_settings(max_new_tokens, generation, 256)
        ids = self.chat_tokens(video, messages, num_frames, settings)
        text = IncrementalText(self.model.tokenizer)
        try:
            for token in ids:
                piece = text.add(token)
                if piece:
                    yield piece
            rest = text.flush()
            if rest:
                yield rest
        finally:
            ids.cancel()  # a client that goes away leaves the batch at the next step

    def chat_tokens(
        self,
        video: str | os.PathLike | np.ndarray | None,
        messages: list[dict],
        num_frames: int | None,
        settings: GenerationSettings,
        top_logprobs: int | None = None,
        ignore_eos: bool = False,
    ) -> GenerationStream:
        """The reply to checked chat ``messages`` (:meth:`chat_prompt`'s) as a stream of token ids, with its
        prompt length and, when asked, log-probabilities (``settings`` already within the limits: see
        :meth:`generation_settings`); ``ignore_eos``: go on past end-of-text tokens (benchmarks). The
        caller cancels the stream when done."""
        assistant = self.assistant
        return self._token_ids(
            video,
            num_frames,
            lambda features: assistant.chat_inputs(features, [messages]),
            settings,
            stop_at_newline=False,
            streaming=True,
            top_logprobs=top_logprobs,
            ignore_eos=ignore_eos,
        )
