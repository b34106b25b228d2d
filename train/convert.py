"""Convert checkpoints to and from minillava: llava-hf (both ways), original LLaVA-1.5 (full, stage-1 projector, LoRA)
and MiniGPT-4 (`llama_proj` + BLIP-2 + a causal LM).

Every source is first read into one key space, the *published* minillava layout (what `save_pretrained` writes:
`model.vision_tower.vision_model.*` for CLIP/SigLIP towers, `model.multi_modal_projector.*` or `model.qformer.*`,
`model.language_model.*`, `lm_head.*`), then loaded into an empty model that must take every tensor and leave no
weight unset. The renaming rules of each format are the tables below; pickles are only read with
`torch.load(weights_only=True)` and everything written is safetensors.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    LlavaConfig,
    LlavaProcessor,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from minillava.modeling import (
    MiniGPT4Config,
    MiniGPT4ForConditionalGeneration,
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
    MiniVLMForConditionalGeneration,
)
from minillava.modeling.modeling_base import PUBLISHED_VISION_PREFIX, VISION_TOWER_KEY
from minillava.processing import MiniLlavaProcessor, make_image_processor
from minillava.processing.processing_minillava import make_tokenizer_config_portable
from minillava.train.build import (
    ARCH_DEFAULTS,
    IMAGE_TOKEN,
    add_image_token,
    fit_tokenizer,
    from_pretrained_any_version,
    image_stats,
    load_blip2_front_end,
    parse_dtype,
    resolve_chat_template,
    save,
    vision_config_of,
)
from minillava.train.checkpoints import load_exact, load_tensors, weight_files


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


# llava-hf: the layout every Hub checkpoint and `save_pretrained` (transformers 4.x and 5.x) writes. transformers 5.x
# writes its CLIP/SigLIP towers without their `vision_model.` level, 4.x and the Hub with it; both are read.
LLAVA_HF_PREFIXES = {
    "language_model.model.": "model.language_model.",
    "language_model.lm_head.": "lm_head.",
    "vision_tower.": "model.vision_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
}
# llava-hf's in-memory names since transformers 4.52, which some saved folders use: the same as ours.
LLAVA_HF_CURRENT_PREFIXES = {
    "model.language_model.": "model.language_model.",
    "model.vision_tower.": "model.vision_tower.",
    "model.multi_modal_projector.": "model.multi_modal_projector.",
    "lm_head.": "lm_head.",
}
FROM_LLAVA_HF: Rules = prefix_rules(LLAVA_HF_CURRENT_PREFIXES) + prefix_rules(LLAVA_HF_PREFIXES)
# Export writes the Hub layout (with `vision_tower.vision_model.`), which transformers 4.x and 5.x, vLLM and SGLang load.
TO_LLAVA_HF: Rules = prefix_rules({target: source for source, target in LLAVA_HF_PREFIXES.items()})

# A causal LM (`LlamaForCausalLM`, ...) inside a minillava model: its base model is our `model.language_model`.
CAUSAL_LM_PREFIXES = {"model.": "model.language_model.", "lm_head.": "lm_head."}
# Original LLaVA (`LlavaLlamaForCausalLM`): a causal LM whose base model also holds `mm_projector` (nn.Sequential:
# 0 = Linear, 1 = GELU, 2 = Linear; or a single Linear) and, when it was saved, the CLIP wrapper
# `vision_tower.vision_tower`. A plain causal LM folder (the base of a stage-1 projector or a LoRA run) is a subset.
FROM_ORIGINAL_LLAVA: Rules = (
    (r"model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"model\.mm_projector\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.vision_tower\.vision_tower\.", "model.vision_tower."),
    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", None),  # a buffer transformers < 4.32 saved
) + prefix_rules(CAUSAL_LM_PREFIXES)
TO_CAUSAL_LM: Rules = prefix_rules({target: source for source, target in CAUSAL_LM_PREFIXES.items()})
# `mm_projector.bin` and `non_lora_trainables.bin` keys carry the prefixes of the module that saved them; they are
# stripped as LLaVA's `get_w` and `load_pretrained_model` do.
ORIGINAL_LLAVA_SIDE_FILE: Rules = prefix_rules(
    {"base_model.model.": "", "model.model.": "model.", "mm_projector.": "model.mm_projector."}
)
ORIGINAL_LLAVA_ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
# config.json keys that only the LLaVA code reads; the rest of an original config is its language model's config.
ORIGINAL_LLAVA_ONLY_CONFIG_KEYS = (
    "architectures",
    "model_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "tune_mm_vision_resampler",
    "freeze_mm_vision_resampler",
    "use_mm_proj",
    "vision_tower",
    "_name_or_path",
    "transformers_version",
)
# What an original config means in minillava terms; a missing key takes LLaVA-1.5's value.
ORIGINAL_LLAVA_DEFAULTS = {
    "mm_vision_select_layer": ARCH_DEFAULTS["llava-1.5"]["vision_feature_layer"],
    "mm_vision_select_feature": "patch",
    "mm_projector_type": ARCH_DEFAULTS["llava-1.5"]["projector_type"],
    "image_aspect_ratio": "pad",
    "mm_use_im_start_end": False,
    "mm_patch_merge_type": "flat",
}
ORIGINAL_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
ORIGINAL_PROJECTOR_TYPE = {"mlp2x_gelu": "mlp2x_gelu", "linear": "linear"}
ORIGINAL_ASPECT_RATIO_PADS = {"pad": True, "square": False, None: False}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
NON_LORA_FILE = "non_lora_trainables.bin"

# MiniGPT-4's checkpoint holds only its trained projection.
FROM_MINIGPT4: Rules = ((r"llama_proj\.", "model.language_projection."),)
# LAVIS BLIP-2 (`blip2_pretrained*.pth`, MiniGPT-4's `q_former_model`), as transformers' convert_blip_2 script maps it.
# Each block's `attn.q_bias` and `attn.v_bias` are first merged into `attn.qkv.bias` (see `merge_lavis_qkv_bias`).
FROM_LAVIS_BLIP2: Rules = (
    (r"visual_encoder\.cls_token$", "model.vision_tower.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed$", "model.vision_tower.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.", "model.vision_tower.embeddings.patch_embedding."),
    (r"visual_encoder\.blocks\.(\d+)\.norm([12])\.", r"model.vision_tower.encoder.layers.\1.layer_norm\2."),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"model.vision_tower.encoder.layers.\1.self_attn.qkv."),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layers.\1.self_attn.projection."),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layers.\1.mlp."),
    (r"ln_vision\.", "model.vision_tower.post_layernorm."),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.", "model.qformer.layernorm."),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.",
        r"model.qformer.encoder.layer.\1.\2.attention.",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention|intermediate_query|output_query)\.",
        r"model.qformer.encoder.layer.\1.\2.",
    ),
    (r"query_tokens$", "model.query_tokens"),
    # The Q-Former's text branch and the heads of the other BLIP-2 models: not part of MiniGPT-4.
    (r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)", None),
    (r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.", None),
    (r"Qformer\.cls\.", None),
    (r"(t5|opt|llm)_(proj|model)\.", None),
    (r"(vision_proj|text_proj|itm_head)\.", None),
    (r"temp$", None),
)

SOURCE_FORMATS = ("llava-hf", "llava", "minigpt4")
TARGET_FORMATS = ("llava-hf",)


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


# --------------------------------------------------------------------------------------------------------------------
# llava-hf -> minillava


def convert_from_llava_hf(
    source: str, output_dir: str, *, dtype: str = "auto", max_shard_size: str = "5GB"
) -> tuple[MiniLlavaForConditionalGeneration, MiniLlavaProcessor]:
    """A transformers `LlavaForConditionalGeneration` folder (and its `LlavaProcessor`) as a minillava model and
    processor: same weights, image processing, image token and chat template."""
    source = local_folder(source)
    if is_original_llava_config(_read_json(Path(source) / "config.json")):
        raise ValueError(
            f"{source} is an original LLaVA checkpoint (LlavaLlamaForCausalLM, mm_* keys): use --from llava"
        )
    llava_config = AutoConfig.from_pretrained(source)
    if llava_config.model_type != "llava":
        raise ValueError(f"{source} is a {llava_config.model_type!r} checkpoint, not llava-hf (model_type 'llava')")
    config = MiniLlavaConfig(
        vision_config=llava_config.vision_config,
        text_config=llava_config.text_config,
        image_token_id=llava_config.image_token_index,
        projector_type="mlp2x_gelu",
        projector_hidden_act=llava_config.projector_hidden_act,
        multimodal_projector_bias=getattr(llava_config, "multimodal_projector_bias", True),
        vision_feature_layer=llava_config.vision_feature_layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        tie_word_embeddings=getattr(llava_config, "tie_word_embeddings", False),
    )
    tensors = rename_keys(read_weights(source, "llava-hf weights"), FROM_LLAVA_HF)
    tensors = published_layout(tensors, config.vision_config.model_type)
    model = assemble(MiniLlavaForConditionalGeneration, config, tensors, f"{source} (llava-hf)", parse_dtype(dtype))

    llava_processor = AutoProcessor.from_pretrained(source)
    if not isinstance(llava_processor, LlavaProcessor):
        raise ValueError(f"{source} must hold LlavaProcessor files (tokenizer and image processor configs)")
    num_image_tokens = model.config.image_seq_length
    if llava_processor.patch_size is not None:  # processors saved before transformers 4.45 do not expand images
        expanded = image_tokens_per_image(llava_processor)
        if expanded != num_image_tokens:
            raise ValueError(
                f"{source}: its LlavaProcessor expands {llava_processor.image_token} to {expanded} tokens but the "
                f"model gives {num_image_tokens} image features"
            )
    processor = MiniLlavaProcessor(
        image_processor=llava_processor.image_processor,
        tokenizer=llava_processor.tokenizer,
        chat_template=llava_processor.chat_template
        or resolve_chat_template(ARCH_DEFAULTS["llava-1.5"]["chat_template"], llava_processor.tokenizer),
        image_token=llava_processor.image_token,
        num_image_tokens=num_image_tokens,
    )
    fit_tokenizer(model, processor.tokenizer)
    save(model, processor, output_dir, max_shard_size=max_shard_size)
    return model, processor


# --------------------------------------------------------------------------------------------------------------------
# minillava -> llava-hf

MINIGPT4_EXPORT_ERROR = (
    "{source} is a MiniGPT-4 model, which has no native transformers equivalent: llava-hf "
    "(LlavaForConditionalGeneration) only has LLaVA's MLP projector, not a BLIP-2 Q-Former with learned queries, and "
    "BLIP-2's own classes pair the Q-Former with OPT/Flan-T5 prompts rather than MiniGPT-4's <Img>...</Img> format. "
    "Share the minillava folder itself: it loads with trust_remote_code=True."
)


def convert_to_llava_hf(source: str, output_dir: str, *, max_shard_size: str = "5GB") -> LlavaConfig:
    """A minillava LLaVA-1.5 folder as a transformers-native llava-hf folder (`LlavaForConditionalGeneration` +
    `LlavaProcessor`, no remote code) in the key layout of the llava-hf Hub checkpoints."""
    source = local_folder(source)
    config = AutoConfig.from_pretrained(source)
    if isinstance(config, MiniGPT4Config):
        raise ValueError(MINIGPT4_EXPORT_ERROR.format(source=source))
    if not isinstance(config, MiniLlavaConfig):
        raise ValueError(f"{source} is a {config.model_type!r} checkpoint, not a minillava LLaVA-1.5 model")
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(
            f"{source} has a {config.projector_type!r} projector; llava-hf only has LLaVA-1.5's two-layer MLP"
        )
    tensors = published_layout(read_weights(source, "minillava weights"), config.vision_config.model_type)
    model = assemble(MiniLlavaForConditionalGeneration, config, tensors, f"{source} (minillava)")
    processor = MiniLlavaProcessor.from_pretrained(source)

    vision_config = config.vision_config
    # LlavaProcessor writes (image_size / patch_size)^2 + num_additional_image_tokens - (1 for "default") tokens
    num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    drops_cls = config.vision_feature_select_strategy == "default"
    llava_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=config.image_seq_length - num_patches + int(drops_cls),
    )
    expanded = image_tokens_per_image(llava_processor)
    if expanded != config.image_seq_length:
        raise ValueError(
            f"{source}: LlavaProcessor would expand each image to {expanded} tokens but the model gives "
            f"{config.image_seq_length} features; llava-hf cannot represent this model"
        )
    llava_config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act,
        multimodal_projector_bias=config.multimodal_projector_bias,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    llava_config.architectures = ["LlavaForConditionalGeneration"]
    llava_config.dtype = model.dtype

    state = published_layout(
        {
            key: value
            for key, value in model.state_dict().items()
            if not (config.tie_word_embeddings and key == "lm_head.weight")
        },
        vision_config.model_type,
    )
    write_safetensors(rename_keys(state, TO_LLAVA_HF), output_dir, max_shard_size)
    llava_config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    llava_processor.save_pretrained(output_dir)
    processor.image_processor.save_pretrained(output_dir)  # preprocessor_config.json, for loaders older than 4.57
    make_tokenizer_config_portable(output_dir)
    return llava_config


# --------------------------------------------------------------------------------------------------------------------
# original LLaVA-1.5 -> minillava


def is_original_llava_config(config: dict) -> bool:
    """Whether a config.json is the original LLaVA's (recognised by `architectures` and `mm_*` keys, never by
    `model_type`, which was `llava` like transformers' own LLaVA until LLaVA v1.2)."""
    architectures = config.get("architectures") or []
    return bool(architectures) and architectures[0].startswith("Llava") and any(k.startswith("mm_") for k in config)


def original_text_config(config: dict, source: str) -> PretrainedConfig:
    """The language model config inside an original LLaVA config.json."""
    architecture = config["architectures"][0]
    if architecture not in ORIGINAL_LLAVA_ARCHITECTURES:
        raise ValueError(
            f"{source}: {architecture} is not supported; the original LLaVA architectures minillava converts are "
            f"{', '.join(ORIGINAL_LLAVA_ARCHITECTURES)}"
        )
    kept = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in ORIGINAL_LLAVA_ONLY_CONFIG_KEYS}
    return AutoConfig.for_model(ORIGINAL_LLAVA_ARCHITECTURES[architecture], **kept)


def original_llava_settings(config: dict, source: str) -> dict:
    """The `mm_*` settings of an original LLaVA config (LLaVA-1.5's value where one is missing), checked."""
    settings = {key: config.get(key, default) for key, default in ORIGINAL_LLAVA_DEFAULTS.items()}
    settings["mm_vision_tower"] = config.get("mm_vision_tower", config.get("vision_tower"))
    problems = []
    if settings["mm_use_im_start_end"]:
        problems.append("mm_use_im_start_end=true (<im_start>/<im_end> around images; LLaVA-1.5 has none)")
    if settings["mm_patch_merge_type"] != "flat" or settings["image_aspect_ratio"] not in ORIGINAL_ASPECT_RATIO_PADS:
        problems.append(
            f"image_aspect_ratio={settings['image_aspect_ratio']!r}, mm_patch_merge_type="
            f"{settings['mm_patch_merge_type']!r} (LLaVA-NeXT any-resolution)"
        )
    if settings["mm_vision_select_feature"] not in ORIGINAL_SELECT_FEATURE:
        problems.append(f"mm_vision_select_feature={settings['mm_vision_select_feature']!r}")
    if settings["mm_projector_type"] not in ORIGINAL_PROJECTOR_TYPE:
        problems.append(f"mm_projector_type={settings['mm_projector_type']!r}")
    if problems:
        raise ValueError(f"{source} is not a LLaVA-1.5 style checkpoint minillava converts: {'; '.join(problems)}")
    return settings


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _merge_lora(
    tensors: dict[str, torch.Tensor], text_config: PretrainedConfig, lora_dir: Path, source: str
) -> dict[str, torch.Tensor]:
    """`tensors` (published layout) with the LoRA adapter of `lora_dir` merged into the language model part."""
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    except ImportError as error:
        raise ImportError("Converting a LLaVA LoRA output needs peft: pip install 'minillava[train]'") from error
    adapter_file = next((lora_dir / name for name in ADAPTER_FILES if (lora_dir / name).is_file()), None)
    if adapter_file is None:
        raise FileNotFoundError(f"{source}: no {' or '.join(ADAPTER_FILES)}")
    language_keys = {key for key in tensors if key.startswith(tuple(CAUSAL_LM_PREFIXES.values()))}
    with no_init_weights():
        language_model = AutoModelForCausalLM.from_config(text_config)
    lm_tensors = rename_keys({key: tensors[key] for key in language_keys}, TO_CAUSAL_LM)
    load_exact(language_model, lm_tensors, f"{source} (base language model)", assign=True)

    peft_model = get_peft_model(language_model, LoraConfig.from_pretrained(str(lora_dir)))
    result = set_peft_model_state_dict(peft_model, load_tensors(adapter_file))
    missing = sorted(key for key in result.missing_keys if "lora_" in key)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{adapter_file} does not match the base language model: missing keys {missing or 'none'}; "
            f"unexpected keys {sorted(result.unexpected_keys) or 'none'}"
        )
    merged = rename_keys(peft_model.merge_and_unload().state_dict(), prefix_rules(CAUSAL_LM_PREFIXES))
    return {**{key: value for key, value in tensors.items() if key not in language_keys}, **merged}


def convert_from_llava(
    source: str,
    output_dir: str,
    *,
    vision_model: str | None = None,
    mm_projector: str | None = None,
    base_model: str | None = None,
    chat_template: str | None = None,
    dtype: str = "auto",
    pad_to_multiple_of: int | None = None,
    max_shard_size: str = "5GB",
    seed: int = 0,
) -> tuple[MiniLlavaForConditionalGeneration, MiniLlavaProcessor]:
    """An original LLaVA-1.5 checkpoint (haotian-liu/LLaVA) as a minillava model and processor.

    `source` is one of: a full checkpoint (`LlavaLlamaForCausalLM` with `mm_*` config keys, `.bin` or safetensors
    shards); a base causal LM with `mm_projector` a stage-1 `mm_projector.bin` (its sibling config.json, when there
    is one, names the vision tower); or a LoRA output (`adapter_model.*`, `non_lora_trainables.bin`, config.json)
    with `base_model` the LM it was trained from. The vision tower named in `mm_vision_tower` (or `vision_model`)
    is read from its own checkpoint; vision tower weights saved in `source` take precedence.
    """
    source = local_folder(source)
    source_dir = Path(source)
    config_dict = _read_json(source_dir / "config.json")
    is_lora = any((source_dir / name).is_file() for name in ADAPTER_FILES)
    if is_lora and base_model is None:
        named = _read_json(source_dir / "adapter_config.json").get("base_model_name_or_path")
        raise ValueError(f"{source} is a LoRA output: pass --base-model (its adapter_config.json names {named!r})")
    if not is_lora and base_model is not None:
        raise ValueError(f"--base-model is for LoRA outputs, and {source} has no {' or '.join(ADAPTER_FILES)}")
    if mm_projector is not None:
        if is_original_llava_config(config_dict):
            raise ValueError(f"--mm-projector takes a base language model, and {source} is a full LLaVA checkpoint")
        mm_config = _read_json(Path(mm_projector).parent / "config.json")
        settings = original_llava_settings(mm_config if is_original_llava_config(mm_config) else {}, mm_projector)
        # a projector is applied to start LLaVA-1.5's stage 2, which pads images to squares
        settings["image_aspect_ratio"] = "pad"
    elif is_original_llava_config(config_dict):
        settings = original_llava_settings(config_dict, source)
    else:
        architectures = config_dict.get("architectures")
        raise ValueError(
            f"{source} is not an original LLaVA checkpoint (architectures {architectures}, no mm_* config keys). "
            "For llava-hf folders use --from llava-hf; for a base LM with a stage-1 projector pass --mm-projector."
        )
    lm_source = local_folder(base_model) if is_lora else source
    text_config = AutoConfig.from_pretrained(source) if mm_projector else original_text_config(config_dict, source)
    vision_path = vision_model or settings["mm_vision_tower"]
    if vision_path is None:
        raise ValueError(f"{source}: its config names no mm_vision_tower; pass --vision-model")
    vision_config = vision_config_of(vision_path)

    # the language model, then the projector (or LoRA run's trained non-LoRA weights), then LoRA merged in
    tensors = read_weights(lm_source, "language model weights")
    side_file = mm_projector or (source_dir / NON_LORA_FILE if is_lora else None)
    if side_file is not None:
        if not Path(side_file).is_file():
            raise FileNotFoundError(f"{side_file} not found")
        tensors.update(rename_keys(load_tensors(side_file), ORIGINAL_LLAVA_SIDE_FILE))
    tensors = published_layout(rename_keys(tensors, FROM_ORIGINAL_LLAVA), vision_config.model_type)
    if is_lora:
        tensors = _merge_lora(tensors, text_config, source_dir, source)
    if any(key.startswith(VISION_TOWER_KEY) for key in tensors):
        logger.info("%s holds its own vision tower weights; they replace those of %s", source, vision_path)
    else:
        vision_tower = from_pretrained_any_version(MODEL_MAPPING[type(vision_config)], vision_path, "auto")
        vision = {VISION_TOWER_KEY + key: value for key, value in vision_tower.state_dict().items()}
        tensors.update(published_layout(vision, vision_config.model_type))

    tokenizer = AutoTokenizer.from_pretrained(lm_source)
    add_image_token(tokenizer)
    config = MiniLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_type=ORIGINAL_PROJECTOR_TYPE[settings["mm_projector_type"]],
        vision_feature_layer=settings["mm_vision_select_layer"],
        vision_feature_select_strategy=ORIGINAL_SELECT_FEATURE[settings["mm_vision_select_feature"]],
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    what = f"{source} (original LLaVA)" + (f" + {mm_projector}" if mm_projector else "")
    model = assemble(MiniLlavaForConditionalGeneration, config, tensors, what, parse_dtype(dtype))
    torch.manual_seed(seed)
    fit_tokenizer(model, tokenizer, pad_to_multiple_of)

    image_processor = make_image_processor("llava-1.5", vision_config.image_size, **image_stats(vision_path))
    image_processor.do_pad = ORIGINAL_ASPECT_RATIO_PADS[settings["image_aspect_ratio"]]
    processor = MiniLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=resolve_chat_template(chat_template or ARCH_DEFAULTS["llava-1.5"]["chat_template"], tokenizer),
        image_token=IMAGE_TOKEN,
        num_image_tokens=model.config.image_seq_length,
    )
    save(model, processor, output_dir, max_shard_size=max_shard_size)
    return model, processor


# --------------------------------------------------------------------------------------------------------------------
# MiniGPT-4 -> minillava


def merge_lavis_qkv_bias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EVA ViT's separate `attn.q_bias` and `attn.v_bias` as one `attn.qkv.bias` = (q_bias, 0, v_bias): its keys
    have no bias."""
    merged = dict(tensors)
    for key in [k for k in tensors if re.fullmatch(r"visual_encoder\.blocks\.\d+\.attn\.q_bias", k)]:
        block = key[: -len("q_bias")]
        q_bias, v_bias = merged.pop(key), merged.pop(f"{block}v_bias", None)
        if v_bias is None:
            raise ValueError(f"{key} has no matching {block}v_bias")
        merged[f"{block}qkv.bias"] = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    return merged


def lavis_blip2_configs(
    tensors: dict[str, torch.Tensor], source: str
) -> tuple[Blip2VisionConfig, Blip2QFormerConfig, int]:
    """BLIP-2 vision and Q-Former configs read from the tensor shapes of a LAVIS checkpoint (published layout).

    Head counts are not in the shapes: they are those of transformers' defaults (EVA ViT-g, BERT-base), the models
    every LAVIS BLIP-2 checkpoint uses; other sizes need `--blip2-config`."""

    def count(pattern: str) -> int:
        return len({m.group(1) for k in tensors if (m := re.match(pattern, k))})

    try:
        hidden = tensors["model.vision_tower.embeddings.class_embedding"].shape[-1]
        patch = tensors["model.vision_tower.embeddings.patch_embedding.weight"].shape[-1]
        positions = tensors["model.vision_tower.embeddings.position_embedding"].shape[1]
        qformer_hidden = tensors["model.qformer.layernorm.weight"].shape[0]
        intermediate = tensors["model.vision_tower.encoder.layers.0.mlp.fc1.weight"].shape[0]
        qformer_intermediate = tensors["model.qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0]
        num_query_tokens = tensors["model.query_tokens"].shape[1]
    except KeyError as error:
        raise ValueError(
            f"{source} is not a LAVIS BLIP-2 checkpoint (visual_encoder.*, ln_vision.*, Qformer.bert.*, query_tokens: "
            f"found no tensor for {error.args[0]}); for a transformers BLIP-2 checkpoint pass its folder"
        ) from error
    cross = sorted(
        int(m.group(1))
        for k in tensors
        if (m := re.match(r"model\.qformer\.encoder\.layer\.(\d+)\.crossattention\.attention\.key\.weight", k))
    )
    layers = count(r"model\.qformer\.encoder\.layer\.(\d+)\.")
    frequency = cross[1] - cross[0] if len(cross) > 1 else layers
    if not cross or [i for i in range(layers) if i % frequency == 0] != cross:
        raise ValueError(f"{source}: Q-Former cross-attention layers {cross} are not every n-th layer from 0")
    vision_default, qformer_default = Blip2VisionConfig(), Blip2QFormerConfig()
    if hidden != vision_default.hidden_size or qformer_hidden != qformer_default.hidden_size:
        raise ValueError(
            f"{source}: a vision width of {hidden} and a Q-Former width of {qformer_hidden} are not EVA ViT-g "
            f"({vision_default.hidden_size}) and BERT-base ({qformer_default.hidden_size}), so their head counts are "
            "unknown; pass --blip2-config (a Blip2Config folder or config.json)"
        )
    encoder_hidden = tensors[f"model.qformer.encoder.layer.{cross[0]}.crossattention.attention.key.weight"].shape[1]
    vision_config = Blip2VisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=count(r"model\.vision_tower\.encoder\.layers\.(\d+)\."),
        num_attention_heads=vision_default.num_attention_heads,
        image_size=math.isqrt(positions - 1) * patch,
        patch_size=patch,
        qkv_bias=any(k.endswith("self_attn.qkv.bias") for k in tensors),
    )
    qformer_config = Blip2QFormerConfig(
        hidden_size=qformer_hidden,
        num_hidden_layers=layers,
        num_attention_heads=qformer_default.num_attention_heads,
        intermediate_size=qformer_intermediate,
        cross_attention_frequency=frequency,
        encoder_hidden_size=encoder_hidden,
    )
    return vision_config, qformer_config, num_query_tokens


def minigpt4_front_end(
    blip2: str, blip2_config: str | None, dtype
) -> tuple[Blip2VisionConfig, Blip2QFormerConfig, int, dict[str, torch.Tensor]]:
    """Configs, query count and published-layout tensors of MiniGPT-4's frozen BLIP-2 front end, from a
    transformers BLIP-2 folder or a LAVIS `.pth`."""
    if Path(blip2).is_file():
        tensors = rename_keys(merge_lavis_qkv_bias(load_tensors(blip2)), FROM_LAVIS_BLIP2)
        if blip2_config is None:
            vision_config, qformer_config, num_query_tokens = lavis_blip2_configs(tensors, blip2)
        else:
            config = AutoConfig.from_pretrained(blip2_config)
            vision_config, qformer_config = config.vision_config, config.qformer_config
            num_query_tokens = config.num_query_tokens
        return vision_config, qformer_config, num_query_tokens, tensors
    if blip2_config is not None:
        raise ValueError("--blip2-config is for LAVIS .pth files; a transformers BLIP-2 folder has its own config")
    vision, qformer, query_tokens, num_query_tokens = load_blip2_front_end(local_folder(blip2), dtype)
    tensors = {
        **{VISION_TOWER_KEY + key: value for key, value in vision.state_dict().items()},
        **{f"model.qformer.{key}": value for key, value in qformer.state_dict().items()},
        "model.query_tokens": query_tokens,
    }
    return vision.config, qformer.config, num_query_tokens, tensors


def convert_from_minigpt4(
    source: str,
    output_dir: str,
    *,
    blip2: str,
    text_model: str,
    blip2_config: str | None = None,
    chat_template: str | None = None,
    dtype: str = "auto",
    pad_to_multiple_of: int | None = None,
    max_shard_size: str = "5GB",
    seed: int = 0,
) -> tuple[MiniGPT4ForConditionalGeneration, MiniLlavaProcessor]:
    """A MiniGPT-4 checkpoint (`.pth` holding `llama_proj`) with its BLIP-2 front end (transformers folder or LAVIS
    `.pth`) and its causal LM folder, as a minillava MiniGPT-4 model and processor with MiniGPT-4's prompt format."""
    projection = rename_keys(load_tensors(source), FROM_MINIGPT4)
    vision_config, qformer_config, num_query_tokens, tensors = minigpt4_front_end(
        blip2, blip2_config, parse_dtype(dtype)
    )
    language_model = from_pretrained_any_version(AutoModelForCausalLM, text_model, parse_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    add_image_token(tokenizer)

    weight = projection.get("model.language_projection.weight")
    text_hidden = language_model.config.hidden_size
    if weight is not None and tuple(weight.shape) != (text_hidden, qformer_config.hidden_size):
        raise ValueError(
            f"{source}: llama_proj maps {weight.shape[1]} -> {weight.shape[0]} features, but the Q-Former gives "
            f"{qformer_config.hidden_size} and {text_model} takes {text_hidden}. (MiniGPT-4's Llama-2 variant and "
            "MiniGPT-v2 project concatenated ViT patches without a Q-Former, which minillava's MiniGPT-4 does not cover.)"
        )
    tensors.update(projection)
    tensors.update({f"model.language_model.{k}": v for k, v in language_model.get_decoder().state_dict().items()})
    tensors["lm_head.weight"] = language_model.get_output_embeddings().weight

    config = MiniGPT4Config(
        vision_config=vision_config,
        qformer_config=qformer_config,
        text_config=language_model.config,
        num_query_tokens=num_query_tokens,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=getattr(language_model.config, "tie_word_embeddings", False),
    )
    what = f"{source} + {blip2} + {text_model} (MiniGPT-4)"
    model = assemble(MiniGPT4ForConditionalGeneration, config, tensors, what, parse_dtype(dtype))
    torch.manual_seed(seed)
    fit_tokenizer(model, tokenizer, pad_to_multiple_of)

    stats = {} if Path(blip2).is_file() else image_stats(blip2)
    processor = MiniLlavaProcessor(
        image_processor=make_image_processor("minigpt4", vision_config.image_size, **stats),
        tokenizer=tokenizer,
        chat_template=resolve_chat_template(chat_template or ARCH_DEFAULTS["minigpt4"]["chat_template"], tokenizer),
        image_token=IMAGE_TOKEN,
        num_image_tokens=model.config.image_seq_length,
    )
    save(model, processor, output_dir, max_shard_size=max_shard_size)
    return model, processor


# --------------------------------------------------------------------------------------------------------------------
# command line

EXAMPLES = """examples:
  minillava convert --from llava-hf llava-hf/llava-1.5-7b-hf --output-dir llava-1.5-7b-minillava
  minillava convert --to llava-hf llava-1.5-7b-minillava --output-dir llava-1.5-7b-hf
  minillava convert --from llava liuhaotian/llava-v1.5-7b --output-dir llava-v1.5-7b-minillava
  minillava convert --from llava lmsys/vicuna-7b-v1.5 --mm-projector pretrain/mm_projector.bin --output-dir stage1
  minillava convert --from llava checkpoints/llava-v1.5-7b-lora --base-model lmsys/vicuna-7b-v1.5 --output-dir merged
  minillava convert --from minigpt4 prerained_minigpt4_7b.pth --blip2 Salesforce/blip2-flan-t5-xxl \\
      --text-model vicuna-7b-v0 --output-dir minigpt4-7b
"""

# The options each conversion takes, besides the source and --output-dir.
FORMAT_OPTIONS = {
    ("from", "llava-hf"): ("dtype", "max_shard_size"),
    ("from", "llava"): (
        "vision_model",
        "mm_projector",
        "base_model",
        "chat_template",
        "dtype",
        "pad_to_multiple_of",
        "max_shard_size",
        "seed",
    ),
    ("from", "minigpt4"): (
        "blip2",
        "text_model",
        "blip2_config",
        "chat_template",
        "dtype",
        "pad_to_multiple_of",
        "max_shard_size",
        "seed",
    ),
    ("to", "llava-hf"): ("max_shard_size",),
}
CONVERTERS = {
    ("from", "llava-hf"): convert_from_llava_hf,
    ("from", "llava"): convert_from_llava,
    ("from", "minigpt4"): convert_from_minigpt4,
    ("to", "llava-hf"): convert_to_llava_hf,
}
REQUIRED_OPTIONS = {("from", "minigpt4"): ("blip2", "text_model")}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava convert",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from", dest="from_format", choices=SOURCE_FORMATS, help="convert a checkpoint to minillava"
    )
    direction.add_argument("--to", dest="to_format", choices=TARGET_FORMATS, help="export a minillava model")
    parser.add_argument("source", metavar="SRC", help="source folder (minigpt4: the .pth holding llama_proj)")
    parser.add_argument(
        "--output-dir", "--output_dir", required=True, help="where the converted model and processor are written"
    )
    parser.add_argument("--dtype", help="auto (the language model's), float32, bfloat16 or float16 (default: auto)")
    parser.add_argument(
        "--max-shard-size", "--max_shard_size", help="largest weight file written, e.g. 5GB (default: 5GB)"
    )
    parser.add_argument(
        "--chat-template", "--chat_template", help="vicuna_v1, plain, minigpt4_vicuna0, minigpt4_llama2 or lm"
    )
    parser.add_argument(
        "--pad-to-multiple-of", "--pad_to_multiple_of", type=int, help="pad the grown vocabulary (llava-hf uses 64)"
    )
    parser.add_argument("--seed", type=int, help="seed for the embedding rows of added tokens (default: 0)")
    llava = parser.add_argument_group("--from llava")
    llava.add_argument(
        "--vision-model",
        "--vision_model",
        help="vision tower folder or Hub id (default: the config's mm_vision_tower)",
    )
    llava.add_argument(
        "--mm-projector", "--mm_projector", help="a stage-1 mm_projector.bin to apply to SRC, a base causal LM"
    )
    llava.add_argument("--base-model", "--base_model", help="the base causal LM of a LoRA output SRC")
    minigpt4 = parser.add_argument_group("--from minigpt4")
    minigpt4.add_argument("--blip2", help="BLIP-2 checkpoint: a transformers Blip2 folder or a LAVIS .pth")
    minigpt4.add_argument(
        "--blip2-config", "--blip2_config", help="Blip2Config folder for a LAVIS .pth of non-standard size"
    )
    minigpt4.add_argument("--text-model", "--text_model", help="the causal LM folder (Vicuna / Llama-2)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`minillava convert`: convert, save, and print where."""
    parser = make_parser()
    args = parser.parse_args(argv)
    key = ("from", args.from_format) if args.from_format else ("to", args.to_format)
    allowed = FORMAT_OPTIONS[key]
    given = {name: value for name, value in vars(args).items() if value is not None}
    extra = sorted(set(given) - set(allowed) - {"from_format", "to_format", "source", "output_dir"})
    if extra:
        parser.error(
            f"--{key[0]} {key[1]} does not take " + ", ".join("--" + name.replace("_", "-") for name in extra)
        )
    for required in REQUIRED_OPTIONS.get(key, ()):
        if required not in given:
            parser.error(f"--{key[0]} {key[1]} needs --{required.replace('_', '-')}")
    if Path(args.output_dir).resolve() == Path(args.source).resolve():
        parser.error("--output-dir must differ from SRC")
    CONVERTERS[key](args.source, args.output_dir, **{name: given[name] for name in allowed if name in given})
    print(f"Converted {args.source} ({key[0]} {key[1]}) to {args.output_dir}")


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
