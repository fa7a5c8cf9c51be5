"""Checkpoints of the distillation loop without pickles: every saved object (the networks, the optimizers and their
LR schedulers, the RNG states of Python, NumPy and torch, the step counter, the method's extras such as the EMA) is
written as safetensors (tensors) plus JSON (everything else), and a resume refuses any checkpoint that holds a
pickle, so a downloaded or shared run folder can never run code (accelerate's `save_state` pickles optimizers,
schedulers, RNG states and custom objects and loads them back with `weights_only=False`).

A checkpoint is written into a hidden `.partial-step_N` folder and renamed to `step_N` once complete (its
`progress.json` is written last), so a kill at any moment leaves the previous checkpoint as the newest one.

Layout of `checkpoints/step_N/`: `model.safetensors`, `model_1.safetensors`, ... (the prepared networks, same names
as accelerate's), `state.safetensors` + `state.json` (optimizers, schedulers, GradScaler, the loop's and the method's
objects), `random_states_<process>.safetensors` + `.json`, and `progress.json` (step, method).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file

PROGRESS_NAME = "progress.json"
"""Written last in every checkpoint: the step and the method; a folder without it is not a checkpoint."""
STATE_NAME = "state"
"""`state.safetensors` + `state.json`: optimizers, schedulers, scaler, registered objects."""
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
"""File endings of torch/pickle serialisations; a checkpoint holding one is refused."""

__all__ = [
    "CheckpointError",
    "decode_state",
    "encode_state",
    "find_pickles",
    "latest_checkpoint",
    "load_training_state",
    "refuse_pickles",
    "save_training_state",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (a pickle inside) or does not match the run."""


# ---------------------------------------------------------------------------------------------------- encoding


def encode_state(value: Any, tensors: dict[str, torch.Tensor], prefix: str, _seen: set | None = None) -> Any:
    """A JSON-ready copy of a state dict: tensors go to `tensors` under `prefix.<path>` and are referenced by key;
    tuples, non-string dict keys, NumPy arrays and dtypes are tagged so that `decode_state` restores them exactly."""
    seen = _seen if _seen is not None else {t.untyped_storage().data_ptr() for t in tensors.values()}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()  # safetensors refuses two entries sharing memory
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[prefix] = tensor.contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, np.ndarray):
        tensors[prefix] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
        return {"__numpy__": prefix, "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode_state(v, tensors, f"{prefix}.{k}", seen) for k, v in value.items()}
        return {
            "__dict__": [
                [k, encode_state(v, tensors, f"{prefix}.{i}", seen)] for i, (k, v) in enumerate(value.items())
            ]
        }
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{prefix}.{i}", seen) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{prefix}.{i}", seen) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state {prefix}: {type(value).__name__} is not a tensor, number, string or container")


def decode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode_state`."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__numpy__" in value:
        return tensors[value["__numpy__"]].numpy().astype(value["dtype"])
    if "__dtype__" in value:
        return getattr(torch, value["__dtype__"])
    if "__tuple__" in value:
        return tuple(decode_state(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_key(k): decode_state(v, tensors) for k, v in value["__dict__"]}
    return {k: decode_state(v, tensors) for k, v in value.items()}


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _save(folder: Path, name: str, state: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, tensors, "state")
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(encoded) + "\n")


def _load(folder: Path, name: str) -> Any:
    tensors = load_file(str(folder / f"{name}.safetensors"))
    return decode_state(json.loads((folder / f"{name}.json").read_text()), tensors)


# ---------------------------------------------------------------------------------------------------- pickles


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    # pickle protocol 2+ starts with PROTO (0x80) and the protocol number; torch.save writes a zip holding data.pkl
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04"


def find_pickles(folder: str | Path) -> list[Path]:
    """The files under `folder` that are (or claim to be) pickles: torch/pickle endings, or pickle/zip content."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and (path.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(path)):
            found.append(path)
    return found


def refuse_pickles(folder: str | Path) -> None:
    """Raises `CheckpointError` naming the first pickle in checkpoint `folder`: loading one can run arbitrary code."""
    found = find_pickles(folder)
    if found:
        raise CheckpointError(
            f"checkpoint {folder} holds a pickle ({found[0]}{f' and {len(found) - 1} more' if len(found) > 1 else ''})"
            "; sdtoolkit checkpoints are safetensors and JSON only and it never loads a pickle, which can run code "
            "(an older sdtoolkit checkpoint, which held accelerate pickles, or a tampered one); resume from a "
            "checkpoint written by this version"
        )


# ---------------------------------------------------------------------------------------------------- save / load


def network_file(index: int) -> str:
    """File name of the `index`-th prepared network in a checkpoint (accelerate's names)."""
    return "model.safetensors" if index == 0 else f"model_{index}.safetensors"


def load_network(folder: Path, index: int, model: torch.nn.Module) -> None:
    """Loads the `index`-th network of checkpoint `folder` into `model` (strict: same keys and shapes). The caller
    runs `refuse_pickles(folder)` first."""
    load_model(model, str(Path(folder) / network_file(index)), device="cpu")


def saved_objects(folder: Path) -> list[Any]:
    """The registered objects' states a checkpoint holds, in registration order (the loop's, then the method's)."""
    return _load(Path(folder), STATE_NAME)["objects"]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoints/step_*` of a run folder, or `folder` itself when it is a checkpoint."""
    folder = Path(folder)
    if (folder / PROGRESS_NAME).is_file():
        return folder
    candidates = [c for c in (folder / "checkpoints").glob("step_*") if c.name[5:].isdigit()]
    candidates = sorted((c for c in candidates if (c / PROGRESS_NAME).is_file()), key=lambda p: int(p.name[5:]))
    return candidates[-1] if candidates else None


def _rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [numpy_state[0], *numpy_state[2:]]}
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(numpy_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return plain, tensors


def _set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_training_state(
    accelerator: Any,
    folder: Path,
    models: list[Any],
    optimizers: list[Any],
    schedulers: list[Any],
    objects: list[Any],
    progress: dict[str, Any],
) -> Path:
    """Writes checkpoint `folder` (see the module docstring) from every process; returns `folder`. Collective:
    every process must call it. `progress` (JSON) goes to progress.json, written last."""
    from accelerate.utils import save as accelerate_save

    folder = Path(folder)
    partial = folder.with_name(f".partial-{folder.name}")
    if accelerator.is_main_process:
        for stale in folder.parent.glob(".partial-*"):  # left by a process killed while checkpointing
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for i, model in enumerate(models):
            state = accelerator.get_state_dict(model, unwrap=False)
            accelerate_save(state, partial / network_file(i), safe_serialization=True)
        state = {
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "objects": [o.state_dict() for o in objects],
            "accelerator_step": accelerator.step,
        }
        _save(partial, STATE_NAME, state)
    plain, tensors = _rng_state()
    save_file(tensors, str(partial / f"random_states_{accelerator.process_index}.safetensors"))
    (partial / f"random_states_{accelerator.process_index}.json").write_text(json.dumps(plain) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / PROGRESS_NAME).write_text(json.dumps(progress, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    accelerator.wait_for_everyone()
    return folder


def load_training_state(
    accelerator: Any, folder: Path, models: list[Any], optimizers: list[Any], schedulers: list[Any], objects: list[Any]
) -> None:
    """Restores what `save_training_state` wrote, after `refuse_pickles`; raises `CheckpointError` on a pickle or
    a checkpoint that does not match the run (another method, other networks)."""
    folder = Path(folder)
    refuse_pickles(folder)
    state = _load(folder, STATE_NAME)
    counts = {
        "networks": (len(list(folder.glob("model*.safetensors"))), len(models)),
        "optimizers": (len(state["optimizers"]), len(optimizers)),
        "objects": (len(state["objects"]), len(objects)),
    }
    for what, (saved, expected) in counts.items():
        if saved != expected:
            raise CheckpointError(
                f"checkpoint {folder} holds {saved} {what}, this run has {expected}: it was written by another "
                "method or configuration"
            )
    for i, model in enumerate(models):
        load_network(folder, i, model)
    for optimizer, saved in zip(optimizers, state["optimizers"]):
        optimizer.load_state_dict(saved)
    for scheduler, saved in zip(schedulers, state["schedulers"]):
        scheduler.load_state_dict(saved)
    if accelerator.scaler is not None and state.get("scaler") is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    for obj, saved in zip(objects, state["objects"]):
        obj.load_state_dict(saved)
    accelerator.step = int(state.get("accelerator_step", 0))
    rng = folder / f"random_states_{accelerator.process_index}.json"
    if rng.is_file():
        tensors = load_file(str(rng.with_suffix(".safetensors")))
        _set_rng_state(json.loads(rng.read_text()), tensors)
