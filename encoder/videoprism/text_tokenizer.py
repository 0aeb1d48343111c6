"""Text tokenisation for VideoPrism video-text models, as the official code does it.

The official ``tokenize_texts`` canonicalises each text (punctuation -> space, lower case, single
spaces, a final '.'), encodes it with SentencePiece, prepends BOS when the vocabulary defines one,
adds no EOS, truncates to ``max_length`` and pads with id 0. transformers' ``VideoPrismTokenizer``
encodes the same pieces but does none of the rest, so ``tokenize_texts`` below wraps it.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

_PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))


def canonicalize_text(text: str) -> str:
    """'Hello,World..' -> 'hello world.' (the official canonicalisation)."""
    text = " ".join(text.translate(_PUNCTUATION_TO_SPACE).lower().split())
    return text + "."


def save_videoprism_tokenizer(sentencepiece_model: str | os.PathLike, out_dir: str | os.PathLike, max_length: int = 64):
    """Turn an official SentencePiece file into a ``VideoPrismTokenizer`` saved in ``out_dir``.

    The vocabulary keeps the SentencePiece ids exactly (no extra sentinel ids are appended), the
    padding token is id 0 as in the official code, and the BOS token is set only when the
    SentencePiece model defines one. Returns the tokenizer.
    """
    import sentencepiece
    from transformers import VideoPrismTokenizer

    sentencepiece_model = Path(sentencepiece_model)
    if not sentencepiece_model.is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {sentencepiece_model}")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    special = {"pad_token": processor.id_to_piece(0)}
    if processor.unk_id() >= 0:
        special["unk_token"] = processor.id_to_piece(processor.unk_id())
    if processor.eos_id() >= 0:
        special["eos_token"] = processor.id_to_piece(processor.eos_id())
    if processor.bos_id() >= 0:
        special["bos_token"] = processor.id_to_piece(processor.bos_id())
    with tempfile.TemporaryDirectory() as staging:
        shutil.copyfile(sentencepiece_model, Path(staging) / "spiece.model")
        tokenizer = VideoPrismTokenizer.from_pretrained(staging, extra_ids=0, model_max_length=max_length, **special)
    if len(tokenizer) != processor.get_piece_size():
        raise ValueError(
            f"tokenizer conversion changed the vocabulary size ({processor.get_piece_size()} -> {len(tokenizer)})"
        )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tokenize_texts(
    tokenizer, texts: list[str], max_length: int = 64, canonicalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official tokenisation -> (input_ids [B, max_length] int64, attention_mask [B, max_length], 1 = token)."""
    if isinstance(texts, str):
        texts = [texts]
    if canonicalize:
        texts = [canonicalize_text(t) for t in texts]
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    mask = torch.zeros(len(texts), max_length, dtype=torch.long)
    for row, pieces in enumerate(encoded):
        pieces = ([bos] if bos is not None else []) + list(pieces)
        pieces = pieces[:max_length]
        ids[row, : len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        mask[row, : len(pieces)] = 1
    return ids, mask
