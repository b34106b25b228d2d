"""The key space every conversion goes through (the *published* minillava layout: what `save_pretrained`
writes), the renaming machinery, and reading and writing weight files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import (
    PretrainedConfig,
)

from minillava.modeling import (
    MiniVLMForConditionalGeneration,
)
from minillava.modeling.modeling_base import PUBLISHED_VISION_PREFIX, VISION_TOWER_KEY

from ..checkpoints import load_exact, load_tensors, weight_files


try:
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights


logger = logging.getLogger(__name__)

# A renaming table: (regex matched at the start of a key, replacement). The first matching rule renames a key; a
# replacement of None drops it (a tensor the format is known to hold and minillava does not use). Keys that no rule
# matches are kept as they are, so the exact load that follows refuses them by name.
Rules = tuple[tuple[str, str | None], ...]


def prefix_rules(prefixes: dict[str, str]) -> Rules:
    """A renaming table that swaps literal key prefixes."""
    return tuple((re.escape(source), target.replace("\\", "\\\\")) for source, target in prefixes.items())


# A causal LM (`LlamaForCausalLM`, ...) inside a minillava model: its base model is our `model.language_model`.
CAUSAL_LM_PREFIXES = {"model.": "model.language_model.", "lm_head.": "lm_head."}

TO_CAUSAL_LM: Rules = prefix_rules({target: source for source, target in CAUSAL_LM_PREFIXES.items()})

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_FILE = "non_lora_trainables.bin"


def rename_keys(tensors: dict[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    """`tensors` renamed by the first rule matching each key (dropped when its replacement is None); unmatched keys
    are kept. Two keys renamed to the same name are refused."""
    renamed: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in tensors.items():
        new_key = key
        for pattern, replacement in rules:
            if re.match(pattern, key):
                new_key = None if replacement is None else re.sub(pattern, replacement, key, count=1)
                break
        if new_key is None:
            continue
        if new_key in renamed:
            raise ValueError(f"{sources[new_key]!r} and {key!r} both map to {new_key!r}: mixed checkpoint layouts")
        renamed[new_key], sources[new_key] = value, key
    return renamed


def published_layout(tensors: dict[str, torch.Tensor], vision_model_type: str) -> dict[str, torch.Tensor]:
    """Vision tower keys with their published `vision_model.` level (CLIP/SigLIP), added where a source lacks it."""
    level = PUBLISHED_VISION_PREFIX.get(vision_model_type)
    if level is None:
        return tensors
    return {
        VISION_TOWER_KEY + level + key[len(VISION_TOWER_KEY) :]
        if key.startswith(VISION_TOWER_KEY) and not key.startswith(VISION_TOWER_KEY + level)
        else key: value
        for key, value in tensors.items()
    }


# What is fetched of a Hub repository named instead of a local folder: configs, tokenizer and processor files, the
# weights in one format (safetensors when there are any), and the side files of original LLaVA runs.
HUB_FILE_PATTERNS = ("*.json", "*.model", "*.jinja", "*.txt", "mm_projector.bin", NON_LORA_FILE)


def local_folder(path_or_id: str) -> str:
    """`path_or_id` when it exists locally, otherwise the local snapshot of that Hub repository."""
    if Path(path_or_id).exists():
        return path_or_id
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(path_or_id)
    weights = "*.safetensors" if any(name.endswith(".safetensors") for name in files) else "*.bin"
    return snapshot_download(path_or_id, allow_patterns=[*HUB_FILE_PATTERNS, weights])


def read_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder or file (shards with a progress bar)."""
    files = weight_files(path)
    tensors: dict[str, torch.Tensor] = {}
    for file in tqdm(files, desc=f"Reading {what}", unit="file", disable=len(files) < 2):
        tensors.update(load_tensors(file))
    return tensors


def assemble(
    model_class: type[MiniVLMForConditionalGeneration],
    config: PretrainedConfig,
    tensors: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | str = "auto",
) -> MiniVLMForConditionalGeneration:
    """A `model_class` model of `config` holding exactly `tensors` (published layout), refusing any missing or
    unexpected key. With `dtype="auto"` every weight takes the language model's dtype (fp32 modules stay fp32)."""
    with no_init_weights():
        model = model_class(config)
    level = model._published_vision_prefix()
    if level is not None:  # the tower has no `vision_model.` level in memory (transformers 5.x)
        published = VISION_TOWER_KEY + level
        tensors = {
            VISION_TOWER_KEY + key[len(published) :] if key.startswith(published) else key: value
            for key, value in tensors.items()
        }
    if config.tie_word_embeddings:
        embedding_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        if f"{embedding_name}.weight" in tensors:
            tensors = {"lm_head.weight": tensors[f"{embedding_name}.weight"], **tensors}
    load_exact(model, tensors, source, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(model.get_input_embeddings().weight.dtype if dtype == "auto" else dtype)
    for name in model.model._keep_in_fp32_modules or []:
        part = getattr(model.model, name)
        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
        else:
            part.float()
    return model.eval()


def write_safetensors(tensors: dict[str, torch.Tensor], output_dir: str | Path, max_shard_size: str) -> None:
    """Writes `tensors` as `model.safetensors`, or as shards with `model.safetensors.index.json` when larger than
    `max_shard_size`; stale weight files of an earlier run are removed."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for stale in [*output_dir.glob("model*.safetensors"), output_dir / "model.safetensors.index.json"]:
        if stale.name not in split.filename_to_tensors:
            stale.unlink(missing_ok=True)
    for filename, names in tqdm(
        split.filename_to_tensors.items(), desc="Writing shards", unit="file", disable=not split.is_sharded
    ):
        shard = {name: tensors[name].contiguous() for name in names}
        save_file(shard, output_dir / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def image_tokens_per_image(processor) -> int:
    """How many image tokens `processor` writes for one image, counted on its own output."""
    inputs = processor(images=[Image.new("RGB", (40, 30))], text=[processor.image_token], add_special_tokens=False)
    return sum(token == processor.image_token_id for token in inputs["input_ids"][0])
