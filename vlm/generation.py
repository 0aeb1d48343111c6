"""Greedy decoding from input embeddings with a KV cache, batched with left padding.

The inputs are ``inputs_embeds [B, S, H]`` (video tokens merged into the text, left-padded),
``attention_mask [B, S]`` (0 at pads) and ``position_ids [B, S]`` (counting from the first real
token of each row), as built by ``VideoLanguageModel.merge_video_and_text``. Each step feeds one
token per row and extends the mask and positions, so a padded row sees exactly what it would see
unbatched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from vlm.llm import kv_cache_argument


@dataclass
class DecodingConfig:
    """max_new_tokens: at most this many generated tokens (32 in the paper).
    stop_at_newline: also stop a row when it generates a token containing a newline (QA answers)."""

    max_new_tokens: int = 32
    stop_at_newline: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


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


@torch.inference_mode()
def greedy_token_steps(
    llm: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    is_stop_token: Callable[[int], bool] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy decoding, one step at a time.

    inputs_embeds [B, S, H], attention_mask [B, S], position_ids [B, S].
    Yields (tokens [B], active [B] bool) per step: ``tokens[b]`` is row b's new token when
    ``active[b]``; a row becomes inactive after its stop token (EOS, or a token for which
    ``is_stop_token`` is true). The stop token itself is yielded with ``active`` true.
    """
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    cache = DynamicCache(config=llm.config)
    logits = llm_step(
        llm,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        kv_cache=cache,
        last_logits_only=True,
    )
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    positions = position_ids[:, -1:]  # [B, 1]
    stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        tokens = logits[:, -1].argmax(dim=-1)  # [B]
        tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
        active = ~finished
        yield tokens, active
        stops = torch.isin(tokens, stop_tensor)
        if is_stop_token is not None:
            rows = active.nonzero().flatten().tolist()
            token_list = tokens.tolist()
            for row in rows:
                if is_stop_token(token_list[row]):
                    stops[row] = True
        finished = finished | (stops & active)
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        positions = positions + 1
        logits = llm_step(
            llm,
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            kv_cache=cache,
        )


def newline_stopper(tokenizer: PreTrainedTokenizerBase) -> Callable[[int], bool]:
    """token id -> whether its text contains a newline (memoised per call site)."""
    memo: dict[int, bool] = {}

    def is_newline(token_id: int) -> bool:
        if token_id not in memo:
            memo[token_id] = "\n" in tokenizer.decode([token_id])
        return memo[token_id]

    return is_newline


def greedy_generate(
    llm: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    config: DecodingConfig | None = None,
) -> list[list[int]]:
    """Generated token ids per row (without the EOS token; a newline-stop token is kept).

    inputs_embeds [B, S, H], attention_mask [B, S], position_ids [B, S]; config defaults to
    ``DecodingConfig()`` (32 new tokens, stop at EOS only)."""
    config = config or DecodingConfig()
    stop_ids = stop_token_ids(llm, tokenizer)
    generated: list[list[int]] = [[] for _ in range(inputs_embeds.shape[0])]
    steps = greedy_token_steps(
        llm,
        inputs_embeds,
        attention_mask,
        position_ids,
        max_new_tokens=config.max_new_tokens,
        stop_ids=stop_ids,
        pad_id=pad_token_id(tokenizer),
        is_stop_token=newline_stopper(tokenizer) if config.stop_at_newline else None,
    )
    for tokens, active in steps:
        for row, (token, is_active) in enumerate(zip(tokens.tolist(), active.tolist())):
            if is_active and token not in stop_ids:
                generated[row].append(token)
    return generated


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

