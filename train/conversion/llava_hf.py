"""llava-hf (transformers' `LlavaForConditionalGeneration`) to minillava, and a minillava LLaVA-1.5 back to it."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaConfig,
    LlavaProcessor,
)

from minillava.modeling import (
    MiniGPT4Config,
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
)
from minillava.processing import MiniLlavaProcessor
from minillava.processing.processing_minillava import make_tokenizer_config_portable

from ..training.build import (
    ARCH_DEFAULTS,
    fit_tokenizer,
    parse_dtype,
    resolve_chat_template,
    save,
)
from .layout import (
    Rules,
    assemble,
    image_tokens_per_image,
    local_folder,
    prefix_rules,
    published_layout,
    read_weights,
    rename_keys,
    write_safetensors,
)
from .llava import _read_json, is_original_llava_config


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
