"""Frozen image features computed once (`minillava sft --cache_image_features DIR`).

While everything before the trained part of the connector is frozen (MiniGPT-4 in both stages: ViT-g and Q-Former;
LLaVA-1.5 whenever the tower is: its selected CLIP hidden states), an image always gives the same features. They are
computed once, in a pass before training, and stored in safetensors shards; training reads them memory-mapped and
gives them to the model as `vision_features`, so later epochs and later runs skip the vision tower.

A cache folder is keyed by a fingerprint of everything that decides the features (the frozen modules' weights and
dtype, the vision configs, the feature layer and selection, the image processing), so a cache made for another
model, revision or preprocessing is never read; each image is keyed by the SHA-256 of its file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
# The config fields, beside the vision sub-configs, that change what `get_vision_features` returns.
FEATURE_CONFIG_KEYS = ("vision_feature_layer", "vision_feature_select_strategy", "num_query_tokens")


def image_hash(ref: dict[str, Any]) -> str:
    """SHA-256 of an image's file bytes (`ref` as the datasets' `Image(decode=False)` stores it)."""
    digest = hashlib.sha256()
    if ref.get("bytes") is not None:
        digest.update(ref["bytes"])
    else:
        with open(ref["path"], "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def add_image_hashes(dataset, num_proc: int | None = None):
    """Adds the `image_hashes` column (one [`image_hash`] per image of a sample) to sample rows."""

    def hashes(batch: dict) -> dict:
        return {"image_hashes": [[image_hash(ref) for ref in refs] for refs in batch["images"]]}

    return dataset.map(hashes, batched=True, num_proc=num_proc, desc="Hashing images")


def model_fingerprint(model: torch.nn.Module, image_processor) -> str:
    """A digest of what decides a model's frozen image features: the weights and dtypes of its
    `vision_feature_modules`, the vision configs and feature settings, and the image processor's settings."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    config = base.config
    digest = hashlib.sha256()
    settings = {
        "model_type": config.model_type,
        **{key: getattr(config, key) for key in FEATURE_CONFIG_KEYS if hasattr(config, key)},
        **{
            name: getattr(config, name).to_dict()
            for name in ("vision_config", "qformer_config")
            if getattr(config, name, None) is not None
        },
        "image_processor": json.loads(image_processor.to_json_string()),
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for module_name in inner.vision_feature_modules:
        part = getattr(inner, module_name)
        tensors = part.state_dict() if isinstance(part, torch.nn.Module) else {"": part}
        for name, tensor in sorted(tensors.items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{module_name}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_frozen(model: torch.nn.Module) -> None:
    """Refuses a cache when a module that computes the cached features trains (its features would go stale)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    training = [
        name
        for module_name in inner.vision_feature_modules
        for name, param in (
            getattr(inner, module_name).named_parameters(prefix=module_name)
            if isinstance(getattr(inner, module_name), torch.nn.Module)
            else [(module_name, getattr(inner, module_name))]
        )
        if param.requires_grad
    ]
    if training:
        raise ValueError(
            f"--cache_image_features needs a frozen front end ({', '.join(inner.vision_feature_modules)}), but "
            f"{training[0]} trains (e.g. --tune_vision_tower): cached features would go stale."
        )


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes < 1000 or unit == "TB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    raise AssertionError


class ImageFeatureCache:
    """One fingerprint's features: `DIR/<fingerprint[:16]>/` holds `index.json` (image hash -> shard, row) and
    `features-NNNNN.safetensors` shards of `(images, tokens, dim)` features, each written whole before the index
    names it."""

    def __init__(self, directory: str | os.PathLike, fingerprint: str):
        self.root = Path(directory) / fingerprint[:16]
        self.fingerprint = fingerprint
        self.root.mkdir(parents=True, exist_ok=True)
        self._handles: dict[str, Any] = {}
        self.reload()

    def reload(self) -> None:
        """Reads the index again (another process may have added features)."""
        index_path = self.root / INDEX_NAME
        self.index: dict[str, Any] = {"fingerprint": self.fingerprint, "shards": [], "entries": {}}
        if index_path.is_file():
            self.index = json.loads(index_path.read_text())
            if self.index.get("fingerprint") != self.fingerprint:
                raise ValueError(
                    f"{index_path} belongs to another model (fingerprint {self.index.get('fingerprint')})"
                )

    def __contains__(self, key: str) -> bool:
        return key in self.index["entries"]

    def __len__(self) -> int:
        return len(self.index["entries"])

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The keys (once each, in first-seen order) that have no features yet."""
        return [key for key in dict.fromkeys(keys) if key not in self]

    def add(self, keys: Sequence[str], features: torch.Tensor) -> None:
        """Writes `features` (one row per key) as a new shard, then the index that names it."""
        shard = f"features-{len(self.index['shards']):05d}.safetensors"
        temporary = self.root / f".{shard}.tmp"
        save_file({"features": features.detach().cpu().contiguous()}, str(temporary))
        os.replace(temporary, self.root / shard)
        self.index["shards"].append(shard)
        self.index["entries"].update({key: [shard, row] for row, key in enumerate(keys)})
        temporary = self.root / f".{INDEX_NAME}.tmp"
        temporary.write_text(json.dumps(self.index))
        os.replace(temporary, self.root / INDEX_NAME)

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """The features of `keys`, stacked: `(len(keys), tokens, dim)`, read from the memory-mapped shards."""
        rows = []
        for key in keys:
            shard, row = self.index["entries"][key]
            if shard not in self._handles:
                self._handles[shard] = safe_open(str(self.root / shard), framework="pt")
            rows.append(self._handles[shard].get_slice("features")[row : row + 1])
        return torch.cat(rows)

    def __getstate__(self) -> dict:  # data loader workers open their own memory maps
        return {**self.__dict__, "_handles": {}}


def fill_cache(
    cache: ImageFeatureCache,
    dataset,
    model: torch.nn.Module,
    processor,
    load_image: Callable[[dict], Any],
    batch_size: int = 32,
) -> dict[str, Any]:
    """Computes the features of every image of `dataset` (with `images` refs and `image_hashes`) not in `cache`.

    Says the disk cost first and refuses when the disk cannot hold it. Returns what it did: images, new images, bytes.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(base.parameters()).device
    cache.reload()
    refs: dict[str, dict] = {}
    for images, hashes in zip(dataset["images"], dataset["image_hashes"], strict=True):
        for ref, key in zip(images, hashes, strict=True):
            refs.setdefault(key, ref)
    todo = cache.missing(list(refs))
    stats = {"images": len(refs), "computed": len(todo), "directory": str(cache.root)}
    if not todo:
        logger.warning("Image features: all %d images found in %s", len(refs), cache.root)
        return {**stats, "bytes": 0}

    was_training = base.training
    base.eval()
    with torch.no_grad():
        pixel_values = processor(images=[load_image(refs[todo[0]])], return_tensors="pt")["pixel_values"]
        sample = base.get_vision_features(pixel_values.to(device)).pooler_output
    per_image = sample[0].numel() * sample.element_size()
    needed = per_image * len(todo)
    free = shutil.disk_usage(cache.root).free
    message = (
        f"Image features: {len(todo)} of {len(refs)} images to compute, {_size(needed)} on disk "
        f"({tuple(sample.shape[1:])} {str(sample.dtype).removeprefix('torch.')} each) in {cache.root}, "
        f"{_size(free)} free"
    )
    if needed > free:
        raise OSError(f"No space left on {cache.root}: the cached features need {_size(needed)}, {_size(free)} free.")
    logger.warning(message)

    try:
        for start in tqdm(range(0, len(todo), batch_size), desc="Caching image features", unit="batch"):
            keys = todo[start : start + batch_size]
            images = [load_image(refs[key]) for key in keys]
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            with torch.no_grad():
                cache.add(keys, base.get_vision_features(pixel_values).pooler_output)
    finally:
        base.train(was_training)
    return {**stats, "bytes": needed}


@dataclass
class CachedFeaturesCollator:
    """Wraps the padding collator: the batch's images come as cached `vision_features` instead of `pixel_values`
    (the images are still decoded by the data pipeline, for the processor to lay out the image tokens)."""

    collator: Callable[[list[dict]], dict]
    cache: ImageFeatureCache

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        keys = [key for example in examples for key in example["image_hashes"]]
        if keys:
            batch.pop("pixel_values", None)
            batch["vision_features"] = self.cache.get(keys)
        return batch


__all__ = [
    "CachedFeaturesCollator",
    "ImageFeatureCache",
    "add_image_hashes",
    "check_frozen",
    "fill_cache",
    "image_hash",
    "model_fingerprint",
]
