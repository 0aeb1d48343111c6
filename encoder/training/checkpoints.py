"""Atomic, pickle-free training checkpoints (shared by glue training and encoder pretraining).

One checkpoint is a directory ``RUN_DIR/checkpoints/step-XXXXXXXX/`` holding::

    model.safetensors        the trainable tensors only (whatever ``model_state`` the caller passes)
    optimizer.safetensors    every tensor of ``optimizer.state_dict()`` (flattened keys)
    optimizer.json           the rest of it (param_groups, non-tensor state) with references to the tensors
    scheduler.json           ``scheduler.state_dict()`` (+ scheduler.safetensors if it holds tensors)
    rng.safetensors          RNG tensors of process 0: numpy MT19937 key, torch CPU, every CUDA device
    rng.json                 the rest of the RNG states (python ``random``, numpy position ...)
    rng-rank{R}.*            the same for process R > 0 in a multi-process run
    state.json               {"step", "data_state", "extra"} -- written last

It is written into ``checkpoints/.tmp-step-XXXXXXXX/``, every file fsynced, then renamed into place
with ``os.replace`` (and the parent directory fsynced), so a run killed at any moment leaves either
the complete checkpoint or a temporary directory that :func:`latest_checkpoint` ignores.

Nothing is pickled: tensors go to safetensors, everything else to JSON, with tuples, non-string
dict keys and tensors encoded as tagged objects so that ``state_dict()`` round-trips exactly
(e.g. AdamW's ``betas`` tuple, Adafactor's ``eps=(None, 1e-3)``, integer parameter ids).

Multi-process (``accelerate launch``, torchrun): every process calls the same functions. Process 0
writes the model, optimizer and scheduler (replicated across processes under DDP); each process
writes its own RNG files; all wait for each other (``torch.distributed.barrier``) before returning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoder.common.atomic_files import fsync_dir, swap_in_folder
from encoder.common.errors import PrismVlmError

CHECKPOINTS_DIR = "checkpoints"
STEP_DIR_PATTERN = re.compile(r"^step-(\d{8,})$")
TEMP_PREFIX = ".tmp-"
MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
SCHEDULER_TENSORS = "scheduler.safetensors"
STATE_JSON = "state.json"


class CheckpointError(PrismVlmError, ValueError):
    """A checkpoint directory that is incomplete or does not match the model / optimizer given."""


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def unwrap(thing: Any) -> Any:
    """The plain module / optimizer / scheduler inside accelerate's, DDP's and torch.compile's wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(thing, wrappers):
            thing = thing.module
        elif isinstance(getattr(thing, "_orig_mod", None), nn.Module):  # torch.compile
            thing = thing._orig_mod
        elif isinstance(getattr(thing, "optimizer", None), torch.optim.Optimizer) and not isinstance(
            thing, torch.optim.lr_scheduler.LRScheduler
        ):  # accelerate's AcceleratedOptimizer
            thing = thing.optimizer
        elif isinstance(
            getattr(thing, "scheduler", None), torch.optim.lr_scheduler.LRScheduler
        ):  # AcceleratedScheduler
            thing = thing.scheduler
        else:
            return thing


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> detached tensor of every parameter that requires grad (what a checkpoint stores)."""
    model = unwrap(model)
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# Exact JSON + safetensors flattening of state dicts
# ---------------------------------------------------------------------------------------------


def flatten_state(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of ``value``; every tensor is moved to ``tensors`` under a path-like key and
    replaced by ``{"__tensor__": key}``. Tuples and dicts with non-string keys are tagged so that
    :func:`unflatten_state` gives back an equal structure of the same types."""
    if isinstance(value, torch.Tensor):
        key = path or "value"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: flatten_state(v, tensors, f"{path}.{k}" if path else k) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} at {path!r}")
            items.append([k, flatten_state(v, tensors, f"{path}.{k}" if path else str(k))])
        return {"__dict__": items}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store a value of type {type(value).__name__} at {path!r} in a checkpoint")


def unflatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in value["__tuple__"])
        if set(value) == {"__dict__"}:
            return {k: unflatten_state(v, tensors) for k, v in value["__dict__"]}
        return {k: unflatten_state(v, tensors) for k, v in value.items()}
    return value


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, allow_nan=True)
        handle.flush()
        os.fsync(handle.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, str(path), metadata={"format": "pt"})
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _save_flat(directory: Path, json_name: str, tensors_name: str, state: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_state(state, tensors)
    _write_json(directory / json_name, flat)
    if tensors:
        _write_tensors(directory / tensors_name, tensors)


def _load_flat(directory: Path, json_name: str, tensors_name: str) -> Any:
    flat = json.loads((directory / json_name).read_text(encoding="utf-8"))
    tensors_path = directory / tensors_name
    tensors = load_file(str(tensors_path)) if tensors_path.is_file() else {}
    return unflatten_state(flat, tensors)


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able part, tensors) of python ``random``, numpy's global RNG, torch CPU and CUDA RNGs."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    python_state = flatten_state(random.getstate(), {})
    info = {
        "python": python_state,
        "numpy": {
            "kind": kind,
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    return info, tensors


def set_rng_state(info: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(unflatten_state(info["python"], {}))
    numpy = info["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            tensors["numpy_keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _rng_names(rank: int) -> tuple[str, str]:
    suffix = "" if rank == 0 else f"-rank{rank}"
    return f"rng{suffix}.json", f"rng{suffix}.safetensors"


# ---------------------------------------------------------------------------------------------
# Save / find / load
# ---------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run (those with a state.json), oldest first; temp dirs are ignored."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR_PATTERN.match(path.name)
        if match and path.is_dir() and (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_training_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    data_state: dict,
    extra: dict | None = None,
    keep_last: int | None = 2,
) -> Path:
    """Atomically write the checkpoint of ``step`` and keep only the newest ``keep_last`` (None: all).

    model_state: name -> tensor of what is trained (see :func:`trainable_state`).
    data_state: JSON-able position of the data stream (epoch, batches consumed, sampler seed ...).
    extra: any other JSON-able values (config hash, metrics ...).
    Every process of a multi-process run must call it; process 0 writes, each process adds its RNG.
    Returns the checkpoint directory.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    rank = _rank()
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = checkpoint_dir(run_dir, step)
    temporary = root / f"{TEMP_PREFIX}{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if temporary.exists():
            shutil.rmtree(temporary)  # left by a run killed while writing this step
        temporary.mkdir()
    _barrier()

    info, tensors = rng_state()
    json_name, tensors_name = _rng_names(rank)
    _write_json(temporary / json_name, info)
    _write_tensors(temporary / tensors_name, tensors)

    if rank == 0:
        _write_tensors(temporary / MODEL_FILE, dict(model_state))
        if optimizer is not None:
            _save_flat(temporary, OPTIMIZER_JSON, OPTIMIZER_TENSORS, unwrap(optimizer).state_dict())
        if scheduler is not None:
            _save_flat(temporary, SCHEDULER_JSON, SCHEDULER_TENSORS, unwrap(scheduler).state_dict())
        state = {
            "step": int(step),
            "data_state": flatten_state(data_state, {}),
            "extra": flatten_state(extra or {}, {}),
        }
    _barrier()  # every process's RNG file is in place
    if rank == 0:
        world_size = torch.distributed.get_world_size() if _distributed() else 1
        state["world_size"] = world_size
        _write_json(temporary / STATE_JSON, state)
        fsync_dir(temporary)
        swap_in_folder(temporary, final, root / f"{TEMP_PREFIX}old-{final.name}")  # re-saving a step of a resumed run
        fsync_dir(root)
        if keep_last is not None and keep_last > 0:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_training_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    restore_rng: bool = True,
) -> tuple[int, dict, dict]:
    """Restore model tensors, optimizer, scheduler and (this process's) RNG from a checkpoint
    directory; returns (step, data_state, extra).

    The model must have a tensor for every name in model.safetensors (others are left untouched);
    shapes must match. Process R restores rng-rank{R} (falling back to process 0's RNG when the
    checkpoint was written by fewer processes).
    """
    path = Path(path)
    if not (path / STATE_JSON).is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {STATE_JSON})")
    state = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))

    if model is not None:
        saved = load_file(str(path / MODEL_FILE))
        target = unwrap(model)
        own = dict(target.named_parameters()) | dict(target.named_buffers())
        unknown = sorted(set(saved) - set(own))
        if unknown:
            raise CheckpointError(f"{path / MODEL_FILE} holds tensors the model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, tensor in saved.items():
                if own[name].shape != tensor.shape:
                    raise CheckpointError(
                        f"{path / MODEL_FILE}: {name} has shape {tuple(tensor.shape)}, the model's is {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)
    if optimizer is not None:
        if not (path / OPTIMIZER_JSON).is_file():
            raise CheckpointError(f"{path} holds no optimizer state")
        unwrap(optimizer).load_state_dict(_load_flat(path, OPTIMIZER_JSON, OPTIMIZER_TENSORS))
    if scheduler is not None:
        if not (path / SCHEDULER_JSON).is_file():
            raise CheckpointError(f"{path} holds no scheduler state")
        unwrap(scheduler).load_state_dict(_load_flat(path, SCHEDULER_JSON, SCHEDULER_TENSORS))
    if restore_rng:
        json_name, tensors_name = _rng_names(_rank())
        if not (path / json_name).is_file():
            json_name, tensors_name = _rng_names(0)
        info = json.loads((path / json_name).read_text(encoding="utf-8"))
        set_rng_state(info, load_file(str(path / tensors_name)))
    return int(state["step"]), unflatten_state(state["data_state"], {}), unflatten_state(state["extra"], {})
