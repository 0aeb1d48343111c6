"""How lmms-eval finds prism-vlm's models: the ``lmms_eval.models`` entry point of pyproject.toml.

lmms-eval calls :func:`manifests` when it builds its model registry; the model classes
(:mod:`vlm.evaluation.lmms_model`) are imported only when one is asked for:

- ``prism_vlm``: the simple model (lmms-eval's ``ConfigurableTask``): ``loglikelihood`` (every
  multiple-choice-by-likelihood task), ``generate_until`` and ``generate_until_multi_round``;
- ``prism_vlm_chat``: the chat model (``ConfigurableMessagesTask``: the task's messages, generation only).

Two ids rather than one with both classes: lmms-eval gives a model with a chat class the chat tasks, which
send no ``loglikelihood`` requests, unless ``--force_simple`` is given.
"""

from __future__ import annotations

MODEL_ID = "prism_vlm"
CHAT_MODEL_ID = "prism_vlm_chat"


def manifests() -> list:
    """lmms-eval's ``ModelManifest`` of each prism-vlm model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=MODEL_ID, simple_class_path="vlm.evaluation.lmms_model.PrismVlm"),
        ModelManifest(model_id=CHAT_MODEL_ID, chat_class_path="vlm.evaluation.lmms_model.PrismVlmChat"),
    ]
