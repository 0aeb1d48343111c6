"""lmms-eval's models of a prism-vlm glue: ``python -m lmms_eval --model prism_vlm --model_args pretrained=GLUE``.

:class:`PrismVlm` (``prism_vlm``, lmms-eval's simple model) answers the three request types of lmms-eval's
``ConfigurableTask``:

- ``loglikelihood``: exact. The requests of one question (its choices) share one forward over the prompt's
  prefix (its KV cache reused for every choice, as ``VideoAssistant.score_answers`` does); questions whose
  choices are all one token are scored ``batch_size`` at a time in one forward. The greedy flag says whether
  greedy decoding would write the choice.
- ``generate_until``: lmms-eval's ``gen_kwargs`` (``max_new_tokens``, ``temperature``, ``do_sample``,
  ``top_p``, ``top_k``, ``num_beams``, ``repetition_penalty``, ``until``), ``batch_size`` requests per batch.
- ``generate_until_multi_round``: round after round through the task's ``doc_to_text``.

:class:`PrismVlmChat` (``prism_vlm_chat``) takes the chat tasks' messages (``ConfigurableMessagesTask``):
the conversation in the LLM's chat template with the video at the start of the first user turn.

Video files are decoded ahead by worker processes (``workers``), in the order the questions come, while the
model works; each video (file and window) is decoded and encoded once however many questions ask about it.
Under ``accelerate launch`` with several processes each takes lmms-eval's share of the requests on its own GPU.

The model's arguments are :class:`LmmsModelSettings`. ``prompt=qa`` (the default) puts lmms-eval's context in
the glue's QA template, as ``prism-vlm eval-qa`` and ``prism-vlm ask`` do (so a local task's accuracy equals
``eval-qa --mode closed``'s and its answers equal ``ask``'s); ``prompt=chat`` makes it the user turn of a chat.

Each question reads one video: a path (or a dict with the path and ``start``/``end`` seconds) or a list of
frames (PIL images) from the task's ``doc_to_visual``. A video that cannot be read gives no answer (an empty
string; an infinite loss for every choice) and is listed in the protocol card; the evaluation goes on.

``window=SECONDS`` reads a video of two windows or more as windows (``vlm.long_video``): each question is
asked on the moment it names or on the window the video-text model finds most similar to it.

``protocol=PATH`` writes the protocol card (:mod:`vlm.evaluation.protocol`) there after every call: the
glue's sources and hashes, frames, frame size, sampling rule, decoder, prompt templates, the model arguments,
lmms-eval's version, and per task the request types and generation settings it sent.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from encoder.common.errors import UsageError
from encoder.video.decode import MAX_NUM_FRAMES, MAX_SIZE, VideoDecodeError, load_clip
from vlm.inference.generation import MIN_SAMPLING_TEMPERATURE, GenerationSettings
from vlm.inference.scoring import candidate_log_likelihoods
from vlm.prompts import ANSWER_PREFIX, leading_special_ids, qa_prompt, text_ids

logger = logging.getLogger(__name__)

PROMPTS = ("qa", "chat")
SCORES = ("loss", "logprob")
MAX_NEW_TOKENS_LIMIT = 8192  # GenerationSettings' bound; lmms-eval tasks ask for up to 32768
WORKERS_FROM_BATCHES = 4  # decoding processes start (a few seconds each) for more than this many batches of videos
MAX_ROUNDS = 64  # a multi-round task that never says it is done stops here
LONG_VIDEOS_HELD = 4  # long videos kept read between questions (a task asks about one video's questions together)
_IGNORED_ARGS = ("max_batch_size",)  # passed by lmms-eval to every model; batches here are batch_size


@dataclass(frozen=True)
class LmmsModelSettings:
    """The model arguments (``--model_args key=value,...``).

    pretrained: a saved glue directory or a Hub id (None: the installed demo model).
    num_frames: frames sampled per video (None: the glue's). frame_size: their side (None: the glue's).
    batch_size: questions (and videos decoded and encoded) per batch.
    workers: processes decoding the video files ahead (0: in this process), as ``eval-qa --workers``; a call
        with at most 4 batches of videos decodes in this process (starting the processes would cost more).
    device: cpu, cuda, cuda:1 ... (None: cuda when available).
    prompt: "qa" (the glue's QA template, as eval-qa and ask) or "chat" (the LLM's chat template).
    score: what ``loglikelihood`` returns: "loss", the negative log-likelihood (lmms-eval's convention: its
        ``multiple_choice`` metrics and its ``*_mcppl`` tasks pick the choice with the SMALLEST value), or
        "logprob", the log-likelihood (lm-evaluation-harness's convention, e.g. for ``acc_mutual_info``).
    max_new_tokens: generation's default when a task's gen_kwargs give none.
    window: seconds per window for long videos (0: every video is one clip of num_frames frames); each window is
        read at the glue's frames and frame size.
    video_text_model: with window: the video-text model that finds a question's moment (None: the demo's).
    protocol: write the protocol card (JSON) here after every call (None: none written).
    """

    pretrained: str | None = None
    num_frames: int | None = None
    frame_size: int | None = None
    batch_size: int = 8
    workers: int = 2
    device: str | None = None
    prompt: str = "qa"
    score: str = "loss"
    max_new_tokens: int = 32
    window: float = 0.0
    video_text_model: str | None = None
    protocol: str | None = None

    def __post_init__(self) -> None:
        for name, limit in (("num_frames", MAX_NUM_FRAMES), ("frame_size", MAX_SIZE)):  # the decoder's bounds
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit):
                raise UsageError(f"{name} must be an integer in [1, {limit}], got {value!r}")
        if (
            not isinstance(self.batch_size, int)
            or isinstance(self.batch_size, bool)
            or not 1 <= self.batch_size <= 1024
        ):
            raise UsageError(f"batch_size must be an integer in [1, 1024], got {self.batch_size!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or not 0 <= self.workers <= 64:
            raise UsageError(f"workers must be an integer in [0, 64], got {self.workers!r}")
        if self.score not in SCORES:
            raise UsageError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.prompt not in PROMPTS:
            raise UsageError(f"prompt must be one of {', '.join(PROMPTS)}, got {self.prompt!r}")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UsageError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]")
        if not isinstance(self.window, (int, float)) or isinstance(self.window, bool) or not 0 <= self.window <= 3600:
            raise UsageError(f"window must be seconds in [0, 3600] (0: off), got {self.window!r}")

    @classmethod
    def from_model_args(cls, args: dict) -> LmmsModelSettings:
        """Settings from lmms-eval's parsed ``--model_args`` (and its batch_size / device); UsageError naming
        an unknown argument and the known ones."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, value in args.items():
            if name in _IGNORED_ARGS:
                continue
            if name not in known:
                raise UsageError(f"unknown prism_vlm model argument {name!r}; known: {', '.join(known)}")
            values[name] = _coerce(name, value)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value):
    """lmms-eval's arguments as the settings' types ("8" from --batch_size, "none" for None, ...)."""
    if isinstance(value, str) and value.lower() in ("", "none", "null"):
        return None if name not in ("batch_size", "workers", "prompt", "score", "max_new_tokens", "window") else value
    if name in ("num_frames", "frame_size", "batch_size", "workers", "max_new_tokens") and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{name} must be an integer, got {value!r}") from None
    if name == "window" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"window must be seconds, got {value!r}") from None
    if name in ("pretrained", "device", "video_text_model", "protocol") and value is not None:
        return str(value)
    return value


def generation_settings(gen_kwargs: dict, default_max_new_tokens: int) -> tuple[GenerationSettings, list[str]]:
    """lmms-eval's ``gen_kwargs`` as (GenerationSettings, the ``until`` strings).

    As lmms-eval's models read them: a temperature above 0 samples (``do_sample`` may say so too), 0 or
    None is greedy; ``max_new_tokens`` is capped at 8192; keys other than the generation settings are
    ignored (the protocol card records them all)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.get("until") or []
    until = [until] if isinstance(until, str) else [text for text in until if isinstance(text, str) and text]
    try:
        max_new_tokens = int(kwargs.get("max_new_tokens") or default_max_new_tokens)
        temperature = float(kwargs.get("temperature") or 0.0)
        do_sample = bool(kwargs.get("do_sample")) or temperature > 0
        samples = do_sample and temperature >= MIN_SAMPLING_TEMPERATURE
        settings = GenerationSettings(
            max_new_tokens=max(1, min(max_new_tokens, MAX_NEW_TOKENS_LIMIT)),
            do_sample=samples,
            temperature=min(temperature, 100.0) if samples else 1.0,
            top_p=float(kwargs.get("top_p") or 1.0) if samples else 1.0,
            top_k=int(kwargs.get("top_k") or 0) if samples else 50,
            repetition_penalty=float(kwargs.get("repetition_penalty") or 1.0),
            num_beams=int(kwargs.get("num_beams") or 1),
        )
    except (TypeError, ValueError) as error:
        raise UsageError(f"the task's gen_kwargs {kwargs} cannot be used: {error}") from None
    return settings, until


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    for stop in until:
        position = text.find(stop)
        if position >= 0:
            text = text[:position]
    return text


# ---------------------------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoSource:
    """What one question reads: a file (with a window in seconds) or in-memory frames."""

    path: str | None = None
    start: float | None = None
    end: float | None = None
    frames: tuple = ()

    @property
    def name(self) -> str:
        return self.path if self.path is not None else f"<{len(self.frames)} frames>"


def video_source(visuals) -> VideoSource:
    """The one video of a question from ``doc_to_visual``'s list; UsageError for none or several videos.

    A visual is a path, a dict with one (``path``, ``video`` or ``url``; ``start``/``video_start``/
    ``start_time`` and ``end``/... in seconds) or PIL images (the frames of one clip)."""
    if visuals is None or isinstance(visuals, (str, os.PathLike, dict)):
        visuals = [] if visuals is None else [visuals]
    visuals = list(visuals)
    images = [v for v in visuals if hasattr(v, "convert") and hasattr(v, "size")]  # PIL images
    videos = [v for v in visuals if not (hasattr(v, "convert") and hasattr(v, "size"))]
    if images and not videos:
        return VideoSource(frames=tuple(images))
    if len(videos) != 1 or images:
        raise UsageError(
            f"prism_vlm reads one video per question; this one has {len(videos)} videos and {len(images)} images"
        )
    video = videos[0]
    if isinstance(video, (str, os.PathLike)):
        return VideoSource(path=str(video))
    if isinstance(video, dict):
        path = next((video[k] for k in ("path", "video", "url") if isinstance(video.get(k), (str, os.PathLike))), None)
        if path is None:
            raise UsageError(f"a video dict needs a path ('path', 'video' or 'url'), got keys {sorted(video)}")
        start = next((video[k] for k in ("start", "video_start", "start_time") if video.get(k) is not None), None)
        end = next((video[k] for k in ("end", "video_end", "end_time") if video.get(k) is not None), None)
        try:
            return VideoSource(str(path), None if start is None else float(start), None if end is None else float(end))
        except (TypeError, ValueError):
            raise UsageError(f"a video's start and end must be seconds, got {start!r} and {end!r}") from None
    raise UsageError(f"prism_vlm cannot read a visual of type {type(video).__name__}")


# ---------------------------------------------------------------------------------------------------- the card


@dataclass
class _ProtocolRecord:
    """What the protocol card adds to the glue's: per task, the request types and generation settings sent,
    the questions left unanswered (a video that cannot be read, messages that cannot be used) and why, and the
    questions cut to the QA template's length."""

    tasks: dict = field(default_factory=lambda: defaultdict(lambda: {"requests": defaultdict(int), "gen_kwargs": []}))
    unreadable: dict = field(default_factory=dict)
    truncated_questions: int = 0

    def add(self, request_type: str, task: str | None, gen_kwargs: dict | None = None) -> None:
        entry = self.tasks[task or "?"]
        entry["requests"][request_type] += 1
        if gen_kwargs is not None:
            shown = json.loads(json.dumps(gen_kwargs, default=str))
            if shown not in entry["gen_kwargs"]:
                entry["gen_kwargs"].append(shown)

    def to_dict(self) -> dict:
        return {
            "tasks": {
                name: {"requests": dict(t["requests"]), "gen_kwargs": t["gen_kwargs"]} for name, t in self.tasks.items()
            },
            "unanswered": dict(self.unreadable),  # question (task/split/doc_id) -> why: its video, its messages
            "truncated_questions": self.truncated_questions,
        }


@dataclass(frozen=True)
class _Asked:
    """One generation request, read: its document key (task, split, doc_id), gen_kwargs, conversation so far
    (None: it cannot be answered), a callable giving its visuals, and ``next_round(previous outputs, round
    index, info) -> (the next user turns or None when done, that round's visuals, info)``."""

    key: tuple
    gen_kwargs: dict
    conversation: list[dict] | None
    visuals: Callable
    next_round: Callable


class _VideoPlan:
    """The videos of one call's questions, read in the order they are asked: files decoded ahead by ``workers``
    processes (``encoder.video.clips.iter_decoded_batches``, as ``eval-qa`` decodes) while the model works,
    each video (file and window) decoded and encoded once however many questions ask about it.

    docs: (document key (task, split, doc_id), a callable giving ``doc_to_visual``'s list, or None for a
    text-only request) in the order their questions come."""

    def __init__(self, model: PrismVlm, docs: Sequence[tuple[tuple, Callable | None]], workers: int | None = None):
        from encoder.video.clips import Clip, iter_decoded_batches

        self.model = model
        self.sources: dict[tuple, VideoSource | None] = {}
        self.video_of: dict[tuple, tuple] = {}  # document key -> video identity
        clips, self._clip_videos, planned = [], [], set()
        for key, visuals in docs:
            if visuals is None or key in self.sources:
                continue
            try:
                source = video_source(visuals())
            except UsageError as error:
                model._unreadable(key, str(error))
                source = None
            self.sources[key] = source
            video = ("file", source.path, source.start, source.end) if source and source.path else ("doc", *key)
            self.video_of[key] = video
            if source is not None and source.path is not None and model._long(source) is None and video not in planned:
                planned.add(video)
                clips.append(Clip(str(len(clips)), source.path, source.start, source.end))
                self._clip_videos.append(video)
        workers = model.settings.workers if workers is None else workers
        if len(clips) <= WORKERS_FROM_BATCHES * model.batch_size:  # starting them would cost more than they save
            workers = 0
        self._decoded = (
            iter_decoded_batches(clips, model.num_frames, model.frame_size, model.batch_size, min(workers, len(clips)))
            if clips
            else iter(())
        )
        self._frames: dict[tuple, tuple] = {}  # decoded, not yet encoded: video -> (frames or None, error)
        self._consumed: set[tuple] = set()  # file videos the workers have handed over
        self._encoded: OrderedDict[tuple, torch.Tensor | None] = OrderedDict()  # the last few videos' soft prompts
        self._errors: dict[tuple, str] = {}

    def close(self) -> None:
        """Stops the decoding processes."""
        close = getattr(self._decoded, "close", None)
        if close is not None:
            close()

    def features(self, asked: Sequence[tuple[tuple, str]]) -> list:
        """Per question (its document key, its text): its video's soft prompt [1, L, H]; None where the video
        cannot be read; the string "text" for a text-only request."""
        pending: dict[tuple, tuple] = {}  # video -> the first document asking (for the unreadable list)
        for key, _ in asked:
            source = self.sources.get(key)
            video = self.video_of.get(key)
            if source is not None and self.model._long(source) is None:
                if video in self._encoded:
                    self._encoded.move_to_end(video)  # kept through this batch's encoding
                else:
                    pending.setdefault(video, key)
        self._encode(pending)
        outcome = []
        for key, question in asked:
            if key not in self.video_of:
                outcome.append("text")
                continue
            source = self.sources[key]
            if source is None:
                outcome.append(None)
            elif self.model._long(source) is not None:
                outcome.append(self.model._long_video_features(source, key, question))
            else:
                features = self._encoded[self.video_of[key]]
                if features is None:
                    self.model._unreadable(key, self._errors.get(self.video_of[key], "unreadable"))
                outcome.append(features)
        return outcome

    def _encode(self, pending: dict[tuple, tuple]) -> None:
        """Decode (or take from the workers) and encode the ``pending`` videos, in one batch."""
        clips: dict[tuple, torch.Tensor] = {}
        for video, key in pending.items():
            source = self.sources[key]
            if video[0] == "file" and video not in self._consumed:
                while video not in self._frames:
                    batch = next(self._decoded, None)
                    if batch is None:  # cannot happen: every file video was planned
                        self._frames[video] = (None, "not decoded")
                        break
                    for clip, frames, error in batch:
                        self._frames[self._clip_videos[int(clip.id)]] = (frames, error)
                frames, error = self._frames.pop(video)
                self._consumed.add(video)
            else:  # in-memory frames, or a file asked about again after its soft prompt was let go: here
                what = list(source.frames) if source.path is None else source.path
                try:
                    frames = load_clip(what, self.model.num_frames, self.model.frame_size, source.start, source.end)
                    error = None
                except (VideoDecodeError, FileNotFoundError, ValueError) as failure:
                    frames, error = None, f"{type(failure).__name__}: {failure}"
            if frames is None:
                self._errors[video] = f"{source.name}: {error}"
                self._encoded[video] = None
            else:
                clips[video] = torch.from_numpy(frames)
        if clips:
            with torch.inference_mode():
                encoded = self.model.assistant.model.get_video_features(clips=torch.stack(list(clips.values())))
            for row, video in enumerate(clips):
                self._encoded[video] = encoded[row : row + 1]
        while len(self._encoded) > 4 * self.model.batch_size:  # the videos of the last few batches
            self._encoded.popitem(last=False)


# ---------------------------------------------------------------------------------------------------- the model


class PrismVlm(lmms):
    """lmms-eval's simple model of a glue (see the module docstring); model arguments: :class:`LmmsModelSettings`."""

    is_simple = True
    default_prompt = "qa"

    def __init__(self, **model_args):
        super().__init__()
        from encoder.videoprism.loading import default_device
        from vlm.hub import default_model_dir, resolve_model_dir
        from vlm.inference.assistant import load_assistant

        model_args.setdefault("prompt", self.default_prompt)
        self.settings = LmmsModelSettings.from_model_args(model_args)
        self.device_name = self.settings.device or default_device()
        self._data_parallel()
        # a Hub id's snapshot folder: the card hashes the weight files loaded, wherever they came from
        self.glue_dir = resolve_model_dir(self.settings.pretrained) if self.settings.pretrained else default_model_dir()
        self.assistant = load_assistant(self.glue_dir if self.settings.pretrained else None, device=self.device_name)
        config = self.assistant.config
        self.num_frames = self.settings.num_frames or config.num_frames
        self.frame_size = self.settings.frame_size or config.frame_size
        patch = _patch_size(self.assistant.model)
        if patch and self.frame_size % patch:
            raise UsageError(
                f"frame_size must be a multiple of the encoder's patch size {patch}, got {self.frame_size}"
            )
        self.batch_size = self.settings.batch_size
        self.record = _ProtocolRecord()
        self._long_videos: dict[str, list | None] = {}  # path -> window spans (None: not a long video)
        self._long_questions: OrderedDict[str, object] = OrderedDict()  # path -> its LongVideoQA, the last few
        self._video_text = None
        if self.settings.protocol is None:
            warnings.warn(
                "prism_vlm: no protocol=PATH in --model_args: the settings behind these scores are not written down",
                stacklevel=2,
            )

    def _data_parallel(self) -> None:
        """Under ``accelerate launch`` with several processes: this one's rank and GPU (lmms-eval gives each
        rank its share of the requests; each process holds its own copy of the glue)."""
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self.accelerator = accelerator  # lmms-eval waits for every process through it
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            if self.settings.device is None:
                self.device_name = f"cuda:{accelerator.local_process_index}"

    # ------------------------------------------------------------------ lmms-eval's requests

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request: (the negative log-likelihood of the continuation given video + context, or with
        ``score=logprob`` the log-likelihood; whether greedy decoding writes it). Requests of one question
        (video and context) are scored together. An unreadable video: inf (-inf)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        questions: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
        question_visuals: dict[tuple, Callable | None] = {}
        for index, request in enumerate(requests):
            args = request.args
            context, continuation = args[0], args[1]
            if len(args) >= 6:
                doc_to_visual, doc_id, task, split = args[2:6]
                doc = self.task_dict[task][split][doc_id]
                continuation = continuation(doc) if callable(continuation) else continuation
                key = (task, split, doc_id, context)
                question_visuals[key] = lambda doc=doc, fn=doc_to_visual: fn(doc)
            else:  # lmms-eval's unconditional requests (acc_mutual_info): ("", choice), no video
                task = getattr(request, "task_name", None)
                key = (task, None, None, context)
                question_visuals[key] = None
            if isinstance(continuation, list):  # doc_to_target giving a list: its first
                continuation = continuation[0]
            self.record.add("loglikelihood", task)
            questions[key].append((index, str(continuation)))
        keys = list(questions)
        plan = _VideoPlan(self, [(key[:3], question_visuals[key]) for key in keys])
        bar = tqdm(total=len(requests), desc="prism_vlm loglikelihood", unit="request", disable=self.rank != 0)
        with bar, closing(plan):
            for start in range(0, len(keys), self.batch_size):
                batch = keys[start : start + self.batch_size]
                features = plan.features([(key[:3], key[3]) for key in batch])
                scored = self._score(
                    [key[3] for key in batch], features, [[text for _, text in questions[key]] for key in batch]
                )
                sign = -1.0 if self.settings.score == "loss" else 1.0
                for key, scores in zip(batch, scored):
                    for (index, _), (log_likelihood, greedy) in zip(questions[key], scores):
                        results[index] = _harness_output((sign * log_likelihood, greedy))
                    bar.update(len(questions[key]))
        self._write_protocol()
        return results

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """The reply to each request (its context about its video, or in the chat model its messages), with its
        gen_kwargs; "" where the video or the messages cannot be used."""
        results: list[str | None] = [None] * len(requests)
        parsed = [self._parse(request) for request in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for index, (request, asked) in enumerate(zip(requests, parsed)):
            self.record.add(request.request_type, asked.key[0], asked.gen_kwargs)
            if asked.conversation is None:
                results[index] = ""
            else:
                groups[json.dumps(asked.gen_kwargs, sort_keys=True, default=str)].append(index)
        desc = f"{type(self).__name__} generate_until"
        unanswered = len(requests) - sum(map(len, groups.values()))
        bar = tqdm(total=len(requests), initial=unanswered, desc=desc, unit="request", disable=self.rank != 0)
        with bar:
            for indices in groups.values():
                settings, until = generation_settings(parsed[indices[0]].gen_kwargs, self.settings.max_new_tokens)
                with closing(_VideoPlan(self, [(parsed[i].key, parsed[i].visuals) for i in indices])) as plan:
                    for start in range(0, len(indices), self.batch_size):
                        batch = [parsed[i] for i in indices[start : start + self.batch_size]]
                        features = plan.features([(a.key, a.conversation[-1]["content"]) for a in batch])
                        texts = self._generate([a.conversation for a in batch], features, settings)
                        for index, text in zip(indices[start : start + self.batch_size], texts):
                            results[index] = cut_at(text, until)
                        bar.update(len(batch))
        self._write_protocol()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Per request, the reply of every round: round 0 answers the request's context (messages); each later
        round is what the task asks next (``doc_to_text`` / ``doc_to_messages`` with ``round_idx`` and
        ``previous_output``), until it says it is done. In chat mode the rounds are one conversation."""
        results = []
        parsed = [self._parse(request) for request in requests]
        plan_docs = [(asked.key, asked.visuals) for asked in parsed if asked.conversation is not None]
        bar = tqdm(requests, desc=f"{type(self).__name__} multi-round", unit="request", disable=self.rank != 0)
        with closing(_VideoPlan(self, plan_docs)) as plan:
            for request, asked in zip(bar, parsed):
                self.record.add(request.request_type, asked.key[0], asked.gen_kwargs)
                if asked.conversation is None:
                    results.append([""])
                    continue
                settings, until = generation_settings(asked.gen_kwargs, self.settings.max_new_tokens)
                conversation, key, round_plan = asked.conversation, asked.key, plan
                outputs: list[str] = []
                info = None
                for round_index in range(MAX_ROUNDS):
                    features = round_plan.features([(key, conversation[-1]["content"])])
                    text = cut_at(self._generate([conversation], features, settings)[0], until)
                    outputs.append(text)
                    try:
                        turns, round_visuals, info = asked.next_round(list(outputs), round_index + 1, info)
                    except UsageError as error:  # the rounds so far stand
                        self._unreadable(asked.key, f"round {round_index + 1}: {error}")
                        break
                    if turns is None:
                        break
                    if round_visuals:  # this round shows other visuals: read here
                        key = (*asked.key, round_index + 1)
                        round_plan = _VideoPlan(self, [(key, lambda v=round_visuals: v)], workers=0)
                    conversation = [*conversation, {"role": "assistant", "content": text or " "}, *turns]
                results.append(outputs)
        self._write_protocol()
        return results

    def _parse(self, request: Instance) -> _Asked:
        """A generation request of lmms-eval's ``ConfigurableTask``: (context, gen_kwargs, doc_to_visual,
        [doc_to_text,] doc_id, task, split)."""
        if len(request.args) == 7:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
        else:
            (context, gen_kwargs, doc_to_visual, doc_id, task, split), doc_to_text = request.args, None
        doc = self.task_dict[task][split][doc_id]

        def next_round(outputs: list[str], round_index: int, info):
            visuals, text, terminal, _, info = doc_to_text(
                doc, previous_output=outputs, round_idx=round_index, previous_round_info=info
            )
            return (None if terminal else [{"role": "user", "content": str(text or "")}]), visuals, info

        return _Asked(
            (task, split, doc_id),
            gen_kwargs,
            [{"role": "user", "content": context}],
            lambda: doc_to_visual(doc),
            next_round,
        )

    # ------------------------------------------------------------------ prompts

    def _question(self, context: str) -> str:
        """A context as the glue's QA question (whitespace collapsed; cut to the template's question length,
        as ``eval-qa`` and ``ask`` cut it, and counted in the protocol card)."""
        from vlm.prompts import clean_question

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            question = clean_question(
                self.assistant.tokenizer, context, self.assistant.config.prompts.max_question_tokens
            )
        self.record.truncated_questions += sum("truncated" in str(w.message) for w in caught)
        return question

    def _inputs(self, conversations: list[list[dict]], features: torch.Tensor):
        """The LLM inputs of B questions (features [B, L, H]): the QA prompt of the last user turn (nothing
        after the video for an empty one), or the whole conversation in the chat template."""
        if self.settings.prompt == "qa":
            prompts = [c[-1]["content"] for c in conversations]
            template = self.assistant.config.prompts  # the question is cleaned once, by _question
            return self.assistant.prompt_inputs(
                features, [qa_prompt(template, self._question(p)) if p.strip() else "" for p in prompts]
            )
        return self.assistant.chat_inputs(features, [_chat_turns(c) for c in conversations])

    # ------------------------------------------------------------------ scoring and generation

    def _score(
        self, contexts: list[str], features: list[torch.Tensor | None], continuations: list[list[str]]
    ) -> list[list[tuple[float, bool]]]:
        """(log-likelihood, greedy) of each question's continuations. features: per question [1, L, H], None for
        an unreadable video (-inf), or the string "text" for a text-only request (no video)."""
        tokenizer = self.assistant.tokenizer
        ids = [[self._continuation_ids(text) for text in texts] for texts in continuations]
        scores: list[list[tuple[float, bool]] | None] = [None] * len(contexts)
        with_video = [i for i, f in enumerate(features) if isinstance(f, torch.Tensor)]
        for i, f in enumerate(features):
            if f is None:
                scores[i] = [(-math.inf, False)] * len(continuations[i])
        one_token = [i for i in with_video if all(len(t) == 1 for t in ids[i])]
        if one_token:  # every choice one token: the questions in one forward
            inputs = self._inputs(
                [[{"role": "user", "content": contexts[i]}] for i in one_token],
                torch.cat([features[i] for i in one_token]),
            )
            log_probs = self.assistant.next_token_log_probs(inputs)  # [b, V]
            for row, i in enumerate(one_token):
                best = int(log_probs[row].argmax())
                scores[i] = [(float(log_probs[row, t[0]]), t[0] == best) for t in ids[i]]
        for i in range(len(contexts)):
            if scores[i] is not None:
                continue
            if isinstance(features[i], torch.Tensor):
                prefix = self._inputs([[{"role": "user", "content": contexts[i]}]], features[i]).row(0)[None]
            else:  # no video: the context after the tokenizer's leading tokens (or its BOS/EOS)
                prefix_ids = leading_special_ids(tokenizer) + text_ids(tokenizer, contexts[i])
                prefix_ids = prefix_ids or [
                    tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
                ]
                embedding = self.assistant.model.get_input_embeddings()
                prefix = embedding(torch.tensor(prefix_ids, device=embedding.weight.device))[None]
            with torch.inference_mode():
                totals, greedy = candidate_log_likelihoods(
                    self.assistant.model.llm, prefix, ids[i], batch_size=64, return_greedy=True
                )
            scores[i] = [(float(t), bool(g)) for t, g in zip(totals.tolist(), greedy.tolist())]
        return scores

    def _continuation_ids(self, continuation: str) -> list[int]:
        """A continuation's token ids as the glue writes answers: after the QA prompt a space then the stripped
        text (``answer_continuation``); as a chat reply, the stripped text. An empty one: the EOS token."""
        text = continuation.strip()
        if not text:
            return [self.assistant.tokenizer.eos_token_id]
        return text_ids(self.assistant.tokenizer, (ANSWER_PREFIX if self.settings.prompt == "qa" else "") + text)

    def _generate(
        self, conversations: list[list[dict]], features: list[torch.Tensor | None], settings: GenerationSettings
    ) -> list[str]:
        """Replies to B conversations (only the last user turn in qa mode); "" where the video is unreadable."""
        rows = [i for i, f in enumerate(features) if isinstance(f, torch.Tensor)]
        texts = [""] * len(conversations)
        if not rows:
            return texts
        stacked = torch.cat([features[i] for i in rows])
        if self.settings.prompt == "qa":
            questions = [self._question(conversations[i][-1]["content"].strip() or "?") for i in rows]
            with warnings.catch_warnings():  # counted by _question
                warnings.filterwarnings("ignore", message="question has .* tokens; truncated")
                answers = self.assistant.answer(
                    questions, video_features=stacked, max_new_tokens=settings.max_new_tokens, generation=settings
                )
        else:
            pieces: list[list[str]] = [[] for _ in rows]
            for step in self.assistant.chat_stream_batch(
                [_chat_turns(conversations[i]) for i in rows],
                video_features=stacked,
                max_new_tokens=settings.max_new_tokens,
                generation=settings,
            ):
                for row, piece in enumerate(step):
                    if piece:
                        pieces[row].append(piece)
            answers = ["".join(p).strip() for p in pieces]
        for i, answer in zip(rows, answers):
            texts[i] = answer
        return texts

    # ------------------------------------------------------------------ videos

    def _unreadable(self, key: tuple, reason: str) -> None:
        name = "/".join(str(part) for part in key)
        if name not in self.record.unreadable:
            logger.warning("prism_vlm: no answer for %s: %s", name, reason)
        self.record.unreadable[name] = reason

    def _long(self, source: VideoSource):
        """The window spans of a file of two windows or more when ``window`` is on, else None."""
        if not self.settings.window or source.path is None or source.start is not None or source.end is not None:
            return None
        if source.path not in self._long_videos:
            from encoder.video.windows import video_window_spans

            try:
                spans = video_window_spans(source.path, self.settings.window)
            except (VideoDecodeError, FileNotFoundError, ValueError):
                spans = []
            self._long_videos[source.path] = spans if len(spans) >= 2 else None
        return self._long_videos[source.path]

    def _long_video_features(self, source: VideoSource, key: tuple, question: str):
        """The soft prompt [1, L, H] of the moment ``question`` names, or of the window most like it."""
        from vlm.long_video.questions import LongVideoQA
        from vlm.long_video.reading import read_long_video

        if self._video_text is None:
            from vlm.retrieval.video_text_model import default_video_text_model, load_video_text_model

            self._video_text = load_video_text_model(
                self.settings.video_text_model or default_video_text_model(), device=self.device_name
            )
        if source.path not in self._long_questions:
            try:
                video = read_long_video(
                    source.path,
                    model=self.assistant.model,
                    video_text_model=self._video_text,
                    window_s=self.settings.window,
                    batch_size=self.batch_size,
                )
            except (VideoDecodeError, FileNotFoundError, ValueError) as error:
                self._unreadable(key, f"{source.name}: {error}")
                return None
            self._long_questions[source.path] = LongVideoQA(self.assistant, self._video_text, video)
            while len(self._long_questions) > LONG_VIDEOS_HELD:  # each holds every window's soft prompt
                self._long_questions.popitem(last=False)
        self._long_questions.move_to_end(source.path)
        return self._long_questions[source.path].moment(question)[2]

    # ------------------------------------------------------------------ the protocol card

    def protocol_card(self) -> dict:
        """The protocol card of this evaluation so far (:func:`vlm.evaluation.protocol.protocol_card`)."""
        from importlib.metadata import PackageNotFoundError, version

        from vlm.evaluation.protocol import protocol_card

        try:
            harness = version("lmms-eval")
        except PackageNotFoundError:
            harness = None
        card = protocol_card(
            glue=self.assistant.model,
            glue_dir=self.glue_dir,
            settings={
                "harness": {"name": "lmms-eval", "version": harness, "model": type(self).__name__},
                "model_args": self.settings.to_dict(),
                "device": str(self.device_name),
                "processes": self.world_size,  # with several, the request counts are this first process's share
                "prompt_template": self.settings.prompt,
                **self.record.to_dict(),
            },
        )
        card["decoding"].update(frames=self.num_frames, frame_size=self.frame_size)
        return card

    def _write_protocol(self) -> None:
        if self.settings.protocol is None or self.rank != 0:
            return
        path = Path(self.settings.protocol)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.protocol_card(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)


class PrismVlmChat(PrismVlm):
    """lmms-eval's chat model of a glue: the chat tasks' messages in the LLM's chat template (generation only)."""

    is_simple = False
    default_prompt = "chat"

    def loglikelihood(self, requests):
        raise NotImplementedError("prism_vlm_chat only generates; score multiple-choice tasks with --model prism_vlm")

    def _parse(self, request: Instance) -> _Asked:
        """A request of lmms-eval's ``ConfigurableMessagesTask``: (context, doc_to_messages, gen_kwargs, doc_id,
        task, split); messages that cannot be used leave it unanswered (conversation None)."""
        _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        doc, key = self.task_dict[task][split][doc_id], (task, split, doc_id)
        try:
            conversation, visuals = chat_messages(doc_to_messages(doc))
        except UsageError as error:  # this question gets no answer; the others go on
            self._unreadable(key, str(error))
            conversation, visuals = None, []

        def next_round(outputs: list[str], round_index: int, info):
            messages, terminal, _, info = doc_to_messages(
                doc, round_idx=round_index, previous_output=outputs, previous_round_info=info
            )
            if terminal or messages is None:
                return None, None, info
            return (*chat_messages(messages), info)

        return _Asked(key, gen_kwargs, conversation, lambda: visuals, next_round)


def chat_messages(messages) -> tuple[list[dict], list]:
    """lmms-eval's messages (dicts or its ``ChatMessages``) as (our chat messages with text content, the
    visuals: the video URLs / paths and images in them). Text parts of a turn are joined by newlines."""
    if hasattr(messages, "messages"):
        messages = messages.messages
    conversation, visuals = [], []
    for message in messages:
        role = _get(message, "role")
        content = _get(message, "content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        texts = []
        for part in parts:
            kind = _get(part, "type")
            if kind == "text":
                texts.append(str(_get(part, "text") or ""))
            elif kind == "video":
                start, end = _get(part, "start_time"), _get(part, "end_time")
                url = _get(part, "url")
                visuals.append(url if start is None and end is None else {"path": url, "start": start, "end": end})
            elif kind == "image":
                visuals.append(_get(part, "url"))
        text = "\n".join(t for t in texts if t.strip())
        if conversation and conversation[-1]["role"] == role == "user":
            conversation[-1]["content"] += "\n" + text
        else:
            conversation.append({"role": role, "content": text or " "})
    if not conversation or conversation[-1]["role"] != "user":
        raise UsageError("the task's messages must end with a user turn")
    return conversation, visuals


def _chat_turns(conversation: list[dict]) -> list[dict]:
    """A conversation for the chat template (an empty turn as one space: the template refuses empty ones)."""
    return [{"role": m["role"], "content": m["content"] if m["content"].strip() else " "} for m in conversation]


def _harness_output(score: tuple[float, bool]):
    """A loglikelihood result as lmms-eval keeps it: lmms-eval 0.7.3 passes every model output through
    ``unwrap_generation_output``, which turns a (float, bool) tuple into its string (breaking every
    ``multiple_choice`` task); its ``GenerationResult`` is passed through as is, so the tuple goes in one there.
    An lmms-eval that keeps tuples gets the tuple."""
    if _harness_keeps_tuples():
        return score
    from lmms_eval.api.instance import GenerationResult

    return GenerationResult(text=score)


@functools.cache
def _harness_keeps_tuples() -> bool:
    from lmms_eval.api import instance

    unwrap = getattr(instance, "unwrap_generation_output", None)
    return unwrap is None or unwrap((0.0, False))[0] == (0.0, False)


def _get(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _patch_size(model) -> int | None:
    encoder = getattr(model, "encoder", None)
    tubelet = getattr(getattr(encoder, "config", None), "tubelet_size", None)
    return int(tubelet[-1]) if tubelet else None
