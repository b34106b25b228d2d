"""Reading weights from checkpoint folders and files: safetensors (single or sharded), and pickles safely."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open


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


__all__ = ["load_exact", "load_tensors", "strip_prefix", "weight_files"]
