"""Train a SentencePiece vocabulary on captions and save it as a VideoPrism tokenizer.

The vocabulary follows the official VideoPrism (T5 / c4_en) layout: ``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, no BOS. It is trained on the captions as ``encoder.videoprism.text_tokenizer.tokenize_texts``
will see them (canonicalised: lower case, punctuation as spaces, a final '.'), and saved with
``encoder.videoprism.text_tokenizer.save_videoprism_tokenizer`` so that ``AutoTokenizer.from_pretrained``
loads it. The SentencePiece file itself is kept beside it as ``spiece.model``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from encoder.videoprism.pretrain.data import read_manifest
from encoder.videoprism.text_tokenizer import canonicalize_text, save_videoprism_tokenizer


def caption_texts(manifests: Sequence[str | os.PathLike]) -> list[str]:
    """Every caption of the manifests (rows without one are skipped), canonicalised."""
    texts = []
    for manifest in manifests:
        texts += [canonicalize_text(e.caption) for e in read_manifest(manifest, require_captions=False) if e.caption]
    if not texts:
        raise ValueError(f"no captions in {', '.join(map(str, manifests))}")
    return texts


def train_caption_tokenizer(
    manifests: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab_size: int = 8000,
    max_length: int = 64,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
):
    """Train a SentencePiece model on the captions of ``manifests`` and save a VideoPrism tokenizer.

    vocab_size: the upper bound; a small corpus yields fewer pieces (SentencePiece's soft limit).
    Returns the ``VideoPrismTokenizer`` (also written to ``out_dir`` with ``spiece.model``).
    """
    import sentencepiece

    texts = caption_texts(manifests)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        corpus = Path(staging) / "captions.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        prefix = Path(staging) / "spiece"
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=int(vocab_size),
            hard_vocab_limit=False,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            minloglevel=2,
            num_threads=1,
        )
        model_file = prefix.with_suffix(".model")
        tokenizer = save_videoprism_tokenizer(model_file, out_dir, max_length=max_length)
        shutil.copyfile(model_file, out_dir / "spiece.model")
    return tokenizer
