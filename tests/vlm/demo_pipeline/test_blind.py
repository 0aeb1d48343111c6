"""vlm.demo_pipeline.evaluation.no_video_tokens: the blind baseline sees no video tokens, only inside its block."""

import pytest
import torch

from tests.helpers.tiny_glue import NUM_LATENTS, build_tiny_glue
from vlm.demo_pipeline.evaluation import no_video_tokens

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.quick]


def test_the_soft_prompt_is_empty_inside_the_block_only(smollm2_tokenizer):
    model = build_tiny_glue(smollm2_tokenizer)
    tokens = torch.randn(2, 5, model.config.resampler.video_width)  # [B, M, D]
    width = model.config.resampler.llm_width
    with torch.no_grad():
        assert model.get_video_features(video_tokens=tokens).shape == (2, NUM_LATENTS, width)
        with no_video_tokens(model) as blind:
            assert blind is model
            assert model.get_video_features(video_tokens=tokens).shape == (2, 0, width)
        assert model.get_video_features(video_tokens=tokens).shape == (2, NUM_LATENTS, width)
