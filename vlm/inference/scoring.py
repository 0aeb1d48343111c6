"""Closed-vocabulary QA: rank candidate answers by their log-likelihood given video + prompt.

A candidate's log-likelihood is the sum over its tokens of log p(token | video, prompt, earlier
candidate tokens), with the candidate tokenised as :func:`vlm.prompts.answer_continuation` (the
text following the prompt). Probabilities are a softmax over the candidates' summed log-likelihoods.

Fast path (:func:`candidate_log_likelihoods`):
* every candidate one token: ONE forward over the prompt; read the next-token log-probs at the last
  prompt position for all candidate ids;
* otherwise: one forward over the shared prefix (keeping its KV cache), then the continuations in
  batches, right-padded and masked, each batch reusing a copy of the prefix cache repeated to the
  batch size.

:func:`naive_candidate_log_likelihoods` (one full forward per candidate) is the reference.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from encoder.common.errors import PrismVlmError
from vlm.inference.generation import accepts_logits_to_keep, llm_step
from vlm.prompts import answer_continuation, text_ids


class CandidateError(PrismVlmError, ValueError):
    """Candidate answers that cannot be scored (none, empty, duplicated, or no tokens)."""


@dataclass(frozen=True)
class ScoredAnswer:
    """answer: the candidate text; log_likelihood: sum over its tokens; probability: softmax over the
    candidates' log-likelihoods; num_tokens: its token count."""

    answer: str
    log_likelihood: float
    probability: float
    num_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_candidates(candidates: Sequence[str]) -> list[str]:
    """Stripped candidates; CandidateError for no candidates, an empty one, or duplicates."""
    if isinstance(candidates, str):
        raise CandidateError("candidates must be a list of strings, not one string")
    cleaned = []
    for number, candidate in enumerate(candidates):
        if not isinstance(candidate, str):
            raise CandidateError(f"candidate {number} is a {type(candidate).__name__}, not a string")
        text = candidate.strip()
        if not text:
            raise CandidateError(f"candidate {number} is empty")
        cleaned.append(text)
    if not cleaned:
        raise CandidateError("no candidate answers given")
    duplicates = sorted(text for text, count in Counter(cleaned).items() if count > 1)
    if duplicates:
        raise CandidateError(f"duplicate candidate answers: {duplicates[:10]}")
    return cleaned


def read_candidates(comma_separated: str | None = None, path: str | os.PathLike | None = None) -> list[str] | None:
    """Checked candidate answers from "a,b,c" or a file with one per line (blank lines skipped);
    None if neither is given."""
    if comma_separated is not None and path is not None:
        raise CandidateError("give candidates either inline or as a file, not both")
    if comma_separated is not None:
        return check_candidates(comma_separated.split(","))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"candidates file not found: {path}")
        return check_candidates([line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
    return None


def candidate_token_ids(tokenizer: PreTrainedTokenizerBase, candidates: Sequence[str]) -> list[list[int]]:
    """Token ids of each candidate as it follows the prompt (see :func:`answer_continuation`)."""
    ids = [text_ids(tokenizer, answer_continuation(candidate)) for candidate in candidates]
    for candidate, tokens in zip(candidates, ids):
        if not tokens:
            raise CandidateError(f"candidate {candidate!r} tokenises to no tokens")
    return ids


def _repeat_cache(cache: DynamicCache, repeats: int) -> DynamicCache:
    """A copy of a batch-1 cache repeated to ``repeats`` rows (the original is left unchanged)."""
    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(repeats)
    return repeated


@torch.inference_mode()
def candidate_log_likelihoods(
    llm: torch.nn.Module,
    prefix_embeds: torch.Tensor,
    candidate_ids: Sequence[Sequence[int]],
    batch_size: int = 64,
    max_tokens_per_forward: int = 2048,
    *,
    return_greedy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of each candidate continuation.

    prefix_embeds: [1, P, H] the LLM's input embeddings of video + prompt (no padding).
    candidate_ids: K token-id lists (each non-empty).
    batch_size: at most this many continuations per forward in the multi-token path.
    max_tokens_per_forward: and at most this many fed tokens (rows x padded width) per forward, so
        the logits held at once ([rows, width, V] float32) stay bounded whatever the candidates'
        lengths (a candidate longer than this is scored alone). Candidates are grouped by length.
    return_greedy: also return bool [K]: whether greedy decoding would produce the candidate (each of its
        tokens the most likely one after the prefix and the tokens before it).
    Returns float32 [K] (and the greedy flags).
    """
    if prefix_embeds.ndim != 3 or prefix_embeds.shape[0] != 1:
        raise ValueError(f"prefix_embeds must have shape [1, P, H], got {tuple(prefix_embeds.shape)}")
    if batch_size < 1 or max_tokens_per_forward < 1:
        raise ValueError("batch_size and max_tokens_per_forward must be positive")
    device = prefix_embeds.device
    prefix_length = prefix_embeds.shape[1]
    prefix_mask = torch.ones(1, prefix_length, dtype=torch.long, device=device)
    prefix_positions = torch.arange(prefix_length, device=device)[None]
    cache = DynamicCache(config=llm.config)
    last_logits = llm_step(
        llm,
        inputs_embeds=prefix_embeds,
        attention_mask=prefix_mask,
        position_ids=prefix_positions,
        kv_cache=cache,
        last_logits_only=True,
    )
    first_log_probs = torch.log_softmax(last_logits[0, -1].float(), dim=-1)  # [V]
    first_tokens = torch.tensor([ids[0] for ids in candidate_ids], device=device)
    totals = first_log_probs[first_tokens].clone()  # [K]
    greedy = first_tokens == first_log_probs.argmax()  # [K]
    multi = sorted(
        (index for index, ids in enumerate(candidate_ids) if len(ids) > 1), key=lambda i: len(candidate_ids[i])
    )
    for rows in _length_groups(multi, [len(candidate_ids[i]) - 1 for i in multi], batch_size, max_tokens_per_forward):
        width = len(candidate_ids[rows[-1]])  # the longest of the group (sorted by length)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # right-padded
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            tokens = candidate_ids[row]
            ids[i, : len(tokens)] = torch.tensor(tokens, device=device)
            mask[i, : len(tokens)] = 1
        # Feed tokens 0..C-2 after the prefix; their logits predict tokens 1..C-1.
        fed_ids, fed_mask = ids[:, :-1], mask[:, :-1]
        attention_mask = torch.cat([prefix_mask.expand(len(rows), -1), fed_mask], dim=1)  # [n, P + C - 1]
        positions = prefix_length + torch.arange(width - 1, device=device)[None].expand(len(rows), -1)
        logits = llm_step(
            llm,
            input_ids=fed_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            kv_cache=_repeat_cache(cache, len(rows)),
        ).float()  # [n, C - 1, V]
        targets = ids[:, 1:]
        # log_softmax gathered at the targets without a second [n, C - 1, V] tensor
        token_log_probs = (logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)) * mask[
            :, 1:
        ]
        rows_index = torch.tensor(rows, device=device)
        totals[rows_index] += token_log_probs.sum(dim=1)
        if return_greedy:
            greedy_tokens = (logits.argmax(dim=-1) == targets) | (mask[:, 1:] == 0)
            greedy[rows_index] &= greedy_tokens.all(dim=1)
    return (totals, greedy) if return_greedy else totals


def _length_groups(rows: list[int], lengths: list[int], max_rows: int, max_tokens: int) -> Iterator[list[int]]:
    """Consecutive groups of ``rows`` (sorted by ascending ``lengths``) with at most ``max_rows``
    rows and ``rows x longest length <= max_tokens`` (a row alone may exceed it)."""
    group: list[int] = []
    for row, length in zip(rows, lengths):
        if group and (len(group) >= max_rows or (len(group) + 1) * length > max_tokens):
            yield group
            group = []
        group.append(row)
    if group:
        yield group


@torch.inference_mode()
def naive_candidate_log_likelihoods(
    llm: torch.nn.Module, prefix_embeds: torch.Tensor, candidate_ids: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Reference: one full forward over prefix + candidate per candidate. Same contract as
    :func:`candidate_log_likelihoods`; float32 [K]."""
    embedding = llm.get_input_embeddings()
    device = prefix_embeds.device
    totals = []
    for tokens in candidate_ids:
        token_tensor = torch.tensor(tokens, device=device)
        embeds = torch.cat([prefix_embeds, embedding(token_tensor)[None].to(prefix_embeds.dtype)], dim=1)
        length = embeds.shape[1]
        # only positions P-1 .. P+C-1 need logits (the last C+1); P-1 .. P+C-2 predict the candidate
        kwargs = {"logits_to_keep": len(tokens) + 1} if accepts_logits_to_keep(llm) else {}
        logits = llm(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, length, dtype=torch.long, device=device),
            position_ids=torch.arange(length, device=device)[None],
            use_cache=False,
            **kwargs,
        ).logits[0, -(len(tokens) + 1) :]
        log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
        totals.append(log_probs.gather(-1, token_tensor[:, None]).sum())
    return torch.stack(totals)


def rank_candidates(
    candidates: Sequence[str], log_likelihoods: torch.Tensor, candidate_ids: Sequence[Sequence[int]]
) -> list[ScoredAnswer]:
    """Candidates best first, with softmax probabilities over their summed log-likelihoods."""
    log_likelihoods = log_likelihoods.detach().double().cpu()
    probabilities = torch.softmax(log_likelihoods, dim=0)
    order = sorted(range(len(candidates)), key=lambda i: (-float(log_likelihoods[i]), i))
    return [
        ScoredAnswer(
            answer=candidates[i],
            log_likelihood=float(log_likelihoods[i]),
            probability=float(probabilities[i]),
            num_tokens=len(candidate_ids[i]),
        )
        for i in order
    ]


def top_k_one_token_answers(answers: Iterable[str], tokenizer: PreTrainedTokenizerBase, k: int = 250) -> list[str]:
    """The paper's closed vocabulary: the ``k`` most frequent answers (stripped, lower-cased) that are
    one token as they follow the prompt; ties keep first-appearance order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    counts = Counter(" ".join(answer.split()).lower() for answer in answers)
    counts.pop("", None)
    vocabulary = []
    for answer, _ in counts.most_common():  # most_common keeps insertion order among equal counts
        if len(text_ids(tokenizer, answer_continuation(answer))) == 1:
            vocabulary.append(answer)
            if len(vocabulary) == k:
                break
    return vocabulary


def one_token_words(tokenizer, count: int) -> list[str]:
    """``count`` distinct lower-case words of the vocabulary (3+ letters) that are one token as
    candidates (" word" after the QA prompt), for closed-vocabulary benchmarks; RuntimeError if fewer."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        word = text.strip()
        if text.startswith(" ") and word.isalpha() and word.islower() and len(word) >= 3 and word not in words:
            if len(candidate_token_ids(tokenizer, [word])[0]) == 1:
                words.append(word)
                if len(words) == count:
                    return words
    raise RuntimeError(f"found only {len(words)} one-token words")
