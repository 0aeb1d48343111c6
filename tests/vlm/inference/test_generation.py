"""vlm.inference.generation.GenerationSettings: a near-zero sampling temperature is greedy decoding (it used to
overflow the logits and fail with a traceback)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.tiny_glue import FRAMES, SIZE, build_tiny_glue
from vlm.inference.assistant import VideoAssistant
from vlm.inference.generation import MIN_SAMPLING_TEMPERATURE, GenerationSettings

pytestmark = [pytest.mark.quick, pytest.mark.usefixtures("one_torch_thread")]


def test_near_zero_temperatures_are_greedy_decoding(tokenizer):
    for temperature in (1e-300, 1e-6, MIN_SAMPLING_TEMPERATURE / 2):
        settings = GenerationSettings(do_sample=True, temperature=temperature)
        assert settings.is_greedy and not settings.samples
        assert settings.generation_config({0}, 0).do_sample is False
    assert not GenerationSettings(do_sample=True, temperature=MIN_SAMPLING_TEMPERATURE).is_greedy
    assistant = VideoAssistant(build_tiny_glue(tokenizer))
    clips = np.random.default_rng(0).random((2, FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    greedy = assistant.caption(clips=clips, max_new_tokens=6)
    tiny = assistant.caption(
        clips=clips, max_new_tokens=6, generation=GenerationSettings(do_sample=True, temperature=1e-300)
    )
    assert tiny == greedy
