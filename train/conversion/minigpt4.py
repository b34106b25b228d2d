"""MiniGPT-4 (its `llama_proj` checkpoint + a BLIP-2 front end, transformers' or LAVIS's `.pth` + a causal LM) to
minillava."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2QFormerConfig,
    Blip2VisionConfig,
)

from minillava.modeling import (
    MiniGPT4Config,
    MiniGPT4ForConditionalGeneration,
)
from minillava.modeling.modeling_base import VISION_TOWER_KEY
from minillava.processing import MiniLlavaProcessor, make_image_processor

from ..checkpoints import load_tensors
from ..training.build import (
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
)
from .layout import Rules, assemble, local_folder, rename_keys


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
