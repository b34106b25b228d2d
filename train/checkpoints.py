"""Checkpoint folders and files: reading weights (safetensors, single or sharded, and pickles safely), and telling a
complete training checkpoint from one a killed save left behind."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open


logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR and step
# A checkpoint is written under this prefix and renamed to `checkpoint-N` once complete: the name hides it from
# transformers' `get_last_checkpoint`, its checkpoint rotation and the Hub pushes (which skip hidden files).
PARTIAL_PREFIX = ".partial-"
# The files of a checkpoint that only `torch.load(weights_only=True)` reads; they stay local, for resuming.
RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder (sharded or not), or the file itself; safetensors preferred."""
    path = Path(path)
    if path.is_file():
        return [path]
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (path / index_name).is_file():
            shards = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            return [path / shard for shard in shards]
        if (path / single_name).is_file():
            return [path / single_name]
    raise FileNotFoundError(f"No weights found in {path} (expected *.safetensors or pytorch_model*.bin)")


def load_tensors(path: str | Path, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint whose names start with one of `prefixes` (all when None); pickles are read with
    `torch.load(weights_only=True)`."""
    prefixes = tuple(prefixes) if prefixes is not None else None
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as reader:
                for key in reader.keys():
                    if prefixes is None or key.startswith(prefixes):
                        tensors[key] = reader.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
            tensors.update({k: v for k, v in state.items() if prefixes is None or k.startswith(prefixes)})
    return tensors


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def load_exact(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Loads `state_dict` into `module`, refusing any missing or unexpected key with the full lists. With `assign`,
    the module takes the tensors themselves (no copy: for modules created without initialising their weights)."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match {type(module).__name__}: missing keys {missing or 'none'}; "
            f"unexpected keys {unexpected or 'none'}"
        )
    module.load_state_dict(state_dict, strict=True, assign=assign)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a complete training checkpoint (one `Trainer.train(resume_from_checkpoint=...)` can
    continue from), or None when it is: its trainer state parses, its weights (full or adapter) are whole
    safetensors files, and its optimizer and scheduler states, when present, are whole."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return f"trainer_state.json is not valid JSON ({error})"
    adapter = folder / "adapter_model.safetensors"
    try:
        weights = [adapter] if adapter.is_file() else weight_files(folder)
    except FileNotFoundError:
        return "no weights"
    for file in weights:
        if not file.is_file():
            return f"{file.name} is missing"
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except Exception as error:  # safetensors raises its own error type for a truncated file
                return f"{file.name} is not a whole safetensors file ({error})"
    for pattern in RESUME_STATE_FILES:
        for file in folder.glob(pattern):
            if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a cut one has no central directory
                return f"{file.name} is truncated"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The `checkpoint-N` folder of `output_dir` with the highest step that is complete (see
    [`checkpoint_problem`]), or None; every newer one that is not is named in a warning, with what is wrong."""
    folders = (
        [
            (int(match.group(1)), path)
            for path in Path(output_dir).iterdir()
            if path.is_dir() and (match := CHECKPOINT_NAME.fullmatch(path.name))
        ]
        if Path(output_dir).is_dir()
        else []
    )
    for _, folder in sorted(folders, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Not resuming from %s: %s.", folder, problem)
    return None


__all__ = [
    "PARTIAL_PREFIX",
    "RESUME_STATE_FILES",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "load_exact",
    "load_tensors",
    "strip_prefix",
    "weight_files",
]
