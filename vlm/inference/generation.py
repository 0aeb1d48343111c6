"""Text generation from input embeddings, batched with left padding, through transformers' ``generate()``.

The inputs are ``inputs_embeds [B, S, H]`` (video tokens merged into the text, left-padded) and
``attention_mask [B, S]`` (0 at pads), as built by ``PrismVlmForConditionalGeneration.get_prompt_embeddings``;
``generate`` derives each row's positions from the mask, so a padded row sees exactly what it would
see unbatched. :class:`GenerationSettings` holds the usual options (greedy by default, sampling,
beam search, repetition penalty); :class:`TokenStreamer` streams a batch step by step;
:func:`llm_step` (one cached forward) serves candidate scoring, which reuses a shared prefix.
"""

from __future__ import annotations

import dataclasses
import inspect
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from vlm.llm import kv_cache_argument


@dataclass
class MergedInputs:
    """LLM inputs of a batch, left-padded: inputs_embeds [B, S, H]; attention_mask [B, S] (0 at pads);
    position_ids [B, S] (0 at the first real token of each row)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def row(self, index: int) -> torch.Tensor:
        """Row ``index`` without its padding: [S_b, H]."""
        return self.inputs_embeds[index][self.attention_mask[index].bool()]


def left_pad(rows: Sequence[torch.Tensor], total: int | None = None) -> MergedInputs:
    """Rows of embeddings [S_b, H] as one left-padded batch of length ``total`` (default: the longest);
    pad embeddings are zeros and masked out. The one padding rule of the package."""
    lengths = [row.shape[0] for row in rows]
    total = max(lengths) if total is None else total
    first = rows[0]
    inputs_embeds = first.new_zeros(len(rows), total, first.shape[-1])
    attention_mask = torch.zeros(len(rows), total, dtype=torch.long, device=first.device)
    position_ids = torch.zeros(len(rows), total, dtype=torch.long, device=first.device)
    for index, (row, length) in enumerate(zip(rows, lengths)):
        inputs_embeds[index, total - length :] = row
        attention_mask[index, total - length :] = 1
        position_ids[index, total - length :] = torch.arange(length, device=first.device)
    return MergedInputs(inputs_embeds, attention_mask, position_ids)


MIN_SAMPLING_TEMPERATURE = 1e-3  # lower temperatures are greedy decoding (see GenerationSettings)


@dataclass(frozen=True)
class GenerationSettings:
    """How text is generated (transformers' ``GenerationConfig`` options); greedy by default.

    max_new_tokens: at most this many new tokens (32 in the paper).
    do_sample: sample (with temperature, top_p, top_k) instead of taking the most likely token; a temperature
        below :data:`MIN_SAMPLING_TEMPERATURE` samples as greedy decoding does (the limit of sampling as the
        temperature goes to 0; dividing the logits by less overflows them), so it is greedy decoding.
    temperature, top_p, top_k: sampling settings (ignored when not sampling; top_k 0: no top-k).
    repetition_penalty: > 1 discourages tokens already in the prompt or the output (1: off).
    num_beams: beam search with this many beams (1: none; not with streaming).
    seed: makes sampling repeatable (None: the global RNG as it stands).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    num_beams: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 8192:
            raise ValueError(f"max_new_tokens must be in [1, 8192], got {self.max_new_tokens}")
        if not 0 < self.temperature <= 100:
            raise ValueError(f"temperature must be in (0, 100], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        if not 1 <= self.num_beams <= 64:
            raise ValueError(f"num_beams must be in [1, 64], got {self.num_beams}")

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (``do_sample`` at a temperature of at least the minimum)."""
        return self.do_sample and self.temperature >= MIN_SAMPLING_TEMPERATURE

    @property
    def is_greedy(self) -> bool:
        return not self.samples and self.num_beams == 1

    def replace(self, **changes) -> GenerationSettings:
        return dataclasses.replace(self, **changes)

    def generation_config(self, stop_ids: set[int], pad_id: int) -> GenerationConfig:
        """transformers' GenerationConfig for these settings, stopping at ``stop_ids``."""
        values = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.samples,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": sorted(stop_ids),
            "pad_token_id": pad_id,
        }
        if self.samples:
            values.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # neutral values, so transformers does not warn about unused sampling settings
            values.update(temperature=1.0, top_p=1.0, top_k=50)
        return GenerationConfig(**values)


def stop_token_ids(llm: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids of the tokenizer and of the model's generation config."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(llm, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for value in candidates:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id fed for finished rows and used to pad ids (never attended): pad, else EOS, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def accepts_logits_to_keep(llm: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(llm.forward).parameters


def llm_step(
    llm: torch.nn.Module,
    *,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    kv_cache: DynamicCache,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    last_logits_only: bool = False,
) -> torch.Tensor:
    """One forward of the LLM that extends ``kv_cache`` in place; returns logits [B, S', V]
    (S' = 1 when ``last_logits_only``). The cache goes in under the name this transformers release
    uses (``vlm.llm.kv_cache_argument``)."""
    kwargs = {kv_cache_argument(llm): kv_cache}
    if last_logits_only and accepts_logits_to_keep(llm):
        kwargs["logits_to_keep"] = 1
    output = llm(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **kwargs,
    )
    logits = output.logits
    return logits[:, -1:] if last_logits_only else logits


def newline_stopper(tokenizer: PreTrainedTokenizerBase) -> Callable[[int], bool]:
    """token id -> whether its text contains a newline (memoised per call site)."""
    memo: dict[int, bool] = {}

    def is_newline(token_id: int) -> bool:
        if token_id not in memo:
            memo[token_id] = "\n" in tokenizer.decode([token_id])
        return memo[token_id]

    return is_newline


class NewlineStop(StoppingCriteria):
    """Stops a row (only that row) once it has generated a token whose text holds a newline:
    a caption or an open answer is one line."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.is_newline = newline_stopper(tokenizer)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        return torch.tensor([self.is_newline(token) for token in last], dtype=torch.bool, device=input_ids.device)


class StopWhenSet(StoppingCriteria):
    """Stops every row once ``event`` is set (a streaming client that went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TokenStreamer(BaseStreamer):
    """A transformers streamer for batches: iterating it gives the new tokens of each step as a list
    of B ids, in order, while ``generate`` runs in another thread (``TextIteratorStreamer`` takes one
    row only). The prompt ``generate`` puts first is skipped; an exception of the generating thread
    is raised by the iteration (:meth:`fail`)."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._queue.put(("tokens", value.reshape(-1).tolist()))

    def end(self) -> None:
        self._queue.put(("end", None))

    def fail(self, error: BaseException) -> None:
        self._queue.put(("error", error))

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            kind, value = self._queue.get()
            if kind == "tokens":
                yield value
            elif kind == "error":
                raise value
            else:
                return


def generate_ids(
    llm: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings | None = None,
    *,
    stop_at_newline: bool = False,
    streamer: BaseStreamer | None = None,
    stopping: Sequence[StoppingCriteria] = (),
) -> list[list[int]]:
    """Generated token ids per row through the LLM's ``generate()`` (without the EOS token; a
    newline-stop token is kept).

    inputs_embeds [B, S, H] and attention_mask [B, S] (left-padded, as
    ``PrismVlmForConditionalGeneration.get_prompt_embeddings`` builds them; ``generate`` derives the same positions
    from the mask). settings: greedy, 32 new tokens by default. stop_at_newline: a row also stops at
    a token holding a newline. streamer: any transformers streamer (``TextIteratorStreamer`` for one
    row, :class:`TokenStreamer` for several; not with beam search). A seeded sampling run is
    repeatable (the global RNG is forked, not consumed).
    """
    settings = settings or GenerationSettings()
    stop_ids = stop_token_ids(llm, tokenizer)
    criteria = StoppingCriteriaList(list(stopping))
    if stop_at_newline:
        criteria.append(NewlineStop(tokenizer))
    config = settings.generation_config(stop_ids, pad_token_id(tokenizer))
    devices = [inputs_embeds.device] if inputs_embeds.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=settings.seed is not None):
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        output = llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=criteria,
            streamer=streamer,
        )
    newline = newline_stopper(tokenizer) if stop_at_newline else None
    rows = []
    for row in output.tolist():
        kept = []
        for token in row:
            if token in stop_ids:
                break
            kept.append(token)
            if newline is not None and newline(token):
                break
        rows.append(kept)
    return rows


def greedy_generate(
    llm: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int = 32,
    stop_at_newline: bool = False,
) -> list[list[int]]:
    """:func:`generate_ids` with greedy decoding (the paper's)."""
    return generate_ids(
        llm,
        tokenizer,
        inputs_embeds,
        attention_mask,
        GenerationSettings(max_new_tokens=max_new_tokens),
        stop_at_newline=stop_at_newline,
    )


class IncrementalText:
    """The text of a growing list of token ids, handed out piece by piece.

    :meth:`add` decodes the whole prefix and returns the new suffix, holding back an incomplete
    multi-byte character (shown as U+FFFD) until its last byte arrives; :meth:`flush` returns what
    is still held back at the end."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        return self._advance(self.tokenizer.decode(self.ids, skip_special_tokens=True)) if self.ids else ""

    def _advance(self, text: str) -> str:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            piece, self.shown = text[len(self.shown) :], text
            return piece
        return ""
