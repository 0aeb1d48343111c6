"""A tiny random glue model (VideoPrism 32 wide, 2 frames of 36 px + a 2-layer Llama with SmolLM2's
tokenizer) saved to a directory, for the evaluation tests. Also small synthetic clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, VideoPrismVisionConfig, VideoPrismVisionModel

FRAMES, SIZE, NUM_LATENTS = 2, 36, 8


def build_tiny_glue(tokenizer, seed: int = 0):
    """A PrismVlmForConditionalGeneration with tiny random parts (resampler latents at activation scale)."""
    from vlm.model import PrismVlmForConditionalGeneration

    torch.manual_seed(seed)
    encoder = VideoPrismVisionModel(
        VideoPrismVisionConfig(
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            num_spatial_layers=1,
            num_temporal_layers=1,
            image_size=SIZE,
            num_frames=FRAMES,
        )
    ).eval()
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            initializer_range=0.1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    model = PrismVlmForConditionalGeneration.build(
        llm, tokenizer, encoder, num_latents=NUM_LATENTS, num_heads=2, num_frames=FRAMES, frame_size=SIZE
    )
    with torch.no_grad():
        model.resampler.latents.normal_(0, 1.0)
    return model.eval()


def save_tiny_parts(model, tokenizer, root: Path) -> None:
    """Save the frozen parts as transformers directories: ROOT/encoder, ROOT/llm (with the tokenizer)."""
    model.encoder.save_pretrained(root / "encoder")
    model.llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")


def save_tiny_glue(model, tokenizer, root: Path) -> Path:
    """Save the parts as transformers directories and the glue beside them; returns the glue dir."""
    save_tiny_parts(model, tokenizer, root)
    model.config.encoder_source = str(root / "encoder")
    model.config.llm_source = str(root / "llm")
    model.save_pretrained(root / "glue")
    return root / "glue"


def write_clip(path: Path, seed: int, frames: int = 6, size: int = 40) -> Path:
    """A small H.264 clip of random colour blocks (8 fps), written as the shapes corpus writes its clips."""
    from vlm.shapes.corpus import encode_mp4

    rng = np.random.default_rng(seed)
    images = [
        np.kron(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), np.ones((size // 4, size // 4, 1), np.uint8))
        for _ in range(frames)
    ]
    encode_mp4(np.stack(images), path, fps=8, preset="ultrafast")
    return path


def tiny_parts_with_clips(root: Path, tokenizer, count: int):
    """A tiny glue (returned) saved as encoder/ and llm/ under ``root``, and ``count`` clips clips/c{i}.mp4."""
    model = build_tiny_glue(tokenizer)
    save_tiny_parts(model, tokenizer, root)
    (root / "clips").mkdir()
    for i in range(count):
        write_clip(root / "clips" / f"c{i}.mp4", seed=i)
    return model


def write_jsonl(path: Path, rows) -> Path:
    """``rows`` as a JSONL file."""
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
