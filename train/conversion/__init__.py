"""Convert checkpoints to and from minillava: llava-hf (both ways), original LLaVA-1.5 (full, stage-1 projector, LoRA)
and MiniGPT-4 (`llama_proj` + BLIP-2 + a causal LM).

Every source is first read into one key space, the *published* minillava layout (what `save_pretrained` writes:
`model.vision_tower.vision_model.*` for CLIP/SigLIP towers, `model.multi_modal_projector.*` or `model.qformer.*`,
`model.language_model.*`, `lm_head.*`), then loaded into an empty model that must take every tensor and leave no
weight unset. The renaming rules of each format are the tables below; pickles are only read with
`torch.load(weights_only=True)` and everything written is safetensors.

| module | what |
|---|---|
| [`layout`] | the published key layout, `rename_keys`, `published_layout`, `assemble`, reading and writing weights |
| [`llava_hf`] | `convert_from_llava_hf`, `convert_to_llava_hf` (transformers' `LlavaForConditionalGeneration`) |
| [`llava`] | `convert_from_llava`: the original LLaVA-1.5 (full, stage-1 projector, LoRA) |
| [`minigpt4`] | `convert_from_minigpt4`: MiniGPT-4's `llama_proj` + BLIP-2 (transformers' or LAVIS's) + a causal LM |
| [`cli`] | `minillava convert` |
"""

from .cli import main
from .layout import (
    assemble,
    image_tokens_per_image,
    local_folder,
    published_layout,
    read_weights,
    rename_keys,
    write_safetensors,
)
from .llava import FROM_ORIGINAL_LLAVA, ORIGINAL_LLAVA_SIDE_FILE, convert_from_llava, is_original_llava_config
from .llava_hf import FROM_LLAVA_HF, TO_LLAVA_HF, convert_from_llava_hf, convert_to_llava_hf
from .minigpt4 import FROM_LAVIS_BLIP2, FROM_MINIGPT4, convert_from_minigpt4


__all__ = [
    "FROM_LAVIS_BLIP2",
    "FROM_LLAVA_HF",
    "FROM_MINIGPT4",
    "FROM_ORIGINAL_LLAVA",
    "ORIGINAL_LLAVA_SIDE_FILE",
    "TO_LLAVA_HF",
    "assemble",
    "convert_from_llava",
    "convert_from_llava_hf",
    "convert_from_minigpt4",
    "convert_to_llava_hf",
    "image_tokens_per_image",
    "is_original_llava_config",
    "local_folder",
    "main",
    "published_layout",
    "read_weights",
    "rename_keys",
    "write_safetensors",
]
