"""Continuous batching: generation for many requests at once, each request joining the running batch
at the next step and leaving it as soon as it is done (iteration-level scheduling, as in Orca, vLLM
and TGI), in one worker thread that owns the model.

A request is a prompt given as input embeddings ``[S, H]`` (video tokens merged into the text,
no padding; built by a ``prepare`` callable that runs in the worker), with its own token budget,
stop rule and generation settings. Each round of the worker:

1. runs, in arrival order (when nothing is running, after waiting up to ``window_s`` for requests
   that are still on their way, so that a burst starts together), the jobs waiting at the front of the queue: a :meth:`ContinuousBatcher.call`
   (any other model work, e.g. ranking candidate answers) runs alone; generation requests are
   admitted while fewer than ``max_batch`` rows are running;
2. prefills the admitted requests together (left-padded) and appends their KV-cache rows to the
   running cache (shorter rows left-padded, masked out);
3. runs one decode step for every running row, and chooses each row's next token with that row's
   own settings (:class:`RowSampler`): the most likely token for greedy rows (one ``argmax`` over the
   batch), else transformers' logits processors (repetition penalty over the row's generated tokens,
   temperature, top-k, top-p) and a draw from the row's own random generator, seeded from the
   request's seed, so the same seed gives the same reply whatever else runs beside it.

A row leaves when it generates a stop token (EOS, end of turn; not handed out), a token holding a
newline when its request stops at newlines (handed out), its ``max_new_tokens``-th token, or when
its caller cancels; its slot is free at the next round, and cache columns that only padded rows
that left are dropped. So a request never waits for a whole batch to finish, and a long chat reply
does not hold up a short caption that arrives after it.

Each row sees exactly its own prompt (padding is masked out, positions count from its first real
token), so a greedy row's tokens are those ``generate()`` gives it alone, up to the floating-point
differences of batched matrix products -- the guarantee batched ``generate()`` gives too. Beam search
is not batched here (:meth:`ContinuousBatcher.submit` refuses it): run it as model work
(:meth:`ContinuousBatcher.call`) through ``generate()``.

When a round fails (out of memory, say), each request of that round that has handed out no token
to a streaming caller is run again alone through ``generate()``, so one request's failure is its own;
a streamed request that already showed text gets the error.

On CPU, give the worker the process's torch work to itself: once another live thread has run torch
(loaded the model, say), OpenMP's waits in the worker slow each step down (BENCHMARKS.md has the figures).
Load the model in a thread that has ended by the time requests come (as ``prism-vlm app`` does).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from vlm.inference.generation import (
    GenerationSettings,
    generate_ids,
    left_pad,
    llm_step,
    newline_stopper,
    stop_token_ids,
)

_POLL_S = 0.01  # how often a starting batch rechecks more_coming()


class BatcherClosedError(RuntimeError):
    """A request or call given to a batcher that was closed (the server is shutting down)."""


@dataclass(frozen=True)
class ContinuousBatchingConfig:
    """max_batch: most requests generated together (1: one request at a time, in arrival order);
    window_s: when nothing is running, how long the first request may wait for others that
    ``more_coming()`` says are on their way, so that a burst starts as one batch (seconds)."""

    max_batch: int = 8
    window_s: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1024:
            raise ValueError(f"max_batch must be in [1, 1024], got {self.max_batch}")
        if not 0 <= self.window_s <= 10:
            raise ValueError(f"window_s must be in [0, 10] seconds, got {self.window_s}")


def supports_continuous_batching(llm: torch.nn.Module) -> bool:
    """Whether ``llm`` keeps a plain KV cache (every layer a full-attention ``DynamicLayer``), which
    rows can join and leave; sliding-window or recurrent layers cannot (use ``generate()``)."""
    try:
        cache = DynamicCache(config=llm.config)
    except Exception:  # noqa: BLE001 -- an LLM whose config transformers cannot read: not supported
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class GenerationStream:
    """One request's generated token ids, as they come (iterate), or all of them (:meth:`result`).

    Iterating yields each token id once it is generated and ends with the request; the request's
    error (a failed ``prepare``, a failed round) is raised by the iteration and by :meth:`result`.
    :meth:`cancel` tells the worker the caller left: a waiting request is dropped, a running one
    leaves the batch at the next step. The stop token is never handed out.

    prompt_tokens: the prompt's length in positions (set when it is prefilled). logprobs: when the
    request asked for them, one ``(log-probability, [(token id, log-probability), ...])`` per token
    handed out, its own and the most likely ones, from the model's distribution before any sampling
    settings (appended before the token is handed out).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._tokens: list[int] = []
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self.prompt_tokens = 0
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    @classmethod
    def finished(cls, tokens: list[int], prompt_tokens: int) -> GenerationStream:
        """A stream of tokens generated elsewhere (e.g. by ``generate()`` alone), already complete."""
        stream = cls()
        stream.prompt_tokens = prompt_tokens
        for token in tokens:
            stream._put(token)
        stream._finish()
        return stream

    def __iter__(self) -> Iterator[int]:
        while True:
            kind, value = self._queue.get()
            if kind == "token":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def result(self, timeout: float | None = None) -> list[int]:
        """Every generated token id (waits for the end of the request)."""
        if not self._done.wait(timeout):
            raise TimeoutError("the request is still being generated")
        if self._error is not None:
            raise self._error
        return list(self._tokens)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # worker side
    def _put(self, token: int) -> None:
        self._tokens.append(token)
        self._queue.put(("token", token))

    def _restart(self) -> None:
        self._tokens.clear()
        self.logprobs.clear()

    def _finish(self) -> None:
        if not self._done.is_set():
            self._queue.put(("end", None))
            self._done.set()

    def _fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._queue.put(("error", error))
            self._done.set()


class RowSampler:
    """Chooses one request's next tokens with its own :class:`GenerationSettings` (``max_new_tokens``
    and ``num_beams`` aside): transformers' repetition penalty over the tokens generated so far, then,
    when sampling, temperature, top-k and top-p, and a draw from a ``torch.Generator`` of its own,
    seeded with ``settings.seed`` (None: a seed drawn from torch's global generator).
    """

    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self.sampling = settings.samples
        self.processors = LogitsProcessorList()
        if settings.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
        if self.sampling:
            self.processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k > 0:
                self.processors.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(settings.top_p))
        self.seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self._generator: torch.Generator | None = None

    @property
    def plain_greedy(self) -> bool:
        """The most likely token, unchanged (the batch's one ``argmax`` serves this row)."""
        return not self.sampling and not self.processors

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        """The next token id from this row's logits [V] and the token ids it generated so far."""
        scores = logits[None].float()
        if self.processors:
            ids = torch.tensor([generated], dtype=torch.long, device=logits.device).reshape(1, len(generated))
            scores = self.processors(ids, scores)
        if not self.sampling:
            return int(scores[0].argmax())
        if self._generator is None:
            self._generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        probabilities = torch.softmax(scores[0], dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self._generator))


@dataclass
class _Request:
    prepare: Callable[[], torch.Tensor]
    max_new_tokens: int
    stop_at_newline: bool
    streaming: bool
    sampler: RowSampler
    top_logprobs: int | None = None
    ignore_eos: bool = False
    stream: GenerationStream = field(default_factory=GenerationStream)


@dataclass
class _Call:
    function: Callable[[], Any]
    future: Future = field(default_factory=Future)


@dataclass
class _Row:
    """A running request: ``length`` real positions in the cache (prompt + tokens fed), ``pending``
    the token chosen last (handed out, fed at the next step), ``generated`` how many were chosen."""

    request: _Request
    length: int = 0
    pending: int = -1
    generated: int = 0
    finished: bool = False
    tokens: list[int] = field(default_factory=list)  # chosen so far (the repetition penalty's history)


class ContinuousBatcher:
    """Runs generation requests with continuous batching, and other model work
    (:meth:`call`) between steps, in one worker thread. See the module docstring.

    llm: a causal LM taking ``inputs_embeds`` / ``input_ids``, ``attention_mask``, ``position_ids``
    and a ``DynamicCache`` (:func:`supports_continuous_batching`); tokenizer: its tokenizer (stop
    tokens, newlines).
    """

    def __init__(
        self,
        llm: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ContinuousBatchingConfig | None = None,
        name: str = "generation",
        more_coming: Callable[[], bool] = lambda: False,
    ):
        if not supports_continuous_batching(llm):
            raise ValueError(
                f"{type(llm).__name__} keeps a KV cache that rows cannot join and leave "
                "(sliding-window or recurrent layers); generate with vlm.inference.generation.generate_ids"
            )
        self.llm = llm
        self.tokenizer = tokenizer
        self.config = config or ContinuousBatchingConfig()
        self._more_coming = more_coming
        self._stop_ids = stop_token_ids(llm, tokenizer)
        self._is_newline = newline_stopper(tokenizer)
        self._jobs: deque[_Request | _Call] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [B, L] long, 1 at real positions
        # running rows at each decode step, the latest 100,000 (for tests and benchmarks)
        self.step_sizes: deque[int] = deque(maxlen=100_000)
        self._worker = threading.Thread(target=self._serve, name=f"prism-vlm-{name}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ caller side

    def submit(
        self,
        prepare: Callable[[], torch.Tensor],
        max_new_tokens: int,
        *,
        stop_at_newline: bool = False,
        streaming: bool = False,
        settings: GenerationSettings | None = None,
        top_logprobs: int | None = None,
        ignore_eos: bool = False,
    ) -> GenerationStream:
        """Queue one request; ``prepare()`` (run in the worker) returns its prompt embeddings [S, H].
        stop_at_newline: the request ends with the first token holding a newline (kept).
        streaming: its caller shows tokens as they come (after a failed round it is not run again).
        settings: how its tokens are chosen (:class:`RowSampler`; None: greedy); its ``max_new_tokens``
        is not used (the argument is), and beam search (``num_beams`` > 1) is a ValueError.
        top_logprobs: record each token's log-probability and the ``top_logprobs`` most likely
        alternatives (0 to 20) in the stream's ``logprobs`` (None: not recorded).
        ignore_eos: stop tokens do not end the request (handed out like any token; for benchmarks)."""
        if not 1 <= max_new_tokens <= 8192:
            raise ValueError(f"max_new_tokens must be in [1, 8192], got {max_new_tokens}")
        settings = settings or GenerationSettings()
        if settings.num_beams != 1:
            raise ValueError("beam search is not batched; run it through generate() as model work (call())")
        if top_logprobs is not None and not 0 <= top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {top_logprobs}")
        request = _Request(
            prepare, int(max_new_tokens), stop_at_newline, streaming, RowSampler(settings), top_logprobs, ignore_eos
        )
        self._enqueue(request)
        return request.stream

    def call(self, function: Callable[[], Any]) -> Future:
        """Run ``function()`` in the worker, between steps, with the model to itself (in arrival order
        with the generation requests); its Future resolves to the result or raises its exception."""
        job = _Call(function)
        self._enqueue(job)
        return job.future

    def close(self) -> None:
        """Stop the worker once the queued and running requests are served."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join(timeout=30)

    def __enter__(self) -> ContinuousBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _enqueue(self, job: _Request | _Call) -> None:
        with self._condition:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            self._jobs.append(job)
            self._condition.notify()

    # ------------------------------------------------------------------ worker

    def _serve(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            admitted: list[_Request] = []
            for job in jobs:
                if isinstance(job, _Call):
                    self._run_call(job)
                elif job.stream.cancelled:
                    job.stream._finish()
                else:
                    admitted.append(job)
            self._drop_cancelled()
            if not admitted and not self._rows:
                continue
            try:
                with torch.inference_mode():
                    if admitted:
                        self._admit(admitted)
                    if self._rows:
                        self._step()
            except Exception as error:  # noqa: BLE001 -- the round's requests are retried alone
                self._recover(admitted, error)

    def _next_jobs(self) -> list[_Request | _Call] | None:
        """The jobs to take this round: calls and requests from the front of the queue while a slot is
        free (waits while there is nothing to do; None once closed and drained)."""
        with self._condition:
            while not self._jobs and not self._rows and not self._closed:
                self._condition.wait()
            if self._closed and not self._jobs and not self._rows:
                return None
            if not self._rows:  # a batch starts: give a burst that is still arriving the window to join
                deadline = time.monotonic() + self.config.window_s
                while (
                    len(self._jobs) < self.config.max_batch
                    and not self._closed
                    and self._more_coming()
                    and time.monotonic() < deadline
                ):
                    self._condition.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
            taken: list[_Request | _Call] = []
            free = self.config.max_batch - len(self._rows)
            while self._jobs:
                job = self._jobs[0]
                if isinstance(job, _Call) and any(isinstance(other, _Request) for other in taken):
                    break  # it runs next round, after the requests before it have started
                if isinstance(job, _Request) and not job.stream.cancelled:
                    if free == 0:
                        break
                    free -= 1
                taken.append(self._jobs.popleft())
            return taken

    def _run_call(self, job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.function())
        except BaseException as error:  # noqa: BLE001 -- handed to the caller
            job.future.set_exception(error)

    def _admit(self, requests: list[_Request]) -> None:
        """Prepare and prefill the admitted requests together; their rows join the running batch."""
        rows, prompts = [], []
        for request in requests:
            try:
                embeds = request.prepare()
                if embeds.ndim != 2 or embeds.shape[0] == 0:
                    raise ValueError(f"a prompt must be [S, H] input embeddings with S >= 1, got {tuple(embeds.shape)}")
            except Exception as error:  # noqa: BLE001 -- this request fails alone
                request.stream._fail(error)
                continue
            rows.append(_Row(request, length=embeds.shape[0]))
            request.stream.prompt_tokens = embeds.shape[0]
            prompts.append(embeds)
        if not rows:
            return
        batch = left_pad(prompts)
        inputs, mask, positions = batch.inputs_embeds, batch.attention_mask, batch.position_ids
        cache = DynamicCache()
        logits = llm_step(
            self.llm,
            attention_mask=mask,
            position_ids=positions,
            kv_cache=cache,
            inputs_embeds=inputs,
            last_logits_only=True,
        )
        last = logits[:, -1]
        for index, (row, token) in enumerate(zip(rows, self._choose(rows, last))):
            self._take(row, token, last[index])
        self._merge(rows, cache, mask)

    def _step(self) -> None:
        """One decode step for every running row."""
        device = self._mask.device
        self.step_sizes.append(len(self._rows))
        input_ids = torch.tensor([[row.pending] for row in self._rows], device=device)
        positions = torch.tensor([[row.length] for row in self._rows], device=device)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=device)], dim=1)
        logits = llm_step(
            self.llm,
            attention_mask=mask,
            position_ids=positions,
            kv_cache=self._cache,
            input_ids=input_ids,
            last_logits_only=True,
        )
        self._mask = mask
        last = logits[:, -1]
        for index, (row, token) in enumerate(zip(self._rows, self._choose(self._rows, last))):
            row.length += 1
            self._take(row, token, last[index])
        self._remove_finished()

    @staticmethod
    def _choose(rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token from the last logits [B, V]: one argmax for the batch, replaced by the
        row's own choice where its settings ask for more than the most likely token."""
        tokens = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            if not row.request.sampler.plain_greedy:
                tokens[index] = row.request.sampler.choose(logits[index], row.tokens)
        return tokens

    def _take(self, row: _Row, token: int, logits: torch.Tensor) -> None:
        """Row's next token (chosen from its ``logits`` [V]): a stop token ends it (not handed out); else it
        is handed out (with its log-probabilities, when asked) and ends the row if it holds a newline (when
        asked) or uses up the budget."""
        row.generated += 1
        row.tokens.append(token)
        if token in self._stop_ids and not row.request.ignore_eos:
            self._end(row)
            return
        if row.request.top_logprobs is not None:
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(log_probs, row.request.top_logprobs) if row.request.top_logprobs else None
            alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))
            row.request.stream.logprobs.append((float(log_probs[token]), alternatives))
        row.request.stream._put(token)
        row.pending = token
        if (row.request.stop_at_newline and self._is_newline(token)) or row.generated >= row.request.max_new_tokens:
            self._end(row)

    def _end(self, row: _Row) -> None:
        row.finished = True
        row.request.stream._finish()

    def _drop_cancelled(self) -> None:
        for row in self._rows:
            if row.request.stream.cancelled and not row.finished:
                self._end(row)
        self._remove_finished()

    # ------------------------------------------------------------------ the running KV cache

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append the new rows' cache rows and mask [b, L'] to the running ones (left-padding the shorter)."""
        if self._rows:
            old = _layers(self._cache)
            new = _layers(cache)
            total = max(self._mask.shape[1], mask.shape[1])
            layers = [
                (
                    torch.cat([_pad_left(k0, total, 2), _pad_left(k1, total, 2)]),
                    torch.cat([_pad_left(v0, total, 2), _pad_left(v1, total, 2)]),
                )
                for (k0, v0), (k1, v1) in zip(old, new)
            ]
            self._cache = DynamicCache(layers)
            self._mask = torch.cat([_pad_left(self._mask, total, 1), _pad_left(mask, total, 1)])
        else:
            self._cache, self._mask = cache, mask
        self._rows.extend(rows)
        self._remove_finished()

    def _remove_finished(self) -> None:
        """Drop finished rows from the batch and cache columns that only pad the rows left."""
        keep = [index for index, row in enumerate(self._rows) if not row.finished]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[index] for index in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int((mask.shape[1] - mask.sum(dim=1)).min())  # padding every remaining row has on its left
        self._cache = DynamicCache(
            [
                (keys.index_select(0, index)[:, :, start:], values.index_select(0, index)[:, :, start:])
                for keys, values in _layers(self._cache)
            ]
        )
        self._mask = mask[:, start:]

    # ------------------------------------------------------------------ failures

    def _recover(self, admitted: list[_Request], error: BaseException) -> None:
        """After a failed round: each request of it that showed no token to a streaming caller runs
        alone through generate() with its settings (a sampled one draws other tokens than it would
        have in the batch); the others get the error."""
        requests = [row.request for row in self._rows]
        requests += [request for request in admitted if request not in requests and not request.stream.done]
        self._rows, self._cache, self._mask = [], None, None
        for request in requests:
            if request.stream.done or request.stream.cancelled:
                continue  # finished within the failed round (its tokens are complete), or its caller left
            if request.streaming and request.stream._tokens:
                request.stream._fail(error)
            else:
                self._run_alone(request)

    def _run_alone(self, request: _Request) -> None:
        stream = request.stream
        stream._restart()  # a non-streaming caller reads only result()
        try:
            with torch.inference_mode():
                embeds = request.prepare()
                rows = generate_ids(
                    self.llm,
                    self.tokenizer,
                    embeds[None],
                    torch.ones(1, embeds.shape[0], dtype=torch.long, device=embeds.device),
                    request.sampler.settings.replace(max_new_tokens=request.max_new_tokens, seed=request.sampler.seed),
                    stop_at_newline=request.stop_at_newline,
                )
        except Exception as failure:  # noqa: BLE001 -- fails alone
            stream._fail(failure)
            return
        for token in rows[0]:
            stream._put(token)
        stream._finish()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``length``."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
