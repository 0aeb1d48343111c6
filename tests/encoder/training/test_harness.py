"""Shared training machinery: atomic pickle-free checkpoints, LR schedules, the metrics log, the run
harness (file names, the resume rule, the settings both trainings check the same way)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from encoder.training.checkpoints import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    save_training_checkpoint,
    trainable_state,
    unwrap,
)
from encoder.training.run_log import MetricsLog, plot_metrics, read_metrics
from encoder.training.schedules import warmup_cosine_decay, warmup_linear_decay


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    model[0].requires_grad_(False)  # a frozen part, not stored
    return model


def _train(model, optimizer, scheduler, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 4, generator=generator)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _assert_same_state(a, b) -> None:
    """Exact structural equality of two state dicts (types, tuples, tensors bit for bit)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-4),
        lambda p: torch.optim.Adafactor(p, lr=1e-2),
    ],
    ids=["AdamW", "Adafactor"],
)
@pytest.mark.quick
def test_optimizer_and_scheduler_round_trip_exactly(tmp_path, make_optimizer):
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params)
    scheduler = warmup_linear_decay(optimizer, warmup_steps=2, total_steps=10)
    _train(model, optimizer, scheduler, steps=3, seed=1)
    path = save_training_checkpoint(
        tmp_path,
        3,
        model_state=trainable_state(model),
        optimizer=optimizer,
        scheduler=scheduler,
        data_state={"epoch": 0, "position": (3, 7)},
        extra={"note": "x"},
    )
    assert path == checkpoint_dir(tmp_path, 3)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in path.iterdir())

    restored = _model(seed=5)  # different weights everywhere
    restored[0].load_state_dict(model[0].state_dict())  # frozen part comes from elsewhere (not stored)
    restored_optimizer = make_optimizer([p for p in restored.parameters() if p.requires_grad])
    restored_scheduler = warmup_linear_decay(restored_optimizer, warmup_steps=2, total_steps=10)
    step, data_state, extra = load_training_checkpoint(
        path, model=restored, optimizer=restored_optimizer, scheduler=restored_scheduler
    )
    assert (step, data_state, extra) == (3, {"epoch": 0, "position": (3, 7)}, {"note": "x"})
    _assert_same_state(optimizer.state_dict(), restored_optimizer.state_dict())
    _assert_same_state(scheduler.state_dict(), restored_scheduler.state_dict())
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)
    # continuing both gives the same weights bit for bit
    _train(model, optimizer, scheduler, steps=4, seed=2)
    _train(restored, restored_optimizer, restored_scheduler, steps=4, seed=2)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


@pytest.mark.quick
def test_only_trainable_tensors_are_stored(tmp_path):
    from safetensors.torch import load_file

    model = _model()
    path = save_training_checkpoint(
        tmp_path, 0, model_state=trainable_state(model), optimizer=None, scheduler=None, data_state={}
    )
    assert sorted(load_file(str(path / "model.safetensors"))) == ["2.bias", "2.weight"]


@pytest.mark.quick
def test_rng_states_are_restored(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_training_checkpoint(tmp_path, 1, model_state={}, optimizer=None, scheduler=None, data_state={})
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    load_training_checkpoint(path, model=None, optimizer=None, scheduler=None)
    again = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert expected[:3] == again[:3]
    assert torch.equal(expected[3], again[3])


@pytest.mark.quick
def test_leftover_temp_dir_is_ignored_and_old_checkpoints_pruned(tmp_path):
    model = _model()
    for step in (2, 4, 6):
        save_training_checkpoint(
            tmp_path,
            step,
            model_state=trainable_state(model),
            optimizer=None,
            scheduler=None,
            data_state={"step": step},
            keep_last=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    # a run killed while writing step 8: its temp dir (complete-looking files, even a state.json) is ignored
    half = tmp_path / "checkpoints" / ".tmp-step-00000008"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    (half / "state.json").write_text(json.dumps({"step": 8, "data_state": {}, "extra": {}}))
    # and a renamed directory without state.json is not a checkpoint either
    (tmp_path / "checkpoints" / "step-00000010").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000006"
    # the next save of step 8 replaces the leftover temp dir
    save_training_checkpoint(
        tmp_path, 8, model_state=trainable_state(model), optimizer=None, scheduler=None, data_state={}
    )
    assert latest_checkpoint(tmp_path).name == "step-00000008"
    assert not half.exists()
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_resaving_a_step_replaces_it(tmp_path):
    model = _model()
    save_training_checkpoint(
        tmp_path, 3, model_state=trainable_state(model), optimizer=None, scheduler=None, data_state={"v": 1}
    )
    save_training_checkpoint(
        tmp_path, 3, model_state=trainable_state(model), optimizer=None, scheduler=None, data_state={"v": 2}
    )
    _, data_state, _ = load_training_checkpoint(latest_checkpoint(tmp_path), model=None, optimizer=None, scheduler=None)
    assert data_state == {"v": 2}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


@pytest.mark.quick
def test_mismatched_model_is_refused(tmp_path):
    model = _model()
    path = save_training_checkpoint(
        tmp_path, 1, model_state=trainable_state(model), optimizer=None, scheduler=None, data_state={}
    )
    other = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 5))
    with pytest.raises(CheckpointError, match="shape"):
        load_training_checkpoint(path, model=other, optimizer=None, scheduler=None)
    with pytest.raises(CheckpointError, match="does not have"):
        load_training_checkpoint(path, model=nn.Linear(2, 2), optimizer=None, scheduler=None)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_training_checkpoint(path, model=None, optimizer=torch.optim.SGD(model.parameters(), lr=1), scheduler=None)


def test_unwrap_accelerate_wrappers():
    from encoder.training.run import make_accelerator

    accelerator = make_accelerator(cpu=True)
    model = _model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = warmup_linear_decay(optimizer, 1, 4)
    wrapped_model, wrapped_optimizer, wrapped_scheduler = accelerator.prepare(model, optimizer, scheduler)
    assert unwrap(wrapped_optimizer) is optimizer
    assert unwrap(wrapped_scheduler) is scheduler
    assert unwrap(wrapped_model) is model
    assert unwrap(optimizer) is optimizer and unwrap(scheduler) is scheduler


def _lrs(scheduler, steps):
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_warmup_linear_decay_shape():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(warmup_linear_decay(optimizer, warmup_steps=4, total_steps=12, final_ratio=0.1), 16)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # first update already learns
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(1.0 - 0.9 * 0.5)
    decay = lrs[4:13]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    assert list(np.diff(decay)) == pytest.approx([-0.9 / 8] * 8)  # linear
    assert lrs[12:] == pytest.approx([0.1] * 4)  # held at the final ratio


def test_warmup_cosine_decay_shape():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    lrs = _lrs(warmup_cosine_decay(optimizer, warmup_steps=2, total_steps=10, min_lr=0.2), 12)
    assert lrs[:2] == pytest.approx([1.0, 2.0])
    assert lrs[6] == pytest.approx(0.2 + 1.8 * 0.5)  # half-way: mean of peak and floor
    assert lrs[10:] == pytest.approx([0.2, 0.2])
    assert all(b < a for a, b in zip(lrs[2:11], lrs[3:11]))
    with pytest.raises(ValueError):
        warmup_cosine_decay(optimizer, 2, 10, min_lr=5.0)
    with pytest.raises(ValueError):
        warmup_linear_decay(optimizer, 11, 10)


@pytest.mark.quick
def test_metrics_log_resume_drops_later_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in range(1, 7):
            log.log(step, loss=1.0 / step)
    with open(path, "a") as handle:
        handle.write('{"step": 7, "lo')  # torn by a kill
    # the checkpoint resumed from is step 4: rows 5, 6 (and the torn one) go, 5.. are written again
    with MetricsLog(path, resume_step=4) as log:
        assert [row["step"] for row in read_metrics(path)] == [1, 2, 3, 4]
        log.log(5, loss=0.5, val_loss=0.6)
    rows = read_metrics(path)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[-1] == {"step": 5, "loss": 0.5, "val_loss": 0.6}


def test_plot_metrics_writes_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in range(1, 20):
            log.log(step, loss=1.0 / step, lr=0.1)
            if step % 5 == 0:
                log.log(step, val_loss=1.5 / step)
    png = plot_metrics(path, tmp_path / "plots" / "loss.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    empty = plot_metrics(tmp_path / "missing.jsonl", tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


_TWO_PROCESS_SCRIPT = r"""
import json, sys, torch
from torch import nn
from encoder.training.checkpoints import latest_checkpoint, load_training_checkpoint, save_training_checkpoint, trainable_state

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
run_dir = sys.argv[1]
torch.manual_seed(0)
model = nn.Linear(3, 2)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
model(torch.randn(4, 3)).sum().backward()
optimizer.step()
torch.manual_seed(100 + rank)  # each process has its own RNG stream
save_training_checkpoint(run_dir, 5, model_state=trainable_state(model), optimizer=optimizer, scheduler=None,
                         data_state={"rank0_only": True})
expected = torch.rand(3).tolist()
torch.manual_seed(7)
load_training_checkpoint(latest_checkpoint(run_dir), model=model, optimizer=optimizer, scheduler=None)
print(json.dumps({"rank": rank, "expected": expected, "restored": torch.rand(3).tolist()}))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_main_writes_each_restores_its_own_rng(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo = Path(__file__).resolve().parents[3]
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(repo),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "run")],
                env=env,
                cwd=repo,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    for result in results:
        assert result["restored"] == result["expected"]
    assert results[0]["expected"] != results[1]["expected"]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000005"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng-rank1.json",
        "rng-rank1.safetensors",
        "rng.json",
        "rng.safetensors",
        "state.json",
    ]
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2


def test_report_to_is_checked_before_any_work_and_plot_on_demand(tmp_path, monkeypatch, capsys):
    import sys

    from encoder.training.run import check_report_to
    from vlm.cli.main import main

    assert check_report_to("none") is None and check_report_to("tensorboard") == "tensorboard"
    with pytest.raises(ValueError, match="one of"):
        check_report_to("mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(ValueError, match="pip install wandb"):
        check_report_to("wandb")
    monkeypatch.undo()

    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl") as log:
        for step in range(1, 4):
            log.log(step, loss=1.0 / step)
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG" and "wrote" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.quick
def test_run_steps_refuses_a_non_finite_loss_before_updating():
    """The shared step loop: steps start+1..max_steps, after_step sees each with the lr it used, and a
    NaN loss raises before the optimizer touches the weights."""
    from encoder.training.run import make_accelerator
    from encoder.training.steps import run_steps

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    seen = []

    def compute_loss(step):
        loss = (weight * weight).sum() if step < 4 else weight.sum() * float("nan")
        loss.backward()
        return float(loss.detach()), {"double": 2 * step}

    with pytest.raises(
        FloatingPointError, match="toy: the loss is nan at step 4; the last good checkpoint is kept in CKPT"
    ):
        run_steps(
            start=1,
            max_steps=6,
            compute_loss=compute_loss,
            optimizer=optimizer,
            scheduler=scheduler,
            parameters=[weight],
            accelerator=make_accelerator(cpu=True),
            max_grad_norm=1.0,
            title="toy",
            progress=False,
            checkpoint_dir="CKPT",
            after_step=lambda step, loss, lr, values: seen.append((step, round(lr, 4), values["double"])),
        )
    assert seen == [(2, 0.1, 4), (3, 0.05, 6)]
    assert torch.isfinite(weight).all()  # the NaN step made no update


# ---------------------------------------------------------------------------------------------
# The run harness (encoder.training.run): one set of names, one resume rule, one vocabulary
# ---------------------------------------------------------------------------------------------


def _glue_config(out, **overrides):
    from vlm.training.config import TrainConfig

    values = {
        "output_dir": str(out),
        "train_data": ["a.jsonl"],
        "max_steps": 6,
        "warmup_steps": 2,
        "checkpoint_every": 2,
    }
    return TrainConfig(**{**values, **overrides})


def _stage1_config(out, **overrides):
    from encoder.videoprism.pretrain.stage1 import ModelSize, Stage1Config

    values = {
        "output_dir": str(out),
        "train_manifests": ["a.jsonl"],
        "model": ModelSize.tiny(),
        "max_steps": 6,
        "warmup_steps": 2,
        "checkpoint_every": 2,
    }
    if "save_every" in overrides:
        del values["checkpoint_every"]
    return Stage1Config(**{**values, **overrides})


def _fake_run(config, step: int, model: bool = False) -> None:
    """A run directory as a training leaves it: its config and a checkpoint of ``step``."""
    from encoder.common.configs import save_config
    from encoder.training.run import CONFIG_FILE

    save_config(config, f"{config.output_dir}/{CONFIG_FILE}")
    save_training_checkpoint(
        config.output_dir, step, model_state=trainable_state(_model()), optimizer=None, scheduler=None, data_state={}
    )
    if model:
        (Path(config.output_dir) / "model").mkdir()
        (Path(config.output_dir) / "model" / "weights").write_text("final")


def test_both_trainings_name_the_run_files_alike():
    from encoder.training import run

    assert (run.CONFIG_FILE, run.LOG_FILE, run.METRICS_FILE, run.PLOT_FILE, run.MODEL_DIR) == (
        "train_config.json",
        "train_log.txt",
        "metrics.jsonl",
        "loss.png",
        "model",
    )
    from encoder.training.checkpoints import CHECKPOINTS_DIR
    from encoder.training.run_log import TRACKERS_DIR
    from encoder.videoprism.pretrain.stage1 import Stage1Config
    from vlm.training.config import CONFIG_FILE, TrainConfig

    assert CONFIG_FILE == run.CONFIG_FILE and (CHECKPOINTS_DIR, TRACKERS_DIR) == ("checkpoints", "trackers")
    glue, stage = {f.name for f in dataclasses.fields(TrainConfig)}, {f.name for f in dataclasses.fields(Stage1Config)}
    shared = {
        "output_dir",
        "max_steps",
        "batch_size",
        "learning_rate",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "seed",
        "num_frames",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "mixed_precision",
        "cpu_threads",
        "progress",
        "report_to",
    }
    assert shared <= glue and shared <= stage and "save_every" not in stage  # one name per setting
    assert _stage1_config("x", save_every=7).checkpoint_every == 7  # the earlier name still builds a config


@pytest.mark.parametrize("make", [_glue_config, _stage1_config], ids=["glue", "pretrain"])
def test_mixed_precision_is_one_vocabulary(make, tmp_path):
    from encoder.training.run import MIXED_PRECISIONS, TrainConfigError, resolve_mixed_precision

    assert MIXED_PRECISIONS == ("auto", "no", "bf16", "fp16")  # accelerate's names, and auto
    for value in MIXED_PRECISIONS:
        assert make(tmp_path, mixed_precision=value).mixed_precision == value
    for value in ("fp32", "float16", "bfloat16", ""):
        with pytest.raises(TrainConfigError, match=r"mixed_precision must be one of \('auto', 'no', 'bf16', 'fp16'\)"):
            make(tmp_path, mixed_precision=value)
    assert resolve_mixed_precision("auto", cuda=False) == "no" and resolve_mixed_precision("bf16", cuda=False) == "bf16"
    with pytest.raises(TrainConfigError, match="fp16' needs a CUDA GPU"):
        resolve_mixed_precision("fp16", cuda=False)


@pytest.mark.parametrize("make", [_glue_config, _stage1_config], ids=["glue", "pretrain"])
def test_bad_settings_are_one_error_type(make, tmp_path):
    from encoder.common.errors import PrismVlmError
    from encoder.training.run import TrainConfigError
    from vlm.training import RunDirectoryError
    from vlm.training.config import TrainConfigError as GlueTrainConfigError

    assert GlueTrainConfigError is TrainConfigError and RunDirectoryError is TrainConfigError  # the old names
    assert issubclass(TrainConfigError, PrismVlmError) and issubclass(TrainConfigError, ValueError)
    for bad, message in [
        ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
        ({"warmup_steps": 7}, r"warmup_steps must be in \[0, max_steps=6\]"),
        ({"num_frames": 0}, "num_frames must be in"),
        ({"report_to": "mlflow"}, "report_to must be one of"),
    ]:
        with pytest.raises(TrainConfigError, match=message):
            make(tmp_path, **bad)


@pytest.mark.parametrize("make", [_glue_config, _stage1_config], ids=["glue", "pretrain"])
def test_the_resume_rule(make, tmp_path):
    """max_steps may grow; settings that only change how a run is watched may change; any other
    change, a shrinking max_steps and a new run in a used directory are refused with TrainConfigError."""
    from encoder.training.run import TrainConfigError, check_resume

    may_change = type(make(tmp_path)).RESUME_MAY_CHANGE
    assert check_resume(make(tmp_path / "new"), resume=True, may_change=may_change) is None  # nothing to resume
    _fake_run(make(tmp_path), 4)
    newest = checkpoint_dir(tmp_path, 4)
    assert check_resume(make(tmp_path), resume=True, may_change=may_change) == newest
    grown = make(tmp_path, max_steps=10, log_every=3, checkpoint_every=5, keep_checkpoints=4, mixed_precision="bf16")
    assert check_resume(grown, resume=True, may_change=may_change) == newest
    with pytest.raises(TrainConfigError, match=r"\['learning_rate', 'seed'\]"):
        check_resume(make(tmp_path, learning_rate=0.5, seed=3), resume=True, may_change=may_change)
    with pytest.raises(TrainConfigError, match=r"\['max_steps'\]; max_steps may grow on resume but not shrink"):
        check_resume(make(tmp_path, max_steps=5), resume=True, may_change=may_change)
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        check_resume(make(tmp_path), resume=False, may_change=may_change)


def test_a_finished_run_is_not_run_again_and_legacy_configs_are_read(tmp_path):
    from encoder.common.configs import config_to_dict
    from encoder.training.run import TrainConfigError, TrainingRun, check_resume

    config = _stage1_config(tmp_path / "run")
    _fake_run(config, 6, model=True)
    run = TrainingRun(config, resume=True, may_change=type(config).RESUME_MAY_CHANGE, cpu=True)
    assert run.finished and run.model_dir == tmp_path / "run" / "model"
    assert not TrainingRun(_stage1_config(tmp_path / "run", max_steps=8), cpu=True).finished  # extended
    # a pretraining run saved before the names were shared: config.json with save_every
    legacy = _stage1_config(tmp_path / "old")
    _fake_run(legacy, 2)
    values = config_to_dict(legacy)
    values["save_every"] = values.pop("checkpoint_every")
    (tmp_path / "old" / "train_config.json").unlink()
    (tmp_path / "old" / "config.json").write_text(json.dumps(values))
    assert check_resume(legacy, resume=True, may_change=type(legacy).RESUME_MAY_CHANGE) is not None
    with pytest.raises(TrainConfigError, match=r"config.json: \['drop_ratio'\]"):
        check_resume(
            _stage1_config(tmp_path / "old", drop_ratio=0.1), resume=True, may_change=type(legacy).RESUME_MAY_CHANGE
        )


def test_an_extended_run_follows_the_longer_schedule(tmp_path):
    """Resumed with the same max_steps, the learning rate is the one the checkpoint stored; with a larger
    one, the step after the checkpoint already uses the longer schedule (not the old one's last value)."""
    from encoder.common.configs import save_config
    from encoder.training.run import CONFIG_FILE, TrainingRun

    def parts(total):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        return model, optimizer, warmup_linear_decay(optimizer, 1, total)

    model, optimizer, scheduler = parts(4)
    for _ in range(4):  # to the end of the 4-step schedule: linear decay to 0
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    save_config(_glue_config(tmp_path, max_steps=4, warmup_steps=1), tmp_path / CONFIG_FILE)
    save_training_checkpoint(
        tmp_path, 4, model_state=trainable_state(model), optimizer=optimizer, scheduler=scheduler, data_state={}
    )
    for total, lr in ((4, 0.0), (8, 1 - 3 / 7)):  # step 4 of a warm-up-1 linear decay over 8 steps: 1 - (4 - 1) / 7
        model, optimizer, scheduler = parts(total)
        run = TrainingRun(_glue_config(tmp_path, max_steps=total, warmup_steps=1), cpu=True)
        assert run.restore(model=model, optimizer=optimizer, scheduler=scheduler) == (4, {})
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
