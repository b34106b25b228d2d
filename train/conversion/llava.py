"""The original LLaVA-1.5 checkpoints (`LlavaLlamaForCausalLM`: full, a stage-1 `mm_projector.bin` on a base LM, or a
LoRA output with `non_lora_trainables.bin`) to minillava."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from minillava.modeling import (
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
)
from minillava.modeling.modeling_base import VISION_TOWER_KEY
from minillava.processing import MiniLlavaProcessor, make_image_processor

from ..checkpoints import load_exact, load_tensors
from ..training.build import (
    ARCH_DEFAULTS,
    IMAGE_TOKEN,
    add_image_token,
    fit_tokenizer,
    from_pretrained_any_version,
    image_stats,
    parse_dtype,
    resolve_chat_template,
    save,
    vision_config_of,
)
from .layout import (
    ADAPTER_FILES,
    CAUSAL_LM_PREFIXES,
    NON_LORA_FILE,
    TO_CAUSAL_LM,
    Rules,
    assemble,
    local_folder,
    prefix_rules,
    published_layout,
    read_weights,
    rename_keys,
)


try:
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights


logger = logging.getLogger(__name__)


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
